"""The HTML report's timeline: one training step as inline SVG, a row per device (or per
stage on large clusters), each event coloured by the kind of time it is.

Its own module because it is the one section drawn from the schedule's events rather
than from the plan's tables.
"""

from __future__ import annotations

import math
from html import escape

from shardc.plan.model import PlanData
from shardc.plan.timeline import Event, RankTimeline
from shardc.report.html.common import (
    _CAT_COLOUR,
    ALL_ROWS,
    CATEGORIES,
    MAX_ROWS,
    SVG_NS,
    _bytes,
    _stage_colour,
    _swatch,
)
from shardc.report.plan import _seconds
from shardc.topology.svg import text_width


def _category(event: Event) -> str:
    if event.phase == "sync":
        return "sync"
    if event.type == "compute":
        return "backward" if event.phase == "backward" else "forward"
    return "p2p" if (event.op or event.name) in ("Send", "Recv") else "collective"


def _ticks(span: float, target: int = 10) -> tuple[list[float], float, str]:
    """Round tick positions over ``[0, span]``, and the unit to label them in."""
    raw = span / target
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw * (1 - 1e-9))
    count = int(span / step + 1e-9)
    factor, unit = (1.0, "s") if step >= 0.5 else (1e-3, "ms") if step >= 5e-4 else (1e-6, "µs")
    return [round(i * step, 12) for i in range(count + 1)], factor, unit


def _timeline_rows(devices: list[RankTimeline]) -> tuple[list[RankTimeline], str]:
    n = len(devices)
    if n <= ALL_ROWS:
        return sorted(devices, key=lambda d: d.rank), f"one row per device ({n} devices)."
    rows = sorted(
        (d for d in devices if d.replica == 0), key=lambda d: (d.stage, d.tp_rank, d.rank)
    )
    replicas = len({d.replica for d in devices})
    note = (
        f"{n} devices: one row per (stage, tensor-parallel rank) of replica 0 "
        f"({len(rows)} rows); the other {replicas - 1} replicas run the same program."
    )
    if len(rows) > MAX_ROWS:
        rows = [d for d in rows if d.tp_rank == 0]
        note = (
            f"{n} devices: one row per stage (replica 0, tensor-parallel rank 0; "
            f"{len(rows)} rows); the other ranks of a stage run the same program."
        )
    return rows, note


def _event_title(device: RankTimeline, ev: Event, interleaved: bool = False) -> str:
    what = ev.phase
    if ev.microbatch >= 0:
        what += f" µb {ev.microbatch}"
    if ev.virtual_stage >= 0 and interleaved:  # interleaved 1F1B: the model chunk it runs
        what += f" chunk {ev.chunk} (virtual stage {ev.virtual_stage})"
    text = (
        f"rank {device.rank} {device.device}: {what}, {ev.name}, "
        f"{_seconds(ev.duration)} from {_seconds(ev.start)}"
    )
    if ev.is_comm:
        text += f", {ev.op} {_bytes(ev.nbytes)}"
        if ev.peer >= 0:
            text += f" with rank {ev.peer}"
        elif ev.group:
            text += f" in a group of {len(ev.group)}"
    return text


