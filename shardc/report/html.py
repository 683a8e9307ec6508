"""The plan as one self-contained HTML page: the tables of ``shardc compile``, the timeline
of one training step, and where the plan sits on the cluster.

One file that opens anywhere, offline and years later: nothing is fetched (no CDN, fonts
or scripts), every picture is inline SVG and every bar inline CSS, so a report attached to
a ticket or archived beside its plan.json still renders. The page is a pure function of
its inputs (the same plan, schedule and topology give the same string), so reports can
be diffed and kept as test fixtures.

The header and tables read the fields :mod:`shardc.report.plan` prints, formatted the
same way, so the page and the terminal never disagree. The topology picture is the one
:mod:`shardc.topology.svg` draws, with the placement and the link load painted over it.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from html import escape, unescape
from typing import Any

from shardc.report.plan import _pins, _seconds
from shardc.report.summary import human
from shardc.topology import units
from shardc.topology.hierarchy import fold, glyph_map
from shardc.topology.model import Link, Topology
from shardc.topology.svg import render_svg, text_width

SVG_NS = "http://www.w3.org/2000/svg"

#: Stage colours (Tableau 20, strong shades first): adjacent stages must differ at a glance.
STAGE_COLOURS = (
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#79706e", "#a0cbe8", "#ffbe7d", "#8cd17d", "#ff9d9a", "#86bcb6", "#f1ce63",
)  # fmt: skip
UNUSED = "#e2e8f0"
LOAD_LOW, LOAD_HIGH = "#fdba74", "#b91c1c"  # link traffic: a little ... the most

#: Timeline categories: (key, colour, legend). The breakdown bar uses the same colours for
#: the same kinds of time, so the two pictures read together.
CATEGORIES = (
    ("forward", "#4f7cc4", "forward compute"),
    ("backward", "#7fb069", "backward compute"),
    ("p2p", "#e05d5d", "pipeline send / recv"),
    ("collective", "#f0a030", "collective (tensor parallel)"),
    ("sync", "#8e6cc0", "dp sync + optimizer"),
)
_CAT_COLOUR = {key: colour for key, colour, _ in CATEGORIES}
BREAKDOWN_COLOURS = {
    "compute": _CAT_COLOUR["forward"],
    "tp comm": _CAT_COLOUR["collective"],
    "pp send/recv": _CAT_COLOUR["p2p"],
    "pipeline bubble": "#cbd5e1",
    "dp sync + optimizer": _CAT_COLOUR["sync"],
}
_EXTRA_COLOURS = ("#94a3b8", "#64748b", "#0ea5e9", "#14b8a6")

#: Up to this many devices the timeline has a row for each; above it, replica 0 only
#: (every replica runs the same program, so the others would repeat it row for row).
ALL_ROWS = 64
#: Above this many rows for replica 0, one row per stage (tensor-parallel rank 0).
MAX_ROWS = 128
TOP_LINKS = 10
TOPOLOGY_ID = "shardc-topology"

_CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f1f5f9;color:#0f172a;
 font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif}
main{max-width:1380px;margin:0 auto;padding:20px}
h1{font-size:22px;margin:0 0 4px}
h2{font-size:17px;margin:0 0 10px}
section{background:#fff;border:1px solid #e2e8f0;border-radius:8px;padding:16px 18px;
 margin:0 0 16px}
.sub{color:#475569;margin:0 0 12px}
.note{color:#64748b;font-size:12.5px;margin:6px 0 0}
.facts{display:grid;grid-template-columns:repeat(auto-fill,minmax(210px,1fr));gap:8px}
.fact{background:#f8fafc;border:1px solid #e2e8f0;border-radius:6px;padding:8px 10px}
.fact b{display:block;color:#64748b;font-size:11.5px;font-weight:600;text-transform:uppercase;
 letter-spacing:.03em}
.fact span{font-size:15px;font-weight:600;overflow-wrap:anywhere}
.badge{display:inline-block;padding:0 7px;border-radius:9px;font-size:12.5px;color:#fff}
.ok{background:#16a34a}.warn{background:#d97706}.bad{background:#dc2626}
table{border-collapse:collapse;font-variant-numeric:tabular-nums}
th,td{padding:4px 10px;border-bottom:1px solid #e2e8f0;text-align:left;white-space:nowrap}
th{font-size:12px;color:#475569;background:#f8fafc}
td.num,th.num{text-align:right}
.bar{position:relative;display:inline-block;width:160px;height:12px;background:#e2e8f0;
 border-radius:3px;vertical-align:middle;margin-right:8px;overflow:hidden}
.bar i{position:absolute;left:0;top:0;bottom:0;border-radius:3px}
.bar u{position:absolute;top:0;bottom:0;width:2px;background:#0f172a}
.sw{display:inline-block;width:12px;height:12px;border-radius:2px;vertical-align:-1px;
 margin-right:6px;border:1px solid rgba(0,0,0,.25)}
.legend{display:flex;flex-wrap:wrap;gap:4px 18px;margin:8px 0 0;font-size:13px}
.scroll{overflow-x:auto}
.cols{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
svg text{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif}
"""


