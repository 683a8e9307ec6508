"""Expert-parallel dispatch and combine: the all-to-all of a MoE layer over a topology (serving
and training both price it here).

REFERENCE.md §2.5. With E ranks of expert parallelism, T tokens per rank, hidden H, b bytes
per element and top-K routing, a token is sent once per *destination rank* (DeepEP and
CloudMatrix both deduplicate), so it reaches ``K_eff = E·(1 − (1 − 1/E)^K)`` ranks on
average, and the bytes one rank sends are ``T·K_eff·H·b·(E−1)/E``. Combine returns the
same volume, usually in bf16 even when dispatch is fp8/int8.

Across two tiers (g ranks per scale-up island, n islands) a token crosses the outer plane
once per destination island and is forwarded inside it (DeepSeek-V3 §3.2.2: IB once, then
NVLink), so the outer bytes are ``T·n_hit·H·b·(n−1)/n`` with ``n_hit = n·(1 − (1 − 1/n)^K)``,
capped by node-limited routing at M islands (V3: M = 4). Both tiers run at once; the
slower sets the time. One tier (an NVLink island, CloudMatrix384's UB plane) carries all
of it at its own bandwidth.

Decode steps use *low-latency* kernels instead (DeepEP's, REFERENCE.md §2.5: "pure
RDMA"): no forwarding, so every (token, expert) copy whose expert sits on another island
crosses the outer plane itself, ``T·K·H·b·(n−1)/n``, trading bytes for fewer hops.

The tiers come from :func:`shardc.cost.network.tier_options`, the same view every other
collective is priced on; the fastest view wins, as for any collective.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from shardc.cost.comm import Tier, collective_time


@dataclass(frozen=True, slots=True)
class AllToAllEstimate:
    """One MoE layer's dispatch + combine for one rank, and what bound it."""

    dispatch_seconds: float
    combine_seconds: float
    outer_bytes: float
    """Bytes one rank sends over the outer (scale-out) tier per dispatch."""
    inner_bytes: float
    """Bytes one rank sends over the inner (scale-up) tier per dispatch."""
    tiers: str

    @property
    def seconds(self) -> float:
        """Dispatch plus combine."""
        return self.dispatch_seconds + self.combine_seconds


def distinct_targets(groups: int, picks: int) -> float:
    """Expected distinct groups hit by ``picks`` uniform picks among ``groups``."""
    if groups <= 1:
        return 1.0
    return groups * (1.0 - (1.0 - 1.0 / groups) ** picks)


def _one_way(
    tiers: Sequence[Tier], tokens: float, hidden: int, top_k: int, elem_bytes: float,
    route_nodes: int, low_latency: bool = False,
) -> tuple[float, float, float]:
    """(seconds, outer bytes, inner bytes) of one dispatch (or combine) on ``tiers``."""
    active = [t for t in tiers if t.size > 1]
    if not active:
        return 0.0, 0.0, 0.0
    per_token = hidden * elem_bytes
    if len(active) == 1:
        (t,) = active
        e = t.size
        nbytes = tokens * distinct_targets(e, top_k) * per_token * (e - 1) / e
        return 2 * t.latency + nbytes / t.bandwidth, 0.0, nbytes
    inner, outer = active[0], active[-1]
    g, n = inner.size, outer.size
    if low_latency:  # every copy rides the outer plane straight to its expert's rank
        outer_bytes = tokens * top_k * per_token * (n - 1) / n
        inner_bytes = tokens * top_k * per_token * (g - 1) / (g * n)
        lat = 2 * outer.latency
        seconds = lat + max(outer_bytes / outer.bandwidth, inner_bytes / inner.bandwidth)
        return seconds, outer_bytes, inner_bytes
    hit = distinct_targets(n, top_k)
    if route_nodes:
        hit = min(hit, float(route_nodes))
    outer_bytes = tokens * hit * per_token * (n - 1) / n
    # inside each destination island the copy fans out to the ranks holding its experts
    per_island = max(1.0, top_k / hit)
    inner_bytes = tokens * hit * distinct_targets(g, round(per_island)) * per_token * (g - 1) / g
    lat = 2 * (inner.latency + outer.latency)
    seconds = lat + max(outer_bytes / outer.bandwidth, inner_bytes / inner.bandwidth)
    return seconds, outer_bytes, inner_bytes


def expert_alltoall(
    tier_views: Sequence[Sequence[Tier]],
    *,
    tokens_per_rank: float,
    hidden: int,
    top_k: int,
    dispatch_bytes: float,
    combine_bytes: float,
    route_nodes: int = 0,
    low_latency: bool = False,
) -> AllToAllEstimate:
    """Fastest dispatch + combine over the candidate tier views of the EP group."""
    best: AllToAllEstimate | None = None
    for tiers in tier_views:
        d, outer, inner = _one_way(tiers, tokens_per_rank, hidden, top_k, dispatch_bytes,
                                   route_nodes, low_latency)
        c, _, _ = _one_way(tiers, tokens_per_rank, hidden, top_k, combine_bytes, route_nodes,
                           low_latency)
        names = "+".join(t.name for t in tiers if t.size > 1) or "local"
        est = AllToAllEstimate(d, c, outer, inner, names)
        if best is None or (est.seconds, est.tiers) < (best.seconds, best.tiers):
            best = est
    return best if best is not None else AllToAllEstimate(0.0, 0.0, 0.0, 0.0, "local")


