"""A picture of a topology as SVG, written by hand (no graphviz binary to install).

The drawing is the folded hierarchy (:mod:`.hierarchy`): nested boxes for groups, with
repeated groups drawn once as a stack and labelled ``×48``; device ranges and switches as
small boxes. Links are folded the same way: every link between two drawn boxes becomes
one edge, coloured by link kind, as thick as the log of its bandwidth, and labelled
with the bandwidth and how many links it stands for. That keeps a 384-NPU CloudMatrix or
a 3,072-GPU SuperPOD to a screenful.

Three steps, all deterministic (the same topology gives the same bytes):

* **layout** -- inside every group the children sit in rows by their distance (in
  links) from the devices: devices on top, then the switches that serve them, then the
  tiers behind those. A row below is ordered and shifted so that each box sits under
  what it links to (the barycentre heuristic), which keeps tiers from crossing; where
  a box's links run on past the row below, that row leaves a lane free down its left.
* **routing** -- every edge is an orthogonal path found by A* on a 4 px grid. A path
  may not enter a box other than its two ends, nor a group that holds neither end, nor a
  group title; bends, running along a group's frame and sharing a channel with another
  edge cost extra, so paths stay straight and apart.
* **labels** -- each edge label is placed greedily beside a segment of its own path,
  as near the middle as it can go without covering a box, a title or another label.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from dataclasses import dataclass, field
from html import escape
from itertools import pairwise

from shardc.topology import units
from shardc.topology.hierarchy import Entry, fold, glyph_map, walk
from shardc.topology.model import Topology

G = 4  # the routing grid, px; every box corner lies on it
PAD, TITLE, HGAP, VGAP, STACK = 16, 20, 32, 48, 8
LEAF_W, LEAF_H = 128, 36
CORRIDOR = 36  # a box below one whose links run on leaves this much of it free ...
LANE = 20  # ... and those links run down this far from its left side
LOOP_OUT = 20  # how far a mesh loop reaches out of the right side of its box
MAX_LEAVES_PER_ROW, MAX_ROW_WIDTH = 4, 1400
ORIGIN_X, ORIGIN_Y = 12, 40  # where the hierarchy starts (the header sits above)
EDGE_FONT, LABEL_H = 10, 12  # edge labels: font size, and the height of their box
CLEAR = 6  # an edge keeps this far from a box or group it does not belong to
BEND, FRAME, SHARED = 5.0, 2.0, (6.0, 3.0, 1.0)  # routing costs, in grid steps
LINK_COLOURS = {
    "nvlink": "#76b900", "c2c": "#2a9d8f", "ub": "#7b2cbf", "hccs": "#d62828",
    "sio": "#e76f51", "pcie": "#e9c46a", "cxl": "#bc6c25", "xgmi": "#9d0208",
    "rdma": "#f77f00", "roce": "#f77f00", "ib": "#1d4ed8", "ethernet": "#6b7280",
    "vpc": "#6b7280", "loopback": "#8d6e63", "tcp": "#8d6e63", "shm": "#8d6e63",
}
KIND_FILLS = ["#dbeafe", "#dcfce7", "#fef9c3", "#fae8ff", "#ffe4e6", "#e0f2fe", "#f1f5f9"]

Rect = tuple[float, float, float, float]  # x, y, w, h


def text_width(text: str, size: float, bold: bool = False) -> float:
    """A generous estimate of the rendered width of ``text`` in a sans-serif font."""
    return len(text) * size * (0.68 if bold else 0.6)


# Widths in em of the characters of a bold sans-serif (DejaVu Sans Bold, rounded up; most
# other sans-serif faces are narrower): group titles are measured with these, so that a
# path can run into a box just right of a short title.
_EM = {**dict.fromkeys(" .,:;'!|ijl[]()", 0.46), **dict.fromkeys("frt-/_", 0.5),
       **dict.fromkeys("0123456789", 0.7), **dict.fromkeys("mwMW×", 1.05)}


def _title_width(text: str, size: float) -> float:
    return size * sum(_EM.get(c, 0.8 if c.isupper() else 0.72) for c in text)


def _up(value: float) -> int:
    return math.ceil(value / G - 1e-9) * G


def _near(value: float) -> int:
    return round(value / G) * G


def _overlap(a: Rect, b: Rect) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def _grow(r: Rect, by: float) -> Rect:
    return (r[0] - by, r[1] - by, r[2] + 2 * by, r[3] + 2 * by)


# ---------------------------------------------------------------------------------------
# Layout


@dataclass
class Box:
    """A laid-out entry: size, and children at offsets relative to its corner."""

    entry: Entry | None
    w: int
    h: int
    children: list[tuple[Box, int, int]] = field(default_factory=list)
    margin: int = 0  # free space kept on the right (for a loop and its label)
    leaves: dict[str, Rect] = field(default_factory=dict)  # drawn leaves, relative
    # where a path had best leave a leaf downwards (x), and the stretch of a leaf's top
    # side that a path from above can reach past the group titles (x from, x to)
    exits: dict[str, int] = field(default_factory=dict)
    entries: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def is_leaf(self) -> bool:
        return self.entry is not None and self.entry.what != "group"

    @property
    def stacked(self) -> bool:
        return self.entry is not None and self.entry.what == "group" and self.entry.count > 1

    @property
    def fw(self) -> int:  # footprint: the box, its stack and its margin
        return self.w + (STACK if self.stacked else 0) + self.margin

    @property
    def fh(self) -> int:
        return self.h + (STACK if self.stacked else 0)


@dataclass
class _Links:
    """What the layout needs to know of the folded edges."""

    pairs: dict[tuple[str, str], float]  # leaf pair (a < b) -> widest label between them
    loops: dict[str, int]  # leaf -> room its loop and label need on its right
    devices: set[str]  # the leaves that are devices
    partners: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for a, b in sorted(self.pairs):
            self.partners.setdefault(a, []).append(b)
            self.partners.setdefault(b, []).append(a)


def _title(entry: Entry | None) -> str:
    if entry is None:
        return ""
    return entry.label + (f"  ×{entry.count}" if entry.count > 1 else "")


def _leaf_text(entry: Entry) -> tuple[str, str]:
    label = entry.label + (f" ×{entry.count}" if entry.count > 1 else "")
    if entry.what == "switch":
        return label, f"switch · {entry.plane}"
    return label, entry.kind + (" (host)" if entry.host else "")


def _has_devices(entry: Entry) -> bool:
    return entry.what == "device" or any(_has_devices(c) for c in entry.children)


def _leaf_box(entry: Entry, links: _Links) -> Box:
    label, sub = _leaf_text(entry)
    w = _up(max(LEAF_W, text_width(label, 12) + 16, text_width(sub, 10) + 16))
    box = Box(entry, w, LEAF_H, margin=links.loops.get(entry.path, 0))
    box.leaves[entry.path] = (0, 0, w, LEAF_H)
    box.exits[entry.path] = w // 2
    box.entries[entry.path] = (12, w - 12)
    return box


def _ranks(kids: list[Entry], adj: list[set[int]], external: set[int]) -> list[int]:
    """Each child's distance in links from the children that hold devices."""
    sources = ([i for i, k in enumerate(kids) if _has_devices(k)] or sorted(external) or [0])
    rank = dict.fromkeys(sources, 0)
    queue = list(sources)
    for i in queue:
        for j in sorted(adj[i]):
            if j not in rank:
                rank[j] = rank[i] + 1
                queue.append(j)
    rest = max(rank.values()) + 1
    return [rank.get(i, rest) for i in range(len(kids))]


