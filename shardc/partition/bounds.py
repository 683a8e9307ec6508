"""Bounds and incumbents for a :class:`PartitionProblem`, without a solver.

Why apart from :mod:`shardc.partition.cpsat`: the even Megatron grid (an incumbent every
CP-SAT run starts from), the lower bounds that prune stage counts and widths and prove
plans optimal, and the quick memory checks are closed-form arithmetic on the problem;
the search and the benchmark read them without building a CP-SAT model.
"""

from __future__ import annotations

import math

import numpy as np

from shardc.partition.problem import (
    PartitionProblem,
    Solution,
    StagePlan,
    activation_factor,
    block_sync,
    in_flight,
    score,
    violations,
)


def uniform(p: PartitionProblem, s: int) -> Solution | None:
    """The best plan giving every stage the same configuration and an even share of the
    blocks (a Megatron grid; the remainder goes to the last stages, which hold the fewest
    micro-batches in flight), or None if none is legal. Cheap, so it seeds every CP-SAT
    run and guarantees the answer is never worse than the best even grid.
    """
    if s > p.blocks:
        return None
    base, extra = divmod(p.blocks, s)
    sizes = [base + (j >= s - extra) for j in range(s)]
    if p.interleave > 1 and any(n % p.interleave for n in sizes):
        return None
    best: Solution | None = None
    for c in p.configs:
        plan = tuple(StagePlan(c.name, n) for n in sizes)
        if violations(p, plan):
            continue
        sc = score(p, plan)
        if best is None or sc < best.seconds:
            best = Solution(plan, sc, "FEASIBLE")
    return best


def lower_bound(p: PartitionProblem, s: int) -> float:
    """A score no plan with ``s`` stages can beat.

    Stage ``j`` takes at least ``n_j · b_j + e_j`` (its blocks at its configuration's
    block time, plus the prologue, epilogue and boundary transfers it carries), so
    ``n_j ≤ (T − e_j) / b_j`` and the blocks fit only if
    ``L + Σ_j e_j / b_j ≤ T · Σ_j 1 / b_j``. That sum of rates is at most ``s`` times the
    fastest configuration's rate and, because stage ``j`` occupies ``dp · tp_j``
    devices, at most the best blocks-per-second-per-device of each kind times the
    devices of that kind. Memory is ignored, so the bound is loose but never wrong.
    """
    cs = [c for c in p.configs if c.block_seconds > 0]
    if not cs:
        return 0.0
    rate = max(1.0 / c.block_seconds for c in cs)
    per_device: dict[str, float] = {}
    for c in cs:
        per_device[c.kind] = max(per_device.get(c.kind, 0.0), 1.0 / (c.block_seconds * c.width))
    device_rate = sum(r * p.devices.get(k, 0) / p.dp for k, r in per_device.items())
    # the ends and transfers in block-equivalents of whichever configuration carries them
    extra = min(c.prologue_seconds / c.block_seconds for c in cs)
    extra += min(c.epilogue_seconds / c.block_seconds for c in cs)
    if s > 1 and not p.overlap_p2p:
        extra += s * p.interleave * min(c.p2p_seconds / c.block_seconds for c in cs)
    fill = 0.0
    if p.overlap_p2p and s > 1:
        fill = (p.interleave * s - 1) * min(c.p2p_seconds for c in cs)
    work = p.blocks + extra
    if p.objective == "latency":
        return work / rate + (s - 1) * p.p2p_seconds
    t = work / min(s * rate, device_rate) if device_rate > 0 else work / (s * rate)
    t = max(t, memory_bound_pace(p, s))
    if p.interleave > 1:
        return (p.microbatches + (s - 1) / p.interleave) * t + (s - 1) * p.p2p_seconds + (
            p.blocks * min(block_sync(p, c, s) for c in p.configs) / s
        ) + fill
    sync = p.blocks * min(block_sync(p, c, s) for c in p.configs)
    sync += min(c.prologue_sync for c in p.configs) + min(c.epilogue_sync for c in p.configs)
    if s == 1:
        sync -= max(c.tied_sync for c in p.configs)
    return (p.microbatches + s - 1) * t + (s - 1) * p.p2p_seconds + sync / s + fill


