"""The topology as serving sees it: pools of one device kind, their scale-up islands,
the tiers a group's collectives run on, and the KV-cache transfer between two instances.

Every price here comes from the project's cost model: tiers from
:func:`shardc.cost.network.tier_options`, routes from :meth:`Topology.route`, contention
from :func:`shardc.cost.comm.concurrent_transfer_times`. This module only decides which
devices form a group and caches the answers, because the search asks the same few groups
thousands of times.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

from shardc.cost.comm import Flow, Tier, concurrent_transfer_times
from shardc.cost.network import tier_options
from shardc.errors import OptionError
from shardc.topology import Topology
from shardc.topology.model import DeviceKind


@dataclass(frozen=True)
class Pool:
    """All compute devices of one kind, in rank order, and how they group."""

    kind: DeviceKind
    devices: tuple[str, ...]
    island: int
    """Devices of this kind one scale-up domain joins (8 on a DGX node, 384 on CM384)."""

    @property
    def role(self) -> str | None:
        """The kind's ``role`` tag (``prefill``, ``decode``) or None."""
        return self.kind.role

    def allows(self, role: str) -> bool:
        """Whether an instance of ``role`` may run here: role-tagged parts keep to their role."""
        if self.role in ("prefill", "decode"):
            return role == self.role
        return True


@dataclass(frozen=True, slots=True)
class Transfer:
    """The KV cache of one request moved from a prefill to a decode instance on one plane."""

    plane: str
    nbytes: float
    seconds: float
    streams: int
    link_kinds: str


class Fabric:
    """Cached topology answers for the serving search."""

    def __init__(self, topo: Topology):
        self.topo = topo
        self._tiers: dict[tuple[str, ...], list[list[Tier]]] = {}

    @cached_property
    def pools(self) -> tuple[Pool, ...]:
        """One pool per compute device kind, in the order the kinds first appear."""
        by_kind: dict[str, list[str]] = {}
        kinds: dict[str, DeviceKind] = {}
        for d in sorted(self.topo.compute_devices, key=lambda d: d.rank):
            by_kind.setdefault(d.kind.name, []).append(d.name)
            kinds[d.kind.name] = d.kind
        return tuple(Pool(kinds[k], tuple(v), self._island(v)) for k, v in by_kind.items())

    def _island(self, members: Sequence[str]) -> int:
        """Largest group of ``members`` one plane joins, on the plane that joins the fewest.

        The innermost plane that still joins more than one member is the scale-up domain
        (NVLink per node); a plane joining all of them (UB on CloudMatrix384) makes the whole
        pool one island.
        """
        inside = set(members)
        best = 0
        for plane in self.topo.planes:
            sizes = [sum(1 for d in dom.devices if d in inside)
                     for dom in self.topo.bandwidth_domains(0.0, plane=plane)]
            size = max(sizes, default=0)
            if size > 1 and (best == 0 or size < best):
                best = size
        return max(best, 1)

    def tiers(self, devices: Sequence[str]) -> list[list[Tier]]:
        """The tier views of a device group (cached)."""
        key = tuple(devices)
        if key not in self._tiers:
            self._tiers[key] = tier_options(self.topo, key) if len(key) > 1 else [
                [Tier(1, math.inf, 0.0, "local")]]
        return self._tiers[key]

    def hop(self, a: str, b: str) -> tuple[float, float]:
        """(bandwidth B/s, latency s) of the best route from ``a`` to ``b``."""
        if a == b:
            return math.inf, 0.0
        r = self.topo.route(a, b)
        return r.bandwidth * r.efficiency, r.latency

    def kv_transfers(self, src: Sequence[str], dst: Sequence[str], nbytes: float) -> list[Transfer]:
        """One request's KV cache from prefill ranks ``src`` to decode ranks ``dst``, per plane.

        The cache is split over ``streams = min(len(src), len(dst))`` sender/receiver pairs
        (each TP rank sends its part, as Mooncake and DeepSeek's IBGDA transfers do); the
        pairs share the links they cross, priced max-min fairly. Planes that do not join
        both sides are left out.
        """
        streams = max(1, min(len(src), len(dst)))
        out: list[Transfer] = []
        for plane in self.topo.planes:
            flows: list[Flow] = []
            capacity: dict[str, float] = {}
            kinds: list[str] = []
            try:
                for i in range(streams):
                    if src[i] == dst[i]:
                        continue  # already in place
                    r = self.topo.route(src[i], dst[i], plane)
                    links = []
                    for u, v in zip(r.nodes, r.nodes[1:], strict=False):
                        link = f"{plane}:{u}->{v}"
                        data = self.topo.graph.get_edge_data(u, v, key=plane) or {}
                        capacity[link] = float(data.get("bandwidth", r.bandwidth)) * float(
                            data.get("efficiency", r.efficiency))
                        links.append(link)
                    flows.append(Flow(nbytes / streams, tuple(links), r.latency))
                    kinds.extend(r.kinds)
            except OptionError:  # the plane does not join these devices
                continue
            seconds = max(concurrent_transfer_times(flows, capacity), default=0.0)
            out.append(Transfer(plane, nbytes, seconds, streams,
                                "+".join(dict.fromkeys(kinds)) or plane))
        return sorted(out, key=lambda t: (t.seconds, t.plane))
