"""The HTML report's topology map: the picture :mod:`shardc.topology.svg` draws, with the
placement (which stage runs where) and the link load painted over it, and the tables of
the placement and the busiest links beside it.

Its own module because it paints over the topology drawing, which nothing else in the
report does. Both sides are data: the plan's (the ranks place devices, the timeline's
:class:`~shardc.plan.timeline.LinkLoad` s give each link's traffic) and the drawing's,
through :func:`~shardc.topology.svg.render_svg`'s hooks (each device box's glyph and
rectangle, each edge's ends, kind, plane and bandwidth); the SVG is never read back.
"""

from __future__ import annotations

import math
from collections import Counter
from html import escape

from shardc.plan.model import PlanData
from shardc.plan.program import Link as PlanLink
from shardc.plan.timeline import LinkLoad
from shardc.report.html.common import (
    LOAD_HIGH,
    LOAD_LOW,
    SVG_NS,
    TOP_LINKS,
    TOPOLOGY_ID,
    UNUSED,
    _bar,
    _bytes,
    _mix,
    _stage_colour,
    _stage_devices,
    _swatch,
    _tint,
)
from shardc.report.plan import _seconds
from shardc.topology import units
from shardc.topology.hierarchy import fold, glyph_map
from shardc.topology.model import Link, Topology
from shardc.topology.svg import DrawnEdge, LinkStyle, LinkStyler, Rect, render_svg, text_width


def _link_ends(link: PlanLink) -> tuple[str, str] | None:
    """The two ends of a timeline link (None: a link known by one name only)."""
    return (link.a, link.b) if link.b else None


def _links_by_ends(topology: Topology) -> dict[tuple[str, str], Link]:
    """Endpoint pair -> the widest link between them (the one a route takes)."""
    out: dict[tuple[str, str], Link] = {}
    for link in sorted(topology.links, key=lambda k: (-k.bandwidth, k.plane, k.kind)):
        out.setdefault((min(link.a, link.b), max(link.a, link.b)), link)
    return out


_EdgeKey = tuple[str, str, str, str, float]  # glyph pair, link kind, plane, bandwidth
_Load = tuple[float, int, float]  # bytes over the edge's links, links used, busiest link


def _edge_loads(
    links: tuple[LinkLoad, ...], topology: Topology, glyphs: dict[str, str]
) -> dict[_EdgeKey, _Load]:
    """The traffic of each drawn (folded) edge, and of its busiest physical link, keyed
    as the drawing folds links (:class:`~shardc.topology.svg.DrawnEdge`'s fields).

    The edges are shaded by the busiest link, not the sum: contention is per link, and a
    sum would make an edge that folds 256 lightly used links outshine a hot spine link.
    """
    by_ends = _links_by_ends(topology)
    loads: dict[_EdgeKey, _Load] = {}
    used: dict[_EdgeKey, set[tuple[str, str]]] = {}  # a link may be listed per direction
    for entry in links:
        ends = _link_ends(entry.link)
        if ends is None:
            continue
        link = by_ends.get((min(ends), max(ends)))
        if link is None or link.a not in glyphs or link.b not in glyphs:
            continue
        ga, gb = sorted((glyphs[link.a], glyphs[link.b]))
        key = (ga, gb, link.kind, link.plane, link.bandwidth)
        nbytes = float(entry.nbytes or 0.0)
        total, _, busiest = loads.get(key, (0.0, 0, 0.0))
        used.setdefault(key, set()).add((min(ends), max(ends)))
        loads[key] = (total + nbytes, len(used[key]), max(busiest, nbytes))
    return loads


def _placed_svg(plan: PlanData, topology: Topology) -> str:
    """:func:`render_svg`'s drawing with device boxes filled by stage and links by load.

    The drawing folds repeated hardware, so one box may stand for devices of several
    stages: it is filled in slices, one per stage, as wide as that stage's share. The
    device-kind swatches of the drawing's legend are left out (the fill no longer shows
    the kind; each box still names it).
    """
    glyphs = glyph_map(fold(topology))
    placed = _stage_devices(plan)
    per_glyph: dict[str, Counter] = {}
    for device in topology.devices:
        stage = placed.get(device.name, (None,))[0]
        per_glyph.setdefault(glyphs[device.name], Counter())[stage] += 1

    def slices(glyph: str, box: Rect) -> str | None:
        return _stage_slices(box, per_glyph[glyph]) if glyph in per_glyph else None

    loads = _edge_loads(_link_loads(plan), topology, glyphs)
    svg = render_svg(
        topology,
        overlay=slices,
        link_style=_load_style(loads),
        kind_legend=False,
        style_scope=TOPOLOGY_ID,
    )
    return f'<div id="{TOPOLOGY_ID}">\n{svg.rstrip()}\n</div>'


