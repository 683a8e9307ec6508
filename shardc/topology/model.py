"""The elaborated cluster: device kinds, devices, switches and links, in SI base units.

This is what the rest of shardc sees; it knows nothing of the syntax that produced it.
A :class:`Topology` is immutable: queries (routes, bandwidth domains, collectives) are
computed on demand from indexes that are built once and cached on the instance. Two
topologies compare equal when their canonical forms do (see :mod:`.canonical`), so two
spellings of one cluster are equal even if their files look nothing alike.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from shardc.errors import OptionError

if TYPE_CHECKING:
    import networkx as nx

    from shardc.topology.graph import PlaneIndex
    from shardc.topology.queries import CollectiveBandwidth, Domain, Route

#: dtype names understood in ``compute`` lines; the cost model keys peak_flops by these
DTYPES = ("fp64", "fp32", "tf32", "bf16", "fp16", "fp8", "int8", "fp4", "int4")
INT_DTYPES = frozenset({"int8", "int4"})
#: a kind tagged ``role host`` (CPUs beside accelerators) gets no model work from the planner
HOST_ROLE = "host"


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True, slots=True)
class DeviceKind:
    """What one device of a kind can do. Rates are dense peaks; efficiencies in (0, 1]."""

    name: str
    peak_flops: Mapping[str, float]
    memory_bytes: float | None
    memory_bandwidth: float | None
    compute_efficiency: float = 1.0
    memory_efficiency: float = 1.0
    tags: Mapping[str, str] = field(default_factory=dict)
    compute_curve: tuple[tuple[float, float], ...] = ()
    """(seconds the op takes at peak, efficiency) points, ascending: ops too short to
    fill the device run below ``compute_efficiency`` (``efficiency compute E at T``)."""
    memory_curve: tuple[tuple[float, float], ...] = ()
    """(bytes moved, efficiency) points, ascending (``efficiency memory E at SIZE``)."""
    kernel_launch: float = 0.0
    """Seconds every kernel costs besides its work (``launch TIME``)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "peak_flops", _frozen(self.peak_flops))
        object.__setattr__(self, "tags", _frozen(self.tags))

    def __hash__(self) -> int:
        return hash(self.name)

    @property
    def role(self) -> str | None:
        """The ``role`` tag (``prefill``, ``decode``, ``host`` ...), if any."""
        return self.tags.get("role")

    @property
    def is_host(self) -> bool:
        """True for kinds the planner must not place model work on (``tag role host``)."""
        return self.role == HOST_ROLE


@dataclass(frozen=True, slots=True)
class Device:
    """One device: a stable dotted name (``node3.gpu5``), its kind, its rank.

    Ranks number devices 0, 1, 2 ... in declaration order; the planner and the runtime
    use them as process ranks.
    """

    name: str
    kind: DeviceKind
    rank: int

    def __hash__(self) -> int:
        return hash(self.name)


@dataclass(frozen=True, slots=True)
class Switch:
    """A switch node: the hub of a switched fabric, or a leaf/spine of a network."""

    name: str
    kind: str
    plane: str
    fabric: str
    tier: str = "switch"
    reduction: bool = False
    """Reduces in the switch (NVLink SHARP on NVSwitch gen3+, SHARP on InfiniBand): an
    all-reduce sends each byte up once and gets the sum back."""


@dataclass(frozen=True, slots=True)
class Link:
    """A full-duplex link; ``bandwidth`` is per direction (bytes/s), ``latency`` one-way (s)."""

    a: str
    b: str
    bandwidth: float
    latency: float
    kind: str
    plane: str
    fabric: str
    efficiency: float = 1.0


