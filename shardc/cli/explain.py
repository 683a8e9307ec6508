"""``shardc explain OUTDIR [NODE_OR_VALUE]``: what a plan does, and why a part went where.

Reads only the plan folder (:class:`shardc.plan.Plan`), so it explains a plan compiled
elsewhere as well as one compiled here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from shardc import jsonutil
from shardc.cli.analyse import json_option
from shardc.report.text import plain_safe


@click.command("explain")
@click.argument("outdir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("name", required=False, metavar="[NODE_OR_VALUE]")
@json_option
def explain_cmd(outdir: Path, name: str | None, as_json: bool) -> None:
    """Without NODE_OR_VALUE, the plan in OUTDIR (stages, step, links); with it, the ranks,
    stage, sharding and communication of that node, activation or weight, and the reasons.
    """
    from shardc.cli.options import console
    from shardc.handle import Plan

    plan = Plan.load(outdir)
    if name is None:
        if as_json:
            sys.stdout.write(jsonutil.dumps(plan.to_json()))
        else:
            console().print(plan.summary())
        return
    explanation = plan.explain(name)
    if as_json:
        sys.stdout.write(jsonutil.dumps(explanation.to_json()))
    else:
        click.echo(plain_safe(explanation, keep_newlines=True))
