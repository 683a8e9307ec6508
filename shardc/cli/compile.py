"""``shardc compile``: analyse, partition and write the plan.

Writes ``plan.json`` (the inputs' hashes, the options and the ``partition`` section)
and ``analysis.json`` into the output folder in one atomic step, then prints the plan.
Nothing wall-clock goes into the files, so two runs give identical bytes. The same holds
for ``--json`` on stdout: wall-clock timings are printed only when asked for with
``--timings`` (under one ``timings`` key), so scripts can diff two runs' output.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from shardc import jsonutil
from shardc.build import Inputs, PlanOptions, build, read_plan, sha256_file
from shardc.cli.analyse import dim_option, json_option, op_cost_option, warn
from shardc.cli.options import (
    compile_options,
    console,
    include_path_option,
    parse_dims,
    parse_op_costs,
    parse_sets,
)
from shardc.cli.serving import SERVING_KEYS, run_serving, serving_options
from shardc.errors import OptionError
from shardc.progress import progress_for
from shardc.report.text import markup_safe, plain_safe

__all__ = ["compile_cmd"]


@click.command("compile")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--topology",
    "topology_path",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Cluster description: a .topo file, or the name of a stock topology "
    "(`shardc topo list`, e.g. cloudmatrix384).",
)
@include_path_option
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
@compile_options
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
    help="Write schedule.json, trace.json and (when the model's weights are readable) "
    "device_<rank>.onnx. Default: the same, except that a model whose weights are declared "
    "only (a synth graph) gets the schedule only while it is quick to lay out (graph nodes "
    "x replicas x micro-batches up to 50,000); --no-emit writes none of them.",
)
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write a self-contained HTML report (timeline, topology, tables) here.",
)
@click.option("--force", is_flag=True, help="Replace OUTDIR if it exists.")
@click.option(
    "-q",
    "--quiet",
    is_flag=True,
    help="Print nothing but warnings and errors (no progress bar, no plan tables).",
)
@json_option
@serving_options
@click.option(
    "--timings",
    is_flag=True,
    help="With --json, add a `timings` object (wall-clock seconds of the compile and of "
    "each pass); without it the JSON is byte-identical across runs.",
)
def compile_cmd(
    model: Path,
    topology_path: Path,
    include_path: tuple[Path, ...],
    sets: tuple[str, ...],
    outdir: Path,
    plan_path: Path | None,
    dims: tuple[str, ...],
    op_costs: tuple[str, ...],
    dump_after: tuple[str, ...],
    do_emit: bool | None,
    report_path: Path | None,
    force: bool,
    quiet: bool,
    as_json: bool,
    timings: bool,
    **chosen: Any,
) -> None:
    """Partition MODEL onto the cluster in --topology and write the plan to OUTDIR."""
    serving = {k: chosen.pop(k) for k in SERVING_KEYS}
    if chosen["mode"] == "serving":
        if plan_path or chosen["warm_start"] or dump_after:
            raise OptionError("--plan, --warm-start and --dump-after do not apply to "
                              "--mode serving")
        run_serving(model, topology_path, include_path, sets, outdir, chosen["pins"],
                    chosen["dtype"], chosen["time_limit"], chosen["seed"], force, quiet, as_json,
                    report_path, **serving)
        return
    given = [k for k in SERVING_KEYS
             if serving.get(k) not in (None, "0", "bf16", "alltoall", 0, 0.8)]
    if given:
        raise OptionError(f"--{given[0].replace('_', '-')} applies to --mode serving only")
    from shardc.emit.outdir import check_target, write_file, write_outdir
    from shardc.report.plan import render_links, render_plan
    from shardc.topology import load_topology
    from shardc.topology.loader import find_topology

    start = time.perf_counter()
    check_target(outdir, force=force)
    model_record = {"path": str(model)}
    topology_file = find_topology(topology_path, include_path)  # a path, or a stock name
    topology_record = {"path": str(topology_path)}
    warm_start = chosen["warm_start"]
    options = PlanOptions.from_values(
        {**chosen, "warm_start": str(warm_start) if warm_start else None}
    )
    loaded = None
    if plan_path is not None:
        model_record["sha256"] = sha256_file(model)
        topology_record["sha256"] = sha256_file(topology_file)
        loaded = read_plan(plan_path, {"model": model_record, "topology": topology_record})
        if options.pins or options.recompute or options.warm_start or options.dtype:
            raise OptionError(
                "--plan fixes the whole plan: drop --pin, --recompute, --warm-start, --dtype"
            )
        options = PlanOptions.replaying(loaded)
        sets = tuple(f"{k}={v}" for k, v in loaded["inputs"]["topology"]["set"].items())
    overrides = parse_sets(sets)
    topology = load_topology(topology_file, overrides, include_path=include_path)
    topology_record["sha256"] = sha256_file(topology_file)
    inputs = Inputs(
        model=model,
        model_record=model_record,
        topology=topology,
        topology_record={**topology_record, "set": overrides},
        dims=parse_dims(dims),
        custom_flops=parse_op_costs(op_costs),
    )
    with progress_for(quiet or as_json) as progress:
        built = build(
            inputs,
            options,
            replay=loaded,
            replay_label=f"--plan {plan_path}",
            emit=do_emit,
            dump_after=dump_after,
            progress=progress,
        )
    for name, text in built.result.dumps.items():
        click.echo(plain_safe(f"--- after {name} ---\n{text}", keep_newlines=True), err=True)
    warn(built.warnings)
    plan, files = built.plan, built.files
    timeline = built.typed.timeline if built.typed is not None else None
    if report_path is not None:
        from shardc.report.html import render_html

        if timeline is None or built.typed is None:
            raise OptionError("--report needs the emitted schedule", hint="pass --emit")
        page = render_html(built.typed, topology, model=str(model))
        write_file(report_path, page.encode(), force=force)
    from shardc.plan.folder import anchor_paths

    # plan.json names the model and topology relative to the plan folder: verify runs anywhere
    files["plan.json"] = anchor_paths(files["plan.json"], outdir)
    plan = json.loads(files["plan.json"])  # --json prints what the folder holds
    write_outdir(outdir, files, force=force)
    elapsed = time.perf_counter() - start
    if as_json:
        out: dict[str, object] = {"plan": plan, "outdir": str(outdir)}
        if timings:
            out["timings"] = {"compile_seconds": round(elapsed, 3), "passes": built.timings}
        sys.stdout.write(jsonutil.dumps(out))
        return
    if quiet:
        return
    term = console()
    term.print(
        f"[bold]{markup_safe(model)}[/] on {markup_safe(topology_path)} "
        f"({len(topology.compute_devices)} compute devices)"
    )
    if built.typed is not None:
        term.print(render_plan(built.typed))
        if built.typed.timeline is not None:
            term.print(render_links(built.typed, top=5))
    term.print(
        f"wrote {markup_safe(outdir)}/ ({len(files)} files: plan.json, analysis.json"
        + (f", {len(plan['emission']['ranks'])} device models" if "emission" in plan else "")
        + (", schedule.json, trace.json" if timeline is not None else "")
        + ("" if "emission" in plan or timeline is None else "; no device models: the "
           "weights are declared only")
        + f") in {elapsed:.2f} s ("
        + ", ".join(f"{t.name} {t.seconds:.2f} s" for t in built.result.timings)
        + ")",
        soft_wrap=True,  # one line, whatever the width: logs grep for it
    )
