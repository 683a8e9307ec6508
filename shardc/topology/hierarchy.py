"""The collapsed hierarchy: ``node[0..47] { npu[0..7] ... }`` recovered from names.

``topo show`` and the SVG must stay readable at 384 or 10,000 devices, so repeated
structure is folded: consecutive siblings (in rank order) with one base name
(``node0``, ``node1`` ...) and the same shape become one entry ``node[0..47]`` whose
children are those of the first instance. The hierarchy is read back from the dotted
names alone, so it works for any topology, however it was written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from shardc.topology.model import Topology

_TRAILING = re.compile(r"^(.*?)(\d+)$")


@dataclass
class Entry:
    """One folded entry: a group, a device range or a switch range."""

    label: str  # "node[0..47]", "gpu[0..7]", "nvswitch"
    what: str  # "group", "device" or "switch"
    count: int  # instances folded into this entry
    kind: str = ""  # device kind, or the switch's link kind
    plane: str = ""  # switches only
    host: bool = False
    path: str = ""  # full label path from the root, e.g. "node[0..47].gpu[0..7]"
    first: str = ""  # full name of the first instance
    members: list[str] = field(default_factory=list)  # full names of all instances
    children: list[Entry] = field(default_factory=list)


def _split(local: str) -> tuple[str, int | None]:
    match = _TRAILING.match(local)
    return (match.group(1), int(match.group(2))) if match else (local, None)


def _raw_tree(topo: Topology) -> dict:
    """Nested dicts of names; leaves are ``(what, kind, plane, host)`` tuples."""
    root: dict = {}
    leaves = [(d.name, ("device", d.kind.name, "", d.kind.is_host)) for d in topo.devices]
    leaves += [(s.name, ("switch", s.kind, s.plane, False)) for s in topo.switches]
    for name, leaf in leaves:
        *groups, local = name.split(".")
        node = root
        for group in groups:
            node = node.setdefault(group, {})
        node[local] = leaf
    return root


def _shape(node: dict | tuple, memo: dict[int, object]) -> object:
    if isinstance(node, tuple):
        return node
    key = id(node)
    if key not in memo:
        memo[key] = tuple((k, _shape(v, memo)) for k, v in sorted(node.items()))
    return memo[key]


def _fold(node: dict, prefix: str, path: str, memo: dict) -> list[Entry]:
    """Folded entries for the children of ``node`` (full-name prefix ``prefix``)."""
    entries: list[Entry] = []
    run: list[str] = []

    def flush() -> None:
        if run:
            entries.append(_entry(node, run, prefix, path, memo))
            run.clear()

    for local in node:  # first-seen order: devices by rank, then switches
        if run:
            base, index = _split(local)
            prev_base, prev_index = _split(run[-1])
            same = (base == prev_base and index is not None and prev_index is not None
                    and index == prev_index + 1
                    and _shape(node[local], memo) == _shape(node[run[0]], memo))
            if not same:
                flush()
        run.append(local)
    flush()
    return entries


def _entry(node: dict, run: list[str], prefix: str, path: str, memo: dict) -> Entry:
    first = run[0]
    if len(run) > 1:
        base, lo = _split(first)
        label = f"{base}[{lo}..{_split(run[-1])[1]}]"
    else:
        label = first
    full = f"{prefix}.{first}" if prefix else first
    members = [f"{prefix}.{x}" if prefix else x for x in run]
    here = f"{path}.{label}" if path else label
    child = node[first]
    if isinstance(child, tuple):
        what, kind, plane, host = child
        return Entry(label, what, len(run), kind, plane, host, here, full, members)
    entry = Entry(label, "group", len(run), path=here, first=full, members=members)
    entry.children = _fold(child, full, here, memo)
    return entry


def fold(topo: Topology) -> list[Entry]:
    """The top-level entries of the folded hierarchy."""
    return _fold(_raw_tree(topo), "", "", {})


def walk(entries: list[Entry], depth: int = 0):
    """Depth-first ``(depth, entry)`` pairs."""
    for entry in entries:
        yield depth, entry
        yield from walk(entry.children, depth + 1)


def glyph_map(entries: list[Entry]) -> dict[str, str]:
    """Full name of every device and switch -> the ``path`` of the entry that draws it.

    Instances folded into an entry map to it, and so do the members of folded groups,
    which is how links of 384 devices become a handful of drawn edges.
    """
    out: dict[str, str] = {}

    def visit(entry: Entry, prefixes: list[str]) -> None:
        names = [f"{p}.{m.rsplit('.', 1)[-1]}" if p else m.rsplit(".", 1)[-1]
                 for p in prefixes for m in entry.members]
        if entry.what == "group":
            for child in entry.children:
                visit(child, names)
        else:
            for name in names:
                out[name] = entry.path

    for entry in entries:
        visit(entry, [""])
    return out
