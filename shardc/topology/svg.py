"""A picture of a topology as SVG, written by hand (no graphviz binary to install).

The drawing is the folded hierarchy (:mod:`.hierarchy`): nested boxes for groups, with
repeated groups drawn once as a stack and labelled ``×48``; device ranges and switches as
small boxes. Links are folded the same way: every link between two drawn boxes becomes
one curve, coloured by link kind, as thick as the log of its bandwidth, and labelled
with the bandwidth and how many links it stands for. That keeps a 384-NPU CloudMatrix or
a 3,072-GPU SuperPOD to a screenful.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from html import escape

from shardc.topology import units
from shardc.topology.hierarchy import Entry, fold, glyph_map
from shardc.topology.model import Topology

PAD, TITLE, GAP = 12, 20, 16
LEAF_W, LEAF_H = 128, 36
LOOP_W = 110
MAX_LEAVES_PER_ROW, MAX_ROW_WIDTH = 4, 1400
LINK_COLOURS = {
    "nvlink": "#76b900", "c2c": "#2a9d8f", "ub": "#7b2cbf", "hccs": "#d62828",
    "sio": "#e76f51", "pcie": "#e9c46a", "cxl": "#bc6c25", "xgmi": "#9d0208",
    "rdma": "#f77f00", "roce": "#f77f00", "ib": "#1d4ed8", "ethernet": "#6b7280",
    "vpc": "#6b7280", "loopback": "#8d6e63", "tcp": "#8d6e63", "shm": "#8d6e63",
}
KIND_FILLS = ["#dbeafe", "#dcfce7", "#fef9c3", "#fae8ff", "#ffe4e6", "#e0f2fe", "#f1f5f9"]


@dataclass
class Box:
    """A laid-out entry: size, and children at offsets relative to its corner."""

    entry: Entry | None
    w: float
    h: float
    children: list[tuple[Box, float, float]] = field(default_factory=list)
    margin: float = 0.0  # free space kept on the right (for a loop and its label)


def _rows(boxes: list[Box], max_per_row: int, max_width: float) -> list[list[Box]]:
    rows: list[list[Box]] = [[]]
    width = 0.0
    for box in boxes:
        if rows[-1] and (len(rows[-1]) >= max_per_row or width + box.w > max_width):
            rows.append([])
            width = 0.0
        rows[-1].append(box)
        width += box.w + box.margin + GAP
    return [r for r in rows if r]


def _has_devices(entry: Entry) -> bool:
    return entry.what == "device" or any(_has_devices(c) for c in entry.children)


def layout(entry: Entry | None, children: list[Entry], loops: frozenset[str] = frozenset()
           ) -> Box:
    """Rows, top to bottom: devices, groups of devices, fabric groups, switches.

    Compute sits above the fabrics that serve it, and a deeper tier sits lower (nodes,
    then leaves, then the spine), so most links run downwards and do not cross labels.
    A box in ``loops`` (a mesh among its members) gets room on its right for the loop.
    """
    bands: list[list[Box]] = [[], [], [], []]
    for sub in children:
        if sub.what == "device":
            bands[0].append(Box(sub, LEAF_W, LEAF_H, margin=LOOP_W if sub.path in loops else 0))
        elif sub.what == "switch":
            bands[3].append(Box(sub, LEAF_W, LEAF_H))
        else:
            bands[1 if _has_devices(sub) else 2].append(layout(sub, sub.children, loops))
    top = TITLE if entry is not None else 0
    box = Box(entry, 0, 0)
    y: float = top + PAD
    width = 0.0
    for band, per_row in zip(bands, (MAX_LEAVES_PER_ROW, 99, 99, MAX_LEAVES_PER_ROW),
                             strict=True):
        for row in _rows(band, per_row, MAX_ROW_WIDTH):
            x: float = PAD
            for child in row:
                box.children.append((child, x, y))
                x += child.w + child.margin + GAP
            width = max(width, x - GAP + PAD)
            y += max(c.h for c in row) + 2 * GAP
    label_w = 8 * len(_title(entry)) + 2 * PAD if entry is not None else 0
    box.w = max(width, label_w, LEAF_W + 2 * PAD)
    box.h = y - 2 * GAP + PAD if box.children else top + 2 * PAD
    return box


def _title(entry: Entry | None) -> str:
    if entry is None:
        return ""
    return entry.label + (f"  ×{entry.count}" if entry.count > 1 else "")


def _place(box: Box, x: float, y: float, out: dict[str, tuple[float, float, float, float]]):
    if box.entry is not None and box.entry.what != "group":
        out[box.entry.path] = (x, y, box.w, box.h)
    for child, dx, dy in box.children:
        _place(child, x + dx, y + dy, out)


def _draw_box(box: Box, x: float, y: float, fills: dict[str, str], svg: list[str]) -> None:
    entry = box.entry
    if entry is not None and entry.what == "group":
        if entry.count > 1:  # a stack: this group stands for several identical ones
            for off in (8, 4):
                svg.append(f'<rect x="{x + off}" y="{y + off}" width="{box.w}" height="{box.h}" '
                           'rx="6" fill="#f8fafc" stroke="#94a3b8"/>')
        svg.append(f'<rect x="{x}" y="{y}" width="{box.w}" height="{box.h}" rx="6" '
                   'fill="#ffffff" fill-opacity="0.85" stroke="#475569"/>')
        svg.append(f'<text x="{x + PAD}" y="{y + 15}" class="g">{escape(_title(entry))}</text>')
    elif entry is not None:
        _draw_leaf(entry, x, y, box, fills, svg)
    for child, dx, dy in box.children:
        _draw_box(child, x + dx, y + dy, fills, svg)


def _draw_leaf(entry: Entry, x: float, y: float, box: Box, fills: dict[str, str],
               svg: list[str]) -> None:
    if entry.what == "switch":
        colour = LINK_COLOURS.get(entry.kind, "#334155")
        svg.append(f'<rect x="{x}" y="{y}" width="{box.w}" height="{box.h}" rx="14" '
                   f'fill="#ffffff" stroke="{colour}" stroke-width="2"/>')
        sub = f"switch · {entry.plane}"
    else:
        dash = ' stroke-dasharray="4 3"' if entry.host else ""
        svg.append(f'<rect x="{x}" y="{y}" width="{box.w}" height="{box.h}" rx="3" '
                   f'fill="{fills[entry.kind]}" stroke="#334155"{dash}/>')
        sub = entry.kind + (" (host)" if entry.host else "")
    label = entry.label + (f" ×{entry.count}" if entry.count > 1 else "")
    svg.append(f'<text x="{x + box.w / 2}" y="{y + 15}" class="l">{escape(label)}</text>')
    svg.append(f'<text x="{x + box.w / 2}" y="{y + 29}" class="s">{escape(sub)}</text>')


def _edges(topo: Topology, glyphs: dict[str, str]) -> Counter:
    folded: Counter = Counter()
    for link in topo.links:
        a, b = sorted((glyphs[link.a], glyphs[link.b]))
        folded[(a, b, link.kind, link.plane, link.bandwidth)] += 1
    return folded


def _draw_edges(folded: Counter, pos: dict, svg: list[str]) -> None:
    for (a, b, kind, _plane, bandwidth), count in sorted(folded.items()):
        colour = LINK_COLOURS.get(kind, "#334155")
        width = min(7.0, 1.0 + 1.5 * math.log10(1 + bandwidth / 1e9))
        ax, ay, aw, ah = pos[a]
        bx, by, bw, bh = pos[b]
        if a == b:  # links among the members of one drawn range: a loop on its right
            d = (f"M{ax + aw},{ay + 10} C{ax + aw + 40},{ay - 10} {ax + aw + 40},"
                 f"{ay + ah + 10} {ax + aw},{ay + ah - 10}")
            mx, my = ax + aw + 36, ay + ah / 2 + 4
        else:
            if by < ay:  # draw from the upper box down to the lower one
                ax, ay, aw, ah, bx, by, bw, bh = bx, by, bw, bh, ax, ay, aw, ah
            x1, x2 = ax + aw / 2, bx + bw / 2
            if by > ay + ah:  # b is below a: bottom edge to top edge
                y1, y2 = ay + ah, by
                bend = max(20.0, (y2 - y1) / 2)
                d = f"M{x1},{y1} C{x1},{y1 + bend} {x2},{y2 - bend} {x2},{y2}"
            else:  # side by side: a curve below both
                y1, y2 = ay + ah, by + bh
                low = max(y1, y2) + 24
                d = f"M{x1},{y1} C{x1},{low} {x2},{low} {x2},{y2}"
            mx, my = (x1 + x2) / 2 + 6, (y1 + y2) / 2 + 4
        title = f"{kind} ({_plane}): {count} link(s) of {units.human(bandwidth, units.BANDWIDTH)}"
        svg.append(f'<path d="{d}" fill="none" stroke="{colour}" stroke-width="{width:.1f}" '
                   f'stroke-opacity="0.75"><title>{escape(title)}</title></path>')
        text = units.human(bandwidth, units.BANDWIDTH, 3) + (f" ×{count}" if count > 1 else "")
        svg.append(f'<text x="{mx:.1f}" y="{my:.1f}" class="e" fill="{colour}">'
                   f"{escape(text)}</text>")


def _legend(topo: Topology, fills: dict[str, str], y: float, svg: list[str]) -> float:
    x = PAD
    for kind in sorted({link.kind for link in topo.links}):
        colour = LINK_COLOURS.get(kind, "#334155")
        svg.append(f'<line x1="{x}" y1="{y}" x2="{x + 24}" y2="{y}" stroke="{colour}" '
                   'stroke-width="4"/>')
        svg.append(f'<text x="{x + 30}" y="{y + 4}" class="k">{escape(kind)}</text>')
        x += 40 + 8 * len(kind)
    for kind, fill in sorted(fills.items()):
        svg.append(f'<rect x="{x}" y="{y - 8}" width="16" height="16" fill="{fill}" '
                   'stroke="#334155"/>')
        svg.append(f'<text x="{x + 22}" y="{y + 4}" class="k">{escape(kind)}</text>')
        x += 34 + 8 * len(kind)
    return x


def _count(items: tuple, noun: str) -> str:
    return f"{len(items)} {noun}" + ("" if len(items) == 1 else "es" if noun.endswith("h")
                                     else "s")


def render_svg(topo: Topology) -> str:
    """The SVG document for ``topo`` (folded hierarchy, folded links, legend)."""
    entries = fold(topo)
    folded = _edges(topo, glyph_map(entries))
    root = layout(None, entries, frozenset(a for a, b, *_ in folded if a == b))
    fills = {k: KIND_FILLS[i % len(KIND_FILLS)] for i, k in enumerate(sorted(topo.kinds))}
    pos: dict[str, tuple[float, float, float, float]] = {}
    _place(root, PAD, 40, pos)
    body: list[str] = []
    _draw_box(root, PAD, 40, fills, body)
    edges: list[str] = []
    _draw_edges(folded, pos, edges)
    legend_y = 40 + root.h + 30
    legend: list[str] = []
    legend_w = _legend(topo, fills, legend_y, legend)
    header = (f"{topo.name}: {_count(topo.devices, 'device')}, "
              f"{_count(topo.switches, 'switch')}, {_count(topo.links, 'link')}; "
              f"planes {', '.join(topo.planes)}")
    width = max(root.w + 2 * PAD + 60, legend_w + PAD, 9 * len(header) + 2 * PAD)
    height = legend_y + 24
    return "\n".join([
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="sans-serif">',
        "<style>.g{font-size:13px;font-weight:bold;fill:#1e293b}"
        ".l{font-size:12px;text-anchor:middle;fill:#0f172a}"
        ".s{font-size:10px;text-anchor:middle;fill:#475569}"
        ".e{font-size:10px;font-weight:bold;paint-order:stroke;stroke:#fff;stroke-width:3px}"
        ".k{font-size:11px;fill:#1e293b}.t{font-size:15px;font-weight:bold}</style>",
        '<rect width="100%" height="100%" fill="#ffffff"/>',
        f'<text x="{PAD}" y="24" class="t">{escape(header)}</text>',
        *body, *edges, *legend, "</svg>",
    ]) + "\n"
