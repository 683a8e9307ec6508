"""``shardc verify OUTDIR``: the plan computes what the original model computes.

Exit status: 0 when every output is within tolerance, 3 when one is not (the tables say
which, where and by how much), 2 for a user mistake or a rank that failed (one line
naming the rank and the op), 1 for a bug in shardc.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from shardc import jsonutil
from shardc.cli.analyse import json_option
from shardc.report.text import plain_safe

MISMATCH_EXIT = 3


@click.command("verify")
@click.argument("outdir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--inputs",
    type=click.Path(dir_okay=False, path_type=Path),
    help="An .npz of the model's inputs: one micro-batch, or several stacked along the "
    "first dimension. Default: seeded random inputs per (replica, micro-batch).",
)
@click.option(
    "--procs",
    is_flag=True,
    help="One process per rank over torch.distributed (gloo on CPU, nccl/hccl next to "
    "GPUs/NPUs) instead of all ranks in this process.",
)
@click.option(
    "--model",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The original model, if not at the path plan.json records.",
)
@click.option(
    "--rtol",
    type=float,
    help="Tolerance relative to each output's largest magnitude "
    "(default by dtype: fp32 1e-5, fp16 1e-2, fp64 1e-9; integers exact).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of random inputs.")
@click.option(
    "--timeout",
    type=float,
    default=120.0,
    show_default=True,
    help="Seconds before a multi-process run is declared hung (with --procs).",
)
@click.option(
    "--steps",
    type=int,
    default=4,
    show_default=True,
    help="Serving programs: decode steps after the prefill.",
)
@json_option
def verify_cmd(
    outdir: Path,
    inputs: Path | None,
    procs: bool,
    model: Path | None,
    rtol: float | None,
    seed: int,
    timeout: float,
    steps: int,
    as_json: bool,
) -> None:
    """Run the plan in OUTDIR and the original model on the same inputs; compare outputs.

    A serving plan's programs (OUTDIR/programs/) run a prefill and --steps decode steps,
    each rank's KV cache fed back to its next step, against onnxruntime on the originals.
    """
    from rich.console import Console

    from shardc.runtime.serving_verify import programs_folder
    from shardc.runtime.verify import verify

    if programs_folder(outdir) is not None:  # a serving plan with programs/
        _verify_serving(outdir, procs, inputs, rtol, seed, steps, timeout, as_json)
        return
    if programs_folder(outdir.parent) is not None:
        from shardc.errors import OptionError

        raise OptionError(f"{outdir} is one phase of a serving plan's programs: its KV cache "
                          "comes from the other phase", hint=f"verify {outdir.parent}")

    report = verify(outdir, inputs, procs=procs, model=model, rtol=rtol, seed=seed, timeout=timeout)
    if as_json:
        sys.stdout.write(jsonutil.dumps(report.to_json()))
    else:
        console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
        for table in report.tables():
            console.print(table)
        verdict = "[green]ok[/]" if report.ok else "[red]MISMATCH[/]"
        console.print(f"{verdict}: {report.runner}, {report.wall_seconds:.2f} s")
    if not report.ok:
        bad = [o.name for o in report.outputs if not o.ok]
        if not as_json:
            click.echo(f"shardc: verification failed for {plain_safe(bad)}", err=True)
        sys.exit(MISMATCH_EXIT)


def _verify_serving(outdir: Path, procs: bool, inputs: Path | None, rtol: float | None,
                    seed: int, steps: int, timeout: float, as_json: bool) -> None:
    """A serving plan's programs: prefill and decode steps (in-process, or --procs)."""
    from shardc.errors import OptionError
    from shardc.runtime.serving_verify import verify_serving

    if inputs is not None:
        raise OptionError("--inputs: serving programs are verified on seeded prompts")
    report = verify_serving(outdir, steps=steps, seed=seed, rtol=rtol, procs=procs,
                            timeout=timeout)
    if as_json:
        sys.stdout.write(jsonutil.dumps(report.to_json()))
    else:
        for line in report.lines():
            click.echo(line)
        click.echo(f"{'ok' if report.ok else 'MISMATCH'}: {report.runner}, "
                   f"{report.wall_seconds:.2f} s")
    if not report.ok:
        sys.exit(MISMATCH_EXIT)
