"""The analysed-graph summary: one JSON-able dict, rendered as rich tables on demand.

Computed once from the IR and the cost table; the CLI's table view and its ``--json``
view print the same dict, so the two never disagree.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from rich.console import Group
from rich.table import Table

from shardc.ir import DType, Graph, Model
from shardc.passes.annotate_costs import GraphCosts
from shardc.report.text import markup_safe


def tokens_and_samples(graph: Graph) -> tuple[int | None, int | None]:
    """(tokens, samples) of one run: samples from the first input's leading dim; tokens
    when that input is an integer id tensor ``[batch, seq]``.
    """
    if not graph.inputs:
        return None, None
    t = graph.values[graph.inputs[0]].type
    if t is None or not t.is_static or not t.shape:
        return None, None
    samples = t.shape[0]
    is_ids = t.dtype in (DType.INT64, DType.INT32) and len(t.shape) == 2
    return (samples * t.shape[1] if is_ids else None), samples  # type: ignore[operator,return-value]


def activation_bytes(graph: Graph) -> tuple[int, int]:
    """(total bytes produced by nodes, peak bytes live at once) over one forward run.

    Liveness walks the nodes in order: a value is live from its producer until its last
    consumer; graph outputs stay live to the end.
    """
    last_use: dict[str, int] = {}
    for i, n in enumerate(graph.nodes):
        for name in n.present_inputs:
            last_use[name] = i
    for o in graph.outputs:
        last_use[o] = len(graph.nodes)
    live = peak = total = 0
    frees: dict[int, int] = {}
    for i, n in enumerate(graph.nodes):
        for o in n.outputs:
            v = graph.values.get(o) if o else None
            size = (v.nbytes or 0) if v else 0
            total += size
            live += size
            end = last_use.get(o, i)
            frees[end] = frees.get(end, 0) + size
        peak = max(peak, live)
        live -= frees.pop(i, 0)
    return total, peak


def graph_summary(model: Model, costs: GraphCosts, *, top: int = 10) -> dict[str, Any]:
    """Everything ``shardc inspect`` reports, as plain data."""
    g = model.graph
    tokens, samples = tokens_and_samples(g)
    act_total, act_peak = activation_bytes(g)
    heaviest = sorted(g.nodes, key=lambda n: (-costs.nodes[n.name].flops, n.name))[:top]
    ops = Counter(n.qualified_op for n in g.nodes)
    flops = costs.flops
    return {
        "model": model.source,
        "graph": g.name,
        "opsets": dict(model.opset_imports),
        "dims": dict(model.dims),
        "inputs": {i: str(g.values[i].type) for i in g.inputs},
        "outputs": {o: str(g.values[o].type) for o in g.outputs},
        "nodes": len(g.nodes),
        "op_counts": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        "parameters": costs.param_count,
        "parameter_bytes": costs.param_bytes,
        "flops": flops,
        "flops_by_dtype": costs.flops_by_dtype(),
        "flops_by_kind": costs.flops_by_kind(),
        "tokens": tokens,
        "samples": samples,
        "flops_per_token": flops / tokens if tokens else None,
        "flops_per_sample": flops / samples if samples else None,
        "activation_bytes": act_total,
        "activation_peak_bytes": act_peak,
        "bytes_moved": costs.bytes_moved(),
        "bytes_only_ops": list(costs.bytes_only_ops),
        "heaviest_nodes": [
            {
                "node": n.name,
                "op": n.qualified_op,
                "flops": costs.nodes[n.name].flops,
                "share": costs.nodes[n.name].flops / flops if flops else 0.0,
                "output": str(g.values[n.outputs[0]].type)
                if n.outputs and n.outputs[0] in g.values
                else "",
            }
            for n in heaviest
        ],
    }


def single_device_estimates(costs: GraphCosts, topology: Any) -> list[dict[str, Any]]:
    """Forward time and weight fit of the whole graph on one device of each compute kind.

    The yardstick a plan must beat: what one device would do alone (roofline per node,
    summed), and whether the weights alone fit its memory.
    """
    from shardc.cost.compute import sequence_time

    kinds = {d.kind.name: d.kind for d in topology.compute_devices}
    out = []
    for name in sorted(kinds):
        kind = kinds[name]
        est = sequence_time(list(costs.nodes.values()), kind)
        capacity = kind.memory_bytes or 0
        out.append(
            {
                "kind": name,
                "devices": sum(1 for d in topology.compute_devices if d.kind.name == name),
                "forward_seconds": est.seconds,
                "compute_seconds": est.compute_seconds,
                "memory_seconds": est.memory_seconds,
                "bound": est.bound,
                "weights_fit": costs.param_bytes <= capacity,
                "memory_bytes": capacity,
            }
        )
    return out


def render_estimates(rows: list[dict[str, Any]]) -> Table:
    """The single-device yardstick as a table."""
    table = Table(title="one device alone (roofline)", title_justify="left")
    for col in ("kind", "devices", "forward", "bound", "memory", "weights fit"):
        table.add_column(col, justify="right" if col in ("devices", "forward") else "left")
    for r in rows:
        table.add_row(
            markup_safe(r["kind"]),
            str(r["devices"]),
            f"{r['forward_seconds'] * 1e3:.4g} ms",
            r["bound"],
            human(r["memory_bytes"], "B"),
            "yes" if r["weights_fit"] else "no",
        )
    return table


def human(n: float | int | None, unit: str = "") -> str:
    """1234567 -> '1.23 M' (SI prefixes; bytes use binary units)."""
    if n is None:
        return "-"
    if unit == "B":
        for p in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
            if abs(n) < 1024 or p == "PiB":
                return f"{n:.0f} {p}" if p == "B" else f"{n:.2f} {p}"
            n /= 1024
    for p in ("", "K", "M", "G", "T", "P", "E"):
        if abs(n) < 1000 or p == "E":
            return f"{n:.3g} {p}{unit}".rstrip()
        n /= 1000
    return str(n)


def render_summary(s: dict[str, Any]) -> Group:
    """Rich tables for a summary dict."""
    overview = Table(title=markup_safe(s["model"]), show_header=False, title_justify="left")
    overview.add_column(style="bold")
    overview.add_column()
    overview.add_row(
        "inputs", markup_safe(", ".join(f"{k}: {v}" for k, v in s["inputs"].items()))
    )
    overview.add_row(
        "outputs", markup_safe(", ".join(f"{k}: {v}" for k, v in s["outputs"].items()))
    )
    overview.add_row("nodes", str(s["nodes"]))
    overview.add_row("parameters", f"{human(s['parameters'])} ({human(s['parameter_bytes'], 'B')})")
    overview.add_row("FLOPs / run", human(s["flops"], "FLOP"))
    if s["flops_per_token"] is not None:
        overview.add_row("FLOPs / token", human(s["flops_per_token"], "FLOP"))
    if s["flops_per_sample"] is not None:
        overview.add_row("FLOPs / sample", human(s["flops_per_sample"], "FLOP"))
    overview.add_row(
        "FLOPs by dtype",
        markup_safe(", ".join(f"{k} {human(v)}" for k, v in s["flops_by_dtype"].items() if v)),
    )
    overview.add_row(
        "FLOPs by kind", ", ".join(f"{k} {human(v)}" for k, v in s["flops_by_kind"].items() if v)
    )
    overview.add_row(
        "activations",
        f"{human(s['activation_bytes'], 'B')} produced, "
        f"{human(s['activation_peak_bytes'], 'B')} peak live",
    )
    if s["bytes_only_ops"]:
        overview.add_row("bytes-only ops", markup_safe(", ".join(s["bytes_only_ops"])))

    ops = Table(title="op counts", title_justify="left")
    ops.add_column("op")
    ops.add_column("count", justify="right")
    for op, n in s["op_counts"].items():
        ops.add_row(markup_safe(op), str(n))

    heavy = Table(title="heaviest nodes", title_justify="left")
    for col, just in (
        ("node", "left"),
        ("op", "left"),
        ("output", "left"),
        ("FLOPs", "right"),
        ("share", "right"),
    ):
        heavy.add_column(col, justify=just)  # type: ignore[arg-type]
    for h in s["heaviest_nodes"]:
        heavy.add_row(
            markup_safe(h["node"]),
            markup_safe(h["op"]),
            markup_safe(h["output"]),
            human(h["flops"]),
            f"{100 * h['share']:.1f}%",
        )
    return Group(overview, ops, heavy)
