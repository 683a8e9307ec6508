"""``shardc launch PLAN -- script.py ...`` and ``shardc export-config PLAN --format F``.

``launch`` starts the training script under torchrun on this node with the plan's ranks
(``SHARDC_PLAN`` in the environment names the plan for ``shardc.train.apply``); a plan
spanning several nodes prints one command per node instead (``--print`` always does).
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import click

from shardc.errors import OptionError


@click.command("launch", context_settings={"ignore_unknown_options": True})
@click.argument("plan", type=click.Path(file_okay=False, path_type=Path))
@click.argument("script", nargs=-1, type=click.UNPROCESSED)
@click.option("--print", "print_only", is_flag=True, help="Print the torchrun commands only.")
@click.option("--master-addr", default="127.0.0.1", show_default=True,
              help="Address of node 0 (multi-node plans).")  # fmt: skip
@click.option("--master-port", default=29500, show_default=True, type=int)
@click.option("--hostfile", type=click.Path(dir_okay=False, exists=True),
              help="Hosts of the plan's nodes in order (`host [slots=N]` per line): prints "
              "one ssh line per node, node 0's host as the master address.")  # fmt: skip
@click.option("--simulate-devices", is_flag=True,
              help="Run a plan for accelerators on this machine's CPUs.")  # fmt: skip
def launch_cmd(
    plan: Path,
    script: tuple[str, ...],
    print_only: bool,
    master_addr: str,
    master_port: int,
    hostfile: str | None,
    simulate_devices: bool,
) -> None:
    """Run SCRIPT under torchrun with the ranks of PLAN (`shardc launch PLAN -- train.py`)."""
    from shardc.train.launch import read_hostfile, torchrun_commands
    from shardc.train.planview import plan_view

    if not script:
        raise OptionError("no script to launch", hint="shardc launch PLAN -- train.py ARGS")
    view = plan_view(plan)
    nodes = torchrun_commands(
        view, list(script), master_addr=master_addr, master_port=master_port,
        simulate_devices=simulate_devices,
    )  # fmt: skip
    hosts: list[str | None] = [None] * len(nodes)
    if hostfile is not None:
        found = read_hostfile(hostfile, nodes)
        nodes = torchrun_commands(
            view, list(script), master_addr=found[0], master_port=master_port,
            simulate_devices=simulate_devices,
        )  # fmt: skip
        hosts = list(found)
    if print_only or hostfile is not None or len(nodes) > 1:
        for n, host in zip(nodes, hosts, strict=True):
            click.echo(f"# node {n.node_rank} ({n.node or 'this host'}): ranks "
                       f"{n.ranks[0]}..{n.ranks[-1]}")  # fmt: skip
            line = f"SHARDC_PLAN={plan.resolve()} {n.command()}"
            click.echo(f"ssh {host} {shlex.quote(line)}" if host else line)
        return
    env = dict(os.environ, SHARDC_PLAN=str(plan.resolve()))
    if simulate_devices:
        env["SHARDC_SIMULATE_DEVICES"] = "1"
    if nodes[0].visible_devices:
        env["CUDA_VISIBLE_DEVICES"] = nodes[0].visible_devices
    raise SystemExit(subprocess.call(list(nodes[0].argv), env=env))


@click.command("export-config")
@click.argument("plan", type=click.Path(file_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["megatron", "torchtitan"]), required=True)
def export_config_cmd(plan: Path, fmt: str) -> None:
    """Write PLAN as Megatron-LM arguments or a torchtitan config (what is lost as comments)."""
    from shardc.train.export import export_config

    click.echo(export_config(plan, fmt).text, nl=False)
