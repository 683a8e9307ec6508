"""``shardc compile MODEL --mode serving``: the serving options, the run and the output.

Thin, like every command: the options become a :class:`~shardc.serving.Workload` and
:class:`~shardc.serving.ServingOptions`, :func:`~shardc.serving.plan_serving` decides,
the typed Plan (:class:`~shardc.plan.model.PlanData` with its ``serving`` section) is
written by the one writer (:func:`shardc.emit.outputs.plan_files`) as ``OUTDIR/plan.json``
(format ``shardc-plan/2``), and :mod:`shardc.report.serving` prints both phases, the
instances, the KV hand-off, the all-to-all, TTFT/TPOT, tokens/s and the Pareto table
(``--json``: what compile's ``--json`` prints for any plan, canonical, byte-identical
across runs; ``--report``: the HTML page with the map).
A model with a KV cache (a phase pair, see :mod:`shardc.serving_build`) also gets
``OUTDIR/programs/``: each instance's prefill and decode-step programs per rank.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from shardc import jsonutil
from shardc.cli.options import console
from shardc.cost.expert_comm import MOE_COMMS
from shardc.errors import OptionError
from shardc.serving.shapes import QUANTS, Quant

_OPTIONS: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = [
    click.option("--isl", type=int, help="Serving: prompt length in tokens (input sequence)."),
    click.option("--osl", type=int, help="Serving: output length in tokens."),
    click.option("--lengths", "lengths", type=click.Path(dir_okay=False, path_type=Path),
                 help="Serving: a length distribution instead of --isl/--osl: CSV with "
                 "isl,osl[,weight] columns, or a JSON list of such objects."),
    click.option("--request-rate", type=float, help="Serving: requests/s the plan must sustain."),
    click.option("--concurrency", type=int, help="Serving: requests in flight it must hold."),
    click.option("--prefix-hit", default="0", show_default=True,
                 help="Serving: share of prompt tokens found in the prefix cache (0.56 or 56%)."),
    click.option("--ttft", help="Serving: time-to-first-token target, e.g. 2s or 800ms."),
    click.option("--tpot", help="Serving: time-per-output-token target, e.g. 50ms."),
    click.option("--weight-dtype", type=click.Choice(QUANTS),
                 help="Serving: weight storage and GEMM type [--dtype, else bf16]."),
    click.option("--kv-dtype", type=click.Choice(QUANTS), default="bf16", show_default=True,
                 help="Serving: KV-cache element type."),
    click.option("--dispatch-dtype", type=click.Choice(QUANTS), default="bf16",
                 show_default=True,
                 help="Serving: MoE dispatch element type (combine stays bf16)."),
    # checked by run_serving, so a wrong value is the one-line error, exit 2
    click.option("--moe-comm", default="alltoall", show_default=True,
                 metavar="[" + "|".join(MOE_COMMS) + "]",
                 help="Serving: MoE token exchange: DeepEP-style all-to-all (SGLang, "
                 "DeepSeek) or TensorRT-LLM's all-gather + reduce-scatter."),
    click.option("--mtp", type=click.IntRange(0, 8), default=0, show_default=True,
                 help="Serving: multi-token-prediction draft tokens per step."),
    click.option("--mtp-acceptance", type=click.FloatRange(0.0, 1.0), default=0.8,
                 show_default=True, help="Serving: acceptance rate of each draft token."),
]


def serving_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Add the serving options to ``compile`` (they are ignored outside --mode serving)."""
    for option in reversed(_OPTIONS):
        f = option(f)
    return f


SERVING_KEYS = ("isl", "osl", "lengths", "request_rate", "concurrency", "prefix_hit", "ttft",
                "tpot", "weight_dtype", "kv_dtype", "dispatch_dtype", "moe_comm", "mtp",
                "mtp_acceptance")


Pins = tuple[tuple[tuple[str, int], ...], tuple[tuple[str, str], ...], str | None]


def parse_serving_pins(items: tuple[str, ...]) -> Pins:
    """``--pin ep=32,decode.ep=144,prefill.kind=h20,mode=aggregated`` -> (ints, kinds, mode)."""
    ints: dict[str, int] = {}
    kinds: dict[str, str] = {}
    mode = None
    allowed = ("tp", "dp", "pp", "ep", "batch", "chunk", "redundant")
    for item in items:
        for part in item.split(","):
            key, sep, value = part.partition("=")
            key, value = key.strip(), value.strip()
            if not sep or not key or not value:
                raise OptionError(f"--pin {part!r}: expected KEY=VALUE")
            role, _, name = key.rpartition(".")
            if role not in ("", "prefill", "decode", "aggregated"):
                raise OptionError(f"--pin {key}: unknown role {role!r}",
                                  hint="use prefill., decode. or aggregated.")
            if key == "mode":
                if value not in ("aggregated", "disaggregated"):
                    raise OptionError(f"--pin mode={value}: use aggregated or disaggregated")
                mode = value
            elif name == "kind":
                for r in ((role,) if role else ("prefill", "decode", "aggregated")):
                    kinds[r] = value
            elif name in allowed:
                try:
                    ints[key] = int(value)
                except ValueError:
                    raise OptionError(f"--pin {key}={value}: not an integer") from None
            else:
                raise OptionError(f"--pin {key}: unknown in serving mode",
                                  hint=f"use {', '.join(allowed)}, kind or mode")
    return tuple(sorted(ints.items())), tuple(sorted(kinds.items())), mode


