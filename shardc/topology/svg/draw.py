"""The SVG document itself: the topology's links folded into edges, the three steps run in
turn (:mod:`.layout`, :mod:`.routing`, :mod:`.labels`), and boxes, paths, labels and the
legend written out.

Its own module so that the steps stay free of SVG markup: this is the one place that
turns their geometry into the bytes ``shardc topo show --svg`` and the HTML report print.

The report paints a plan over the drawing (stage fills on the device boxes, link load on
the paths). It does so through :func:`render_svg`'s hooks, which hand it the drawing's
own data (a box's glyph and rectangle, an edge's ends, kind and width) and take back
what to draw: it never reads the SVG text back.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
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
    Rect,
    _up,
    text_width,
)
from shardc.topology.svg.labels import _Labeller
from shardc.topology.svg.layout import Box, _leaf_text, _Links, _place, _Scene, _title, layout
from shardc.topology.svg.routing import _Edge, _path_d, _Router


@dataclass(frozen=True)
class DrawnEdge:
    """One folded edge as :func:`render_svg` draws it, handed to its ``link_style`` hook.

    Why: a caller that styles the edges by something of its own (the report: bytes a
    plan puts on the links) needs to know which physical links each path stands for;
    these are the fields the drawing folds links by, plus what it drew.
    """

    a: str  # glyph names of the two ends (as :func:`~shardc.topology.hierarchy.glyph_map`
    b: str  # names them), a <= b; equal for a mesh drawn as a loop
    kind: str  # link kind
    plane: str
    bandwidth: float  # of one of the links, bytes/s
    count: int  # how many links the edge stands for
    width: float  # the stroke width drawn, px, as written (to 0.1)


@dataclass(frozen=True)
class LinkStyle:
    """How to draw one edge's path instead of the default (None: keep the default).

    Only the path changes: the edge's label and leader keep the link kind's colour, so
    the drawing still says what kind of link it is.
    """

    colour: str | None = None  # stroke colour, "#rrggbb"
    width: float | None = None  # stroke width, px
    opacity: float = 0.8  # stroke opacity
    note: str = ""  # text appended to the path's tooltip


Overlay = Callable[[str, Rect], str | None]
"""Glyph name and its box ``(x, y, w, h)`` -> SVG markup drawn over the box (None: nothing)."""
LinkStyler = Callable[[DrawnEdge], LinkStyle | None]
"""An edge as drawn -> how to draw its path instead (None: as by default)."""

_STYLE = (  # the drawing's CSS classes: selector, declarations
    (".g", "font-size:13px;font-weight:bold;fill:#1e293b"),
    (".l", "font-size:12px;text-anchor:middle;fill:#0f172a"),
    (".s", "font-size:10px;text-anchor:middle;fill:#475569"),
    (".e", "font-size:10px;font-weight:bold;paint-order:stroke;stroke:#fff;stroke-width:3px"),
    (".k", "font-size:11px;fill:#1e293b"),
    (".n", "font-size:10px;fill:#64748b"),
    (".t", "font-size:15px;font-weight:bold"),
)


def _style(scope: str | None) -> str:
    """The ``<style>`` element, each selector inside ``#scope`` when one is given.

    Why scope: a ``<style>`` in an SVG inlined into HTML applies to the whole page, so
    its one-letter classes would restyle the page's elements and the page's rules
    could reach into the drawing.
    """
    inside = f"#{scope} " if scope is not None else ""
    return "<style>" + "".join(f"{inside}{sel}{{{rules}}}" for sel, rules in _STYLE) + "</style>"


def _draw_box(box: Box, x: int, y: int, fills: dict[str, str], svg: list[str],
              overlay: Overlay | None = None) -> None:
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
    over = overlay(entry.path, (x, y, box.w, box.h)) if overlay is not None else None
    if over is not None:  # over the box's fill, under its labels
        svg.append(over)
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


def _legend(topo: Topology, fills: dict[str, str], y: int, svg: list[str],
            kind_swatches: bool = True) -> float:
    """Writes the legend at ``y``; returns its width.

    Without ``kind_swatches`` the device-kind fills are left out but their room is kept,
    so the drawing's size does not depend on them.
    """
    x: float = PAD
    for kind in sorted({link.kind for link in topo.links}):
        colour = LINK_COLOURS.get(kind, "#334155")
        svg.append(f'<line x1="{x:g}" y1="{y}" x2="{x + 24:g}" y2="{y}" stroke="{colour}" '
                   'stroke-width="4"/>')
        svg.append(f'<text x="{x + 30:g}" y="{y + 4}" class="k">{escape(kind)}</text>')
        x += 40 + text_width(kind, 11)
    for kind, fill in sorted(fills.items()):
        if kind_swatches:
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


def render_svg(topo: Topology, *, overlay: Overlay | None = None,
               link_style: LinkStyler | None = None, kind_legend: bool = True,
               style_scope: str | None = None) -> str:
    """The SVG document for ``topo`` (folded hierarchy, routed folded links, legend).

    The hooks let a caller paint over the drawing with the drawing's own data rather
    than by reading its text back (the HTML report's placement map uses all four;
    without them the bytes are those ``shardc topo show --svg`` writes):

    * ``overlay`` -- called for every device range and switch box with its glyph name
      and rectangle; what it returns is drawn over the box, under its labels.
    * ``link_style`` -- called for every edge; a :class:`LinkStyle` restyles its path.
    * ``kind_legend`` -- False leaves the device kinds' fill swatches out of the legend
      (for a caller whose overlay hides the fills).
    * ``style_scope`` -- an element id that every CSS selector is kept inside, for a
      drawing inlined into an HTML page (see :func:`_style`).
    """
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
        lines.append(_link_path(edge, link_style))
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
    legend_w = _legend(topo, fills, legend_y, legend, kind_legend)
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
            _draw_box(box, x, y, fills, leaves, overlay)
    return "\n".join([
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif">',
        _style(style_scope),
        '<rect width="100%" height="100%" fill="#ffffff"/>',
        f'<text x="{PAD}" y="24" class="t">{escape(header)}</text>',
        *body, *lines, *leaves, *texts, *legend, "</svg>",
    ]) + "\n"


def _link_path(edge: _Edge, link_style: LinkStyler | None) -> str:
    """The edge's ``<path>``, styled by ``link_style`` where it says so."""
    colour, width = edge.colour, f"{edge.width:.1f}"
    style = None
    if link_style is not None:
        style = link_style(DrawnEdge(edge.a, edge.b, edge.kind, edge.plane, edge.bandwidth,
                                     edge.count, float(width)))
    title = (f"{edge.kind} ({edge.plane}): {edge.count} link(s) of "
             f"{units.human(edge.bandwidth, units.BANDWIDTH)}")
    opacity = 0.8
    if style is not None:
        colour = style.colour if style.colour is not None else colour
        width = f"{style.width:.1f}" if style.width is not None else width
        opacity, title = style.opacity, title + style.note
    return (f'<path class="link" data-from="{escape(edge.a)}" data-to="{escape(edge.b)}" '
            f'd="{_path_d(edge.points)}" fill="none" stroke="{colour}" stroke-width="{width}" '
            f'stroke-opacity="{opacity:g}"><title>{escape(title)}</title></path>')


def _order(scene: _Scene, edge: _Edge) -> tuple:
    """Short edges first: they get the straight paths and the nearest label spots."""
    (ax, ay, aw, ah), (bx, by, bw, bh) = scene.leaves[edge.a], scene.leaves[edge.b]
    span = abs(ax + aw / 2 - bx - bw / 2) + abs(ay + ah / 2 - by - bh / 2)
    return span, edge.a, edge.b, edge.kind, edge.plane, edge.bandwidth
