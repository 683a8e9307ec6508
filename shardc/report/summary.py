"""The analysed-graph summary rendered as rich tables (the dict itself is computed by
:func:`shardc.analysis.graph_summary`); the CLI's table view and its ``--json`` view
print the same dict, so the two never disagree.
"""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table

from shardc.report.text import markup_safe


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