def render_html(
    plan: dict[str, Any],
    schedule: dict[str, Any],
    topology: Topology,
    *,
    model: str | None = None,
) -> str:
    """The report page for a plan, its schedule and the cluster it was planned for.

    ``plan`` is the ``partition`` section of plan.json (a whole plan.json is accepted too,
    and then names the model); ``schedule`` is a ``shardc-schedule/1`` document. ``model``
    names the model in the header where the plan cannot.
    """
    if "partition" in plan:
        path = plan.get("inputs", {}).get("model", {}).get("path")
        model = model or (str(path).replace("\\", "/").rsplit("/", 1)[-1] if path else None)
        plan = plan["partition"]
    title = f"shardc plan: {model}" if model else "shardc plan"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)} on {escape(topology.name)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        "<main>",
        _header(plan, schedule, topology, title, model),
        _stages(plan),
        '<div class="cols">',
        _breakdown(plan),
        _memory(plan, topology),
        "</div>",
        _timeline(plan, schedule),
        _topology(plan, schedule, topology),
        "</main>",
        "</body>",
        "</html>",
    ]
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------------
# Small helpers


def _stage_colour(j: int) -> str:
    return STAGE_COLOURS[j % len(STAGE_COLOURS)]


def _tint(colour: str, amount: float) -> str:
    """``colour`` mixed with white: light enough for dark text to stay readable on it."""
    r, g, b = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return "#" + "".join(f"{round(c + (255 - c) * amount):02x}" for c in (r, g, b))


