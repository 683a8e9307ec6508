"""Questions the cost model and the planner ask of a topology.

* :func:`route` — the path between two devices on one plane (fewest hops, and among
  those the widest, then the fastest), with its bottleneck bandwidth and latency.
* :func:`bandwidth_domains` — the largest device sets that all reach each other over
  links of at least X bytes/s: the NVLink island, the UB super-node. Union-find over the
  links, so the cost is linear in the number of links; switches make that number linear
  in the number of devices, never quadratic.
* :func:`collective` — which plane would carry a collective among a device set, and what
  each device can push when all push at once. One breadth-first search from one member
  builds the routing tree; each switch-to-switch edge of the tree is shared by the
  ``k`` members behind it, so it limits each of them to ``bandwidth / min(k, n - k)``
  (the bisection share); each member is also limited by what it can inject into the
  plane. Hops and latency are measured from the first member, which is exact for the
  symmetric fabrics the language builds (switches, meshes, leaf/spine).

All rates are bytes/s per direction and all times seconds, like the rest of the model.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from shardc.errors import OptionError
from shardc.topology.graph import PlaneIndex
from shardc.topology.model import Topology


@dataclass(frozen=True, slots=True)
class Route:
    """A path between two devices on one plane."""

    plane: str
    nodes: tuple[str, ...]
    bandwidth: float  # the narrowest link on the path
    latency: float  # sum of the links' one-way latencies
    hops: int
    kinds: tuple[str, ...]  # link kind of each hop, in order
    efficiency: float  # the lowest link efficiency on the path


@dataclass(frozen=True, slots=True)
class Domain:
    """Devices that all reach each other over links of at least ``min_bandwidth``."""

    devices: tuple[str, ...]  # in rank order
    planes: tuple[str, ...]
    min_bandwidth: float  # the narrowest qualifying link inside the domain
    kinds: tuple[tuple[str, int], ...]  # (device kind, count), by kind name

    @property
    def size(self) -> int:
        """Number of devices."""
        return len(self.devices)


@dataclass(frozen=True, slots=True)
class CollectiveBandwidth:
    """What a collective among ``size`` devices gets from the plane that carries it.

    ``bandwidth`` is what every member can send at once (limited by its injection and by
    shared uplinks); ``link_bandwidth`` is the narrowest link on the routing tree (what a
    ring step sees); the cost model picks the figure its algorithm needs.
    """

    plane: str
    size: int
    bandwidth: float
    link_bandwidth: float
    injection_bandwidth: float
    hops: int
    latency: float
    efficiency: float
    kinds: tuple[str, ...]
    fabrics: tuple[str, ...]


# --------------------------------------------------------------------------- routes
def routes(topo: Topology, a: str, b: str) -> dict[str, Route]:
    """One route per plane that joins devices ``a`` and ``b``, by plane name."""
    topo.device(a), topo.device(b)
    index: PlaneIndex = topo.index
    found = {}
    for plane in sorted(index.adj):
        r = _route_on(index, plane, a, b)
        if r is not None:
            found[plane] = r
    return found


def route(topo: Topology, a: str, b: str, plane: str | None = None) -> Route:
    """The route from ``a`` to ``b`` on ``plane``, or on the best plane if ``None``.

    Best means the highest bottleneck bandwidth, then the lowest latency. Raises
    :class:`OptionError` if no plane (or not the given one) joins the two.
    """
    if a == b:
        topo.device(a)
        return Route("", (a,), math.inf, 0.0, 0, (), 1.0)
    candidates = routes(topo, a, b)
    if plane is not None:
        if plane not in candidates:
            raise OptionError(f"plane '{plane}' does not join '{a}' and '{b}'",
                              hint=f"planes that do: {', '.join(candidates) or 'none'}")
        return candidates[plane]
    if not candidates:
        raise OptionError(f"no plane joins '{a}' and '{b}'")
    return min(candidates.values(), key=lambda r: (-r.bandwidth, r.latency, r.plane))


def route_tree(
    index: PlaneIndex, plane: str, a: str, stop: str | None = None
) -> dict[str, tuple[float, float, str | None, int]]:
    """Node -> (width, latency, previous node, link index) of the widest (then fastest)
    among the shortest routes from ``a`` on ``plane``; with ``stop``, only as far as the
    layer that reaches it. One search serves :func:`route` (one destination) and a
    sender's many destinations (the serving traffic routes every peer of an EP group),
    so both pick the same paths.
    """
    adj = index.adj.get(plane, {})
    if a not in adj:
        return {}
    dist = {a: 0}
    order = [a]
    queue = deque([a])
    while queue and (stop is None or stop not in dist):
        node = queue.popleft()
        for nbr, _ in adj[node]:
            if nbr not in dist:
                dist[nbr] = dist[node] + 1
                order.append(nbr)
                queue.append(nbr)
    if stop is not None and stop not in dist:
        return {}
    # widest (then fastest) among the shortest paths: a DP over the BFS layers
    links = index.links
    best: dict[str, tuple[float, float, str | None, int]] = {a: (math.inf, 0.0, None, -1)}
    for node in order[1:]:
        if stop is not None and dist[node] > dist[stop]:
            break
        for prev, i in adj[node]:
            if dist.get(prev) == dist[node] - 1 and prev in best:
                width, lat = best[prev][0], best[prev][1]
                cand = (min(width, links[i].bandwidth), lat + links[i].latency, prev, i)
                old = best.get(node)
                if old is None or (-cand[0], cand[1]) < (-old[0], old[1]):
                    best[node] = cand
    return best


def _route_on(index: PlaneIndex, plane: str, a: str, b: str) -> Route | None:
    adj = index.adj[plane]
    if a not in adj or b not in adj:
        return None
    best = route_tree(index, plane, a, stop=b)
    if b not in best:
        return None
    links = index.links
    path, used, node = [b], [], b
    while node != a:
        _, _, before, i = best[node]
        assert before is not None  # only the start has no predecessor
        used.append(links[i])
        path.append(before)
        node = before
    used.reverse()
    return Route(plane, tuple(reversed(path)), best[b][0], best[b][1], len(used),
                 tuple(link.kind for link in used), min(link.efficiency for link in used))


# --------------------------------------------------------------------------- domains
def bandwidth_domains(
    topo: Topology, min_bandwidth: float = 0.0, *, plane: str | None = None, hosts: bool = False
) -> list[Domain]:
    """Connected device sets over links with ``bandwidth >= min_bandwidth`` (bytes/s).

    Restricted to one plane if given. Host devices (``role host``) are left out unless
    ``hosts``. Only devices with at least one qualifying link appear. Sorted by rank.
    """
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    qualifying = [
        link for link in topo.links
        if link.bandwidth >= min_bandwidth and (plane is None or link.plane == plane)
    ]
    for link in qualifying:
        parent.setdefault(link.a, link.a)
        parent.setdefault(link.b, link.b)
        ra, rb = find(link.a), find(link.b)
        if ra != rb:
            parent[ra] = rb
    groups: dict[str, list] = {}
    for device in topo.devices:
        if device.name in parent and (hosts or not device.kind.is_host):
            groups.setdefault(find(device.name), []).append(device)
    narrowest: dict[str, float] = {}
    planes: dict[str, set[str]] = {}
    for link in qualifying:
        root = find(link.a)
        narrowest[root] = min(narrowest.get(root, math.inf), link.bandwidth)
        planes.setdefault(root, set()).add(link.plane)
    domains = []
    for root, members in groups.items():
        counts: dict[str, int] = {}
        for device in members:
            counts[device.kind.name] = counts.get(device.kind.name, 0) + 1
        domains.append(Domain(tuple(d.name for d in members), tuple(sorted(planes[root])),
                              narrowest[root], tuple(sorted(counts.items()))))
    return sorted(domains, key=lambda d: topo.device(d.devices[0]).rank)


# --------------------------------------------------------------------------- collectives
def collective(topo: Topology, devices: Iterable[str], plane: str | None = None
               ) -> CollectiveBandwidth:
    """The plane and per-device bandwidth for a collective among ``devices``.

    With ``plane=None`` every plane joining all members is tried and the one giving the
    highest ``bandwidth`` (then lowest latency) wins. Raises :class:`OptionError` if no
    plane joins them all: a collective over several planes (NVLink inside nodes, IB
    between them) is for the cost model to compose from per-plane answers.
    """
    members = list(dict.fromkeys(devices))
    if not members:
        raise OptionError("a collective needs at least one device")
    for name in members:
        topo.device(name)
    if len(members) == 1:
        return CollectiveBandwidth("", 1, math.inf, math.inf, math.inf, 0, 0.0, 1.0, (), ())
    index: PlaneIndex = topo.index
    planes = [plane] if plane is not None else sorted(index.adj)
    results = [r for p in planes if p in index.adj
               for r in [_collective_on(index, p, members)] if r is not None]
    if not results:
        where = f"plane '{plane}'" if plane else "no single plane"
        raise OptionError(f"{where} joins all {len(members)} devices",
                          hint="split the group by plane (e.g. per node) and combine")
    return min(results, key=lambda r: (-r.bandwidth, r.latency, r.hops, r.plane))


def _collective_on(index: PlaneIndex, plane: str, members: list[str]
                   ) -> CollectiveBandwidth | None:
    adj, links = index.adj[plane], index.links
    if any(m not in adj for m in members):
        return None
    root, wanted = members[0], set(members)
    parent: dict[str, tuple[str, int]] = {}
    dist, lat = {root: 0}, {root: 0.0}
    queue, missing = deque([root]), len(wanted) - 1
    while queue and missing:
        node = queue.popleft()
        for nbr, i in adj[node]:
            if nbr not in dist:
                dist[nbr], lat[nbr] = dist[node] + 1, lat[node] + links[i].latency
                parent[nbr] = (node, i)
                queue.append(nbr)
                missing -= nbr in wanted
    if missing:
        return None
    behind: dict[int, int] = {}  # tree link -> members on its far side from the root
    for m in members[1:]:
        node = m
        while node != root:
            node, i = parent[node]
            behind[i] = behind.get(i, 0) + 1
    n = len(members)
    cut = min((links[i].bandwidth / min(k, n - k) for i, k in behind.items()
               if links[i].a in index.switches and links[i].b in index.switches),
              default=math.inf)
    injection = min(sum(links[i].bandwidth for nbr, i in adj[m]
                        if nbr in index.switches or nbr in wanted) for m in members)
    used = [links[i] for i in behind]
    return CollectiveBandwidth(
        plane=plane, size=n, bandwidth=min(cut, injection),
        link_bandwidth=min(link.bandwidth for link in used),
        injection_bandwidth=injection,
        hops=max(dist[m] for m in members), latency=max(lat[m] for m in members),
        efficiency=min(link.efficiency for link in used),
        kinds=tuple(sorted({link.kind for link in used})),
        fabrics=tuple(sorted({link.fabric for link in used})),
    )
