"""Communication over a concrete topology: from a set of devices to timed collectives.

The topology answers per plane (:meth:`Topology.collective`, :meth:`Topology.route`);
this module composes those answers into the tiers :mod:`shardc.cost.comm` times:

1. the plane that joins *all* members with the most bandwidth gives a one-tier answer
   (a UB super-node, one NVLink island);
2. every other plane that splits the members into equal islands (NVLink per node) is a
   candidate inner tier, with the all-joining plane (InfiniBand) as the outer one;
3. the fastest of these per call wins, as NCCL picks per call.

Bandwidths are scaled by the links' efficiency factors from the topology file; α is the
plane's one-way latency between members.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from shardc.cost.comm import (
    CommEstimate,
    Flow,
    Tier,
    collective_time,
    concurrent_transfer_times,
    transfer_time,
)
from shardc.errors import OptionError

if TYPE_CHECKING:
    from shardc.topology import CollectiveBandwidth, Topology


def _tier(topo: Topology, cb: CollectiveBandwidth, size: int) -> Tier:
    kinds = "+".join(cb.kinds) or cb.plane
    switched = cb.hops <= 2 and cb.bandwidth >= cb.injection_bandwidth
    reducing = {s.name for s in topo.switches if s.reduction}
    reduction = switched and bool(cb.fabrics) and all(f in reducing for f in cb.fabrics)
    return Tier(size, cb.bandwidth * cb.efficiency, cb.latency, kinds, switched, reduction)


def _islands(topo: Topology, plane: str, members: Sequence[str]) -> list[list[str]] | None:
    """Members grouped by the connected pieces of ``plane`` they sit in."""
    domain_of: dict[str, int] = {}
    for i, d in enumerate(topo.bandwidth_domains(0.0, plane=plane, hosts=True)):
        for dev in d.devices:
            domain_of[dev] = i
    groups: dict[int, list[str]] = {}
    for m in members:
        if m not in domain_of:
            return None
        groups.setdefault(domain_of[m], []).append(m)
    return [groups[k] for k in sorted(groups)]


def tier_options(topo: Topology, devices: Iterable[str]) -> list[list[Tier]]:
    """Every way to see the group as tiers: one all-joining plane, or islands + outer."""
    members = list(dict.fromkeys(devices))
    if len(members) <= 1:
        return [[Tier(1, float("inf"), 0.0, "local")]]
    options: list[list[Tier]] = []
    outer: CollectiveBandwidth | None = None
    try:
        outer = topo.collective(members)
        options.append([_tier(topo, outer, len(members))])
    except OptionError:
        pass
    for plane in topo.planes:
        if outer is not None and plane == outer.plane:
            continue
        groups = _islands(topo, plane, members)
        if not groups or len(groups) == 1:
            continue
        sizes = [len(g) for g in groups]
        size = max(sizes)
        if size == 1 or outer is None:
            continue
        inner = topo.collective(groups[sizes.index(size)], plane=plane)
        if inner.bandwidth <= 0:
            # Islands joined only through a host that does not forward (GB200's C2C:
            # GPU-Grace-GPU) carry no device-to-device collective.
            continue
        options.append([_tier(topo, inner, size), _tier(topo, outer, len(groups))])
    if not options:
        raise OptionError(
            f"no plane connects the {len(members)} devices {members[0]}…{members[-1]}",
            hint="check the topology's fabrics: these devices cannot communicate",
        )
    return options


def group_collective(
    topo: Topology, op: str, nbytes: float, devices: Iterable[str], *, algorithm: str | None = None
) -> CommEstimate:
    """Fastest way to run ``op`` on ``nbytes`` among ``devices`` of ``topo``."""
    best: CommEstimate | None = None
    for tiers in tier_options(topo, devices):
        try:
            est = collective_time(op, nbytes, tiers, algorithm=algorithm)
        except ValueError:
            continue
        if best is None or (est.seconds, est.algorithm) < (best.seconds, best.algorithm):
            best = est
    if best is None:
        raise OptionError(f"algorithm {algorithm!r} does not apply to {op} on these devices")
    return best


def point_to_point(topo: Topology, a: str, b: str, nbytes: float) -> CommEstimate:
    """Send/Recv from ``a`` to ``b`` along the best route the topology has."""
    r = topo.route(a, b)
    est = transfer_time(nbytes, r.bandwidth * r.efficiency, r.latency, "+".join(r.kinds) or r.plane)
    return est


def pipeline_transfer(
    topo: Topology,
    src: str,
    dst: str,
    nbytes: float,
    tp_group: Sequence[str] = (),
    *,
    scatter_gather: bool = True,
    sharded: bool = False,
) -> float:
    """Seconds of one pipeline hand-off of ``nbytes`` from stage to stage.

    Megatron's scatter/gather (Narayanan et al. 2021, §4.1): each of the t ranks of a TP
    group sends 1/t over its own link (they run in parallel; timed on one pair), then the
    receiving group all-gathers the pieces over its fast links. ``sharded`` (sequence
    parallelism): the activation already lives split by t, so no gather is needed.
    """
    t = len(tp_group)
    if nbytes <= 0 or src == dst:
        return 0.0
    if t <= 1 or not (scatter_gather or sharded):
        return point_to_point(topo, src, dst, nbytes).seconds
    send = point_to_point(topo, src, dst, nbytes / t).seconds
    if sharded:
        return send
    return send + group_collective(topo, "all_gather", nbytes, tp_group).seconds


def concurrent_transfers(
    topo: Topology, transfers: Sequence[tuple[str, str, float]]
) -> list[CommEstimate]:
    """Send/Recv pairs ``(src, dst, bytes)`` started together, sharing real links.

    Each transfer follows its route; links are directed (bandwidth is per direction), so
    two transfers contend only where they cross the same link the same way — two
    pipeline stages sending over one node's uplink do, a send and its reply do not.
    """
    flows: list[Flow] = []
    capacity: dict[str, float] = {}
    routes = []
    for src, dst, nbytes in transfers:
        r = topo.route(src, dst)
        routes.append(r)
        links = []
        for u, v in zip(r.nodes, r.nodes[1:], strict=False):
            link = f"{r.plane}:{u}->{v}"
            data = topo.graph.get_edge_data(u, v, key=r.plane) or {}
            capacity[link] = float(data.get("bandwidth", r.bandwidth)) * float(
                data.get("efficiency", 1.0)
            )
            links.append(link)
        flows.append(Flow(nbytes, tuple(links), r.latency))
    finish = concurrent_transfer_times(flows, capacity)
    return [
        CommEstimate(
            "send_recv",
            nbytes,
            2,
            t,
            "p2p",
            "+".join(dict.fromkeys(r.kinds)) or r.plane,
            r.latency,
            t - r.latency,
        )
        for (_, _, nbytes), r, t in zip(transfers, routes, finish, strict=True)
    ]
