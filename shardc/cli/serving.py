"""``shardc compile MODEL --mode serving``: the serving options, the run and the summary.

Thin, like every command: the options become a :class:`~shardc.serving.Workload` and
:class:`~shardc.serving.ServingOptions`, :func:`~shardc.serving.plan_serving` decides, and
this module prints both phases, the instances, TTFT/TPOT, tokens/s and the Pareto table
(or ``--json``: the plan's ``serving`` section, canonical, byte-identical across runs).
The plan is written as ``OUTDIR/serving.json`` (one atomic file write); until the typed
Plan carries it, ``compile --mode serving`` writes no plan.json. A model with a KV cache
(a phase pair, see :mod:`shardc.serving_build`) also gets ``OUTDIR/programs/``: each
instance's prefill and decode-step programs per rank.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from shardc.cli.options import console
from shardc.errors import OptionError
from shardc.report.text import markup_safe
from shardc.serving.step import QUANTS, Quant

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
                "tpot", "weight_dtype", "kv_dtype", "dispatch_dtype", "mtp", "mtp_acceptance")


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
                **serving: Any) -> None:
    """Plan serving for MODEL on the topology; write OUTDIR/serving.json and print it."""
    from shardc.cli.options import parse_sets
    from shardc.emit.outdir import write_file
    from shardc.serving import ServingOptions, from_onnx, plan_serving, workload
    from shardc.topology import load_topology
    from shardc.topology.loader import find_topology

    target = outdir / "serving.json"
    if target.exists() and not force:
        raise OptionError(f"{str(target)!r} already exists", hint="pass --force to replace it")
    wl = workload(isl=serving["isl"], osl=serving["osl"], lengths=serving["lengths"],
                  rate=serving["request_rate"], concurrency=serving["concurrency"],
                  prefix_hit=serving["prefix_hit"], ttft=serving["ttft"], tpot=serving["tpot"])
    if dtype is not None and dtype not in QUANTS:
        raise OptionError(f"--dtype {dtype}: serving prices {', '.join(QUANTS)}")
    ints, kinds, mode = parse_serving_pins(pins)
    topology = load_topology(find_topology(topology_path, include_path), parse_sets(sets),
                             include_path=include_path)
    arch = from_onnx(model)
    weights = serving["weight_dtype"] or dtype or (arch.dtype if arch.dtype in QUANTS else "bf16")
    opts = ServingOptions(
        quant=Quant(weights=weights, kv=serving["kv_dtype"], dispatch=serving["dispatch_dtype"]),
        mtp=serving["mtp"], acceptance=serving["mtp_acceptance"] if serving["mtp"] else 0.0,
        pins=ints, kinds=kinds, mode=mode, time_limit=time_limit, seed=seed,
    )
    plan = plan_serving(arch, topology, wl, opts)
    text = plan.to_json()
    programs, skipped = _programs(model, topology, topology_path, sets, plan.to_dict(),
                                  time_limit, seed)
    write_file(target, text.encode(), force=force)
    if programs:
        from shardc.emit.outdir import write_outdir

        write_outdir(outdir / "programs", programs, force=force)
    elif (outdir / "programs" / "programs.json").is_file():  # an earlier run's: now stale
        import shutil

        shutil.rmtree(outdir / "programs")
    if skipped:
        click.echo(f"shardc: no programs written: {skipped}", err=True)
    if as_json:
        sys.stdout.write(text)
        return
    if not quiet:
        _print(plan.to_dict(), f"{model} on {topology_path}", target)
        if programs:
            console().print(f"wrote {markup_safe(outdir / 'programs')}: prefill and decode-step "
                            "programs per rank (shardc verify checks them)")


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


def _ms(x: float) -> str:
    return f"{x * 1e3:.4g} ms"


def _print(p: dict[str, Any], title: str, target: Path) -> None:
    term = console()
    wl = p["workload"]
    term.print(f"[bold]{markup_safe(title)}[/]: serving, isl {wl['isl']:g}, osl {wl['osl']:g}, "
               f"prefix hit {wl['prefix_hit']:.0%}")
    term.print(f"{p['mode']}: TTFT {_ms(p['ttft_s'])}, TPOT {_ms(p['tpot_s'])}; "
               f"{p['output_tokens_per_s']:.4g} output tokens/s "
               f"({p['tokens_per_s_per_device']:.4g} per device, "
               f"{p['tokens_per_s_per_user']:.3g} per user), "
               f"{p['input_tokens_per_s']:.4g} input tokens/s; "
               f"{p['devices_used']} of {p['devices_total']} devices", soft_wrap=True)
    table = Table(title="instances")
    for col in ("role", "count", "kind", "devices", "tp", "dp", "ep", "pp", "batch",
                "redundant", "step", "memory/dev", "KV capacity", "bound by"):
        table.add_column(col)
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for inst in p["instances"]:
        groups.setdefault((inst["role"], inst["kind"]), []).append(inst)
    for (role, kind), insts in groups.items():
        i = insts[0]
        parts = {k: v for k, v in i["step_breakdown_seconds"].items() if k != "ep_alltoall_total"}
        bound = max(parts, key=lambda k: parts[k]) if parts else ""
        batch = f"{i['batch']} tok" if role == "prefill" else f"{i['batch']} seq"
        table.add_row(role, str(len(insts)), kind, str(len(i["devices"])), str(i["tp"]),
                      str(i["dp"]), str(i["ep"]), str(i["pp"]), batch,
                      str(i["redundant_experts"]), _ms(i["step_seconds"]),
                      f"{i['memory_per_device_bytes'] / 1e9:.3g} GB",
                      f"{i['kv_capacity_tokens']:.3g} tok", bound)
    term.print(table)
    kv = p["kv_transfer"]
    if kv:
        alt = ", ".join(f"{k} {_ms(v)}" for k, v in sorted(kv["alternatives"].items()))
        term.print(f"KV transfer prefill->decode: {kv['bytes_per_request'] / 1e6:.4g} MB/request "
                   f"over {kv['plane']} ({kv['link_kinds']}, {kv['streams']} streams) in "
                   f"{_ms(kv['seconds'])}" + (f"; other planes: {alt}" if alt else ""),
                   soft_wrap=True)
    a = p["alternative"]
    if a.get("status") == "feasible":
        term.print(f"best {a['mode']}: {a['tokens_per_s_per_device']:.4g} tokens/s/device at "
                   f"TPOT {_ms(a['tpot_s'])} ({a['decode']})", soft_wrap=True)
    else:
        term.print(f"{a['mode']}: {a['status']}")
    pareto = Table(title="throughput vs TPOT (best plan at each target)")
    for col in ("TPOT target", "mode", "TPOT", "TTFT", "tokens/s/device", "tokens/s/user",
                "devices", "decode instance"):
        pareto.add_column(col)
    for r in p["pareto"]:
        pareto.add_row(_ms(r["tpot_target_s"]), r["mode"], _ms(r["tpot_s"]), _ms(r["ttft_s"]),
                       f"{r['tokens_per_s_per_device']:.4g}", f"{r['tokens_per_s_per_user']:.3g}",
                       str(r["devices"]), r["decode"])
    if p["pareto"]:
        term.print(pareto)
    term.print(f"wrote {markup_safe(target)}")