def _chunks(row: list[int], boxes: list[Box]) -> list[list[int]]:
    leaves_only = all(boxes[i].is_leaf for i in row)
    limit = MAX_LEAVES_PER_ROW if leaves_only else 99
    out: list[list[int]] = [[]]
    width = 0
    for i in row:
        if out[-1] and (len(out[-1]) >= limit or width + boxes[i].fw > MAX_ROW_WIDTH):
            out.append([])
            width = 0
        out[-1].append(i)
        width += boxes[i].fw + HGAP
    return out


def layout(entry: Entry | None, kids: list[Entry], links: _Links) -> Box:
    """Rows by rank (see the module docstring); a row below follows what it links to."""
    boxes = [layout(k, k.children, links) if k.what == "group" else _leaf_box(k, links)
             for k in kids]
    owner = {leaf: i for i, b in enumerate(boxes) for leaf in b.leaves}
    adj: list[set[int]] = [set() for _ in kids]
    external: set[int] = set()
    gaps: dict[tuple[int, int], float] = {}
    for (a, b), label_w in links.pairs.items():
        ia, ib = owner.get(a), owner.get(b)
        if ia is None or ib is None:  # a link out of this group, or not about it at all
            external.update(i for i in (ia, ib) if i is not None)
        elif ia != ib:
            adj[ia].add(ib)
            adj[ib].add(ia)
            key = (min(ia, ib), max(ia, ib))
            gaps[key] = max(gaps.get(key, 0.0), label_w)
    rank = _ranks(kids, adj, external)

    def row_key(i: int) -> tuple[int, int]:
        return rank[i], 0 if kids[i].what == "device" or rank[i] else 1

    rows = [chunk for key in sorted({row_key(i) for i in range(len(kids))})
            for chunk in _chunks([i for i in range(len(kids)) if row_key(i) == key], boxes)]
    row_of = {i: r for r, row in enumerate(rows) for i in row}

    def runs_on(leaf: str, r: int) -> bool:
        """Whether links of ``leaf`` run on down past row ``r``.

        That is: to a row below it, or, from a device, out of this group (fabrics sit
        below the devices they serve).
        """
        return any(row_of[owner[o]] > r if o in owner else leaf in links.devices
                   for o in links.partners.get(leaf, []))

    box = Box(entry, 0, 0)
    exits: dict[str, int] = {}
    y = (TITLE if entry is not None else 0) + PAD
    right = 0
    for r, row in enumerate(rows):
        wants = {i: _want(boxes[i], box.leaves, exits, links) for i in row}
        for i, want in wants.items():  # keep a lane under a box whose links run on
            if want is None:
                continue
            for o in sorted({o for leaf in boxes[i].leaves
                             for o in links.partners.get(leaf, []) if o in box.leaves}):
                px, _py, pw, _ph = box.leaves[o]
                x = _near(want[0])
                if (runs_on(o, r) and x - px < CORRIDOR
                        and px + pw - (x + boxes[i].w) < CORRIDOR):
                    wants[i] = (px + CORRIDOR, None, None)
                    exits[o] = int(px) + LANE
        order = sorted(row, key=lambda i: (w[0] if (w := wants[i]) else math.inf, i))
        x, prev = PAD, -1
        for i in order:
            child = boxes[i]
            if prev >= 0:
                need = gaps.get((min(prev, i), max(prev, i)))
                x += max(HGAP, _up(need + 24)) if need else HGAP
            want = wants[i]
            if want is not None:
                aim, latest, lane = want
                if latest is None or latest >= x:  # aligned, or nearly: from above
                    x = max(x, _near(aim)) if latest is None else max(x, min(_near(aim),
                                                                          _near(latest)))
                elif lane is not None:  # cannot reach under it: pass down its left
                    x = max(x, _up(lane + 20))
            box.children.append((child, x, y))
            for leaf, (lx, ly, lw, lh) in child.leaves.items():
                box.leaves[leaf] = (x + lx, y + ly, lw, lh)
                exits[leaf] = x + child.exits[leaf]
            if r == 0:
                title_end = (PAD + _title_width(_title(entry), 13) + 2 + 2 * CLEAR
                             if entry is not None else 0)
                for leaf, (lo, hi) in child.entries.items():
                    lo = max(x + lo, _up(title_end))
                    if lo <= x + hi:
                        box.entries[leaf] = (lo, x + hi)
            x += child.fw
            prev = i
        right = max(right, x)
        y += max(boxes[i].fh for i in row) + VGAP
    title_w = text_width(_title(entry), 13, bold=True) + 2 * PAD if entry is not None else 0
    box.w = _up(max(right + PAD, title_w, LEAF_W + 2 * PAD))
    box.h = _up(y - VGAP + PAD if box.children else (TITLE if entry else 0) + 2 * PAD)
    box.exits = exits
    return box


