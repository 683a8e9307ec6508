"""Time of collectives and point-to-point transfers: alpha-beta per algorithm.

A group of ranks is described by its *tiers*, innermost first: e.g. 16 GPUs on 2 DGX
nodes are ``[Tier(8 ranks over NVLink), Tier(2 ranks over InfiniBand)]``. Each tier gives
the per-rank bandwidth in one direction (B/s) and the latency of one algorithm step
(α, s). :func:`collective_time` evaluates every algorithm that applies and keeps the
fastest, as NCCL's tuner does:

* ring (Thakur et al. 2005; nccl-tests PERFORMANCE.md), over the slowest tier the ring
  crosses: all-reduce ``2(p−1)/p·S/B + 2(p−1)·α``; reduce-scatter and all-gather
  ``(p−1)/p·S/B + (p−1)·α`` with S the whole array;
* double binary tree (NCCL): all-reduce ``2·S/B + 2·⌈log2 p⌉·α`` — half the ring's
  algorithm bandwidth, logarithmic latency;
* hierarchical 2-level (REFERENCE §2.4): reduce-scatter inside the inner tier, ``g``
  concurrent all-reduces across the outer tier on ``S/g`` each, all-gather inside;
* direct, on a tier that is one full-bandwidth switch: every rank exchanges with every
  other at once, so the bandwidth term equals the ring's with one step of latency;
* NVLS / SHARP, on one switch that reduces in-network (``reduction`` in the topology):
  all-reduce ``S/(B·5/6) + 23 µs`` — each byte up and down once, NCCL's NVLS ratio;
* every algorithm but the tree pays NCCL's base latency per call (8.4 µs, Simple);
* all-to-all: pairwise exchange ``(p−1)/p·S/B + (p−1)·α`` at each rank's own bandwidth;
  across tiers the bytes that leave an inner group, ``(p−g)/p`` of them, ride the outer
  tier.

Results carry the nccl-tests figures: ``algbw = S/t`` and ``busbw = algbw·factor`` with
factor ``2(p−1)/p`` (all-reduce), ``(p−1)/p`` (all-gather, reduce-scatter, all-to-all),
``1`` (broadcast, send/recv), so estimates compare with published tables.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "broadcast", "send_recv")


@dataclass(frozen=True, slots=True)
class Tier:
    """One level of the hierarchy a collective spans."""

    size: int
    """Ranks (or groups of the tier below) that communicate at this level."""
    bandwidth: float
    """Per-rank bandwidth in one direction, B/s (NIC, or NVLink per GPU)."""
    latency: float
    """α: seconds per algorithm step at this level."""
    name: str = ""
    switched: bool = False
    """One full-bandwidth switch connects all members (NVSwitch, a UB switch plane)."""
    reduction: bool = False
    """The switch reduces in-network (NVLS on NVSwitch gen3+, SHARP on InfiniBand)."""


@dataclass(frozen=True, slots=True)
class CommEstimate:
    """A collective's time, the algorithm chosen and how it was bound."""

    op: str
    nbytes: float
    ranks: int
    seconds: float
    algorithm: str
    bottleneck: str
    latency_seconds: float
    bandwidth_seconds: float

    @property
    def algbw(self) -> float:
        """nccl-tests algorithm bandwidth, B/s."""
        return self.nbytes / self.seconds if self.seconds else math.inf

    @property
    def busbw(self) -> float:
        """nccl-tests bus bandwidth, B/s (comparable across rank counts)."""
        return self.algbw * bus_factor(self.op, self.ranks)

    def explain(self) -> str:
        """Which algorithm, which tier bound it, latency vs bandwidth terms."""
        return (
            f"{self.op} of {self.nbytes:.4g} B over {self.ranks} ranks: {self.algorithm}, "
            f"{self.seconds * 1e6:.4g} us (latency {self.latency_seconds * 1e6:.3g} us + "
            f"bandwidth {self.bandwidth_seconds * 1e6:.4g} us, bottleneck {self.bottleneck}); "
            f"algbw {self.algbw / 1e9:.4g} GB/s, busbw {self.busbw / 1e9:.4g} GB/s"
        )


def bus_factor(op: str, p: int) -> float:
    """nccl-tests busbw / algbw factor."""
    if p <= 1:
        return 1.0
    if op == "all_reduce":
        return 2 * (p - 1) / p
    if op in ("all_gather", "reduce_scatter", "all_to_all"):
        return (p - 1) / p
    return 1.0


def _ranks(tiers: Sequence[Tier]) -> int:
    return math.prod(t.size for t in tiers)


def _ring_bandwidth(tiers: Sequence[Tier]) -> tuple[float, Tier]:
    """Per-rank bandwidth of rings spanning ``tiers``, and the tier that limits it.

    NCCL runs one ring per NIC (channels), each crossing the outer tier at a different
    rank, so at tier k all the ranks below it send at once: its capacity per rank of
    the ring is ``bandwidth_k · (ranks inside one tier-k member)``.
    """
    best: tuple[float, Tier] | None = None
    below = 1
    for t in tiers:
        if t.size > 1:
            capacity = t.bandwidth * below
            if best is None or capacity < best[0]:
                best = (capacity, t)
        below *= t.size
    return best if best is not None else (tiers[0].bandwidth, tiers[0])