def _mix(a: str, b: str, t: float) -> str:
    ca = [int(a[i : i + 2], 16) for i in (1, 3, 5)]
    cb = [int(b[i : i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{round(x + (y - x) * t):02x}" for x, y in zip(ca, cb, strict=True))


def _share_colour(share: float) -> str:
    return "#16a34a" if share < 0.7 else "#d97706" if share < 0.9 else "#dc2626"


def _bar(share: float, colour: str | None = None, marks: Sequence[tuple[float, str]] = ()) -> str:
    """A CSS bar: ``share`` of it filled, with thin marks at other shares (titled)."""
    width = max(0.0, min(share, 1.0)) * 100
    fill = colour or _share_colour(share)
    ticks = "".join(
        f'<u style="left:calc({min(max(m, 0.0), 1.0) * 100:.2f}% - 1px)" title="{escape(t)}"></u>'
        for m, t in marks
    )
    return f'<span class="bar"><i style="width:{width:.2f}%;background:{fill}"></i>{ticks}</span>'


def _fact(label: str, value: str) -> str:
    """A header tile; ``value`` is HTML (callers escape)."""
    return f'<div class="fact"><b>{escape(label)}</b><span>{value}</span></div>'


def _swatch(colour: str) -> str:
    return f'<span class="sw" style="background:{colour}"></span>'


def _bytes(n: float | None) -> str:
    return human(n, "B") if n is not None else "-"


def _stage_devices(plan: dict[str, Any]) -> dict[str, tuple[int, int, int, int]]:
    """Device name -> (stage, replica, tp rank, process rank).

    Ranks are numbered as :mod:`shardc.emit.program` numbers them (stage outermost, then
    replica, then tensor-parallel rank), so the page names ranks as the runtime does.
    """
    out: dict[str, tuple[int, int, int, int]] = {}
    offset = 0
    for st in plan["stages"]:
        groups = st.get("groups") or []
        for replica, group in enumerate(groups):
            for tp_rank, name in enumerate(group):
                out[name] = (st["index"], replica, tp_rank, offset + replica * st["tp"] + tp_rank)
        offset += sum(len(g) for g in groups)
    return out


# ---------------------------------------------------------------------------------------
# Header and tables


def _header(
    plan: dict[str, Any],
    schedule: dict[str, Any],
    topology: Topology,
    title: str,
    model: str | None,
) -> str:
    solver = plan["solver"]
    status, gap = solver["status"], solver.get("gap")
    klass = "ok" if status == "OPTIMAL" else "warn" if status == "FEASIBLE" else "bad"
    solved = f'<span class="badge {klass}">{escape(status)}</span>'
    if status != "OPTIMAL":
        detail = f"bound {_seconds(solver.get('bound_seconds'))}"
        detail += f", gap {gap:.1%}" if gap is not None else ""
        solved += f" {escape(detail)}"
    elif gap is not None:
        solved += f" gap {escape(f'{gap:.1%}')}"
    compute = topology.compute_devices
    facts = [
        _fact("model", escape(model or "-")),
        _fact("topology", escape(f"{topology.name} ({len(compute)} compute devices)")),
        _fact("objective", escape(f"{plan['mode']} {plan['objective']}")),
        _fact(
            "shape",
            escape(f"dp={plan['dp']} × pp={plan['pp']}, {plan['devices_used']} devices"),
        ),
    ]
    step = plan["step_seconds"]
    if plan["objective"] == "latency":
        facts.append(_fact("latency", escape(_seconds(step))))
    else:
        facts.append(_fact("step time", escape(_seconds(step))))
        facts.append(
            _fact(
                "batch",
                escape(
                    f"{plan['samples_per_step']} samples, {plan['microbatches']} micro-batches "
                    f"per replica ({plan['schedule']})"
                ),
            )
        )
        rate = f"{plan['samples_per_step'] / step:.4g} samples/s" if step else "-"
        facts.append(_fact("throughput", escape(rate)))
    facts.append(_fact("solver", solved))
    sched = schedule.get("step_seconds")
    if sched is not None:
        facts.append(_fact("timeline step", escape(_seconds(sched))))
    if plan.get("pins"):
        facts.append(_fact("pins", escape(_pins(plan["pins"]))))
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


def _stages(plan: dict[str, Any]) -> str:
    head = "".join(
        f'<th class="{"num" if c in ("#", "tp", "µbatch", "TP bw") else ""}">{escape(c)}</th>'
        for c in ("#", "kind", "tp", "blocks", "recompute", "µbatch", "memory", "TP bw")
    )
    rows = []
    for st in plan["stages"]:
        first, last = st["blocks"]
        cap = st.get("capacity_bytes")
        share = st["memory_bytes"] / cap if cap else 0.0
        domain = st.get("tp_domain_bandwidth")
        bw = f"{domain / 1e9:.3g} GB/s" if st["tp"] > 1 and domain else "-"
        memory = f"{_bytes(st['memory_bytes'])} of {_bytes(cap)} ({share:.0%})"
        rows.append(
            "<tr>"
            f'<td class="num">{_swatch(_stage_colour(st["index"]))}{st["index"]}</td>'
            f"<td>{escape(st['kind'])}</td>"
            f'<td class="num">{st["tp"]}</td>'
            f"<td>{first}–{last}</td>"
            f"<td>{escape(str(st['recompute']) + (' +SP' if st.get('sequence_parallel') else ''))}"
            "</td>"
            f'<td class="num">{escape(_seconds(st["seconds"]))}</td>'
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


def _breakdown(plan: dict[str, Any]) -> str:
    """The step as a stacked bar: which part to attack first is the widest one."""
    parts = list(plan["breakdown"].items())
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
        f'<p class="sub">{escape(_seconds(plan["step_seconds"]))} per step, as the planner '
        "priced it.</p>"
        f'<div class="scroll">{"".join(svg)}</div>'
        '<table style="margin-top:8px"><thead><tr><th>part</th><th class="num">time</th>'
        f'<th class="num">share</th></tr></thead><tbody>{rows}</tbody></table></section>'
    )


def _memory(plan: dict[str, Any], topology: Topology) -> str:
    """Peak memory per device against capacity, per device kind: the binding limit."""
    kinds: dict[str, list[dict[str, Any]]] = {}
    for st in plan["stages"]:
        kinds.setdefault(st["kind"], []).append(st)
    in_topo = Counter(d.kind.name for d in topology.devices)
    rows = []
    for kind in sorted(kinds):
        stages = kinds[kind]
        cap = max((st.get("capacity_bytes") or 0.0) for st in stages)
        peak = max(stages, key=lambda st: (st["memory_bytes"], -st["index"]))
        used = sum(len(st.get("groups") or []) * st["tp"] for st in stages)
        share = peak["memory_bytes"] / cap if cap else 0.0
        marks = [
            (
                st["memory_bytes"] / cap if cap else 0.0,
                f"stage {st['index']}: {_bytes(st['memory_bytes'])}",
            )
            for st in stages
        ]
        rows.append(
            f"<tr><td>{escape(kind)}</td>"
            f'<td class="num">{used} of {in_topo.get(kind, 0)}</td>'
            f"<td>{_bar(share, marks=marks)}{escape(f'{share:.0%}')}</td>"
            f'<td class="num">{escape(_bytes(peak["memory_bytes"]))} '
            f"(stage {peak['index']})</td>"
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


# ---------------------------------------------------------------------------------------
# Timeline


def _category(event: dict[str, Any]) -> str:
    if event.get("phase") == "sync":
        return "sync"
    if event.get("type") == "compute":
        return "backward" if event.get("phase") == "backward" else "forward"
    return "p2p" if (event.get("op") or event.get("name")) in ("Send", "Recv") else "collective"


def _ticks(span: float, target: int = 10) -> tuple[list[float], float, str]:
    """Round tick positions over ``[0, span]``, and the unit to label them in."""
    raw = span / target
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw * (1 - 1e-9))
    count = int(span / step + 1e-9)
    factor, unit = (1.0, "s") if step >= 0.5 else (1e-3, "ms") if step >= 5e-4 else (1e-6, "µs")
    return [round(i * step, 12) for i in range(count + 1)], factor, unit


def _timeline_rows(devices: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    n = len(devices)
    if n <= ALL_ROWS:
        return sorted(devices, key=lambda d: d["rank"]), f"one row per device ({n} devices)."
    rows = sorted(
        (d for d in devices if d.get("replica", 0) == 0),
        key=lambda d: (d["stage"], d["tp_rank"], d["rank"]),
    )
    replicas = len({d.get("replica", 0) for d in devices})
    note = (
        f"{n} devices: one row per (stage, tensor-parallel rank) of replica 0 "
        f"({len(rows)} rows); the other {replicas - 1} replicas run the same program."
    )
    if len(rows) > MAX_ROWS:
        rows = [d for d in rows if d["tp_rank"] == 0]
        note = (
            f"{n} devices: one row per stage (replica 0, tensor-parallel rank 0; "
            f"{len(rows)} rows); the other ranks of a stage run the same program."
        )
    return rows, note


def _event_title(device: dict[str, Any], ev: dict[str, Any]) -> str:
    what = ev.get("phase", "")
    if ev.get("microbatch", -1) >= 0:
        what += f" µb {ev['microbatch']}"
    text = (
        f"rank {device['rank']} {device.get('device', '')}: {what}, {ev.get('name', '')}, "
        f"{_seconds(ev['duration'])} from {_seconds(ev['start'])}"
    )
    if ev.get("type") == "comm":
        text += f", {ev.get('op', '')} {_bytes(ev.get('bytes'))}"
        if ev.get("peer", -1) >= 0:
            text += f" with rank {ev['peer']}"
        elif ev.get("group"):
            text += f" in a group of {len(ev['group'])}"
    return text


def _timeline(plan: dict[str, Any], schedule: dict[str, Any]) -> str:
    """The Gantt chart: the bubble and exposed communication are visible, not averaged."""
    devices = list(schedule.get("devices") or [])
    head = '<section id="timeline"><h2>Pipeline timeline</h2>'
    if not devices:
        return head + '<p class="sub">the schedule has no devices.</p></section>'
    rows, note = _timeline_rows(devices)
    planned = plan.get("step_seconds") or 0.0
    span = max(
        [schedule.get("step_seconds") or 0.0, planned]
        + [ev["end"] for d in rows for ev in d.get("events", ())]
    )
    span = span if span > 0 else 1e-9
    labels = [f"rank {d['rank']}  {d.get('device', '')}" for d in rows]
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
            f'fill="{_stage_colour(d["stage"])}"><title>stage {d["stage"]}</title></rect>'
        )
        svg.append(
            f'<text class="row" data-rank="{d["rank"]}" x="20" y="{y + 14}" fill="#0f172a">'
            f"{escape(labels[i])}</text>"
            f'<text x="{label_w - 6}" y="{y + 14}" text-anchor="end" fill="#64748b">'
            f"s{d['stage']} t{d['tp_rank']}</text>"
        )
        if i and d["stage"] != rows[i - 1]["stage"]:
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
        for ev in d.get("events", ()):
            cat = _category(ev)
            x, w = label_w + ev["start"] * scale, max(ev["duration"] * scale, 0.6)
            thin = ev.get("type") == "comm" and cat != "sync"
            ey, eh = (by + 3, bar_h - 6) if thin else (by, bar_h)
            svg.append(
                f'<rect x="{x:.2f}" y="{ey:g}" width="{w:.2f}" height="{eh:g}" '
                f'fill="{_CAT_COLOUR[cat]}"><title>{escape(_event_title(d, ev))}</title></rect>'
            )
            mb = ev.get("microbatch", -1)
            if not thin and mb >= 0 and w >= text_width(str(mb), 10) + 4:
                svg.append(
                    f'<text x="{x + w / 2:.2f}" y="{by + bar_h - 3:g}" text-anchor="middle" '
                    f'font-size="10" fill="#ffffff" pointer-events="none">{mb}</text>'
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
    mode = schedule.get("mode", plan.get("mode", ""))
    kind = schedule.get("schedule", plan.get("schedule", ""))
    sub = (
        f"{mode}, {kind}, {schedule.get('microbatches', plan.get('microbatches'))} micro-batches"
        f"; step {_seconds(schedule.get('step_seconds'))}. Numbers in bars are micro-batches; "
        "thin bars are communication."
    )
    return (
        f'{head}<p class="sub">{escape(sub)}</p><p class="note">{escape(note)}</p>'
        f'<div class="legend">{legend}</div>'
        f'<div class="scroll" style="margin-top:8px">{"".join(svg)}</div></section>'
    )


# ---------------------------------------------------------------------------------------
# Topology, placement and link load


_NODE = re.compile(
    r'^<rect class="node" data-name="(?P<name>[^"]*)" x="(?P<x>[-\d.]+)" y="(?P<y>[-\d.]+)" '
    r'width="(?P<w>[-\d.]+)" height="(?P<h>[-\d.]+)"'
)
_LINK = re.compile(r'^<path class="link" data-from="(?P<a>[^"]*)" data-to="(?P<b>[^"]*)"')
_LINK_TITLE = re.compile(
    r"<title>(?P<kind>\S+) \((?P<plane>[^)]*)\): \d+ link\(s\) of (?P<bw>[^<]*)"
)
_KIND_SWATCH = re.compile(r'^<rect x="[-\d.]+" y="[-\d.]+" width="16" height="16" fill="#')
_KIND_TEXT = re.compile(r'^<text [^>]*class="k">(?P<kind>[^<]*)</text>$')


def _link_ends(name: str) -> tuple[str, str] | None:
    if "<->" not in name:
        return None
    a, b = (s.strip() for s in name.split("<->", 1))
    return a, b


def _links_by_ends(topology: Topology) -> dict[tuple[str, str], Link]:
    """Endpoint pair -> the widest link between them (the one a route takes)."""
    out: dict[tuple[str, str], Link] = {}
    for link in sorted(topology.links, key=lambda k: (-k.bandwidth, k.plane, k.kind)):
        out.setdefault((min(link.a, link.b), max(link.a, link.b)), link)
    return out


_EdgeKey = tuple[str, str, str, str, str]  # glyph pair, link kind, plane, bandwidth text
_Load = tuple[float, int, float]  # bytes over the edge's links, links used, busiest link


def _edge_loads(
    schedule: dict[str, Any], topology: Topology, glyphs: dict[str, str]
) -> dict[_EdgeKey, _Load]:
    """The traffic of each drawn (folded) edge, and of its busiest physical link.

    The edges are shaded by the busiest link, not the sum: contention is per link, and a
    sum would make an edge that folds 256 lightly used links outshine a hot spine link.
    """
    by_ends = _links_by_ends(topology)
    loads: dict[_EdgeKey, _Load] = {}
    used: dict[_EdgeKey, set[tuple[str, str]]] = {}  # a link may be listed per direction
    for entry in schedule.get("links") or ():
        ends = _link_ends(entry["link"])
        if ends is None:
            continue
        link = by_ends.get((min(ends), max(ends)))
        if link is None or link.a not in glyphs or link.b not in glyphs:
            continue
        ga, gb = sorted((glyphs[link.a], glyphs[link.b]))
        key = (ga, gb, link.kind, link.plane, units.human(link.bandwidth, units.BANDWIDTH))
        nbytes = float(entry.get("bytes") or 0.0)
        total, _, busiest = loads.get(key, (0.0, 0, 0.0))
        used.setdefault(key, set()).add((min(ends), max(ends)))
        loads[key] = (total + nbytes, len(used[key]), max(busiest, nbytes))
    return loads


def _placed_svg(plan: dict[str, Any], schedule: dict[str, Any], topology: Topology) -> str:
    """:func:`render_svg`'s drawing with device boxes filled by stage and links by load.

    The drawing folds repeated hardware, so one box may stand for devices of several
    stages: it is filled in slices, one per stage, as wide as that stage's share. The
    device-kind swatches of the drawing's legend are dropped (the fill no longer shows
    the kind; each box still names it).
    """
    svg = render_svg(topology)
    glyphs = glyph_map(fold(topology))
    placed = _stage_devices(plan)
    per_glyph: dict[str, Counter] = {}
    for device in topology.devices:
        stage = placed.get(device.name, (None,))[0]
        per_glyph.setdefault(glyphs[device.name], Counter())[stage] += 1
    loads = _edge_loads(schedule, topology, glyphs)
    peak = max((busiest for _, _, busiest in loads.values()), default=0.0)
    kinds = set(topology.kinds)

    out: list[str] = [f'<div id="{TOPOLOGY_ID}">']
    lines = svg.rstrip("\n").split("\n")
    skip = 0
    for i, line in enumerate(lines):
        if skip:
            skip -= 1
            continue
        if _KIND_SWATCH.match(line) and i + 1 < len(lines):
            text = _KIND_TEXT.match(lines[i + 1])
            if text and unescape(text["kind"]) in kinds:
                skip = 1
                continue
        node = _NODE.match(line)
        if node and unescape(node["name"]) in per_glyph:
            out.append(line)
            out.append(_stage_slices(node, per_glyph[unescape(node["name"])]))
            continue
        link = _LINK.match(line)
        if link:
            out.append(_restyle_link(line, link, loads, peak))
            continue
        out.append(_scoped(line) if line.startswith("<style>") else line)
    out.append("</div>")
    return "\n".join(out)


def _scoped(style: str) -> str:
    """The drawing's ``<style>`` with every selector kept inside the drawing.

    A ``<style>`` in inline SVG applies to the whole page: its one-letter classes would
    restyle the page's own elements, and the page's rules could reach into the drawing.
    """

    def scope(m: re.Match[str]) -> str:
        selectors = ",".join(f"#{TOPOLOGY_ID} {sel.strip()}" for sel in m[2].split(","))
        return f"{m[1]}{selectors}{{"

    return re.sub(r"(<style>|})([^{}<]+)\{", scope, style)


def _stage_slices(node: re.Match[str], stages: Counter) -> str:
    x, y, w, h = (float(node[k]) for k in ("x", "y", "w", "h"))
    total = sum(stages.values())
    order = sorted(s for s in stages if s is not None) + ([None] if None in stages else [])
    parts = [
        f"stage {s}: {stages[s]}" if s is not None else f"not used: {stages[s]}" for s in order
    ]
    g = [f"<g><title>{escape(', '.join(parts))}</title>"]
    left = x + 1
    for s in order:
        sw = (w - 2) * stages[s] / total
        fill = _tint(_stage_colour(s), 0.45) if s is not None else UNUSED
        g.append(
            f'<rect x="{left:.2f}" y="{y + 1:g}" width="{sw:.2f}" height="{h - 2:g}" '
            f'fill="{fill}"/>'
        )
        left += sw
    g.append("</g>")
    return "".join(g)


def _restyle_link(
    line: str,
    link: re.Match[str],
    loads: dict[_EdgeKey, _Load],
    peak: float,
) -> str:
    title = _LINK_TITLE.search(line)
    if title is None:
        return line
    key = (
        unescape(link["a"]),
        unescape(link["b"]),
        unescape(title["kind"]),
        unescape(title["plane"]),
        unescape(title["bw"]),
    )
    load = loads.get(key)
    if load is None or not peak:
        return line.replace('stroke-opacity="0.8"', 'stroke-opacity="0.25"')
    total, count, busiest = load
    share = busiest / peak
    width = re.search(r'stroke-width="([\d.]+)"', line)
    base = float(width[1]) if width else 2.0
    line = re.sub(r'stroke="#[0-9a-fA-F]{6}"', f'stroke="{_mix(LOAD_LOW, LOAD_HIGH, share)}"', line)
    line = re.sub(r'stroke-width="[\d.]+"', f'stroke-width="{base + 1 + 7 * share:.1f}"', line)
    line = line.replace('stroke-opacity="0.8"', 'stroke-opacity="0.95"')
    note = (
        f"; this step: {_bytes(total)} over {count} link(s), the busiest {_bytes(busiest)} "
        f"({share:.0%} of the busiest link anywhere)"
    )
    return line.replace("</title>", escape(note) + "</title>", 1)


def _placement_grid(plan: dict[str, Any], topology: Topology) -> str:
    """One square per device, grouped as the names group them: the folded drawing
    shows shares, this shows exactly which device holds which stage.
    """
    placed = _stage_devices(plan)
    groups: dict[str, list[str]] = {}
    for d in topology.devices:
        if d.kind.is_host:
            continue
        prefix = d.name.rsplit(".", 1)[0] if "." in d.name else topology.name
        groups.setdefault(prefix, []).append(d.name)
    n = sum(len(v) for v in groups.values())
    cell = 16 if n <= 1024 else 10
    gap, pad, width = 2, 8, 1300
    x = y = row_h = 0
    body: list[str] = []
    for prefix, names in groups.items():
        cols = min(len(names), 16)
        rows = math.ceil(len(names) / cols)
        bw = max(cols * (cell + gap) + pad, int(text_width(prefix, 10)) + pad)
        bh = 14 + rows * (cell + gap) + pad
        if x and x + bw > width:
            x, y = 0, y + row_h + 6
            row_h = 0
        body.append(
            f'<text x="{x}" y="{y + 10}" font-size="10" fill="#475569">{escape(prefix)}</text>'
        )
        for k, name in enumerate(names):
            cx, cy = x + (k % cols) * (cell + gap), y + 14 + (k // cols) * (cell + gap)
            where = placed.get(name)
            if where is None:
                fill, text, title = UNUSED, "", f"{name}: not used"
            else:
                stage, replica, tp_rank, rank = where
                fill, text = _stage_colour(stage), str(stage)
                title = f"{name}: rank {rank}, stage {stage}, replica {replica}, tp rank {tp_rank}"
            body.append(
                f'<rect x="{cx}" y="{cy}" width="{cell}" height="{cell}" rx="2" fill="{fill}">'
                f"<title>{escape(title)}</title></rect>"
            )
            if cell >= 16 and text and len(text) <= 2:
                body.append(
                    f'<text x="{cx + cell / 2:g}" y="{cy + cell - 4}" font-size="10" '
                    f'text-anchor="middle" fill="#ffffff" pointer-events="none">{text}</text>'
                )
        x += bw + 10
        row_h = max(row_h, bh)
    total_w = width if y else max(x - 10, 1)
    total_h = y + row_h
    return (
        f'<svg xmlns="{SVG_NS}" width="{total_w}" height="{total_h}" '
        f'viewBox="0 0 {total_w} {total_h}" role="img">{"".join(body)}</svg>'
    )


def _link_table(schedule: dict[str, Any], topology: Topology) -> str:
    links = sorted(
        schedule.get("links") or (), key=lambda k: (-float(k.get("bytes") or 0.0), k["link"])
    )[:TOP_LINKS]
    if not links:
        return '<p class="note">the schedule crosses no links.</p>'
    by_ends = _links_by_ends(topology)
    step = schedule.get("step_seconds") or 0.0
    peak = float(links[0].get("bytes") or 0.0) or 1.0
    rows = []
    for i, entry in enumerate(links):
        ends = _link_ends(entry["link"])
        link = by_ends.get((min(ends), max(ends))) if ends else None
        kind = f"{link.kind} ({link.plane})" if link else "-"
        bw = units.human(link.bandwidth, units.BANDWIDTH, 3) if link else "-"
        nbytes = float(entry.get("bytes") or 0.0)
        busy = float(entry.get("busy_seconds") or 0.0)
        util = f"{busy / step:.0%}" if step else "-"
        rows.append(
            f'<tr><td class="num">{i + 1}</td><td>{escape(entry["link"])}</td>'
            f"<td>{escape(kind)}</td><td class='num'>{escape(bw)}</td>"
            f"<td>{_bar(nbytes / peak, '#dc2626')}{escape(_bytes(nbytes))}</td>"
            f'<td class="num">{int(entry.get("transfers") or 0)}</td>'
            f'<td class="num">{escape(_seconds(busy))}</td><td class="num">{escape(util)}</td></tr>'
        )
    head = "".join(
        f'<th class="{"num" if c not in ("link", "kind", "bytes") else ""}">{escape(c)}</th>'
        for c in ("#", "link", "kind", "bandwidth", "bytes", "transfers", "busy", "busy / step")
    )
    return (
        f'<h2 style="margin-top:16px">Busiest links (top {len(links)} of '
        f"{len(schedule.get('links') or ())})</h2>"
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
        '<p class="note">bytes: what the transfers put on the link in one direction (a '
        "collective's share per ring hop, once per call); busy: the union of their "
        "intervals, so never over 100% of the step; bytes / busy is the rate achieved "
        "while busy.</p>"
    )


def _topology(plan: dict[str, Any], schedule: dict[str, Any], topology: Topology) -> str:
    stages = sorted(st["index"] for st in plan["stages"])
    legend = "".join(
        f"<span>{_swatch(_tint(_stage_colour(j), 0.45))}stage {j}</span>" for j in stages
    )
    legend += f"<span>{_swatch(UNUSED)}not used</span>"
    legend += (
        f"<span>{_swatch(LOAD_LOW)}{_swatch(LOAD_HIGH)}"
        "link traffic in this step, light to heavy (thicker = more bytes); faded: idle</span>"
    )
    grid_legend = "".join(f"<span>{_swatch(_stage_colour(j))}stage {j}</span>" for j in stages)
    grid_legend += f"<span>{_swatch(UNUSED)}not used</span>"
    return (
        '<section id="topology"><h2>Placement on the cluster</h2>'
        '<p class="sub">the folded topology drawing: repeated hardware is drawn once '
        "(×N), so a device box is filled in slices by the share of its devices in each "
        "stage.</p>"
        f'<div class="legend">{legend}</div>'
        f'<div class="scroll" style="margin-top:8px">{_placed_svg(plan, schedule, topology)}'
        "</div>"
        '<h2 style="margin-top:16px">Devices by stage</h2>'
        '<p class="sub">one square per compute device, grouped by name; the number is the '
        "stage.</p>"
        f'<div class="legend" style="margin-bottom:8px">{grid_legend}</div>'
        f'<div class="scroll">{_placement_grid(plan, topology)}</div>'
        f"{_link_table(schedule, topology)}</section>"
    )
