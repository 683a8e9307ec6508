"""Layout of the SVG drawing: the folded hierarchy as nested boxes in rows.

Inside every group the children sit in rows by their distance (in links) from the
devices, and a row below follows what it links to (see :mod:`shardc.topology.svg`). Its
own module because it is the first of the three steps and knows nothing of paths or
labels: it hands :mod:`.routing` and :mod:`.labels` a :class:`_Scene` of absolute positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from shardc.topology.hierarchy import Entry
from shardc.topology.svg.geometry import (
    CLEAR,
    CORRIDOR,
    HGAP,
    LANE,
    LEAF_H,
    LEAF_W,
    MAX_LEAVES_PER_ROW,
    MAX_ROW_WIDTH,
    PAD,
    STACK,
    TITLE,
    VGAP,
    Rect,
    _near,
    _title_width,
    _up,
    text_width,
)


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