def memory_bound_pace(p: PartitionProblem, s: int) -> float:
    """The least slowest-stage time ``T`` at which ``s`` stages can hold the blocks when
    each stage's configuration must fit its blocks in memory.

    Relaxation (so a valid bound): each stage picks its configuration alone, except that
    on a one-kind pool the stages' devices (``dp · tp``) may not exceed the pool (an exact
    multiple-choice knapsack); block counts stay whole multiples of v;
    stage j may take, on configuration c, at most ``min(cap_cj, (T − e_cj) / b_c)``
    blocks, ``cap_cj`` its memory allows at its own in-flight count and ``e_cj`` what it
    carries besides blocks. ``T`` is found by bisection on ``Σ_j max_c … ≥ L``. Without
    it the bound prices every block at the fastest configuration even where that one
    does not fit, and big models stop with 10-20 % gaps.
    """
    if p.objective == "latency":
        return 0.0
    cs = [c for c in p.configs if c.block_seconds > 0]
    if not cs:
        return 0.0
    rows = []  # per stage: (cap, ends, block seconds) of every allowed configuration
    for j in range(s):
        inflight = in_flight(p, s, j) * activation_factor(p, s)
        opts = []
        for c in cs:
            if not p.allowed(j, c.name):
                continue
            fixed = c.workspace_bytes + (c.prologue_bytes if j == 0 else 0.0)
            fixed += c.epilogue_bytes if j == s - 1 else 0.0
            fixed -= c.tied_bytes if s == 1 else 0.0
            per = c.block_static_bytes + c.block_activation_bytes * inflight
            room = p.capacity[c.kind] - fixed
            cap = room / per if per > 0 else float(p.blocks)
            if cap < 1:
                continue
            ends = (c.prologue_seconds if j == 0 else 0.0) + (
                c.epilogue_seconds if j == s - 1 else 0.0
            )
            ends += c.p2p_seconds * p.interleave if s > 1 and not p.overlap_p2p else 0.0
            opts.append((min(cap, float(p.blocks)), ends, c.block_seconds, p.dp * c.width))
        if not opts:
            return float("inf")
        rows.append(opts)

    v = max(p.interleave, 1)
    kinds = {c.kind for c in cs}
    budget = p.devices.get(next(iter(kinds)), 0) if len(kinds) == 1 else 0
    unit = math.gcd(*(o[3] for opts in rows for o in opts)) if budget else 1
    limited = budget > 0 and sum(max(o[3] for o in opts) for opts in rows) > budget
    # Flat arrays over every (stage, option), so one pace is priced in a few numpy ops.
    flat = [(j, *o) for j, opts in enumerate(rows) for o in opts]
    stage = np.array([f[0] for f in flat])
    caps, extra, secs = (np.array([f[i] for f in flat]) for i in (1, 2, 3))
    sizes = sorted({f[4] for f in flat})
    col = np.array([sizes.index(f[4]) for f in flat])
    steps = [u // unit for u in sizes]
    room = budget // unit

    def held(t: float) -> float:
        n = np.floor(np.minimum(caps, np.maximum(0.0, (t - extra) / secs)) / v + 1e-9) * v
        most = np.full((s, len(sizes)), -np.inf)  # per stage, per devices taken
        np.maximum.at(most, (stage, col), n)
        if not limited:
            return float(most.max(axis=1).sum())
        # Devices bind: the stages share one kind's pool, so each stage's configuration
        # is a multiple-choice knapsack item (devices taken, blocks held), solved exactly.
        best = np.full(room + 1, -np.inf)
        best[0] = 0.0
        for j in range(s):
            nxt = np.full(room + 1, -np.inf)
            for u, k in enumerate(steps):
                if k <= room and most[j, u] > -np.inf:
                    np.maximum(nxt[k:], best[: room + 1 - k] + most[j, u], out=nxt[k:])
            best = nxt
        return float(best.max())

    hi = max(e + p.blocks * b for opts in rows for _, e, b, _ in opts)
    if held(hi) < p.blocks:
        return float("inf")  # memory cannot hold the blocks in s stages at any pace
    lo = 0.0
    for _ in range(45):  # 2^-45 of the range: far below the solver's resolution
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if held(mid) >= p.blocks else (mid, hi)
    return lo


def blocks_per_stage(p: PartitionProblem) -> int:
    """The most blocks one stage can hold on any configuration (one micro-batch in
    flight, no prologue or epilogue): fewer stages than ``L`` over this cannot fit.
    """
    most = 0
    for c in p.configs:
        per_block = c.block_static_bytes + c.block_activation_bytes
        room = p.capacity[c.kind] - c.workspace_bytes
        if room >= per_block:
            most = max(most, int(room // per_block) if per_block > 0 else p.blocks)
    return most


def fits_in_total(p: PartitionProblem) -> bool:
    """Whether the blocks fit in the pool's memory at all: stage ``j`` puts
    ``n_j · w_j`` bytes on each of its ``dp · tp_j`` devices, so the pool must hold at
    least ``L`` times the cheapest ``dp · tp · w`` of any configuration.
    """
    cheapest = min(
        p.dp * c.width * (c.block_static_bytes + c.block_activation_bytes) for c in p.configs
    )
    total = sum(p.capacity.get(k, 0.0) * n for k, n in p.devices.items())
    return p.blocks * cheapest <= total
