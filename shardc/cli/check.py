"""``shardc check-plan OUTDIR``: the emitted files agree with each other."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from shardc import jsonutil
from shardc.cli.analyse import json_option


@click.command("check-plan")
@click.argument("outdir", type=click.Path(file_okay=False, path_type=Path))
@json_option
def check_plan_cmd(outdir: Path, as_json: bool) -> None:
    """Check OUTDIR: device models valid, Send/Recv paired, groups agreeing, weights tiled."""
    from shardc.emit.check import PlanCheckError, check_outdir

    report = check_outdir(outdir)
    if as_json:
        sys.stdout.write(jsonutil.dumps(report.__dict__))
    else:
        click.echo(
            f"{report.ranks} ranks, {report.sends} Send/Recv pairs, {report.collectives} "
            f"collective calls, {report.weights} weights ({report.weight_bytes} B per replica)"
        )
        for replica, b in sorted(report.emitted_bytes.items()):
            extra = report.replicated_bytes.get(replica, 0)
            click.echo(
                f"replica {replica}: {b} B of weight shards = {report.weight_bytes} B of "
                f"weights + {extra} B replicated on purpose"
            )
    if report.problems:
        raise PlanCheckError(
            f"{len(report.problems)} problem(s); first: {report.problems[0]}",
            hint="; ".join(report.problems[1:4]) or None,
        )
    if not as_json:
        click.echo("ok")