@dataclass(frozen=True, eq=False)
class Topology:
    """A cluster: devices of some kinds, joined by links on one or more planes.

    ``kinds`` holds the kinds the devices use; ``params`` the final values of the file's
    ``let`` parameters (after overrides). Build one with
    :func:`shardc.topology.load_topology`.
    """

    name: str
    kinds: Mapping[str, DeviceKind]
    devices: tuple[Device, ...]
    switches: tuple[Switch, ...]
    links: tuple[Link, ...]
    params: Mapping[str, int | float | str] = field(default_factory=dict)
    source: str | None = None

    # -------------------------------------------------------------- lookups
    @functools.cached_property
    def _by_name(self) -> dict[str, Device]:
        return {d.name: d for d in self.devices}

    def device(self, name: str) -> Device:
        """The device called ``name``; :class:`OptionError` if there is none."""
        try:
            return self._by_name[name]
        except KeyError:
            from shardc.topology.diagnostics import did_you_mean

            raise OptionError(
                f"no device named '{name}' in topology {self.name}",
                hint=did_you_mean(name, self._by_name),
            ) from None

    @property
    def compute_devices(self) -> tuple[Device, ...]:
        """Devices the planner may place work on (all but ``role host`` kinds)."""
        return tuple(d for d in self.devices if not d.kind.is_host)

    @property
    def planes(self) -> tuple[str, ...]:
        """Plane names, sorted."""
        return tuple(sorted({link.plane for link in self.links}))

    def aggregate_flops(self, dtype: str) -> float:
        """Sum of the dense peaks for ``dtype`` over compute devices (0 where unsupported)."""
        return sum(d.kind.peak_flops.get(dtype, 0.0) for d in self.compute_devices)

    def aggregate_memory(self) -> float:
        """Total device memory in bytes over compute devices."""
        return sum(d.kind.memory_bytes or 0.0 for d in self.compute_devices)

    # -------------------------------------------------------------- views and queries
    @functools.cached_property
    def graph(self) -> nx.MultiGraph:
        """The networkx view: device and switch nodes; one edge per link, keyed by plane."""
        from shardc.topology.graph import to_networkx

        return to_networkx(self)

    @functools.cached_property
    def index(self) -> PlaneIndex:
        """Per-plane adjacency lists used by the queries (faster than networkx views)."""
        from shardc.topology.graph import PlaneIndex

        return PlaneIndex(self)

    def route(self, a: str, b: str, plane: str | None = None) -> Route:
        """The best route from device ``a`` to ``b``; see :func:`.queries.route`."""
        from shardc.topology.queries import route

        return route(self, a, b, plane)

    def routes(self, a: str, b: str) -> dict[str, Route]:
        """One route per plane that joins ``a`` and ``b``."""
        from shardc.topology.queries import routes

        return routes(self, a, b)

    def bandwidth_domains(
        self, min_bandwidth: float = 0.0, *, plane: str | None = None, hosts: bool = False
    ) -> list[Domain]:
        """Maximal device sets joined by links of at least ``min_bandwidth`` bytes/s.

        Memoised: placement and collective pricing ask the same few thresholds tens of
        thousands of times while a partition is searched.
        """
        from shardc.topology.queries import bandwidth_domains

        key = (min_bandwidth, plane, hosts)
        memo = self._domain_memo
        if key not in memo:
            memo[key] = tuple(bandwidth_domains(self, min_bandwidth, plane=plane, hosts=hosts))
        return list(memo[key])

    @functools.cached_property
    def _domain_memo(self) -> dict[tuple[float, str | None, bool], tuple[Domain, ...]]:
        return {}

    def domains_by_plane(self, *, hosts: bool = False) -> dict[str, list[Domain]]:
        """For each plane, the device sets it connects (NVLink islands, the UB super-node)."""
        from shardc.topology.queries import bandwidth_domains

        return {p: bandwidth_domains(self, plane=p, hosts=hosts) for p in self.planes}

    def collective(self, devices: Iterable[str], plane: str | None = None) -> CollectiveBandwidth:
        """Which plane carries a collective among ``devices`` and at what per-device rate."""
        from shardc.topology.queries import collective

        return collective(self, devices, plane)

    # -------------------------------------------------------------- canonical form
    def canonical(self) -> dict[str, Any]:
        """The spelling-independent description (see :mod:`.canonical`)."""
        from shardc.topology.canonical import canonical

        return canonical(self)

    def to_json(self) -> str:
        """Canonical JSON: deterministic, byte-identical across runs."""
        from shardc.topology.canonical import to_json

        return to_json(self)

    def to_dsl(self) -> str:
        """Canonical topology text that parses back to an equal topology."""
        from shardc.topology.canonical import to_dsl

        return to_dsl(self)

    @functools.cached_property
    def _canonical_json(self) -> str:
        return self.to_json()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Topology):
            return NotImplemented
        return self._canonical_json == other._canonical_json

    def __hash__(self) -> int:
        return hash(self._canonical_json)

    def __repr__(self) -> str:
        return (
            f"Topology({self.name!r}, {len(self.devices)} devices, {len(self.switches)} "
            f"switches, {len(self.links)} links, planes={list(self.planes)})"
        )
