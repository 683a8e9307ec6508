"""Scopes, members and patterns: how ``node[0..47] { npu[0..7]: x }`` becomes names.

A scope is the root or one instance of a group (``node3``). Declaring ``gpu[0..7]`` in a
scope adds members ``gpu0`` ... ``gpu7`` with base ``gpu`` and indices 0..7, so a pattern
``gpu[2..5]`` can select by index while the full names stay plain dotted strings
(``node3.gpu5``). Patterns are resolved relative to the scope in which a fabric or link is
written, which is what lets a fabric declared inside a group body replicate per instance.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shardc.topology import limits
from shardc.topology.diagnostics import did_you_mean
from shardc.topology.syntax import Path, Pos, Segment, SelIndex, SelItem, SelRange, SelStar
from shardc.topology.values import Env


@dataclass(slots=True)
class Dev:
    """A device under construction."""

    full: str
    kind: str
    rank: int
    decl_pos: Pos


@dataclass(slots=True)
class Sw:
    """A switch under construction."""

    full: str
    kind: str
    plane: str
    fabric: str
    tier: str
    decl_pos: Pos
    reduction: bool = False


@dataclass(slots=True)
class Reserved:
    """A name taken by something that is not a node (a mesh), kept for duplicate checks."""

    full: str
    what: str


Node = Dev | Sw


@dataclass(slots=True)
class Member:
    """An entry of a scope: ``local`` is ``base`` + ``index`` for ranged declarations."""

    local: str
    base: str
    index: int | None
    node: Scope | Dev | Sw | Reserved
    decl_pos: Pos
    ranged: bool


@dataclass(slots=True, eq=False)
class Scope:
    """The root or one group instance; ``pending`` holds its fabrics until it is complete."""

    full: str
    members: dict[str, Member] = field(default_factory=dict)
    by_base: dict[str, list[Member]] = field(default_factory=dict)
    pending: list = field(default_factory=list)

    def child(self, local: str) -> str:
        """The full name of a child called ``local``."""
        return f"{self.full}.{local}" if self.full else local

    def label(self) -> str:
        """How messages name this scope: ``at the top level`` or ``in 'node3'``."""
        return f"in '{self.full}'" if self.full else "at the top level"

    def declare(self, env: Env, member: Member) -> None:
        """Add ``member``; a clash is a duplicate name or, for two ranges, an overlap."""
        old = self.members.get(member.local)
        if old is not None:
            first = old.decl_pos.where()
            if old.ranged and member.ranged:
                message = (
                    f"range overlaps an earlier declaration: '{member.local}' "
                    f"{self.label()} is already declared at {first}"
                )
            else:
                message = f"duplicate name '{member.local}' {self.label()} (first at {first})"
            raise env.error(message, member.decl_pos, "give each device, group and fabric "
                            "its own name; ranges of one base must not share indices")
        self.members[member.local] = member
        self.by_base.setdefault(member.base, []).append(member)

    def devices(self) -> list[Dev]:
        """Every device under this scope, in declaration (rank) order."""
        out: list[Dev] = []
        for member in self.members.values():
            node = member.node
            if isinstance(node, Dev):
                out.append(node)
            elif isinstance(node, Scope):
                out.extend(node.devices())
        return out


def eval_selector(
    env: Env, items: tuple[SelItem, ...], *, declaring: bool
) -> list[int] | None:
    """The indices a selector denotes, ascending; ``None`` means ``[*]`` (all).

    In a declaration every index must be explicit and distinct. The number of indices is
    checked against :data:`~shardc.topology.limits.MAX_DEVICES` before any list is built,
    so ``gpu[0..1e9]`` is an error, not a MemoryError.
    """
    indices: list[int] = []
    total = 0
    for item in items:
        if isinstance(item, SelStar):
            if declaring:
                raise env.error("a declaration needs explicit indices, not [*]", item.pos,
                                "write e.g. gpu[0..7]")
            if len(items) > 1:
                raise env.error("[*] selects every index; it cannot be combined with others",
                                item.pos)
            return None
        if isinstance(item, SelIndex):
            indices.append(env.integer(item.expr, "an index"))
            total += 1
            env.count("indices in one selector", total, limits.MAX_DEVICES, item.pos)
            continue
        assert isinstance(item, SelRange)
        lo = env.integer(item.lo, "a range start")
        hi = env.integer(item.hi, "a range end")
        if hi < lo:
            hint = "ranges are inclusive and ascending, e.g. [0..7]"
            if env.overridden:
                hint += f"; parameters were overridden: {env.overridden}"
            raise env.error(f"empty range {lo}..{hi}", item.pos, hint)
        total += hi - lo + 1
        env.count("indices in one selector", total, limits.MAX_DEVICES, item.pos)
        indices.extend(range(lo, hi + 1))
    if declaring and len(set(indices)) != len(indices):
        raise env.error("the selector names an index twice", items[0].pos)
    return sorted(set(indices))


def _match(env: Env, scope: Scope, seg: Segment) -> list[Scope | Dev | Sw | Reserved]:
    if seg.name is None:  # '*': devices and groups; switches only by name
        return [m.node for m in scope.members.values() if isinstance(m.node, Dev | Scope)]
    if seg.selector is None:
        member = scope.members.get(seg.name)
        return [member.node] if member is not None else []
    listed = eval_selector(env, seg.selector, declaring=False)
    wanted = None if listed is None else set(listed)  # a set: membership per member
    chosen = [
        m for m in scope.by_base.get(seg.name, ())
        if m.index is not None and (wanted is None or m.index in wanted)
    ]
    return [m.node for m in sorted(chosen, key=lambda m: m.index or 0)]


def resolve(env: Env, scope: Scope, path: Path, *, expand: bool = True) -> list[Node]:
    """The devices and switches a pattern selects, in order, without repeats.

    A selected group stands for all its devices when ``expand`` is true; otherwise
    (link endpoints) selecting a group is an error.
    """
    current: list[Scope | Dev | Sw | Reserved] = [scope]
    for seg in path.segments:
        found: list[Scope | Dev | Sw | Reserved] = []
        for here in current:
            if not isinstance(here, Scope):
                raise env.error(f"'{here.full}' is not a group; it has no members", seg.pos)
            found.extend(_match(env, here, seg))
        if not found:
            first = current[0] if isinstance(current[0], Scope) else scope
            names = {m.base for m in first.members.values()} | set(first.members)
            hint = did_you_mean(seg.name or "*", names, listing="names here")
            shown = env.text(Pos(path.pos.file, path.pos.line, path.pos.column,
                                 seg.pos.end_line, seg.pos.end_column))
            raise env.error(f"'{shown}' matches nothing {scope.label()}", seg.pos, hint)
        current = found
    out = _flatten(env, current, path, expand)
    env.selected += len(out)
    env.count("pattern matches in all (members, link ends)", env.selected,
              limits.MAX_SELECTED, path.pos)
    return out


def _flatten(env: Env, nodes: list, path: Path, expand: bool) -> list[Node]:
    out: list[Node] = []
    seen: set[str] = set()
    for node in nodes:
        if isinstance(node, Reserved):
            raise env.error(f"'{node.full}' is a {node.what}, not a device or switch", path.pos)
        if isinstance(node, Scope):
            if not expand:
                raise env.error(f"'{node.full}' is a group; a link joins devices or switches",
                                path.pos, f"select its members, e.g. {path_text(path)}.*")
            items: list[Node] = list(node.devices())
        else:
            items = [node]
        for item in items:
            if item.full not in seen:
                seen.add(item.full)
                out.append(item)
    return out


def path_text(path: Path) -> str:
    """A path written back as text (for hints)."""
    parts = []
    for seg in path.segments:
        parts.append("*" if seg.name is None else seg.name + ("[...]" if seg.selector else ""))
    return ".".join(parts)
