"""Fabrics and links: ``switch``, ``mesh``, ``network`` and ``link`` to graph edges.

Each form is sugar for switches and links, chosen to match how the hardware is built:

* ``switch NAME: KIND`` — one switch node; each member gets a port link to it (NVSwitch,
  a UB L1 switch). Members may themselves be switches (a UB L2 switch joining every
  node's L1), which is how multi-tier switched planes are written.
* ``mesh NAME: KIND`` — a direct link between every pair of members (HCCS full mesh).
* ``network NAME: KIND`` — leaf switches of ``leaf`` members each (optionally one set per
  rail: ``rails`` puts the i-th member of every group on rail i), joined by a spine whose
  uplinks carry the leaf's port total divided by ``oversubscription`` (or ``uplink``).
* ``link A <-> B: KIND`` — point-to-point links, pairwise or one-to-many.

``latency`` always means member-to-member latency through the fabric's first tier: a
switch or leaf splits it over the two port links of the path; a spine crossing adds
``spine_latency`` (default: the same), again split over its two uplinks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Protocol

from shardc.topology import units
from shardc.topology.diagnostics import did_you_mean
from shardc.topology.structure import Member, Node, Scope, Sw, resolve
from shardc.topology.syntax import FabricStmt, LinkStmt, Path, Pos, Prop, Stmt
from shardc.topology.values import Env, Reader

#: link kinds the language knows; a typo here would silently change cost-model lookups
LINK_KINDS = frozenset({
    "nvlink", "c2c", "ub", "hccs", "sio", "pcie", "cxl", "xgmi",
    "rdma", "roce", "ib", "ethernet", "vpc", "loopback", "tcp", "shm",
})

_COMMON = {
    "bandwidth": "per direction; per member port (switch, network) or per link (mesh, link)",
    "latency": "member-to-member, e.g. 'latency 1 us'",
    "plane": "the plane this fabric belongs to, e.g. 'plane ub' (default: its kind)",
    "efficiency": "achievable fraction of the bandwidth, e.g. 'efficiency 0.7'",
}
_ALLOWED = {
    "link": _COMMON,
    "mesh": {**_COMMON, "members": "e.g. 'members npu[*]'"},
    "switch": {
        **_COMMON,
        "members": "e.g. 'members gpu[*]' or 'members cpu[*] 160 GB/s'",
        "reduction": "the switch reduces in-network (NVLS, SHARP), e.g. 'reduction'",
    },
    "network": {
        **_COMMON,
        "members": "e.g. 'members node[*].gpu[*]'",
        "leaf": "members per leaf switch, e.g. 'leaf 32'",
        "rails": "rail-optimised: the i-th member of each group on rail i",
        "oversubscription": "leaf down:up bandwidth ratio, e.g. 'oversubscription 2'",
        "uplink": "explicit uplink bandwidth per leaf, e.g. 'uplink 1600 GB/s'",
        "spine_latency": "latency added by crossing the spine, e.g. 'spine_latency 1 us'",
    },
}


@dataclass
class Spec:
    """A fabric's or link's properties, read once per statement."""

    members: list[tuple[Path, float | None]] = field(default_factory=list)
    bandwidth: float | None = None
    latency: float | None = None
    plane: str | None = None
    efficiency: float = 1.0
    leaf: int | None = None
    rails: bool = False
    oversubscription: Fraction = Fraction(1)
    uplink: float | None = None
    spine_latency: float | None = None
    reduction: bool = False


class Builder(Protocol):
    """What building needs from the elaborator."""

    env: Env

    def add_switch(self, full: str, kind: str, plane: str, fabric: str, tier: str,
                   pos: Pos) -> Sw: ...

    def add_link(self, a: str, b: str, bandwidth: float, latency: float, kind: str,
                 plane: str, fabric: str, efficiency: float, pos: Pos) -> None: ...


def check_link_kind(env: Env, kind: str, pos: Pos) -> None:
    """Link kinds come from a fixed list (see :data:`LINK_KINDS`)."""
    if kind not in LINK_KINDS:
        raise env.error(f"unknown link kind '{kind}'", pos,
                        did_you_mean(kind, LINK_KINDS, listing="link kinds"))


def read_spec(env: Env, what: str, label: str, body: tuple[Stmt, ...], pos: Pos) -> Spec:
    """Read and check a fabric or link body."""
    allowed = _ALLOWED[what]
    spec, seen = Spec(), set()
    for stmt in body:
        if not isinstance(stmt, Prop):
            raise env.error(f"only properties are allowed in a {what}", stmt.pos)
        if stmt.name not in allowed:
            raise env.error(f"unknown property '{stmt.name}' in {what} {label}", stmt.name_pos,
                            did_you_mean(stmt.name, allowed, listing=f"{what} properties"))
        if stmt.name in seen and stmt.name != "members":
            raise env.error(f"'{stmt.name}' is set twice in {what} {label}", stmt.name_pos)
        seen.add(stmt.name)
        _read_prop(env, Reader(env, stmt, allowed[stmt.name]), spec, what)
    if what == "switch" and not spec.members:
        if seen - {"plane", "reduction"}:
            raise env.error(f"switch {label} has no members", pos,
                            "add 'members ...', or keep only 'plane' for a bare switch that "
                            "links attach to")
        return spec  # a bare switch: 'link' statements connect it
    needed = ["latency"] if what == "link" else ["members", "latency"]
    if what != "switch":
        needed.append("bandwidth")
    for name in needed:
        if (name == "members" and not spec.members) or getattr(spec, name, 0) is None:
            raise env.error(f"{what} {label} needs '{name}'", pos, allowed[name])
    if what == "switch" and spec.bandwidth is None and any(bw is None for _, bw in spec.members):
        raise env.error(f"switch {label} needs 'bandwidth' (per member port)", pos,
                        "or give one on each members line: 'members gpu[*] 450 GB/s'")
    return spec


def _read_prop(env: Env, r: Reader, spec: Spec, what: str) -> None:
    name = r.prop.name
    if name == "members":
        paths = [r.path()]
        while r.more and _is_path(r):
            paths.append(r.path())
        bandwidth = r.quantity(units.BANDWIDTH)[0] if r.more and what == "switch" else None
        spec.members.extend((p, bandwidth) for p in paths)
    elif name in ("bandwidth", "uplink"):
        setattr(spec, name, r.quantity(units.BANDWIDTH)[0])
    elif name in ("latency", "spine_latency"):
        setattr(spec, name, r.quantity(units.TIME)[0])
    elif name == "plane":
        spec.plane = r.word("a plane name")[0]
    elif name == "efficiency":
        value, pos = r.number("a factor in (0, 1]")
        if not 0 < value <= 1:
            raise env.error(f"an efficiency is a fraction in (0, 1], got {float(value):g}", pos)
        spec.efficiency = float(value)
    elif name == "leaf":
        value, pos = r.number("a member count")
        if value.denominator != 1 or value < 1:
            raise env.error("'leaf' needs a whole number of members, at least 1", pos)
        spec.leaf = int(value)
    elif name == "oversubscription":
        value, pos = r.number("a ratio >= 1")
        if value < 1:
            raise env.error(f"an oversubscription ratio is at least 1, got {float(value):g}", pos)
        spec.oversubscription = value
    elif name == "rails":
        spec.rails = True
    elif name == "reduction":
        spec.reduction = True
    r.done()


def _is_path(r: Reader) -> bool:
    value = r.prop.values[r.i]
    return getattr(value, "unit", 1) is None and isinstance(getattr(value, "expr", None), Path)


def build_switch(b: Builder, scope: Scope, stmt: FabricStmt, spec: Spec) -> None:
    """Port links from every member to the switch declared for ``stmt``."""
    switch = scope.members[stmt.name].node
    assert isinstance(switch, Sw)
    switch.reduction = spec.reduction
    plane = spec.plane or stmt.link_kind
    if not spec.members:
        return  # a bare switch; 'link' statements connect it
    assert spec.latency is not None
    for path, bandwidth in spec.members:
        for node in resolve(b.env, scope, path):
            if node is switch:
                raise b.env.error("a switch cannot be its own member", path.pos)
            port = bandwidth if bandwidth is not None else spec.bandwidth
            assert port is not None
            b.add_link(node.full, switch.full, port, spec.latency / 2, stmt.link_kind, plane,
                       switch.full, spec.efficiency, path.pos)


def build_mesh(b: Builder, scope: Scope, stmt: FabricStmt, spec: Spec) -> None:
    """A link between every pair of members."""
    nodes = _all_members(b, scope, spec)
    assert spec.bandwidth is not None and spec.latency is not None
    if len(nodes) > 256:
        raise b.env.error(f"a mesh of {len(nodes)} members needs {len(nodes) ** 2 // 2} links",
                          stmt.name_pos, "use a switch or a network for large groups")
    full = scope.child(stmt.name)
    for i, x in enumerate(nodes):
        for y in nodes[i + 1:]:
            b.add_link(x.full, y.full, spec.bandwidth, spec.latency, stmt.link_kind,
                       spec.plane or stmt.link_kind, full, spec.efficiency, stmt.name_pos)


def _all_members(b: Builder, scope: Scope, spec: Spec) -> list[Node]:
    out: list[Node] = []
    seen: set[str] = set()
    for path, _ in spec.members:
        for node in resolve(b.env, scope, path):
            if node.full not in seen:
                seen.add(node.full)
                out.append(node)
    return out


def build_network(b: Builder, scope: Scope, stmt: FabricStmt, spec: Spec) -> None:
    """Leaf switches (per rail if asked), and a spine when there is more than one leaf."""
    net = scope.members[stmt.name].node
    assert isinstance(net, Scope) and spec.bandwidth is not None and spec.latency is not None
    plane = spec.plane or stmt.link_kind
    leaves: list[tuple[Sw, float]] = []
    for rail, part in _rails(_all_members(b, scope, spec), spec.rails):
        where = net
        if rail is not None:
            where = Scope(net.child(f"rail{rail}"))
            net.declare(b.env, Member(f"rail{rail}", "rail", rail, where, stmt.name_pos, True))
        size = spec.leaf or len(part)
        for j in range(0, len(part), size):
            leaf = b.add_switch(where.child(f"leaf{j // size}"), stmt.link_kind, plane, net.full,
                                "leaf", stmt.name_pos)
            where.declare(b.env, Member(f"leaf{j // size}", "leaf", j // size, leaf,
                                        stmt.name_pos, True))
            for node in part[j:j + size]:
                b.add_link(node.full, leaf.full, spec.bandwidth, spec.latency / 2,
                           stmt.link_kind, plane, net.full, spec.efficiency, stmt.name_pos)
            leaves.append((leaf, spec.bandwidth * len(part[j:j + size])))
    if len(leaves) < 2:
        return
    spine = b.add_switch(net.child("spine"), stmt.link_kind, plane, net.full, "spine",
                         stmt.name_pos)
    net.declare(b.env, Member("spine", "spine", None, spine, stmt.name_pos, False))
    hop = spec.spine_latency if spec.spine_latency is not None else spec.latency
    for leaf, down in leaves:
        up = spec.uplink if spec.uplink is not None else float(down / spec.oversubscription)
        b.add_link(leaf.full, spine.full, up, hop / 2, stmt.link_kind, plane, net.full,
                   spec.efficiency, stmt.name_pos)


def _rails(nodes: list[Node], rails: bool) -> list[tuple[int | None, list[Node]]]:
    """Split members by their position within their parent group (rail i = i-th member)."""
    if not rails:
        return [(None, nodes)]
    position: dict[str, int] = {}
    by_rail: dict[int, list[Node]] = {}
    for node in nodes:
        parent = node.full.rpartition(".")[0]
        index = position.get(parent, 0)
        position[parent] = index + 1
        by_rail.setdefault(index, []).append(node)
    return sorted(by_rail.items())


def build_link(b: Builder, scope: Scope, stmt: LinkStmt, spec: Spec) -> None:
    """Pairwise links for equal-length sides, or one-to-many when a side is one member."""
    left = resolve(b.env, scope, stmt.a, expand=False)
    right = resolve(b.env, scope, stmt.b, expand=False)
    if len(left) == len(right):
        pairs = list(zip(left, right, strict=True))
    elif len(left) == 1 or len(right) == 1:
        pairs = [(x, y) for x in left for y in right]
    else:
        raise b.env.error(
            f"cannot pair {len(left)} endpoints with {len(right)}", stmt.pos,
            "both sides must select the same number of members, or one side exactly one",
        )
    assert spec.bandwidth is not None and spec.latency is not None
    for x, y in pairs:
        if x is y:
            raise b.env.error(f"a link from '{x.full}' to itself", stmt.pos)
        b.add_link(x.full, y.full, spec.bandwidth, spec.latency, stmt.link_kind,
                   spec.plane or stmt.link_kind, scope.child("link"), spec.efficiency, stmt.pos)