def _alpha(tiers: Sequence[Tier]) -> float:
    """Latency of one algorithm step: every hop moves a chunk at once, the slowest sets it."""
    return max((t.latency for t in tiers if t.size > 1), default=0.0)


NCCL_BASE_LATENCY = {"ring": 8.4e-6, "tree": 0.0, "nvls": 0.0}
"""NCCL's fixed cost per collective, Simple protocol (the one large training messages
use), by algorithm: ``baseLat`` of ``src/graph/tuning.cc`` (REFERENCE.md §2.3: ring
8.4 µs, tree 0). Direct, pairwise and hierarchical schedules are NCCL rings underneath
and pay the ring's."""
NVLS_LATENCY = 23e-6
"""NCCL's hardware latency of an NVLS (NVLink SHARP) collective inside a node, Simple
protocol (``hwLat[NVLINK][NVLS]``, REFERENCE.md §2.3)."""
NVLS_EFFICIENCY = 5 / 6
"""NCCL's algorithm-bandwidth ratio for NVLS (REFERENCE.md §2.3): in-switch reduction
moves each byte up and down once, at 5/6 of the links' bus bandwidth."""


def _estimate(
    op: str, s: float, p: int, algo: str, neck: Tier, lat: float, bw: float
) -> CommEstimate:
    lat += NCCL_BASE_LATENCY.get(algo, NCCL_BASE_LATENCY["ring"])
    return CommEstimate(op, s, p, lat + bw, algo, neck.name or "link", lat, bw)


def _ring(op: str, s: float, tiers: Sequence[Tier]) -> CommEstimate:
    """A flat ring through all ranks, paced by the slowest hop it crosses."""
    p = _ranks(tiers)
    bandwidth, neck = _ring_bandwidth(tiers)
    steps = {
        "all_reduce": 2 * (p - 1),
        "all_gather": p - 1,
        "reduce_scatter": p - 1,
        "broadcast": p - 1,
    }[op]
    volume = {"all_reduce": 2 * (p - 1) / p, "broadcast": 1.0}.get(op, (p - 1) / p)
    return _estimate(op, s, p, "ring", neck, steps * _alpha(tiers), volume * s / bandwidth)


def _pairwise(op: str, s: float, tiers: Sequence[Tier]) -> CommEstimate:
    """All-to-all by pairwise exchange: every rank's bytes leave through its own link,
    so, unlike a ring, it cannot borrow its neighbours' NICs.
    """
    p = _ranks(tiers)
    neck = min((t for t in tiers if t.size > 1), key=lambda t: t.bandwidth)
    return _estimate(
        op, s, p, "pairwise", neck, (p - 1) * _alpha(tiers), (p - 1) / p * s / neck.bandwidth
    )


def _tree(op: str, s: float, tiers: Sequence[Tier]) -> CommEstimate:
    """NCCL's double binary tree (all-reduce) or a pipelined binary tree (broadcast)."""
    p = _ranks(tiers)
    bandwidth, neck = _ring_bandwidth(tiers)
    depth = math.ceil(math.log2(p)) if p > 1 else 0
    factor = 2.0 if op == "all_reduce" else 1.0
    return _estimate(op, s, p, "tree", neck, factor * depth * _alpha(tiers), factor * s / bandwidth)


def _direct(op: str, s: float, tiers: Sequence[Tier]) -> CommEstimate:
    """All ranks on one full-bandwidth switch exchange with everyone at once."""
    (tier,) = [t for t in tiers if t.size > 1]
    p = tier.size
    phases = 2 if op == "all_reduce" else 1
    volume = {"all_reduce": 2 * (p - 1) / p, "broadcast": 1.0}.get(op, (p - 1) / p)
    return _estimate(op, s, p, "direct", tier, phases * tier.latency, volume * s / tier.bandwidth)


def _nvls(op: str, s: float, tiers: Sequence[Tier]) -> CommEstimate:
    """In-switch reduction (NVLS, SHARP): every rank sends its buffer to the switch once
    and receives the reduced result once — ``S`` each way instead of the ring's
    ``2(p−1)/p·S``, nearly half the traffic — at NCCL's NVLS bandwidth ratio.
    """
    (tier,) = [t for t in tiers if t.size > 1]
    bw = s / (tier.bandwidth * NVLS_EFFICIENCY)
    return _estimate(op, s, tier.size, "nvls", tier, NVLS_LATENCY, bw)