def _want(child: Box, placed: dict[str, Rect], exits: dict[str, int], links: _Links
          ) -> tuple[float, float | None, float | None] | None:
    """Where ``child`` would like to sit, under the placed boxes it links to.

    ``(aim, latest, lane)``: the x that puts its links straight under their ends, the
    largest x at which a path from above still reaches its top (past the titles), and the
    x of that path, which runs down the left of ``child`` when it cannot.
    """
    pulls = [(leaf, o) for leaf in child.leaves for o in links.partners.get(leaf, [])
             if o in placed]
    if not pulls:
        return None
    if len(pulls) == 1:
        leaf, o = pulls[0]
        lo, hi = child.entries.get(leaf, (math.inf, math.inf))  # no way in from above
        if lo < math.inf:
            return exits[o] - (lo + hi) / 2, exits[o] - lo, exits[o]
        return exits[o], -math.inf, exits[o]
    aims = [exits[o] - (child.leaves[leaf][0] + child.leaves[leaf][2] / 2) for leaf, o in pulls]
    return sum(aims) / len(aims), None, None


@dataclass
class _Scene:
    """Absolute positions of everything drawn."""

    leaves: dict[str, Rect] = field(default_factory=dict)
    # each group: its entry, its frame (with the stack), and its title measured generously
    # (labels keep clear of that) and closely (paths keep clear of that)
    groups: list[tuple[Entry, Rect, Rect, Rect]] = field(default_factory=list)
    drawn: list[tuple[Box, int, int]] = field(default_factory=list)