def run_serving(model: Path, topology_path: Path, include_path: tuple[Path, ...],
                sets: tuple[str, ...], outdir: Path, pins: tuple[str, ...], dtype: str | None,
                time_limit: float, seed: int, force: bool, quiet: bool, as_json: bool,
                report_path: Path | None = None, **serving: Any) -> None:
    """Plan serving for MODEL on the topology; write OUTDIR/plan.json and print it."""
    from shardc.cli.options import parse_sets
    from shardc.emit.outdir import check_target, write_file, write_outdir
    from shardc.emit.outputs import plan_files
    from shardc.plan.folder import anchor_paths
    from shardc.serving import ServingOptions, from_onnx, plan_serving, workload
    from shardc.topology import load_topology
    from shardc.topology.loader import find_topology

    if serving["moe_comm"] not in MOE_COMMS:
        raise OptionError(f"--moe-comm {serving['moe_comm']}: use {' or '.join(MOE_COMMS)}")
    check_target(outdir, force=force)
    wl = workload(isl=serving["isl"], osl=serving["osl"], lengths=serving["lengths"],
                  rate=serving["request_rate"], concurrency=serving["concurrency"],
                  prefix_hit=serving["prefix_hit"], ttft=serving["ttft"], tpot=serving["tpot"])
    if dtype is not None and dtype not in QUANTS:
        raise OptionError(f"--dtype {dtype}: serving prices {', '.join(QUANTS)}")
    ints, kinds, mode = parse_serving_pins(pins)
    topology_file = find_topology(topology_path, include_path)
    overrides = parse_sets(sets)
    topology = load_topology(topology_file, overrides, include_path=include_path)
    arch = from_onnx(model)
    weights = serving["weight_dtype"] or dtype or (arch.dtype if arch.dtype in QUANTS else "bf16")
    opts = ServingOptions(
        quant=Quant(weights=weights, kv=serving["kv_dtype"], dispatch=serving["dispatch_dtype"]),
        mtp=serving["mtp"], acceptance=serving["mtp_acceptance"] if serving["mtp"] else 0.0,
        moe_comm=serving["moe_comm"], pins=ints, kinds=kinds, mode=mode, time_limit=time_limit,
        seed=seed,
    )
    plan = plan_serving(arch, topology, wl, opts)
    typed = _typed_plan(plan, model, topology_path,
                        topology_file, overrides, {
                            **{k: (str(v) if isinstance(v, Path) else v)
                               for k, v in sorted(serving.items())
                               # the default unrecorded: older plans stay byte-identical
                               if not (k == "moe_comm" and v == "alltoall")},
                            "dtype": dtype, "pins": list(pins), "time_limit": time_limit,
                            "seed": seed})
    programs, skipped = _programs(model, topology, topology_path, sets,
                                  typed.serving.to_json(), time_limit, seed)
    if report_path is not None:
        from shardc.report.html import render_html

        write_file(report_path, render_html(typed, topology, model=model.name).encode(),
                   force=force)
    files = plan_files(typed)
    # plan.json names the model and topology relative to the plan folder, as for any plan
    files["plan.json"] = anchor_paths(files["plan.json"], outdir)
    files.update({f"programs/{name}": data for name, data in programs.items()})
    write_outdir(outdir, files, force=force)
    if skipped:
        click.echo(f"shardc: no programs written: {skipped}", err=True)
    if as_json:
        out = {"plan": json.loads(files["plan.json"]), "outdir": str(outdir)}
        sys.stdout.write(jsonutil.dumps(out))
        return
    if not quiet:
        from shardc.report.serving import render_serving

        term = console()
        for line in render_serving(typed, f"{model} on {topology_path}"):
            term.print(line, soft_wrap=True)
        term.print(f"wrote {outdir}/plan.json", markup=False, highlight=False)
        if programs:
            term.print(f"wrote {outdir / 'programs'}: prefill and decode-step programs per "
                       "rank (shardc verify checks them)", markup=False, highlight=False)


def _programs(model: Path, topology: Any, topology_path: Path, sets: tuple[str, ...],
              serving: dict[str, Any], time_limit: float,
              seed: int) -> tuple[dict[str, bytes], str | None]:
    """The per-rank prefill and decode programs when MODEL is a phase pair (a prefill
    graph naming its decode-step graph; :mod:`shardc.serving_build`), else none; and why
    a phase pair got none.
    """
    from shardc.cli.options import parse_sets
    from shardc.serving_build import phase_pair, program_files, refusal

    pair = phase_pair(model)
    if pair is None:
        return {}, None
    why = refusal(serving)
    if why is not None:
        return {}, why
    record = {"path": str(topology_path), "set": dict(sorted(parse_sets(sets).items()))}
    files = program_files(pair, topology, record, serving, time_limit=time_limit, seed=seed)
    return files, None


def _typed_plan(plan: Any, model: Path, topology_path: Path, topology_file: Path,
                overrides: dict[str, Any], options: dict[str, Any]) -> Any:
    """The typed Plan of a serving plan: its ``serving`` section and the record of what was
    compiled with which options (the same ``inputs`` record a pipeline plan has).
    """
    from shardc.build import sha256_file
    from shardc.plan.model import SERVING_FORMAT, PlanData
    from shardc.plan.records import InputRecord, Inputs, Options, frozen
    from shardc.version import __version__

    inputs = Inputs(
        InputRecord(str(model), sha256_file(model)),
        InputRecord(str(topology_path), sha256_file(topology_file),
                    frozen(dict(sorted(overrides.items())))),
    )
    return PlanData(
        partition=None, ranks=(), inputs=inputs,
        options=Options(frozen({"mode": "serving", **options})), shardc=__version__,
        format=SERVING_FORMAT, serving=plan,
    )