def _hierarchical(op: str, s: float, tiers: Sequence[Tier]) -> CommEstimate:
    """Two levels: inner reduce-scatter, outer all-reduce on S/g per rank, inner all-gather.

    All-gather and reduce-scatter keep only their half; all-to-all sends the share of
    bytes that leaves the inner group over the outer tier, all inner ranks' NICs at once.
    """
    inner, outer = tiers[0], tiers[1]
    g, n = inner.size, _ranks(tiers[1:])
    p = g * n
    neck = outer if outer.bandwidth * g < inner.bandwidth * n else inner
    if op == "all_to_all":
        lat = (g - 1) * inner.latency + (n - 1) * outer.latency
        bw = max((g - 1) / p * s / inner.bandwidth, (p - g) / p * s / outer.bandwidth)
        return _estimate(op, s, p, "hierarchical", outer, lat, bw)
    inner_phases = 2 if op == "all_reduce" else 1
    lat = inner_phases * (g - 1) * inner.latency
    bw = inner_phases * (g - 1) / g * s / inner.bandwidth
    outer_factor = 2 * (n - 1) / n if op == "all_reduce" else (n - 1) / n
    lat += (2 if op == "all_reduce" else 1) * (n - 1) * outer.latency
    bw += outer_factor * (s / g) / outer.bandwidth
    return _estimate(op, s, p, "hierarchical", neck, lat, bw)


Algorithm = Callable[[str, float, Sequence[Tier]], CommEstimate]


def _candidates(op: str, tiers: Sequence[Tier]) -> list[Algorithm]:
    active = [t for t in tiers if t.size > 1]
    algos: list[Algorithm] = [_pairwise if op == "all_to_all" else _ring]
    if op in ("all_reduce", "broadcast"):
        algos.append(_tree)
    if len(active) == 1 and active[0].switched:
        algos.append(_direct)
        if op == "all_reduce" and active[0].reduction:
            algos.append(_nvls)
    if len(active) >= 2 and op in ("all_reduce", "all_gather", "reduce_scatter", "all_to_all"):
        algos.append(lambda o, s, _t: _hierarchical(o, s, active))
    return algos


def collective_time(
    op: str, nbytes: float, tiers: Sequence[Tier], *, algorithm: str | None = None
) -> CommEstimate:
    """Fastest (or the named) algorithm for ``op`` on ``nbytes`` across ``tiers``.

    ``nbytes`` follows nccl-tests: the buffer each rank holds for all-reduce and
    broadcast, the whole array for all-gather and reduce-scatter, the send buffer of one
    rank for all-to-all.
    """
    if op not in COLLECTIVES or op == "send_recv":
        raise ValueError(f"unknown collective {op!r}; use transfer_time for send/recv")
    p = _ranks(tiers)
    if p <= 1 or nbytes <= 0:
        neck = tiers[0] if tiers else Tier(1, math.inf, 0.0, "local")
        return CommEstimate(op, nbytes, p, 0.0, "none", neck.name, 0.0, 0.0)
    options = [algo(op, nbytes, tiers) for algo in _candidates(op, tiers)]
    if algorithm is not None:
        options = [o for o in options if o.algorithm == algorithm]
        if not options:
            raise ValueError(f"algorithm {algorithm!r} does not apply to {op} on these tiers")
    return min(options, key=lambda e: (e.seconds, e.algorithm))


def transfer_time(
    nbytes: float, bandwidth: float, latency: float, name: str = "path"
) -> CommEstimate:
    """Send/Recv along a path: its summed latency plus bytes at its bottleneck bandwidth."""
    bw = nbytes / bandwidth if nbytes else 0.0
    return CommEstimate("send_recv", nbytes, 2, latency + bw, "p2p", name, latency, bw)


@dataclass(frozen=True, slots=True)
class Flow:
    """A transfer for contention analysis: its bytes and the links (ids) it crosses."""

    nbytes: float
    links: tuple[str, ...]
    latency: float = 0.0


def concurrent_transfer_times(flows: Sequence[Flow], capacity: dict[str, float]) -> list[float]:
    """Finish times of flows started together, sharing links max-min fairly.

    Progressive filling: every unfinished flow gets its fair share of its most loaded
    link; when a flow finishes, its share is handed to the others. Two transfers over
    one link each see half its bandwidth until one of them is done.
    """
    remaining = [f.nbytes for f in flows]
    done = [f.latency if f.nbytes <= 0 else math.inf for f in flows]
    now = 0.0
    active = {i for i, f in enumerate(flows) if f.nbytes > 0}
    while active:
        rates = _max_min_rates([flows[i] for i in sorted(active)], capacity)
        rate_of = dict(zip(sorted(active), rates, strict=True))
        step = min(remaining[i] / rate_of[i] for i in active)
        now += step
        for i in list(active):
            remaining[i] -= rate_of[i] * step
            if remaining[i] <= 1e-9 * max(flows[i].nbytes, 1.0):
                done[i] = now + flows[i].latency
                active.discard(i)
    return done


def _max_min_rates(flows: Sequence[Flow], capacity: dict[str, float]) -> list[float]:
    rates = [0.0] * len(flows)
    frozen = [False] * len(flows)
    left = dict(capacity)
    while not all(frozen):
        users: dict[str, list[int]] = {}
        for i, f in enumerate(flows):
            if not frozen[i]:
                for link in f.links:
                    users.setdefault(link, []).append(i)
        if not users:
            break
        link, idx = min(users.items(), key=lambda kv: (left[kv[0]] / len(kv[1]), kv[0]))
        share = left[link] / len(idx)
        for i in idx:
            rates[i] = share
            frozen[i] = True
            for other in flows[i].links:
                left[other] -= share
    return rates
