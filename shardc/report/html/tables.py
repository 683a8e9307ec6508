"""The HTML report's header and tables: the plan's facts, its stages, the time breakdown
of one step and the memory of each device.

They read the fields :mod:`shardc.report.plan` prints, formatted the same way, so the
page and the terminal never disagree; kept apart from the timeline and the map, which
draw SVG rather than tables.
"""

from __future__ import annotations

from collections import Counter
from html import escape

from shardc.plan.model import PlanData
from shardc.plan.records import Stage
from shardc.report.html.common import (
    _EXTRA_COLOURS,
    BREAKDOWN_COLOURS,
    SVG_NS,
    _bar,
    _bytes,
    _fact,
    _stage_colour,
    _swatch,
)
from shardc.report.plan import _pins, _seconds
from shardc.topology.model import Topology
from shardc.topology.svg import text_width


def _header(plan: PlanData, topology: Topology, title: str, model: str | None) -> str:
    part = plan.pipeline
    solver = part.solver
    status, gap = solver.status, solver.gap
    klass = "ok" if status == "OPTIMAL" else "warn" if status == "FEASIBLE" else "bad"
    solved = f'<span class="badge {klass}">{escape(status)}</span>'
    if status != "OPTIMAL":
        detail = f"bound {_seconds(solver.bound_seconds)}"
        detail += f", gap {gap:.1%}" if gap is not None else ""
        solved += f" {escape(detail)}"
    elif gap is not None:
        solved += f" gap {escape(f'{gap:.1%}')}"
    compute = topology.compute_devices
    facts = [
        _fact("model", escape(model or "-")),
        _fact("topology", escape(f"{topology.name} ({len(compute)} compute devices)")),
        _fact("objective", escape(f"{part.mode} {part.objective}")),
        _fact(
            "shape",
            escape(f"dp={part.dp} × pp={part.pp}, {part.devices_used} devices"),
        ),
    ]
    step = part.step_seconds
    if part.objective == "latency":
        facts.append(_fact("latency", escape(_seconds(step))))
    else:
        facts.append(_fact("step time", escape(_seconds(step))))
        facts.append(
            _fact(
                "batch",
                escape(
                    f"{part.samples_per_step} samples, {part.microbatches} micro-batches "
                    f"per replica ({part.schedule})"
                ),
            )
        )
        rate = f"{part.samples_per_step / step:.4g} samples/s" if step else "-"
        facts.append(_fact("throughput", escape(rate)))
    facts.append(_fact("solver", solved))
    if plan.timeline is not None:
        facts.append(_fact("timeline step", escape(_seconds(plan.timeline.step_seconds))))
    if part.pins:
        facts.append(_fact("pins", escape(_pins(part.pins))))
    return "\n".join(
        [
            "<header>",
            f"<h1>{escape(title)}</h1>",
            f'<p class="sub">on {escape(topology.name)}: {len(topology.devices)} devices, '
            f"{len(topology.switches)} switches, {len(topology.links)} links</p>",
            f'<section><div class="facts">{"".join(facts)}</div></section>',
            "</header>",
        ]
    )


def _stages(plan: PlanData) -> str:
    head = "".join(
        f'<th class="{"num" if c in ("#", "tp", "µbatch", "TP bw") else ""}">{escape(c)}</th>'
        for c in ("#", "kind", "tp", "blocks", "recompute", "µbatch", "memory", "TP bw")
    )
    rows = []
    for st in plan.stages:
        cap = st.capacity_bytes
        share = st.memory_bytes / cap if cap else 0.0
        domain = st.tp_domain_bandwidth
        bw = f"{domain / 1e9:.3g} GB/s" if st.tp > 1 and domain else "-"
        memory = f"{_bytes(st.memory_bytes)} of {_bytes(cap)} ({share:.0%})"
        recompute = (str(st.recompute) + (" +SP" if st.sequence_parallel else "")
                     + (f" +CP{st.cp}" if st.cp else ""))
        rows.append(
            "<tr>"
            f'<td class="num">{_swatch(_stage_colour(st.index))}{st.index}</td>'
            f"<td>{escape(st.kind)}</td>"
            f'<td class="num">{st.tp}</td>'
            f"<td>{escape(st.held)}</td>"
            f"<td>{escape(recompute)}</td>"
            f'<td class="num">{escape(_seconds(st.seconds))}</td>'
            f"<td>{_bar(share)}{escape(memory)}</td>"
            f'<td class="num">{escape(bw)}</td>'
            "</tr>"
        )
    return (
        '<section id="stages"><h2>Stages</h2>'
        '<p class="sub">one replica; every replica is alike. µbatch: time of one '
        "micro-batch's forward and backward on the stage.</p>"
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div></section>"
    )