def _place(box: Box, x: int, y: int, scene: _Scene) -> None:
    entry = box.entry
    if entry is not None:
        scene.drawn.append((box, x, y))
        if entry.what == "group":
            text = _title(entry)
            title = (x + PAD - 4, y + 2, text_width(text, 13, True) + 8, TITLE - 2)
            close = (x + PAD - 2, y + 2, _title_width(text, 13) + 4, TITLE - 2)
            scene.groups.append((entry, (x, y, box.fw, box.fh), title, close))
        else:
            scene.leaves[entry.path] = (x, y, box.w, box.h)
    for child, dx, dy in box.children:
        _place(child, x + dx, y + dy, scene)


# ---------------------------------------------------------------------------------------
# Routing

_DI, _DJ = (1, 0, -1, 0), (0, 1, 0, -1)  # grid steps right, down, left, up
WINDOW = 160  # a path first looks for its way within this far of its two boxes
HWEIGHT = 1.2  # weighted A*: a little optimality traded for far fewer steps


@dataclass
class _Edge:
    a: str
    b: str
    kind: str
    plane: str
    bandwidth: float
    count: int
    colour: str = ""
    width: float = 1.0
    text: str = ""
    points: list[tuple[int, int]] = field(default_factory=list)


class _Router:
    """A* on the grid, with costs kept between edges so that later ones keep apart."""

    def __init__(self, width: int, height: int, scene: _Scene) -> None:
        self.cols, self.rows = width // G + 1, height // G + 1
        self.scene = scene
        n = self.cols * self.rows
        self.base = bytearray(n)  # 1: no edge may pass (other boxes, titles)
        self.cost = [0.0] * n  # extra cost of stepping on a cell
        for rect in scene.leaves.values():
            self._fill(self.base, _grow(rect, CLEAR), 1)
        for _entry, frame, _title, close in scene.groups:
            self._fill(self.base, _grow(close, 2), 1)
            for x, y, w, h in self._frame_bands(frame, 8):
                for c in self._cells((x, y, w, h)):
                    self.cost[c] += FRAME

    @staticmethod
    def _frame_bands(frame: Rect, by: int) -> list[Rect]:
        """Thin rectangles along the four sides of a group (and of its stack)."""
        x, y, w, h = frame
        tall, wide = h + 2 * by, w + 2 * by
        return [(x - by, y - by, 2 * by, tall), (x + w - 8 - by, y - by, 8 + 2 * by, tall),
                (x - by, y - by, wide, 2 * by), (x - by, y + h - 8 - by, wide, 8 + 2 * by)]

    def _cells(self, rect: Rect, strict: bool = True) -> list[int]:
        """Grid points inside ``rect`` (on its border too unless ``strict``)."""
        x, y, w, h = rect
        if strict:
            i0, i1 = math.floor(x / G) + 1, math.ceil((x + w) / G) - 1
            j0, j1 = math.floor(y / G) + 1, math.ceil((y + h) / G) - 1
        else:
            i0, i1 = math.ceil(x / G), math.floor((x + w) / G)
            j0, j1 = math.ceil(y / G), math.floor((y + h) / G)
        i0, j0 = max(i0, 0), max(j0, 0)
        i1, j1 = min(i1, self.cols - 1), min(j1, self.rows - 1)
        return [j * self.cols + i for j in range(j0, j1 + 1) for i in range(i0, i1 + 1)]

    def _fill(self, mask: bytearray, rect: Rect, value: int, strict: bool = True) -> None:
        for c in self._cells(rect, strict):
            mask[c] = value

    def _ports(self, rect: Rect) -> list[tuple[int, int, float]]:
        """Grid points on the sides of ``rect`` (not its rounded corners): cell, outward
        direction, and a small cost that grows away from the middle of the side.
        """
        x, y, w, h = (int(v) for v in rect)
        out = []
        for d, (x0, y0, x1, y1) in enumerate(((x + w, y, x + w, y + h), (x, y + h, x + w, y + h),
                                              (x, y, x, y + h), (x, y, x + w, y))):
            length = max(x1 - x0, y1 - y0)
            for t in range(12, length - 12 + 1, G):
                px, py = (x0 + t, y0) if y0 == y1 else (x0, y0 + t)
                cell = (py // G) * self.cols + px // G
                out.append((cell, d, 0.25 * abs(t - length / 2) / G))
        return out

    def route(self, edge: _Edge) -> None:
        a, b = self.scene.leaves[edge.a], self.scene.leaves[edge.b]
        blocked = bytearray(self.base)
        for entry, frame, *_titles in self.scene.groups:
            path = entry.path + "."
            if not (edge.a.startswith(path) or edge.b.startswith(path)):
                self._fill(blocked, _grow(frame, CLEAR), 1)
        for rect in (a, b):
            self._fill(blocked, _grow(rect, CLEAR), 0)
        for rect in (a, b):
            self._fill(blocked, rect, 1, strict=False)
        cells = None
        for margin in (WINDOW, 10**6):  # near the two boxes first, then anywhere
            x0, y0 = min(a[0], b[0]) - margin, min(a[1], b[1]) - margin
            x1 = max(a[0] + a[2], b[0] + b[2]) + margin
            y1 = max(a[1] + a[3], b[1] + b[3]) + margin
            window = (max(0, math.floor(x0 / G)), max(0, math.floor(y0 / G)),
                      min(self.cols - 1, math.ceil(x1 / G)), min(self.rows - 1, math.ceil(y1 / G)))
            cells = self._search(a, b, blocked, window)
            if cells is not None:
                break
        if cells is None:  # boxed in (no layout here does that): straight, centre to centre
            edge.points = [(int(a[0] + a[2] / 2), int(a[1] + a[3])),
                           (int(b[0] + b[2] / 2), int(b[1]))]
            return
        self._occupy(cells)
        cols = self.cols
        edge.points = _corners([((c % cols) * G, (c // cols) * G) for c in cells])

    def _search(self, a: Rect, b: Rect, blocked: bytearray, window: tuple[int, int, int, int]
                ) -> list[int] | None:
        """A* from a side of ``a`` to a side of ``b``, within ``window`` (grid indices);
        a state is a grid point and the direction the path arrived in.
        """
        goals = {cell: (d + 2) % 4 for cell, d, _ in self._ports(b)}  # inward direction
        goal_cost = {cell: extra for cell, _, extra in self._ports(b)}
        bx, by, bw, bh = b
        cols, cost = self.cols, self.cost
        i0, j0, i1, j1 = window
        heap: list[tuple[float, float, int, int]] = []
        best: dict[int, float] = {}
        parent: dict[int, int] = {}
        tick = 0
        for cell, d, extra in self._ports(a):
            state = cell * 4 + d
            best[state] = extra
            parent[state] = -1
            heap.append((extra, extra, tick, state))
            tick += 1
        heapq.heapify(heap)
        inf = math.inf
        while heap:
            _f, g, _t, state = heapq.heappop(heap)
            if g > best.get(state, inf):
                continue
            cell, d = divmod(state, 4)
            if cell in goals:
                cells = []
                while state >= 0:
                    cells.append(state // 4)
                    state = parent[state]
                return cells[::-1]
            ci, cj = cell % cols, cell // cols
            for nd in (d, (d + 1) % 4, (d + 3) % 4):
                ni, nj = ci + _DI[nd], cj + _DJ[nd]
                if not (i0 <= ni <= i1 and j0 <= nj <= j1):
                    continue
                nxt = nj * cols + ni
                if nxt in goals:
                    if goals[nxt] != nd:
                        continue
                    step = 1 + goal_cost[nxt]
                elif blocked[nxt]:
                    continue
                else:
                    step = 1 + cost[nxt]
                ng = g + step + (BEND if nd != d else 0)
                nstate = nxt * 4 + nd
                if ng < best.get(nstate, inf):
                    best[nstate] = ng
                    parent[nstate] = state
                    px, py = ni * G, nj * G
                    dx = bx - px if px < bx else (px - bx - bw if px > bx + bw else 0)
                    dy = by - py if py < by else (py - by - bh if py > by + bh else 0)
                    heapq.heappush(heap, (ng + HWEIGHT * (dx + dy) / G, ng, tick, nstate))
                    tick += 1
        return None

    def loop(self, edge: _Edge) -> None:
        x, y, w, h = self.scene.leaves[edge.a]
        r, top, bottom = int(x + w), int(y + 8), int(y + h - 8)
        edge.points = [(r, top), (r + LOOP_OUT, top), (r + LOOP_OUT, bottom), (r, bottom)]
        self._occupy([(yy // G) * self.cols + xx // G for xx, yy in _dense(edge.points)])

    def _occupy(self, cells: list[int]) -> None:
        cols = self.cols
        for c in set(cells):
            ci, cj = c % cols, c // cols
            for dj in range(-2, 3):
                for di in range(-2, 3):
                    ni, nj = ci + di, cj + dj
                    if 0 <= ni < cols and 0 <= nj < self.rows:
                        self.cost[nj * cols + ni] += SHARED[max(abs(di), abs(dj))]


def _corners(points: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out = points[:1]
    for i in range(1, len(points) - 1):
        (x0, y0), (x1, y1), (x2, y2) = points[i - 1], points[i], points[i + 1]
        if (x1 - x0, y1 - y0) != (x2 - x1, y2 - y1):
            out.append(points[i])
    return [*out, points[-1]] if len(points) > 1 else out


def _dense(points: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Every grid point along an orthogonal polyline."""
    out: list[tuple[int, int]] = []
    for (x0, y0), (x1, y1) in pairwise(points):
        n = max(abs(x1 - x0), abs(y1 - y0)) // G
        sx, sy = (x1 > x0) - (x1 < x0), (y1 > y0) - (y1 < y0)
        out += [(x0 + sx * G * k, y0 + sy * G * k) for k in range(n)]
    return [*out, points[-1]] if points else out


def _path_d(points: list[tuple[int, int]]) -> str:
    """The polyline with its corners rounded."""
    d = [f"M{points[0][0]},{points[0][1]}"]
    for i in range(1, len(points) - 1):
        (x0, y0), (x1, y1), (x2, y2) = points[i - 1], points[i], points[i + 1]
        r = min(6, abs(x1 - x0 + y1 - y0) / 2, abs(x2 - x1 + y2 - y1) / 2)
        ax, ay = x1 - r * _sign(x1 - x0), y1 - r * _sign(y1 - y0)
        bx, by = x1 + r * _sign(x2 - x1), y1 + r * _sign(y2 - y1)
        d.append(f"L{ax:g},{ay:g} Q{x1},{y1} {bx:g},{by:g}")
    d.append(f"L{points[-1][0]},{points[-1][1]}")
    return " ".join(d)


def _sign(v: float) -> int:
    return (v > 0) - (v < 0)


# ---------------------------------------------------------------------------------------
# Labels


class _Labeller:
    """Greedy placement: each label beside its own edge, clear of boxes and labels."""

    def __init__(self, scene: _Scene, edges: list[_Edge]) -> None:
        self.hard: list[Rect] = [_grow(r, 2) for r in scene.leaves.values()]
        self.hard += [title for _e, _f, title, _c in scene.groups]
        self.hard.append((0, 0, 10_000, ORIGIN_Y - 6))  # the header line
        self.frames = [side for _e, f, *_t in scene.groups
                       for side in _Router._frame_bands(f, 4)]
        self.ink: dict[tuple[int, int], set[int]] = {}  # grid point -> edges drawn over it
        for n, edge in enumerate(edges):
            for point in _dense(edge.points):
                self.ink.setdefault(point, set()).add(n)
        self.placed: list[Rect] = []

    def _score(self, rect: Rect, dist: float, own: int) -> float:
        if rect[0] < 2 or any(_overlap(rect, h) for h in self.hard):
            return math.inf
        if any(_overlap(rect, _grow(p, 3)) for p in self.placed):
            return math.inf
        x, y, w, h = _grow(rect, 2)
        ink = 0
        for px in range(_up(x), int(x + w) + 1, G):
            for py in range(_up(y), int(y + h) + 1, G):
                for n in self.ink.get((px, py), ()):
                    ink += 4 if n == own else 20
        frames = sum(1 for f in self.frames if _overlap(rect, f))
        return 0.05 * dist + ink + 30 * frames

    def place(self, edge: _Edge, own: int) -> tuple[Rect, tuple[int, int] | None]:
        """The label's box, and where a leader line must run to (when far from its edge)."""
        w, h = text_width(edge.text, EDGE_FONT, bold=True) + 2, LABEL_H
        off = edge.width / 2 + 3
        pts = edge.points
        segs = list(pairwise(pts))
        total = sum(abs(x1 - x0) + abs(y1 - y0) for (x0, y0), (x1, y1) in segs)
        best: tuple[float, Rect] | None = None
        run = 0.0
        for (x0, y0), (x1, y1) in segs:
            length = abs(x1 - x0) + abs(y1 - y0)
            for t in range(0, int(length) + 1, G):
                along = abs(run + t - total / 2)
                px, py = x0 + _sign(x1 - x0) * t, y0 + _sign(y1 - y0) * t
                if x0 == x1:  # vertical: right of it, or left
                    cands = [(px + off, py - h / 2), (px - off - w, py - h / 2)]
                else:  # horizontal: above, or below
                    cands = [(px - w / 2, py - off - h), (px - w / 2, py + off)]
                for k, (cx, cy) in enumerate(cands):
                    rect = (cx, cy, w, h)
                    score = self._score(rect, along, own) + 2 * k
                    if best is None or score < best[0]:
                        best = (score, rect)
            run += length
        if best is not None and best[0] < math.inf:
            self.placed.append(best[1])
            return best[1], None
        return self._far(edge, w, h, own)

    def _far(self, edge: _Edge, w: float, h: float, own: int
             ) -> tuple[Rect, tuple[int, int] | None]:
        """No room beside the edge: the nearest free spot, with a leader line."""
        mid = _dense(edge.points)[len(_dense(edge.points)) // 2]
        for radius in range(16, 2000, 8):
            spots = [(mid[0] + dx - (w if dx < 0 else 0), mid[1] + dy - h / 2, w, h)
                     for dx, dy in ((radius, 0), (0, radius), (-radius, 0), (0, -radius),
                                    (radius, radius), (-radius, radius), (radius, -radius),
                                    (-radius, -radius))]
            score, rect = min(((self._score(r, 0, own), r) for r in spots), key=lambda t: t[0])
            if score < math.inf:
                self.placed.append(rect)
                return rect, mid
        rect = (mid[0] + 2000.0, mid[1] - h / 2, w, h)  # pragma: no cover
        self.placed.append(rect)
        return rect, mid


# ---------------------------------------------------------------------------------------
# Drawing


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
