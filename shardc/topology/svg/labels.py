"""Labels of the SVG drawing's edges, placed greedily beside each edge's own path.

Each label goes as near the middle of its edge as it can without covering a box, a title
or another label, with a leader line when it has to sit further off. Its own module
because it is the last step and only reads what layout and routing produced.
"""

from __future__ import annotations

import math
from itertools import pairwise

from shardc.topology.svg.geometry import (
    EDGE_FONT,
    LABEL_H,
    ORIGIN_Y,
    G,
    Rect,
    _grow,
    _overlap,
    _up,
    text_width,
)
from shardc.topology.svg.layout import _Scene
from shardc.topology.svg.routing import _dense, _Edge, _Router, _sign


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
