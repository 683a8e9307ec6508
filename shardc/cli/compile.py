"""``shardc compile``: analyse, partition and write the plan.

Writes ``plan.json`` (the inputs' hashes, the options and the ``partition`` section)
and ``analysis.json`` into the output folder in one atomic step, then prints the plan.
Nothing wall-clock goes into the files, so two runs give identical bytes; timings go to
the terminal (and ``--json``) only.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from shardc import __version__, jsonutil
from shardc.cli.analyse import dim_option, json_option, op_cost_option, warn
from shardc.cli.options import parse_dims, parse_op_costs, parse_sets
from shardc.errors import OptionError
from shardc.partition.options import (
    OBJECTIVES,
    RECOMPUTES,
    SCHEDULES,
    PartitionOptions,
    parse_pins,
)

PLAN_FORMAT = "shardc-plan/1"


def _sha256(path: Path) -> str:
    """Hash of a file as given (for ONNX: the graph file, not its external weights)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_json(path: Path, flag: str) -> Any:
    """A JSON file named by ``flag``, or a one-line error saying what is wrong with it."""
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise OptionError(f"{flag} {path}: {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise OptionError(f"{flag} {path}: not JSON ({exc})") from None


def _warm_start(path: Path | None) -> dict[str, Any] | None:
    """The ``partition`` section of an earlier plan.json (or of a bare partition dump)."""
    if path is None:
        return None
    data = _read_json(path, "--warm-start")
    section = data.get("partition", data) if isinstance(data, dict) else None
    if not isinstance(section, dict) or "stages" not in section or "dp" not in section:
        raise OptionError(
            f"--warm-start {path}: no plan in it", hint="pass a plan.json written by compile"
        )
    return section


def _load_plan(path: Path, model: Path, topology: Path) -> dict[str, Any]:
    """An earlier plan.json, checked to be for this model and topology."""
    data = _read_json(path, "--plan")
    if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
        raise OptionError(f"--plan {path}: not a {PLAN_FORMAT} file")
    for what, file in (("model", model), ("topology", topology)):
        if data["inputs"][what]["sha256"] != _sha256(file):
            raise OptionError(
                f"--plan {path}: it was made for another {what} than {file}",
                hint=f"it names {data['inputs'][what]['path']}",
            )
    return data


def _complete_pins(part: dict[str, Any]) -> list[str]:
    """Pins that leave the solver nothing to choose: the plan itself."""
    out = [f"pp={part['pp']},dp={part['dp']}"]
    for st in part["stages"]:
        j = st["index"]
        out += [
            f"stage{j}.kind={st['kind']}",
            f"stage{j}.tp={st['tp']}",
            f"stage{j}.blocks={st['blocks'][1] - st['blocks'][0] + 1}",
            f"stage{j}.recompute={st['recompute']}",
        ]
    return out


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
@click.option(
    "--mode",
    type=click.Choice(["training", "inference"]),
    default="training",
    show_default=True,
    help="Plan a training step (forward, backward, optimizer) or inference.",
)
@click.option(
    "--objective",
    type=click.Choice(OBJECTIVES),
    default="throughput",
    show_default=True,
    help="Samples per second, or (inference) one request's latency.",
)
@click.option("--microbatches", type=int, help="Micro-batches per pipeline per step (default 8).")
@click.option(
    "--global-batch",
    type=int,
    help="Samples per step; sets micro-batches per replica to B / (dp x micro-batch size).",
)
@click.option("--schedule", type=click.Choice(SCHEDULES), default="1f1b", show_default=True)
@click.option(
    "--zero",
    type=click.IntRange(0, 3),
    default=1,
    show_default=True,
    help="ZeRO stage of the data-parallel optimizer state.",
)
@click.option(
    "--pin",
    "pins",
    multiple=True,
    metavar="KEY=VALUE[,...]",
    help="Fix part of the answer: tp=8, pp=4,dp=16, kind=h100, stage0.kind=h20, "
    "stage1.blocks=30, recompute=full. With tp, pp, dp and every stage's blocks pinned, "
    "compile evaluates that configuration.",
)
@click.option(
    "--recompute",
    type=click.Choice(RECOMPUTES),
    help="Activation recomputation for every stage (same as --pin recompute=...).",
)
@click.option(
    "--time-limit",
    type=float,
    default=20.0,
    show_default=True,
    help="Solver budget for the whole search, in CP-SAT deterministic seconds.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Solver random seed.")
@click.option("--max-stages", type=int, default=16, show_default=True)
@click.option(
    "--warm-start",
    type=click.Path(dir_okay=False, path_type=Path),
    help="An earlier plan.json whose plan seeds the solver.",
)
@click.option(
    "--plan",
    "plan_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Re-emit the plan in an earlier plan.json (same model and topology) instead of "
    "searching: the files come out identical.",
)
@dim_option
@op_cost_option
@click.option(
    "--dump-after",
    "dump_after",
    multiple=True,
    metavar="PASS",
    help="Print the IR and the pass's side table after PASS (to stderr).",
)
@click.option(
    "--emit/--no-emit",
    "do_emit",
    default=None,
    help="Write device_<rank>.onnx, schedule.json and trace.json (default: when the "
    "model's weights are readable; a synth graph declares them only).",
)
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write a self-contained HTML report (timeline, topology, tables) here.",
)
@click.option("--force", is_flag=True, help="Replace OUTDIR if it exists.")
@json_option
def compile_cmd(
    model: Path,
    topology_path: Path,
    sets: tuple[str, ...],
    outdir: Path,
    mode: str,
    objective: str,
    microbatches: int | None,
    global_batch: int | None,
    schedule: str,
    zero: int,
    pins: tuple[str, ...],
    recompute: str | None,
    time_limit: float,
    seed: int,
    max_stages: int,
    warm_start: Path | None,
    plan_path: Path | None,
    dims: tuple[str, ...],
    op_costs: tuple[str, ...],
    dump_after: tuple[str, ...],
    do_emit: bool | None,
    report_path: Path | None,
    force: bool,
    as_json: bool,
) -> None:
    """Partition MODEL onto the cluster in --topology and write the plan to OUTDIR."""
    from shardc.compiler import analyse, default_passes
    from shardc.emit.outdir import write_file, write_outdir
    from shardc.emit.outputs import plan_files, weights_available
    from shardc.report.plan import render_links, render_plan
    from shardc.report.summary import graph_summary
    from shardc.topology import load_topology

    start = time.perf_counter()
    if outdir.exists() and not force:
        raise OptionError(f"output folder {str(outdir)!r} already exists", hint="pass --force")
    loaded = _load_plan(plan_path, model, topology_path) if plan_path else None
    if loaded is not None:
        if pins or recompute or warm_start:
            raise OptionError("--plan fixes the whole plan: drop --pin, --recompute, --warm-start")
        saved = loaded["options"]
        mode, objective, schedule, zero = (
            saved["mode"],
            saved["objective"],
            saved["schedule"],
            saved["zero"],
        )
        microbatches, global_batch = saved["microbatches"], saved["global_batch"]
        time_limit, seed, max_stages = saved["time_limit"], saved["seed"], saved["max_stages"]
        pins = tuple(_complete_pins(loaded["partition"]))
        sets = tuple(f"{k}={v}" for k, v in loaded["inputs"]["topology"]["set"].items())
    items = list(pins) + ([f"recompute={recompute}"] if recompute else [])
    options = PartitionOptions(
        objective=objective,
        microbatches=microbatches,
        global_batch=global_batch,
        schedule=schedule,
        zero=zero,
        pins=parse_pins(items),
        max_stages=max_stages,
        time_limit=time_limit,
        seed=seed,
        warm_start=_warm_start(warm_start),
    )
    overrides = parse_sets(sets)
    topology = load_topology(topology_path, overrides)
    result = analyse(
        model,
        dims=parse_dims(dims),
        custom_flops=parse_op_costs(op_costs),
        topology=topology,
        dump_after=dump_after,
        mode=mode,
        partition=options,
        passes=default_passes(),
    )
    state = result.state
    assert state.costs is not None and state.partition is not None
    for name, text in result.dumps.items():
        click.echo(f"--- after {name} ---\n{text}", err=True)
    warn(state.warnings)
    part = state.partition.to_json()
    plan = {
        "format": PLAN_FORMAT,
        "shardc": __version__,
        "inputs": {
            "model": {"path": str(model), "sha256": _sha256(model)},
            "topology": {
                "path": str(topology_path),
                "sha256": _sha256(topology_path),
                "set": dict(sorted(overrides.items())),
            },
            "dims": dict(sorted(state.model.dims.items())),
        },
        "options": {
            "mode": mode,
            "objective": objective,
            "microbatches": microbatches,
            "global_batch": global_batch,
            "schedule": schedule,
            "zero": zero,
            "pins": options.pins.to_json(),
            "time_limit": time_limit,
            "seed": seed,
            "max_stages": max_stages,
            "warm_start": str(warm_start) if warm_start else None,
        },
        "partition": part,
    }
    if loaded is not None:
        # the record of how the plan was found, and what the user asked, are the original's
        plan["options"] = loaded["options"]
        part["solver"], part["pins"] = loaded["partition"]["solver"], loaded["partition"]["pins"]
        if part["stages"] != loaded["partition"]["stages"]:
            raise OptionError(
                f"--plan {plan_path}: the plan no longer prices the same on this input "
                "(the cost model or the topology changed)"
            )
    summary = graph_summary(state.model, state.costs)
    files: dict[str, bytes] = {"analysis.json": jsonutil.dumps(summary).encode()}
    schedule = None
    if do_emit is None:
        do_emit = weights_available(state)
        if not do_emit:
            warn(
                (
                    "the model's weights are not readable (declared only): no device files; "
                    "--emit to insist",
                )
            )
    if do_emit:
        emitted, plan["emission"], schedule = plan_files(state)
        files.update(emitted)
    files["plan.json"] = jsonutil.dumps(plan).encode()
    if report_path is not None:
        from shardc.report.html import render_html

        if schedule is None:
            raise OptionError("--report needs the emitted schedule: drop --no-emit")
        page = render_html(part, schedule, topology, model=str(model))
        write_file(report_path, page.encode(), force=force)
    write_outdir(outdir, files, force=force)
    elapsed = time.perf_counter() - start
    timings = {t.name: round(t.seconds, 6) for t in result.timings}
    if as_json:
        sys.stdout.write(
            jsonutil.dumps(
                {
                    "plan": plan,
                    "outdir": str(outdir),
                    "passes": timings,
                    "compile_seconds": round(elapsed, 3),
                }
            )
        )
        return
    console = Console()
    console.print(
        f"[bold]{model}[/] on {topology_path} ({len(topology.compute_devices)} compute devices)"
    )
    console.print(render_plan(part))
    if schedule is not None:
        console.print(render_links(schedule, top=5))
    console.print(
        f"wrote {outdir}/ ({len(files)} files: plan.json, analysis.json"
        + (
            f", {len(plan['emission']['ranks'])} device models, schedule.json, trace.json"
            if "emission" in plan
            else ""
        )
        + f") in {elapsed:.2f} s ("
        + ", ".join(f"{t.name} {t.seconds:.2f} s" for t in result.timings)
        + ")"
    )
