"""The semantic pass: statements (includes already spliced in) to a :class:`Topology`.

The order of work matters and is, in one place:

1. collect every ``kind`` first, so devices may use a kind defined later in the file;
2. refuse unknown ``--set`` names before anything else, so a typo is the first thing
   the user hears about;
3. walk the statements in order: ``let`` binds a parameter (an override replaces its
   value), declarations create scopes, devices and switches; each scope resolves its
   fabrics and links once its body is complete, so a fabric may name members declared
   after it;
4. build the kinds (their values may use parameters), then check that no device or
   switch is left unconnected.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from fractions import Fraction

from shardc.errors import OptionError
from shardc.topology import fabrics, limits
from shardc.topology.diagnostics import did_you_mean
from shardc.topology.kinds import build_kinds
from shardc.topology.model import Device, Link, Switch, Topology
from shardc.topology.structure import Dev, Member, Reserved, Scope, Sw, eval_selector
from shardc.topology.syntax import (
    DeviceDecl,
    FabricStmt,
    GroupDecl,
    Include,
    KindDef,
    Let,
    LinkStmt,
    Pos,
    Prop,
    Quantity,
    Stmt,
    String,
)
from shardc.topology.values import Env, ParamValue

Override = int | float | str


class Elaborator:
    """Holds the growing cluster while statements are walked; used once per load."""

    def __init__(self, sources: Mapping[str, str], overrides: Mapping[str, Override]):
        self.overrides = dict(overrides)
        shown = " ".join(f"--set {k}={_shown(v)}" for k, v in self.overrides.items())
        self.env = Env({}, sources, shown)
        self.kind_defs: dict[str, KindDef] = {}
        self.devs: list[Dev] = []
        self.sws: list[Sw] = []
        self.links: list[Link] = []
        self.link_at: dict[tuple[str, str, str], Pos] = {}
        self.specs: dict[int, fabrics.Spec] = {}
        self.root = Scope("")
        self.instances = 0  # group instances so far (limits.MAX_GROUP_INSTANCES)

    def run(self, stmts: list[Stmt], name: str, source: str | None) -> Topology:
        """Elaborate the whole program (see the module docstring for the order)."""
        self._collect_kinds(stmts)
        self._check_overrides(stmts)
        for stmt in stmts:
            self._top(stmt)
        self._finish(self.root)
        kinds = build_kinds(self.env, self.kind_defs)
        self._check_connected()
        return self._topology(kinds, name, source)

    # ------------------------------------------------------------------ top level
    def _collect_kinds(self, stmts: list[Stmt]) -> None:
        for stmt in stmts:
            if isinstance(stmt, KindDef):
                if stmt.name in self.kind_defs:
                    first = self.kind_defs[stmt.name].name_pos.where()
                    raise self.env.error(f"kind '{stmt.name}' is defined twice (first at "
                                         f"{first})", stmt.name_pos)
                self.kind_defs[stmt.name] = stmt

    def _check_overrides(self, stmts: list[Stmt]) -> None:
        names = [s.name for s in stmts if isinstance(s, Let)]
        for key in self.overrides:
            if key not in names:
                known = ", ".join(names) if names else "none"
                raise OptionError(
                    f"unknown parameter '{key}' (this topology's parameters: {known})",
                    hint=did_you_mean(key, names),
                )

    def _top(self, stmt: Stmt) -> None:
        if isinstance(stmt, Let):
            self._let(stmt)
        elif isinstance(stmt, KindDef):
            return
        elif isinstance(stmt, Prop):
            raise self.env.error(f"property '{stmt.name}' outside a block", stmt.name_pos,
                                 "properties go inside kind, switch, mesh, network or link "
                                 "blocks")
        elif isinstance(stmt, Include):  # pragma: no cover - the loader splices these
            raise self.env.error("include was not resolved", stmt.pos)
        else:
            self._member(stmt, self.root)

    def _let(self, stmt: Let) -> None:
        if stmt.name in self.env.params:
            raise self.env.error(f"parameter '{stmt.name}' is defined twice", stmt.name_pos)
        value: ParamValue
        if isinstance(stmt.value, String):
            value = stmt.value.value
        else:
            assert isinstance(stmt.value, Quantity)
            if stmt.value.unit is not None:
                raise self.env.error("a parameter is a plain number or a string",
                                     stmt.value.unit_pos or stmt.pos,
                                     "put the unit where the parameter is used: "
                                     f"'bandwidth {stmt.name} GB/s'")
            value = self.env.eval(stmt.value.expr)
        if stmt.name in self.overrides:
            value = _coerce(stmt.name, self.overrides[stmt.name], value)
        self.env.params[stmt.name] = value

    # ------------------------------------------------------------------ declarations
    def _member(self, stmt: Stmt, scope: Scope) -> None:
        if isinstance(stmt, DeviceDecl):
            self._device(stmt, scope)
        elif isinstance(stmt, GroupDecl):
            self._group(stmt, scope)
        elif isinstance(stmt, FabricStmt):
            self._fabric(stmt, scope)
        elif isinstance(stmt, LinkStmt):
            fabrics.check_link_kind(self.env, stmt.link_kind, stmt.kind_pos)
            label = f"{self.env.text(stmt.a.pos)} <-> {self.env.text(stmt.b.pos)}"
            self.specs[id(stmt)] = self._spec("link", label, stmt.body, stmt.pos, stmt)
            scope.pending.append(stmt)
        elif isinstance(stmt, Prop):
            raise self.env.error(f"property '{stmt.name}' is not allowed in a group",
                                 stmt.name_pos, "properties go inside kind, switch, mesh, "
                                 "network or link blocks")
        else:
            word = {Let: "let", Include: "include", KindDef: "kind"}[type(stmt)]
            raise self.env.error(f"'{word}' is only allowed at the top level", stmt.pos)

    def _indices(self, stmt: DeviceDecl | GroupDecl) -> list[int | None]:
        if stmt.selector is None:
            return [None]
        return list(eval_selector(self.env, stmt.selector, declaring=True) or [])

    def _device(self, stmt: DeviceDecl, scope: Scope) -> None:
        if stmt.kind not in self.kind_defs:
            raise self.env.error(f"unknown kind '{stmt.kind}'", stmt.kind_pos,
                                 did_you_mean(stmt.kind, self.kind_defs, listing="kinds"))
        ranged = stmt.selector is not None
        indices = self._indices(stmt)
        self.env.count("devices", len(self.devs) + len(indices), limits.MAX_DEVICES, stmt.pos)
        for index in indices:
            local = stmt.name if index is None else f"{stmt.name}{index}"
            dev = Dev(scope.child(local), stmt.kind, len(self.devs), stmt.name_pos)
            scope.declare(self.env, Member(local, stmt.name, index, dev, stmt.name_pos, ranged))
            self.devs.append(dev)

    def _group(self, stmt: GroupDecl, scope: Scope) -> None:
        ranged = stmt.selector is not None
        indices = self._indices(stmt)
        self.instances += len(indices)
        self.env.count("group instances", self.instances, limits.MAX_GROUP_INSTANCES, stmt.pos)
        for index in indices:
            local = stmt.name if index is None else f"{stmt.name}{index}"
            child = Scope(scope.child(local))
            scope.declare(self.env, Member(local, stmt.name, index, child, stmt.name_pos, ranged))
            for inner in stmt.body:
                self._member(inner, child)
            self._finish(child)

    def _fabric(self, stmt: FabricStmt, scope: Scope) -> None:
        fabrics.check_link_kind(self.env, stmt.link_kind, stmt.kind_pos)
        spec = self._spec(stmt.fabric, f"'{stmt.name}'", stmt.body, stmt.name_pos, stmt)
        full = scope.child(stmt.name)
        node: Scope | Sw | Reserved
        if stmt.fabric == "switch":
            node = self.add_switch(full, stmt.link_kind, spec.plane or stmt.link_kind, full,
                                   "switch", stmt.name_pos)
        elif stmt.fabric == "network":
            node = Scope(full)
        else:
            node = Reserved(full, "mesh")
        scope.declare(self.env, Member(stmt.name, stmt.name, None, node, stmt.name_pos, False))
        scope.pending.append(stmt)

    def _spec(self, what: str, label: str, body: tuple, pos: Pos, stmt: Stmt) -> fabrics.Spec:
        spec = self.specs.get(id(stmt))
        if spec is None:
            spec = self.specs[id(stmt)] = fabrics.read_spec(self.env, what, label, body, pos)
        return spec

    def _finish(self, scope: Scope) -> None:
        for stmt in scope.pending:
            spec = self.specs[id(stmt)]
            if isinstance(stmt, LinkStmt):
                fabrics.build_link(self, scope, stmt, spec)
            elif stmt.fabric == "switch":
                fabrics.build_switch(self, scope, stmt, spec)
            elif stmt.fabric == "mesh":
                fabrics.build_mesh(self, scope, stmt, spec)
            else:
                fabrics.build_network(self, scope, stmt, spec)
        scope.pending.clear()

    # ------------------------------------------------------------------ graph building
    def add_switch(self, full: str, kind: str, plane: str, fabric: str, tier: str,
                   pos: Pos) -> Sw:
        """Create a switch node (names are checked by the scope that holds it)."""
        self.env.count("switches", len(self.sws) + 1, limits.MAX_SWITCHES, pos)
        switch = Sw(full, kind, plane, fabric, tier, pos)
        self.sws.append(switch)
        return switch

    def add_link(self, a: str, b: str, bandwidth: float, latency: float, kind: str,
                 plane: str, fabric: str, efficiency: float, pos: Pos) -> None:
        """Add one link; two links between one pair on one plane are an error."""
        key = (a, b, plane) if a < b else (b, a, plane)
        first = self.link_at.get(key)
        if first is not None:
            raise self.env.error(f"'{a}' and '{b}' are already linked on plane '{plane}' "
                                 f"(at {first.where()})", pos,
                                 "put the second link on another plane, or remove one")
        self.env.count("links", len(self.links) + 1, limits.MAX_LINKS, pos)
        self.link_at[key] = pos
        self.links.append(Link(a, b, bandwidth, latency, kind, plane, fabric, efficiency))

    def _check_connected(self) -> None:
        if len(self.devs) + len(self.sws) < 2:
            return
        degree = Counter(x for link in self.links for x in (link.a, link.b))
        for dev in self.devs:
            if not degree[dev.full]:
                raise self.env.error(
                    f"device '{dev.full}' is connected to nothing", dev.decl_pos,
                    "add it to a fabric ('members ...') or link it to another device",
                )
        for sw in self.sws:
            if not degree[sw.full]:
                raise self.env.error(f"switch '{sw.full}' is connected to nothing", sw.decl_pos,
                                     "link something to it or remove it")

    def _topology(self, kinds: dict, name: str, source: str | None) -> Topology:
        used = {dev.kind for dev in self.devs}
        devices = tuple(Device(d.full, kinds[d.kind], d.rank) for d in self.devs)
        switches = tuple(Switch(s.full, s.kind, s.plane, s.fabric, s.tier, s.reduction)
                         for s in self.sws)
        params = {k: _plain(v) for k, v in self.env.params.items()}
        return Topology(
            name=name,
            kinds={k: kinds[k] for k in sorted(used)},
            devices=devices,
            switches=switches,
            links=tuple(self.links),
            params=params,
            source=source,
        )


def _plain(value: ParamValue) -> int | float | str:
    if isinstance(value, str):
        return value
    return int(value) if value.denominator == 1 else float(value)


def _shown(raw: object) -> str:
    """An override as hints quote it; a huge API integer by its size (str() would fail)."""
    if isinstance(raw, int) and raw.bit_length() > 256:
        return f"<a {raw.bit_length()}-bit integer>"
    text = str(raw)
    return text if len(text) <= 80 else text[:77] + "..."


def _coerce(name: str, raw: object, default: ParamValue) -> ParamValue:
    """An override as a parameter value of the same sort (number or string) as the default.

    ``raw`` comes from the command line (a string) or the Python API (anything), so
    every other type, NaN, infinities and numbers beyond the language's limits are
    :class:`OptionError`, never a ValueError from deep inside.
    """
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise OptionError(f"parameter '{name}' takes a number or a string, not {raw!r}",
                          hint=f"e.g. --set {name}={_plain(default)}")
    if isinstance(default, str):
        return str(raw)
    number = _override_number(name, raw)
    if number is None:
        raise OptionError(
            f"parameter '{name}' is a number (default {_plain(default)}), got {raw!r}",
            hint=f"e.g. --set {name}={_plain(default)}",
        )
    try:
        return limits.check_value(number)
    except limits.LimitError as exc:
        raise OptionError(f"parameter '{name}': {exc.message}", hint=exc.hint) from None


def _override_number(name: str, raw: int | float | str) -> Fraction | None:
    """The exact value of a numeric override, or None if it is not a number."""
    if isinstance(raw, float) and not math.isfinite(raw):
        raise OptionError(f"parameter '{name}' must be a finite number, got {raw}")
    if isinstance(raw, int):
        return Fraction(raw)
    text = str(raw).strip()
    top, slash, bottom = text.partition("/")
    try:
        if slash:  # '1/3': both sides plain literals
            return limits.literal(top.strip()) / limits.literal(bottom.strip())
        return limits.literal(text)
    except (ValueError, ZeroDivisionError):
        return None
    except limits.LimitError as exc:
        raise OptionError(f"parameter '{name}': {exc.message}", hint=exc.hint) from None
