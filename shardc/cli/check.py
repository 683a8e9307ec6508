"""``shardc check-plan OUTDIR``: the emitted files agree with each other."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from shardc import jsonutil
from shardc.cli.analyse import json_option
from shardc.report.text import plain_safe


@click.command("check-plan")
@click.argument("outdir", type=click.Path(file_okay=False, path_type=Path))
@json_option
def check_plan_cmd(outdir: Path, as_json: bool) -> None:
    """Check OUTDIR: device models valid, Send/Recv paired, groups agreeing, weights tiled
    (a serving plan: its instances' devices, kinds and links against the topology).
    """
    from shardc.emit.check import check_outdir
    from shardc.plan.folder import read_plan_folder

    if "serving" in read_plan_folder(outdir).plan:
        _check_serving(outdir, as_json)
        return

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
    _conclude(report.problems, as_json)


def _check_serving(outdir: Path, as_json: bool) -> None:
    """check-plan on a serving plan folder (see :mod:`shardc.emit.check_serving`)."""
    from shardc.emit.check_serving import check_serving_outdir

    report = check_serving_outdir(outdir)
    if as_json:
        sys.stdout.write(jsonutil.dumps(report.__dict__))
    else:
        roles = " + ".join(f"{n} {role}" for role, n in report.instances.items())
        click.echo(plain_safe(
            f"serving plan, {report.mode}: {roles} instance(s) on {report.devices_used} of "
            f"{report.devices_total} devices; {report.links} traffic link(s) checked against "
            f"{report.topology or 'no topology'}"))
    _conclude(report.problems, as_json)


def _conclude(problems: list[str], as_json: bool) -> None:
    """Exit 2 naming the first problem (and a few more), else say ``ok``."""
    from shardc.emit.check import PlanCheckError

    if problems:
        raise PlanCheckError(
            f"{len(problems)} problem(s); first: {problems[0]}",
            hint="; ".join(problems[1:4]) or None,
        )
    if not as_json:
        click.echo("ok")