def _stage_slices(box: Rect, stages: Counter) -> str:
    """The stages' shares of a device box, as slices filled over it (``box``:
    ``(x, y, w, h)`` as :func:`render_svg`'s overlay hook gives it).
    """
    x, y, w, h = (float(v) for v in box)
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


def _load_style(loads: dict[_EdgeKey, _Load]) -> LinkStyler:
    """Each drawn edge coloured and thickened by its busiest link's share of the
    busiest link anywhere; edges the step leaves idle faded.
    """
    peak = max((busiest for _, _, busiest in loads.values()), default=0.0)

    def style(edge: DrawnEdge) -> LinkStyle:
        load = loads.get((edge.a, edge.b, edge.kind, edge.plane, edge.bandwidth))
        if load is None or not peak:
            return LinkStyle(opacity=0.25)
        total, count, busiest = load
        share = busiest / peak
        note = (
            f"; this step: {_bytes(total)} over {count} link(s), the busiest "
            f"{_bytes(busiest)} ({share:.0%} of the busiest link anywhere)"
        )
        return LinkStyle(
            colour=_mix(LOAD_LOW, LOAD_HIGH, share),
            width=edge.width + 1 + 7 * share,
            opacity=0.95,
            note=note,
        )

    return style


def _placement_grid(plan: PlanData, topology: Topology) -> str:
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


def _link_table(plan: PlanData, topology: Topology) -> str:
    every = _link_loads(plan)
    links = sorted(every, key=lambda k: (-float(k.nbytes or 0.0), str(k.link)))[:TOP_LINKS]
    if not links:
        return '<p class="note">the schedule crosses no links.</p>'
    by_ends = _links_by_ends(topology)
    step = plan.timeline.step_seconds if plan.timeline is not None else 0.0
    peak = float(links[0].nbytes or 0.0) or 1.0
    rows = []
    for i, entry in enumerate(links):
        ends = _link_ends(entry.link)
        link = by_ends.get((min(ends), max(ends))) if ends else None
        kind = f"{link.kind} ({link.plane})" if link else "-"
        bw = units.human(link.bandwidth, units.BANDWIDTH, 3) if link else "-"
        nbytes = float(entry.nbytes or 0.0)
        busy = float(entry.busy_seconds or 0.0)
        util = f"{busy / step:.0%}" if step else "-"
        rows.append(
            f'<tr><td class="num">{i + 1}</td><td>{escape(str(entry.link))}</td>'
            f"<td>{escape(kind)}</td><td class='num'>{escape(bw)}</td>"
            f"<td>{_bar(nbytes / peak, '#dc2626')}{escape(_bytes(nbytes))}</td>"
            f'<td class="num">{int(entry.transfers or 0)}</td>'
            f'<td class="num">{escape(_seconds(busy))}</td><td class="num">{escape(util)}</td></tr>'
        )
    head = "".join(
        f'<th class="{"num" if c not in ("link", "kind", "bytes") else ""}">{escape(c)}</th>'
        for c in ("#", "link", "kind", "bandwidth", "bytes", "transfers", "busy", "busy / step")
    )
    return (
        f'<h2 style="margin-top:16px">Busiest links (top {len(links)} of '
        f"{len(every)})</h2>"
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
        '<p class="note">bytes: what the transfers put on the link in one direction (a '
        "collective's share per ring hop, once per call); busy: the union of their "
        "intervals, so never over 100% of the step; bytes / busy is the rate achieved "
        "while busy.</p>"
    )


def _link_loads(plan: PlanData) -> tuple[LinkLoad, ...]:
    """The load on every link in the plan's timeline (none without one)."""
    return plan.timeline.links if plan.timeline is not None else ()


def _topology(plan: PlanData, topology: Topology) -> str:
    stages = sorted(st.index for st in plan.stages)
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
        f'<div class="scroll" style="margin-top:8px">{_placed_svg(plan, topology)}'
        "</div>"
        '<h2 style="margin-top:16px">Devices by stage</h2>'
        '<p class="sub">one square per compute device, grouped by name; the number is the '
        "stage.</p>"
        f'<div class="legend" style="margin-bottom:8px">{grid_legend}</div>'
        f'<div class="scroll">{_placement_grid(plan, topology)}</div>'
        f"{_link_table(plan, topology)}</section>"
    )
