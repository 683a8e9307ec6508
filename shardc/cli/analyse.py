"""``shardc inspect`` and ``shardc compile``: load a model, run the passes, report.

Until the partitioner lands, ``compile`` stops after the analysis passes: it prints the
analysed-graph summary and writes it to the output folder as ``analysis.json``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from shardc import jsonutil
from shardc.cli.options import parse_dims, parse_op_costs, parse_sets
from shardc.compiler import analyse
from shardc.report.summary import (
    graph_summary,
    render_estimates,
    render_summary,
    single_device_estimates,
)

_dim = click.option(
    "--dim",
    "dims",
    multiple=True,
    metavar="NAME=VALUE",
    help="Bind a symbolic input dim, e.g. --dim batch=8 --dim seq=4096.",
)
_op_cost = click.option(
    "--op-cost",
    "op_costs",
    multiple=True,
    metavar="DOMAIN::OP=FLOPS",
    help="FLOPs per output element for a custom op shardc has no rule for.",
)
_json = click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")


def _warn(warnings: tuple[str, ...]) -> None:
    for w in warnings:
        click.echo(f"shardc: warning: {w}", err=True)


@click.command("inspect")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@_dim
@_op_cost
@click.option("--top", default=10, show_default=True, help="How many heaviest nodes to list.")
@_json
def inspect_cmd(
    model: Path, dims: tuple[str, ...], op_costs: tuple[str, ...], top: int, as_json: bool
) -> None:
    """Summarise MODEL: ops, parameters, FLOPs per token/sample, activations, heaviest nodes."""
    result = analyse(model, dims=parse_dims(dims), custom_flops=parse_op_costs(op_costs))
    state = result.state
    assert state.costs is not None
    summary = graph_summary(state.model, state.costs, top=top)
    _warn(state.warnings)
    if as_json:
        sys.stdout.write(jsonutil.dumps(summary))
    else:
        Console().print(render_summary(summary))


@click.command("compile")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--topology",
    "topology_path",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Cluster description (.topo).",
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="NAME=VALUE",
    help="Override a `let` parameter of the topology file.",
)
@click.option(
    "-o",
    "--output",
    "outdir",
    type=click.Path(path_type=Path),
    required=True,
    help="Output folder (written atomically).",
)
@_dim
@_op_cost
@click.option(
    "--dump-after",
    "dump_after",
    multiple=True,
    metavar="PASS",
    help="Print the IR and the pass's side table after PASS (to stderr).",
)
@click.option("--force", is_flag=True, help="Replace OUTDIR if it exists.")
@_json
def compile_cmd(
    model: Path,
    topology_path: Path,
    sets: tuple[str, ...],
    outdir: Path,
    dims: tuple[str, ...],
    op_costs: tuple[str, ...],
    dump_after: tuple[str, ...],
    force: bool,
    as_json: bool,
) -> None:
    """Compile MODEL for the cluster in --topology, writing the result to OUTDIR."""
    import time

    from shardc.emit.outdir import write_outdir

    start = time.perf_counter()
    from shardc.topology import load_topology

    topology = load_topology(topology_path, parse_sets(sets))
    result = analyse(
        model,
        dims=parse_dims(dims),
        custom_flops=parse_op_costs(op_costs),
        topology=topology,
        dump_after=dump_after,
    )
    state = result.state
    assert state.costs is not None
    summary = graph_summary(state.model, state.costs)
    for name, text in result.dumps.items():
        click.echo(f"--- after {name} ---\n{text}", err=True)
    _warn(state.warnings)
    estimates = single_device_estimates(state.costs, topology)
    payload: dict[str, Any] = {
        "single_device": estimates,
        "analysis": summary,
        "passes": {t.name: round(t.seconds, 6) for t in result.timings},
        "topology": str(topology_path),
        "status": "analysed (partitioner not yet available)",
    }
    write_outdir(outdir, {"analysis.json": jsonutil.dumps(summary).encode()}, force=force)
    payload["compile_seconds"] = round(time.perf_counter() - start, 3)
    if as_json:
        sys.stdout.write(jsonutil.dumps(payload))
        return
    console = Console()
    console.print(render_summary(summary))
    console.print(f"topology: {topology_path} ({len(topology.devices)} devices)")
    console.print(render_estimates(estimates))
    console.print(
        f"wrote {outdir}/analysis.json; passes: "
        + ", ".join(f"{t.name} {t.seconds * 1000:.1f} ms" for t in result.timings)
    )
