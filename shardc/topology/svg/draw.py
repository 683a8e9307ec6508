"""The SVG document itself: the topology's links folded into edges, the three steps run in
turn (:mod:`.layout`, :mod:`.routing`, :mod:`.labels`), and boxes, paths, labels and the
legend written out.

Its own module so that the steps stay free of SVG markup: this is the one place that
turns their geometry into the bytes ``shardc topo show --svg`` and the HTML report print.
"""

from __future__ import annotations

import math
from collections import Counter
from html import escape

from shardc.topology import units
from shardc.topology.hierarchy import fold, glyph_map, walk
from shardc.topology.model import Topology
from shardc.topology.svg.geometry import (
    EDGE_FONT,
    KIND_FILLS,
    LINK_COLOURS,
    LOOP_OUT,
    ORIGIN_X,
    ORIGIN_Y,
    PAD,
    STACK,
    _up,
    text_width,
)
from shardc.topology.svg.labels import _Labeller
from shardc.topology.svg.layout import Box, _leaf_text, _Links, _place, _Scene, _title, layout
from shardc.topology.svg.routing import _Edge, _path_d, _Router


def _draw_box(box: Box, x: int, y: int, fills: dict[str, str], svg: list[str]) -> None:
    entry = box.entry
    assert entry is not None
    if entry.what == "group":
        if entry.count > 1:  # a stack: this group stands for several identical ones
            for off in (STACK, STACK // 2):
                svg.append(f'<rect x="{x + off}" y="{y + off}" width="{box.w}" height="{box.h}" '
                           'rx="6" fill="#f8fafc" stroke="#94a3b8"/>')
        svg.append(f'<rect class="group" data-name="{escape(entry.path)}" x="{x}" y="{y}" '
                   f'width="{box.w}" height="{box.h}" rx="6" fill="#ffffff" fill-opacity="0.85" '
                   'stroke="#475569"/>')
        svg.append(f'<text x="{x + PAD}" y="{y + 15}" class="g">{escape(_title(entry))}</text>')
        return
    label, sub = _leaf_text(entry)
    if entry.what == "switch":
        colour = LINK_COLOURS.get(entry.kind, "#334155")
        style = f'rx="14" fill="#ffffff" stroke="{colour}" stroke-width="2"'
    else:
        dash = ' stroke-dasharray="4 3"' if entry.host else ""
        style = f'rx="3" fill="{fills[entry.kind]}" stroke="#334155"{dash}'
    svg.append(f'<rect class="node" data-name="{escape(entry.path)}" x="{x}" y="{y}" '
               f'width="{box.w}" height="{box.h}" {style}/>')
    svg.append(f'<text x="{x + box.w / 2:g}" y="{y + 15}" class="l">{escape(label)}</text>')
    svg.append(f'<text x="{x + box.w / 2:g}" y="{y + 29}" class="s">{escape(sub)}</text>')


def _folded(topo: Topology, glyphs: dict[str, str]) -> list[_Edge]:
    folded: Counter = Counter()
    for link in topo.links:
        a, b = sorted((glyphs[link.a], glyphs[link.b]))
        folded[(a, b, link.kind, link.plane, link.bandwidth)] += 1
    edges = []
    for (a, b, kind, plane, bandwidth), count in sorted(folded.items()):
        text = units.human(bandwidth, units.BANDWIDTH, 3) + (f" ×{count}" if count > 1 else "")
        edges.append(_Edge(a, b, kind, plane, bandwidth, count,
                           colour=LINK_COLOURS.get(kind, "#334155"),
                           width=min(7.0, 1.0 + 1.5 * math.log10(1 + bandwidth / 1e9)),
                           text=text))
    return edges


def _links(edges: list[_Edge], devices: set[str]) -> _Links:
    pairs: dict[tuple[str, str], float] = {}
    loops: dict[str, int] = {}
    for e in edges:
        w = text_width(e.text, EDGE_FONT, bold=True)
        if e.a == e.b:
            loops[e.a] = max(loops.get(e.a, 0), _up(LOOP_OUT + w + 16))
        else:
            pairs[(e.a, e.b)] = max(pairs.get((e.a, e.b), 0.0), w)
    return _Links(pairs, loops, devices)


def _legend(topo: Topology, fills: dict[str, str], y: int, svg: list[str]) -> float:
    x: float = PAD
    for kind in sorted({link.kind for link in topo.links}):
        colour = LINK_COLOURS.get(kind, "#334155")
        svg.append(f'<line x1="{x:g}" y1="{y}" x2="{x + 24:g}" y2="{y}" stroke="{colour}" '
                   'stroke-width="4"/>')
        svg.append(f'<text x="{x + 30:g}" y="{y + 4}" class="k">{escape(kind)}</text>')
        x += 40 + text_width(kind, 11)
    for kind, fill in sorted(fills.items()):
        svg.append(f'<rect x="{x:g}" y="{y - 8}" width="16" height="16" fill="{fill}" '
                   'stroke="#334155"/>')
        svg.append(f'<text x="{x + 22:g}" y="{y + 4}" class="k">{escape(kind)}</text>')
        x += 34 + text_width(kind, 11)
    note = "line width grows with the bandwidth of one link; ×N: links or instances folded"
    svg.append(f'<text x="{PAD}" y="{y + 24}" class="k n">{escape(note)}</text>')
    return max(x, PAD + text_width(note, 10))


def _count(items: tuple, noun: str) -> str:
    return f"{len(items)} {noun}" + ("" if len(items) == 1 else "es" if noun.endswith("h")
                                     else "s")


def leaf_positions(topo: Topology) -> dict[str, tuple[float, float, float, float]]:
    """Where :func:`render_svg` draws each device range and switch: glyph name (as
    :func:`~shardc.topology.hierarchy.glyph_map` names it) -> ``(x, y, width, height)``.

    Why: a picture drawn over the topology's (the HTML report's stage fills) needs the
    boxes as data, not read back out of the SVG. Runs the layout step only.
    """
    entries = fold(topo)
    edges = _folded(topo, glyph_map(entries))
    devices = {e.path for _depth, e in walk(entries) if e.what == "device"}
    scene = _Scene()
    _place(layout(None, entries, _links(edges, devices)), ORIGIN_X, ORIGIN_Y, scene)
    return dict(scene.leaves)


def render_svg(topo: Topology) -> str:
    """The SVG document for ``topo`` (folded hierarchy, routed folded links, legend)."""
    entries = fold(topo)
    edges = _folded(topo, glyph_map(entries))
    devices = {e.path for _depth, e in walk(entries) if e.what == "device"}
    root = layout(None, entries, _links(edges, devices))
    fills = {k: KIND_FILLS[i % len(KIND_FILLS)] for i, k in enumerate(sorted(topo.kinds))}
    scene = _Scene()
    _place(root, ORIGIN_X, ORIGIN_Y, scene)

    router = _Router(ORIGIN_X + root.w + 96, ORIGIN_Y + root.h + 64, scene)
    for edge in sorted(edges, key=lambda e: _order(scene, e)):
        if edge.a == edge.b:
            router.loop(edge)
    for edge in sorted(edges, key=lambda e: _order(scene, e)):
        if edge.a != edge.b:
            router.route(edge)

    labeller = _Labeller(scene, edges)
    lines: list[str] = []
    texts: list[str] = []
    right, bottom = float(ORIGIN_X + root.w), float(ORIGIN_Y + root.h)
    for edge in edges:
        title = (f"{edge.kind} ({edge.plane}): {edge.count} link(s) of "
                 f"{units.human(edge.bandwidth, units.BANDWIDTH)}")
        lines.append(f'<path class="link" data-from="{escape(edge.a)}" '
                     f'data-to="{escape(edge.b)}" d="{_path_d(edge.points)}" fill="none" '
                     f'stroke="{edge.colour}" stroke-width="{edge.width:.1f}" '
                     f'stroke-opacity="0.8"><title>{escape(title)}</title></path>')
        for px, py in edge.points:
            right, bottom = max(right, px), max(bottom, py)
    for n in sorted(range(len(edges)), key=lambda n: _order(scene, edges[n])):
        edge = edges[n]
        (x, y, w, h), leader = labeller.place(edge, n)
        if leader is not None:
            lx = min(max(leader[0], x), x + w)
            ly = min(max(leader[1], y), y + h)
            lines.append(f'<line x1="{leader[0]}" y1="{leader[1]}" x2="{lx:g}" y2="{ly:g}" '
                         f'stroke="{edge.colour}" stroke-dasharray="2 2"/>')
        texts.append(f'<text x="{x + 1:g}" y="{y + h - 3:g}" class="e" fill="{edge.colour}">'
                     f"{escape(edge.text)}</text>")
        right, bottom = max(right, x + w), max(bottom, y + h)

    legend_y = int(bottom) + 30
    legend: list[str] = []
    legend_w = _legend(topo, fills, legend_y, legend)
    header = (f"{topo.name}: {_count(topo.devices, 'device')}, "
              f"{_count(topo.switches, 'switch')}, {_count(topo.links, 'link')}; "
              f"planes {', '.join(topo.planes)}")
    width = math.ceil(max(right + 2 * PAD, legend_w + PAD, text_width(header, 15, True) + 2 * PAD))
    height = legend_y + 40
    body: list[str] = []
    for box, x, y in scene.drawn:
        if box.entry is not None and box.entry.what == "group":
            _draw_box(box, x, y, fills, body)
    leaves: list[str] = []
    for box, x, y in scene.drawn:
        if box.entry is not None and box.entry.what != "group":
            _draw_box(box, x, y, fills, leaves)
    return "\n".join([
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif">',
        "<style>.g{font-size:13px;font-weight:bold;fill:#1e293b}"
        ".l{font-size:12px;text-anchor:middle;fill:#0f172a}"
        ".s{font-size:10px;text-anchor:middle;fill:#475569}"
        ".e{font-size:10px;font-weight:bold;paint-order:stroke;stroke:#fff;stroke-width:3px}"
        ".k{font-size:11px;fill:#1e293b}.n{font-size:10px;fill:#64748b}"
        ".t{font-size:15px;font-weight:bold}</style>",
        '<rect width="100%" height="100%" fill="#ffffff"/>',
        f'<text x="{PAD}" y="24" class="t">{escape(header)}</text>',
        *body, *lines, *leaves, *texts, *legend, "</svg>",
    ]) + "\n"


def _order(scene: _Scene, edge: _Edge) -> tuple:
    """Short edges first: they get the straight paths and the nearest label spots."""
    (ax, ay, aw, ah), (bx, by, bw, bh) = scene.leaves[edge.a], scene.leaves[edge.b]
    span = abs(ax + aw / 2 - bx - bw / 2) + abs(ay + ah / 2 - by - bh / 2)
    return span, edge.a, edge.b, edge.kind, edge.plane, edge.bandwidth
