"""A serving plan as the terminal shows it: both phases, the instances, the KV hand-off,
the expert all-to-all and the throughput-vs-TPOT table.

Why one renderer: ``shardc compile --mode serving``, ``shardc check-plan`` on a serving
plan folder and ``print(plan.summary())`` print the same lines from the same typed
records (:class:`~shardc.plan.serving.ServingPlan`), so they never disagree; the HTML
report (:mod:`shardc.report.html.serving`) formats the same fields the same way.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table

from shardc.plan.model import PlanData
from shardc.plan.serving import LinkTraffic, ServingInstance, ServingPlan
from shardc.report.summary import human
from shardc.report.text import markup_safe


def ms(x: float) -> str:
    """Seconds as milliseconds, 4 significant digits."""
    return f"{x * 1e3:.4g} ms"


def _si(x: float, unit: str) -> str:
    for prefix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}"


def rate(bytes_per_s: float) -> str:
    """Bytes/s in SI units (link bandwidths are quoted in GB/s)."""
    return _si(bytes_per_s, "B/s")


def size(nbytes: float) -> str:
    """Bytes in SI units (matching :func:`rate`)."""
    return _si(nbytes, "B")


def link_name(link: LinkTraffic) -> str:
    """``ib: node0.gpu0 -> ib_leaf0``."""
    return f"{link.plane}: {link.a} -> {link.b}"


def device_span(devices: tuple[str, ...]) -> str:
    """``node0.gpu0 … node3.gpu7`` (first and last, for a table cell)."""
    return devices[0] if len(devices) == 1 else f"{devices[0]} … {devices[-1]}"


def headline(s: ServingPlan) -> str:
    """The plan in one line: mode, TTFT, TPOT, tokens/s and devices."""
    return (f"{s.mode}: TTFT {ms(s.ttft)}, TPOT {ms(s.tpot)}; "
            f"{s.output_tokens_per_s:.4g} output tokens/s ({s.tokens_per_s_per_device:.4g} per "
            f"device, {s.tokens_per_s_per_user:.3g} per user), {s.input_tokens_per_s:.4g} input "
            f"tokens/s, {s.requests_per_s:.3g} requests/s; {s.devices_used} of "
            f"{s.devices_total} devices")


def workload_line(s: ServingPlan) -> str:
    """The workload and the targets the plan meets."""
    wl = s.workload
    load = (f"{wl['rate']:g} requests/s" if wl.get("rate") else
            f"{wl['concurrency']} in flight" if wl.get("concurrency") else "fill the pool")
    targets = ", ".join(f"{name} ≤ {ms(float(wl[key]))}" for name, key in
                        (("TTFT", "ttft_target_s"), ("TPOT", "tpot_target_s"))
                        if wl.get(key) is not None) or "no latency targets"
    return (f"isl {wl['isl']:g}, osl {wl['osl']:g}, prefix hit {float(wl['prefix_hit']):.0%}, "
            f"{load}; {targets}")


def batch_text(inst: ServingInstance) -> str:
    """Prefill batches prompt tokens, decode sequences; aggregated both."""
    if inst.role == "prefill":
        return f"{inst.batch} tok"
    if inst.role == "aggregated":
        return f"{inst.batch} seq + {inst.prefill_chunk} tok"
    return f"{inst.batch} seq"


INSTANCE_COLUMNS = ("role", "count", "kind", "devices each", "tp", "dp", "ep", "pp", "batch",
                    "step", "memory/dev", "KV capacity", "bound by", "devices")


def instance_rows(s: ServingPlan) -> list[tuple[str, ...]]:
    """One row per (role, kind): what :data:`INSTANCE_COLUMNS` name."""
    rows: list[tuple[str, ...]] = []
    for role, kind, insts in s.groups():
        i = insts[0]
        every = tuple(d for x in insts for d in x.devices)
        rows.append((role, str(len(insts)), kind, str(len(i.devices)), str(i.tp), str(i.dp),
                     str(i.ep), str(i.pp), batch_text(i), ms(i.step_seconds),
                     human(i.memory_per_device_bytes, "B"), f"{i.kv_capacity_tokens:.3g} tok",
                     i.bound, device_span(every)))
    return rows


def kv_line(s: ServingPlan) -> str | None:
    """The KV hand-off in one line (None for an aggregated plan)."""
    kv = s.kv_transfer
    if kv is None:
        return None
    alt = ", ".join(f"{k} {ms(v)}" for k, v in sorted(kv.alternatives.items()))
    hot = (f"; busiest link {link_name(kv.links[0])} at {rate(kv.links[0].bytes_per_s)}"
           if kv.links else "")
    streams = f"{kv.streams} stream" + ("s" if kv.streams > 1 else "")
    return (f"KV hand-off prefill -> decode: {size(kv.bytes_per_request)}/request over "
            f"{kv.plane} ({kv.link_kinds}, {streams}) in {ms(kv.seconds)}, "
            f"{rate(kv.bytes_per_s)} in all{hot}" + (f"; other planes: {alt}" if alt else ""))


def exchange_name(s: ServingPlan) -> str:
    """What the plan's MoE layers exchange tokens with: ``expert all-to-all`` (DeepEP's
    dispatch/combine, the default) or TensorRT-LLM's all-gather and reduce-scatter
    (``--moe-comm allgather``, recorded in the plan's precision).
    """
    if s.precision.get("moe_comm") == "allgather":
        return "expert all-gather/reduce-scatter"
    return "expert all-to-all"


def expert_lines(s: ServingPlan) -> list[str]:
    """One line per role whose instances exchange tokens between expert ranks."""
    out = []
    name = exchange_name(s)
    for e in s.expert_traffic:
        hot = (f"; busiest link {link_name(e.links[0])} at {rate(e.links[0].bytes_per_s)}"
               if e.links else "")
        out.append(
            f"{name}, {e.role} (ep {e.ep} on {e.kind}, over {e.tiers}): "
            f"{size(e.bytes_per_rank)} per rank per step ({size(e.outer_bytes_per_rank)} "
            f"scale-out), {ms(e.seconds)} per step, {ms(e.exposed_seconds)} not hidden{hot}")
    return out


def alternative_line(s: ServingPlan) -> str:
    """The best plan of the other mode, or why there is none."""
    a = s.alternative
    if a.get("status") == "feasible":
        return (f"best {a['mode']}: {float(a['tokens_per_s_per_device']):.4g} tokens/s/device "
                f"at TPOT {ms(float(a['tpot_s']))} ({a['decode']})")
    return f"{a['mode']}: {a['status']}"


PARETO_COLUMNS = ("TPOT target", "mode", "TPOT", "TTFT", "tokens/s/device", "tokens/s/user",
                  "devices", "decode instance")


def pareto_rows(s: ServingPlan) -> list[tuple[str, ...]]:
    """The throughput-vs-TPOT table's rows."""
    return [(ms(r.tpot_target), r.mode, ms(r.tpot), ms(r.ttft), f"{r.tokens_per_s_per_device:.4g}",
             f"{r.tokens_per_s_per_user:.3g}", str(r.devices), r.decode) for r in s.pareto]


def _table(title: str, columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> Table:
    table = Table(title=title, title_justify="left")
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*(markup_safe(c) for c in row))
    return table


def render_serving(plan: PlanData, title: str) -> list[Any]:
    """The lines and tables the terminal prints for a serving plan, in order."""
    s = plan.serving
    if s is None:
        raise ValueError("not a serving plan")
    out: list[Any] = [f"[bold]{markup_safe(title)}[/]: serving, {markup_safe(workload_line(s))}",
                      markup_safe(headline(s)),
                      _table("instances", INSTANCE_COLUMNS, instance_rows(s))]
    out += [markup_safe(x) for x in (kv_line(s), *expert_lines(s)) if x]
    out.append(markup_safe(alternative_line(s)))
    if s.pareto:
        out.append(_table("throughput vs TPOT (best plan at each target)", PARETO_COLUMNS,
                          pareto_rows(s)))
    return out