MOE_COMMS = ("alltoall", "allgather")
"""How a serving runtime moves a MoE layer's tokens to its experts and back.

``alltoall``: DeepEP-style dispatch + combine (DeepSeek's own serving, SGLang, vLLM with
DeepEP): each token goes only to the ranks holding its top-k experts
(:func:`expert_alltoall`). ``allgather``: TensorRT-LLM's default with attention data
parallelism + expert parallelism when no all-to-all backend is enabled
(``AlltoallMethodType.NotEnabled`` in ``tensorrt_llm/_torch/modules/fused_moe/interface.py``;
"Parallelism in TensorRT LLM", https://nvidia.github.io/TensorRT-LLM/features/parallel-strategy.html,
attention DP + EP for DeepSeek): every rank all-gathers every token's hidden state and
routing over the EP group, computes its local experts on the pairs routed to them, and a
reduce-scatter sums the partial outputs back to each token's own rank
(:func:`expert_allgather`)."""

ROUTING_BYTES_PER_PICK = 8.0
"""Bytes of routing an all-gather carries per (token, expert) pick: the int32 expert id
and the fp32 routing weight (TensorRT-LLM gathers ``token_selected_slots`` and
``token_final_scales`` with the hidden states)."""


def expert_allgather(
    tier_views: Sequence[Sequence[Tier]],
    *,
    tokens_per_rank: float,
    hidden: int,
    top_k: int,
    dispatch_bytes: float,
    combine_bytes: float,
) -> AllToAllEstimate:
    """Fastest all-gather + reduce-scatter of one MoE layer over the EP group's tier views.

    With E ranks of T tokens each, the all-gather's array is every rank's tokens,
    ``E·T·(H·b_dispatch + 8·K)`` bytes (hidden states plus routing), and the
    reduce-scatter's is ``E·T·H·b_combine``: each priced by
    :func:`shardc.cost.comm.collective_time` on the same tier views as the all-to-all, so
    NVLink and InfiniBand members are priced as for any collective. Unlike
    :func:`expert_alltoall` the bytes do not depend on routing: every rank receives every
    token, ``(E−1)·T`` of them, where the all-to-all sends ``T·K_eff·(E−1)/E``; so the
    all-gather moves ``E/K_eff`` times as much (more once ``E > K_eff``, i.e. always when
    ``E > 1`` and ``K ≥ 1``, since ``K_eff ≤ min(E, K)``). It can still be the faster one
    when the group is small (E ≤ K, where ``K_eff ≈ E`` and the bytes are close) and the
    collective's in-switch or ring algorithms beat the pairwise exchange's latency, or at
    decode's tiny messages where NCCL's per-call latency dominates both.
    """
    best: AllToAllEstimate | None = None
    for tiers in tier_views:
        e = math.prod(t.size for t in tiers)
        if e <= 1:
            continue
        gather = e * tokens_per_rank * (hidden * dispatch_bytes + ROUTING_BYTES_PER_PICK * top_k)
        scatter = e * tokens_per_rank * hidden * combine_bytes
        try:
            ag = collective_time("all_gather", gather, tiers)
            rs = collective_time("reduce_scatter", scatter, tiers)
        except ValueError:
            continue
        active = [t for t in tiers if t.size > 1]
        outer = gather * (e - active[0].size) / e if len(active) > 1 else 0.0
        names = "+".join(t.name for t in active) or "local"
        est = AllToAllEstimate(ag.seconds, rs.seconds, outer, gather * (e - 1) / e - outer,
                               names)
        if best is None or (est.seconds, est.tiers) < (best.seconds, best.tiers):
            best = est
    return best if best is not None else AllToAllEstimate(0.0, 0.0, 0.0, 0.0, "local")


def moe_exchange(
    scheme: str,
    tier_views: Sequence[Sequence[Tier]],
    *,
    tokens_per_rank: float,
    hidden: int,
    top_k: int,
    dispatch_bytes: float,
    combine_bytes: float,
    route_nodes: int = 0,
    low_latency: bool = False,
) -> AllToAllEstimate:
    """One MoE layer's token exchange under ``scheme`` (one of :data:`MOE_COMMS`)."""
    if scheme == "allgather":
        return expert_allgather(tier_views, tokens_per_rank=tokens_per_rank, hidden=hidden,
                                top_k=top_k, dispatch_bytes=dispatch_bytes,
                                combine_bytes=combine_bytes)
    if scheme != "alltoall":
        raise ValueError(f"unknown MoE exchange {scheme!r}; use {', '.join(MOE_COMMS)}")
    return expert_alltoall(tier_views, tokens_per_rank=tokens_per_rank, hidden=hidden,
                           top_k=top_k, dispatch_bytes=dispatch_bytes,
                           combine_bytes=combine_bytes, route_nodes=route_nodes,
                           low_latency=low_latency)