def _breakdown(plan: PlanData) -> str:
    """The step as a stacked bar: which part to attack first is the widest one."""
    parts = list(plan.pipeline.breakdown.items())
    known = [p for p in parts if p[0] in BREAKDOWN_COLOURS]
    known.sort(key=lambda p: list(BREAKDOWN_COLOURS).index(p[0]))
    parts = known + sorted(p for p in parts if p[0] not in BREAKDOWN_COLOURS)
    total = sum(t for _, t in parts) or 1.0
    colours = dict(BREAKDOWN_COLOURS)
    for i, (name, _) in enumerate(p for p in parts if p[0] not in BREAKDOWN_COLOURS):
        colours[name] = _EXTRA_COLOURS[i % len(_EXTRA_COLOURS)]
    width, height = 540, 40
    svg = [
        f'<svg xmlns="{SVG_NS}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img">'
    ]
    x = 0.0
    for name, t in parts:
        w = width * t / total
        if w <= 0:
            continue
        label = f"{name}: {_seconds(t)} ({t / total:.0%})"
        svg.append(
            f'<rect x="{x:.2f}" y="4" width="{w:.2f}" height="{height - 8}" '
            f'fill="{colours[name]}"><title>{escape(label)}</title></rect>'
        )
        share = f"{t / total:.0%}"
        if w >= text_width(share, 12) + 8:
            dark = name == "pipeline bubble"
            svg.append(
                f'<text x="{x + w / 2:.2f}" y="{height / 2 + 4:g}" font-size="12" '
                f'text-anchor="middle" fill="{"#0f172a" if dark else "#ffffff"}" '
                f'font-weight="600">{escape(share)}</text>'
            )
        x += w
    svg.append("</svg>")
    rows = "".join(
        f"<tr><td>{_swatch(colours[name])}{escape(name)}</td>"
        f'<td class="num">{escape(_seconds(t))}</td><td class="num">{t / total:.0%}</td></tr>'
        for name, t in parts
    )
    return (
        '<section id="breakdown" style="flex:0 1 580px"><h2>Where the step goes</h2>'
        f'<p class="sub">{escape(_seconds(plan.pipeline.step_seconds))} per step, as the planner '
        "priced it.</p>"
        f'<div class="scroll">{"".join(svg)}</div>'
        '<table style="margin-top:8px"><thead><tr><th>part</th><th class="num">time</th>'
        f'<th class="num">share</th></tr></thead><tbody>{rows}</tbody></table></section>'
    )


def _memory(plan: PlanData, topology: Topology) -> str:
    """Peak memory per device against capacity, per device kind: the binding limit."""
    kinds: dict[str, list[Stage]] = {}
    for st in plan.stages:
        kinds.setdefault(st.kind, []).append(st)
    in_topo = Counter(d.kind.name for d in topology.devices)
    rows = []
    for kind in sorted(kinds):
        stages = kinds[kind]
        cap = max((st.capacity_bytes or 0.0) for st in stages)
        peak = max(stages, key=lambda st: (st.memory_bytes, -st.index))
        used = sum(len(st.groups) * st.tp for st in stages)
        share = peak.memory_bytes / cap if cap else 0.0
        marks = [
            (st.memory_bytes / cap if cap else 0.0, f"stage {st.index}: {_bytes(st.memory_bytes)}")
            for st in stages
        ]
        rows.append(
            f"<tr><td>{escape(kind)}</td>"
            f'<td class="num">{used} of {in_topo.get(kind, 0)}</td>'
            f"<td>{_bar(share, marks=marks)}{escape(f'{share:.0%}')}</td>"
            f'<td class="num">{escape(_bytes(peak.memory_bytes))} '
            f"(stage {peak.index})</td>"
            f'<td class="num">{escape(_bytes(cap))}</td></tr>'
        )
    return (
        '<section id="memory" style="flex:1 1 600px"><h2>Memory per device kind</h2>'
        '<p class="sub">the fullest device of each kind against its capacity; marks on '
        "the bar are the stages of that kind.</p>"
        '<div class="scroll"><table><thead><tr><th>kind</th><th class="num">devices used</th>'
        '<th>peak / capacity</th><th class="num">peak per device</th>'
        f'<th class="num">capacity</th></tr></thead><tbody>{"".join(rows)}</tbody></table>'
        "</div></section>"
    )
