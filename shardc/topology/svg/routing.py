"""Routing of the SVG drawing's edges: orthogonal paths found by A* on the grid.

A path may not enter a box other than its two ends, nor a group that holds neither end,
nor a group title; bends, running along a frame and sharing a channel cost extra. Its
own module because the search is the largest and most self-contained of the three steps:
it reads only the placed :class:`.layout._Scene` and writes each edge's points.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from itertools import pairwise

from shardc.topology.svg.geometry import (
    BEND,
    CLEAR,
    FRAME,
    LOOP_OUT,
    SHARED,
    G,
    Rect,
    _grow,
)
from shardc.topology.svg.layout import _Scene

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