def _timeline(plan: PlanData) -> str:
    """The Gantt chart: the bubble and exposed communication are visible, not averaged."""
    schedule = plan.timeline
    assert schedule is not None, "render_html checks the plan has its timeline"
    devices = list(schedule.devices)
    head = '<section id="timeline"><h2>Pipeline timeline</h2>'
    if not devices:
        return head + '<p class="sub">the schedule has no devices.</p></section>'
    rows, note = _timeline_rows(devices)
    planned = plan.pipeline.step_seconds or 0.0
    span = max([schedule.step_seconds or 0.0, planned] + [ev.end for d in rows for ev in d.events])
    span = span if span > 0 else 1e-9
    labels = [f"rank {d.rank}  {d.device}" for d in rows]
    # the chip, the label, then "s12 t7" right-aligned: room for all three, side by side
    label_w = int(min(360, max(150, 20 + max(text_width(t, 11) for t in labels) + 56)))
    plot_w, row_h, bar_h, top = 1040, 20, 14, 30
    width = label_w + plot_w + 24
    height = top + len(rows) * row_h + 34
    scale = plot_w / span
    ticks, factor, unit = _ticks(span)

    svg = [
        f'<svg xmlns="{SVG_NS}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" font-size="11">'
    ]
    for i, d in enumerate(rows):  # row bands and labels
        y = top + i * row_h
        fill = "#f8fafc" if i % 2 else "#ffffff"
        svg.append(f'<rect x="{label_w}" y="{y}" width="{plot_w}" height="{row_h}" fill="{fill}"/>')
        svg.append(
            f'<rect x="4" y="{y + 5}" width="10" height="10" rx="2" '
            f'fill="{_stage_colour(d.stage)}"><title>stage {d.stage}</title></rect>'
        )
        svg.append(
            f'<text class="row" data-rank="{d.rank}" x="20" y="{y + 14}" fill="#0f172a">'
            f"{escape(labels[i])}</text>"
            f'<text x="{label_w - 6}" y="{y + 14}" text-anchor="end" fill="#64748b">'
            f"s{d.stage} t{d.tp_rank}</text>"
        )
        if i and d.stage != rows[i - 1].stage:
            svg.append(f'<line x1="0" y1="{y}" x2="{label_w + plot_w}" y2="{y}" stroke="#94a3b8"/>')
    for t in ticks:  # the time axis
        x = label_w + t * scale
        svg.append(
            f'<line x1="{x:.2f}" y1="{top - 4}" x2="{x:.2f}" y2="{top + len(rows) * row_h}" '
            'stroke="#e2e8f0"/>'
        )
        svg.append(
            f'<text x="{x:.2f}" y="{top - 8}" text-anchor="middle" fill="#475569">'
            f"{t / factor:.4g}</text>"
        )
    bottom = top + len(rows) * row_h
    svg.append(
        f'<line x1="{label_w}" y1="{bottom}" x2="{label_w + plot_w}" y2="{bottom}" '
        'stroke="#94a3b8"/>'
    )
    svg.append(
        f'<text x="{label_w + plot_w / 2:g}" y="{bottom + 20}" text-anchor="middle" '
        f'fill="#475569">time ({unit})</text>'
    )
    for i, d in enumerate(rows):  # the events
        by = top + i * row_h + (row_h - bar_h) / 2
        for ev in d.events:
            cat = _category(ev)
            x, w = label_w + ev.start * scale, max(ev.duration * scale, 0.6)
            thin = ev.is_comm and cat != "sync"
            ey, eh = (by + 3, bar_h - 6) if thin else (by, bar_h)
            svg.append(
                f'<rect x="{x:.2f}" y="{ey:g}" width="{w:.2f}" height="{eh:g}" '
                f'fill="{_CAT_COLOUR[cat]}"><title>'
                f"{escape(_event_title(d, ev, schedule.interleave > 1))}</title></rect>"
            )
            mb = ev.microbatch
            tag = f"{mb}c{ev.chunk}" if schedule.interleave > 1 else str(mb)
            if not thin and mb >= 0 and w >= text_width(tag, 10) + 4:
                svg.append(
                    f'<text x="{x + w / 2:.2f}" y="{by + bar_h - 3:g}" text-anchor="middle" '
                    f'font-size="10" fill="#ffffff" pointer-events="none">{tag}</text>'
                )
    if planned:
        x = label_w + planned * scale
        svg.append(
            f'<line x1="{x:.2f}" y1="{top - 2}" x2="{x:.2f}" y2="{bottom}" stroke="#0f172a" '
            f'stroke-dasharray="4 3"><title>{escape(f"planned step {_seconds(planned)}")}'
            "</title></line>"
        )
    svg.append("</svg>")
    legend = "".join(
        f"<span>{_swatch(colour)}{escape(text)}</span>" for _, colour, text in CATEGORIES
    )
    legend += '<span><span class="sw" style="background:#fff;border:1px dashed #0f172a">'
    legend += "</span>planned step</span>"
    sub = (
        f"{schedule.mode}, {schedule.schedule}, {schedule.microbatches} micro-batches"
        f"; step {_seconds(schedule.step_seconds)}. Numbers in bars are micro-batches; "
        "thin bars are communication."
    )
    return (
        f'{head}<p class="sub">{escape(sub)}</p><p class="note">{escape(note)}</p>'
        f'<div class="legend">{legend}</div>'
        f'<div class="scroll" style="margin-top:8px">{"".join(svg)}</div></section>'
    )
