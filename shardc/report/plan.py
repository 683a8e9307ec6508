"""The plan summary: stages, memory against capacity, the step and how it was found.

Renders the typed Plan (its partition records and the timeline's link loads), the numbers
plan.json and schedule.json hold, so the table a user reads and the file a script reads
cannot disagree.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

from rich.console import Group
from rich.table import Table

from shardc.plan.model import PlanData
from shardc.report.summary import human
from shardc.report.text import markup_safe


def _seconds(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s * 1e3:.3g} ms" if s < 1 else f"{s:.3g} s"


def _pins(pins: Mapping[str, Any]) -> str:
    """Pins as the user would type them back: ``tp=8 pp=4 stage0.blocks=20``."""
    out = [f"{k}={v}" for k, v in sorted(pins.items()) if k != "stages"]
    for j, fields in sorted(pins.get("stages", {}).items(), key=lambda kv: int(kv[0])):
        out += [f"stage{j}.{k}={v}" for k, v in sorted(fields.items())]
    return " ".join(out)


def render_plan(plan: PlanData) -> Group:
    """Rich tables for the plan's partition: its shape, step, solver, stages and breakdown."""
    part = plan.pipeline
    solver = part.solver
    head = Table(show_header=False, title="plan", title_justify="left")
    head.add_column(style="bold")
    head.add_column()
    head.add_row(
        "shape",
        f"dp={part.dp} × pp={part.pp} (tp per stage below), {part.devices_used} devices",
    )
    head.add_row("objective", markup_safe(f"{part.mode} {part.objective}"))
    if part.objective == "latency":
        head.add_row("latency", _seconds(part.step_seconds))
    else:
        interleave = part.interleave or 1
        head.add_row(
            "step",
            f"{_seconds(part.step_seconds)} for {part.samples_per_step} samples "
            f"({part.microbatches} micro-batches per replica, {markup_safe(part.schedule)}"
            + (f", {interleave} virtual stages per device" if interleave > 1 else "")
            + ")",
        )
        if part.step_seconds:
            head.add_row(
                "throughput", f"{part.samples_per_step / part.step_seconds:.4g} samples/s"
            )
    gap = solver.gap
    status = solver.status
    if status != "OPTIMAL":
        status += f" (bound {_seconds(solver.bound_seconds)}"
        status += f", gap {gap:.1%})" if gap is not None else ")"
    head.add_row("solver", markup_safe(status))
    if part.pins:
        head.add_row("pins", markup_safe(_pins(part.pins)))

    stages = Table(title="stages (one replica; every replica is alike)", title_justify="left")
    for col in ("#", "kind", "tp", "blocks", "recompute", "µbatch", "memory", "TP bw"):
        stages.add_column(
            col, justify="left" if col in ("kind", "recompute") else "right", no_wrap=True
        )
    for st in plan.stages:
        share = st.memory_bytes / st.capacity_bytes if st.capacity_bytes else 0.0
        domain = st.tp_domain_bandwidth
        stages.add_row(
            str(st.index),
            markup_safe(st.kind),
            str(st.tp),
            st.held,
            markup_safe(st.recompute) + (" +SP" if st.sequence_parallel else "")
            + (f" +CP{st.cp}" if st.cp else ""),
            _seconds(st.seconds),
            f"{human(st.memory_bytes, 'B')} {share:.0%}",
            f"{domain / 1e9:.3g} GB/s" if st.tp > 1 and domain else "-",
        )

    parts = Table(title="where the time goes", title_justify="left")
    parts.add_column("part")
    parts.add_column("time", justify="right")
    parts.add_column("share", justify="right")
    total = sum(part.breakdown.values()) or 1.0
    for name, t in part.breakdown.items():
        parts.add_row(markup_safe(name), _seconds(t), f"{t / total:.0%}")
    return Group(head, stages, parts)


def render_links(plan: PlanData, top: int = 5) -> Table:
    """The busiest links of the simulated step (the timeline's link loads, heaviest first)."""
    table = Table(title=f"busiest links (top {top})", title_justify="left")
    for col in ("link", "bytes", "transfers", "busy"):
        table.add_column(col, justify="left" if col == "link" else "right", no_wrap=True)
    loads = plan.timeline.links if plan.timeline is not None else ()
    for load in loads[:top]:
        table.add_row(
            markup_safe(str(load.link)),
            human(load.nbytes, "B"),
            str(load.transfers),
            _seconds(load.busy_seconds),
        )
    return table


class Summary:
    """The plan's tables: rich-renderable (``rich.print(s)``) and plain text (``str(s)``)."""

    def __init__(self, plan: Any) -> None:
        self._plan = plan

    def __rich__(self) -> Any:
        from rich.console import Group

        from shardc.report.plan import render_links, render_plan

        p = self._plan
        from shardc.report.text import markup_safe

        typed = p.typed
        inputs = typed.inputs
        model = markup_safe(inputs.model.path if inputs is not None else "-")
        topology = markup_safe(inputs.topology.path if inputs is not None else "-")
        if typed.serving is not None:
            from shardc.report.serving import render_serving

            return Group(*render_serving(typed, f"{inputs.model.path} on "
                                         f"{inputs.topology.path}" if inputs else "plan"))
        parts: list[Any] = [
            f"[bold]{model}[/] on {topology} ({typed.pipeline.devices_used} ranks)",
            render_plan(typed),
        ]
        if typed.timeline is not None:
            parts.append(render_links(typed, top=5))
        return Group(*parts)

    def __str__(self) -> str:
        from rich.console import Console

        out = io.StringIO()
        Console(file=out, width=100, color_system=None).print(self)
        return out.getvalue()

    def __repr__(self) -> str:
        return str(self)
