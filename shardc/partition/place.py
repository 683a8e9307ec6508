"""Binding a solution's logical device groups to physical devices.

The solver decides *how many* devices of which kind each stage uses; placement decides
*which*. Rules, in order of what they save:

1. a tensor-parallel group (the chattiest: several all-reduces per layer) sits inside
   the fastest bandwidth domain that can host all the groups of its stage. Domains come
   from the topology at decreasing bandwidth thresholds (its own link bandwidths), so an
   NVLink island is found without knowing what a "node" is — and if a file says the
   rails are faster than the node's own links, TP groups go along the rails;
2. stages are allocated outermost, replicas next, TP ranks innermost (Megatron's rank
   order pp > dp > tp): stage j's groups take the islands after stage j−1's, so pipeline
   neighbours are adjacent, and a data-parallel group (one rank of every replica of a
   stage) holds the same local index on different islands — one rail, no collisions
   with the other ranks' rings on rail-optimised fabrics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shardc.errors import InfeasibleError

if TYPE_CHECKING:
    from shardc.topology import Topology


@dataclass(frozen=True)
class StageDemand:
    """What one stage needs: ``dp`` groups of ``tp`` devices of ``kind``."""

    kind: str
    tp: int


@dataclass(frozen=True)
class Placement:
    """Physical device of every (replica, stage, tp rank), and the domains used."""

    devices: Mapping[tuple[int, int, int], str]
    domain_bandwidth: tuple[float, ...]
    """Per stage: the bandwidth threshold of the domain its TP groups sit in."""

    def tp_group(self, replica: int, stage: int) -> tuple[str, ...]:
        """Devices of one tensor-parallel group, in tp-rank order."""
        return tuple(
            d for (r, s, _), d in sorted(self.devices.items()) if (r, s) == (replica, stage)
        )

    def dp_group(self, stage: int, tp_rank: int) -> tuple[str, ...]:
        """Devices holding the same shard of one stage in every replica."""
        return tuple(
            d for (_, s, t), d in sorted(self.devices.items()) if (s, t) == (stage, tp_rank)
        )

    def explain(self) -> str:
        """One line per stage: its groups and the domain bandwidth they enjoy."""
        stages = sorted({s for _, s, _ in self.devices})
        lines = []
        for s in stages:
            groups = sorted({r for r, st, _ in self.devices if st == s})
            first = self.tp_group(groups[0], s)
            lines.append(
                f"stage {s}: {len(groups)} group(s) like {', '.join(first)} "
                f"in domains of >= {self.domain_bandwidth[s] / 1e9:.4g} GB/s"
            )
        return "\n".join(lines)


def _thresholds(topo: Topology) -> list[float]:
    """Distinct link bandwidths, fastest first, then 0 (anything connected)."""
    return [*sorted({link.bandwidth for link in topo.links}, reverse=True), 0.0]


def _domains(topo: Topology, threshold: float, free: Sequence[str]) -> list[list[str]]:
    """Free devices grouped by bandwidth domain, each in rank order, domains by first rank."""
    rank = {name: i for i, name in enumerate(free)}
    groups: list[list[str]] = []
    for d in topo.bandwidth_domains(threshold, hosts=False):
        members = sorted((m for m in d.devices if m in rank), key=rank.__getitem__)
        if members:
            groups.append(members)
    return sorted(groups, key=lambda g: rank[g[0]])


def _take_groups(
    topo: Topology, free: list[str], tp: int, count: int
) -> tuple[list[list[str]], float]:
    """``count`` groups of ``tp`` free devices, each inside the fastest possible domain."""
    for threshold in _thresholds(topo):
        domains = _domains(topo, threshold, free)
        if sum(len(d) // tp for d in domains) < count:
            continue
        groups: list[list[str]] = []
        for d in domains:
            while len(d) >= tp and len(groups) < count:
                groups.append(d[:tp])
                d = d[tp:]
        return groups, threshold
    raise InfeasibleError(
        f"cannot form {count} group(s) of {tp} connected devices from {len(free)} free ones"
    )


def place(topo: Topology, stages: Sequence[StageDemand], dp: int) -> Placement:
    """Assign devices to every (replica, stage, tp rank) of a plan."""
    free: dict[str, list[str]] = {}
    for dev in topo.compute_devices:
        free.setdefault(dev.kind.name, []).append(dev.name)
    need: dict[str, int] = {}
    for demand in stages:
        need[demand.kind] = need.get(demand.kind, 0) + dp * demand.tp
    for kind, n in sorted(need.items()):
        if n > len(free.get(kind, [])):
            raise InfeasibleError(
                f"the plan needs {n} {kind} devices, the topology has {len(free.get(kind, []))}",
                hint="fewer replicas, a smaller tensor-parallel degree or more devices",
            )
    devices: dict[tuple[int, int, int], str] = {}
    bandwidth: list[float] = []
    for j, demand in enumerate(stages):
        pool = free[demand.kind]
        groups, threshold = _take_groups(topo, pool, demand.tp, dp)
        bandwidth.append(threshold)
        used = {d for g in groups for d in g}
        free[demand.kind] = [d for d in pool if d not in used]
        for r, group in enumerate(groups):
            for t, dev_name in enumerate(group):
                devices[(r, j, t)] = dev_name
    return Placement(devices, tuple(bandwidth))
