"""``shardc inspect``: load a model, run the analysis passes, report.

The ``--dim``/``--op-cost``/``--json`` options are shared with ``shardc compile``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from shardc import jsonutil
from shardc.analysis import graph_summary
from shardc.cli.options import console, parse_dims, parse_op_costs
from shardc.compiler import analyse
from shardc.report.summary import render_summary
from shardc.report.text import plain_safe

dim_option = click.option(
    "--dim",
    "dims",
    multiple=True,
    metavar="NAME=VALUE",
    help="Bind a symbolic input dim, e.g. --dim batch=8 --dim seq=4096.",
)
op_cost_option = click.option(
    "--op-cost",
    "op_costs",
    multiple=True,
    metavar="DOMAIN::OP=FLOPS",
    help="FLOPs per output element for a custom op shardc has no rule for.",
)
json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object on stdout."
)


def warn(warnings: tuple[str, ...]) -> None:
    """Print the passes' warnings on stderr, after what is already on stdout."""
    sys.stdout.flush()
    for w in warnings:
        click.echo(f"shardc: warning: {plain_safe(w)}", err=True)


@click.command("inspect")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@dim_option
@op_cost_option
@click.option("--top", default=10, show_default=True, help="How many heaviest nodes to list.")
@json_option
def inspect_cmd(
    model: Path, dims: tuple[str, ...], op_costs: tuple[str, ...], top: int, as_json: bool
) -> None:
    """Summarise MODEL: ops, parameters, FLOPs per token/sample, activations, heaviest nodes."""
    result = analyse(model, dims=parse_dims(dims), custom_flops=parse_op_costs(op_costs))
    state = result.state
    assert state.costs is not None
    summary = graph_summary(state.model, state.costs, top=top)
    warn(state.warnings)
    if as_json:
        sys.stdout.write(jsonutil.dumps(summary))
    else:
        console().print(render_summary(summary))
