"""The CP-SAT partitioner against brute force over the same scoring function."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardc.errors import InfeasibleError
from shardc.partition import PartitionProblem, StageConfig, StagePlan, score, violations
from shardc.partition.cpsat import solve

GB = 1e9


def brute_force(p: PartitionProblem) -> float:
    """Every stage count, every composition of the blocks, every config per stage."""
    best = float("inf")
    counts = [p.pinned_stages] if p.pinned_stages else range(1, min(p.max_stages, p.blocks) + 1)
    for s in counts:
        for cuts in itertools.combinations(range(1, p.blocks), s - 1):
            sizes = [b - a for a, b in zip((0, *cuts), (*cuts, p.blocks), strict=True)]
            for cfgs in itertools.product(p.configs, repeat=s):
                if not all(p.allowed(j, c.name) for j, c in enumerate(cfgs)):
                    continue
                plan = tuple(StagePlan(c.name, n) for c, n in zip(cfgs, sizes, strict=True))
                if not violations(p, plan):
                    best = min(best, score(p, plan))
    return best


def _cfg(name, kind, tp, t, static=1 * GB, act=0.5 * GB, **kw) -> StageConfig:
    return StageConfig(name, kind, tp, t, static, act, **kw)


def test_homogeneous_pipeline_splits_evenly_and_matches_brute_force() -> None:
    p = PartitionProblem(
        blocks=8,
        configs=(_cfg("tp1", "gpu", 1, 1.0), _cfg("tp2", "gpu", 2, 0.6)),
        devices={"gpu": 8},
        capacity={"gpu": 6 * GB},
        microbatches=8,
        max_stages=4,
        p2p_seconds=0.01,
    )
    sol = solve(p)
    assert sol.status == "OPTIMAL" and sol.gap == 0
    assert sol.seconds == pytest.approx(brute_force(p))
    assert not violations(p, sol.stages)


def test_memory_limits_force_more_stages_or_tensor_parallelism() -> None:
    """With a real cost per stage boundary, 3 stages of 2 blocks is best, unless a device
    holds only one block: then memory forces 6 stages.
    """
    cfg = (_cfg("tp1", "gpu", 1, 1.0, static=1 * GB, act=0),)
    roomy = PartitionProblem(
        blocks=6,
        configs=cfg,
        devices={"gpu": 8},
        capacity={"gpu": 100 * GB},
        microbatches=4,
        p2p_seconds=2.0,
    )
    tight = PartitionProblem(
        blocks=6,
        configs=cfg,
        devices={"gpu": 8},
        capacity={"gpu": 1.5 * GB},
        microbatches=4,
        p2p_seconds=2.0,
    )
    assert [s.blocks for s in solve(roomy).stages] == [2, 2, 2]
    assert [s.blocks for s in solve(tight).stages] == [1] * 6
    assert solve(roomy).seconds == pytest.approx(brute_force(roomy))


def test_heterogeneous_pool_gets_uneven_stages() -> None:
    """A fast kind and a slow kind: the fast one's stage takes more blocks (Metis-style)."""
    p = PartitionProblem(
        blocks=12,
        configs=(_cfg("h100", "h100", 1, 1.0), _cfg("h20", "h20", 1, 3.0)),
        devices={"h100": 1, "h20": 1},
        capacity={"h100": 80 * GB, "h20": 96 * GB},
        microbatches=16,
        max_stages=2,
    )
    sol = solve(p)
    blocks = {s.config: s.blocks for s in sol.stages}
    assert blocks["h100"] == 9 and blocks["h20"] == 3
    assert sol.seconds == pytest.approx(brute_force(p))


def test_latency_objective_and_pins() -> None:
    cfgs = (_cfg("tp1", "gpu", 1, 1.0), _cfg("tp4", "gpu", 4, 0.3))
    p = PartitionProblem(
        blocks=4,
        configs=cfgs,
        devices={"gpu": 4},
        capacity={"gpu": 80 * GB},
        objective="latency",
        p2p_seconds=0.05,
    )
    sol = solve(p)
    assert [s.config for s in sol.stages] == ["tp4"] and sol.seconds == pytest.approx(1.2)
    pinned = PartitionProblem(
        blocks=4,
        configs=cfgs,
        devices={"gpu": 4},
        capacity={"gpu": 80 * GB},
        objective="latency",
        pinned_stages=2,
        pinned={0: ("tp1",), 1: ("tp1",)},
    )
    sol = solve(pinned)
    assert [s.config for s in sol.stages] == ["tp1", "tp1"]
    assert sol.seconds == pytest.approx(brute_force(pinned))


def test_infeasible_memory_says_why_in_user_terms() -> None:
    p = PartitionProblem(
        blocks=2,
        configs=(_cfg("tp1", "gpu", 1, 1.0, static=61 * GB, act=0),),
        devices={"gpu": 8},
        capacity={"gpu": 48 * GB},
    )
    with pytest.raises(InfeasibleError, match=r"one block needs 61 GB per device.*holds 48 GB"):
        solve(p)


def test_infeasible_memory_where_the_block_fits_names_the_stage() -> None:
    """A block fits (30 GB of 48) but the stage around it does not (its embedding, 20 GB,
    and the other block on the one stage allowed): the message must not read "needs 30
    GB ... holds 48 GB" as if that were the conflict.
    """
    p = PartitionProblem(
        blocks=2,
        configs=(_cfg("tp1", "gpu", 1, 1.0, static=30 * GB, act=0, prologue_bytes=20 * GB),),
        devices={"gpu": 8},
        capacity={"gpu": 48 * GB},
        max_stages=1,
    )
    with pytest.raises(InfeasibleError, match=r"one block fits \(30 GB.*holds 48 GB\), but "
                       r"no stage can take its share of the 2 blocks.*\(20 / 0 GB\)"):
        solve(p)


def test_infeasible_devices_says_why() -> None:
    p = PartitionProblem(
        blocks=2,
        configs=(_cfg("tp8", "gpu", 8, 1.0),),
        devices={"gpu": 4},
        capacity={"gpu": 80 * GB},
        dp=1,
    )
    with pytest.raises(InfeasibleError, match="not enough devices"):
        solve(p)


def test_same_problem_same_plan() -> None:
    p = PartitionProblem(
        blocks=10,
        configs=(_cfg("a", "gpu", 1, 1.0), _cfg("b", "gpu", 2, 0.55)),
        devices={"gpu": 8},
        capacity={"gpu": 8 * GB},
        microbatches=6,
        max_stages=5,
    )
    assert solve(p).stages == solve(p).stages


@settings(max_examples=25, deadline=None)
@given(
    blocks=st.integers(2, 6),
    times=st.lists(st.floats(0.1, 3.0), min_size=1, max_size=3),
    cap=st.floats(2.0, 12.0),
    micro=st.integers(1, 6),
    objective=st.sampled_from(["throughput", "latency"]),
)
def test_solver_objective_equals_brute_force_optimum(blocks, times, cap, micro, objective) -> None:
    cfgs = tuple(_cfg(f"c{i}", "gpu", 1 + i, t) for i, t in enumerate(times))
    p = PartitionProblem(
        blocks=blocks,
        configs=cfgs,
        devices={"gpu": 6},
        capacity={"gpu": cap * GB},
        microbatches=micro,
        max_stages=3,
        p2p_seconds=0.02,
        objective=objective,
    )
    want = brute_force(p)
    if want == float("inf"):
        with pytest.raises(InfeasibleError):
            solve(p)
        return
    sol = solve(p)
    assert not violations(p, sol.stages)
    assert sol.seconds == pytest.approx(want, rel=1e-4)


def test_interleaving_only_where_the_stages_divide_the_microbatches() -> None:
    """Megatron's interleaved 1F1B moves micro-batches in groups of S (Narayanan et al.
    2021 §2.2.2): with M = 12, 8 stages (12 % 8 = 4) are not offered, 4 and 6 are; a pinned
    stage count that does not divide M is a one-line error, not a silently wrong bubble.
    """
    base = dict(
        blocks=24,
        configs=(_cfg("tp1", "gpu", 1, 1.0, static=0.1 * GB, act=0.01 * GB),),
        devices={"gpu": 64},
        capacity={"gpu": 100 * GB},
        microbatches=12,
        max_stages=8,
        interleave=2,
    )
    p = PartitionProblem(**base)
    sol = solve(p)
    assert 12 % len(sol.stages) == 0
    assert sol.seconds == pytest.approx(brute_force(p))
    eight = tuple(StagePlan("tp1", 3) for _ in range(8))
    assert any("multiple of the 8 stages" in v for v in violations(p, eight))
    with pytest.raises(InfeasibleError, match="multiple of the stage count"):
        solve(PartitionProblem(**{**base, "pinned_stages": 8}))
    assert len(solve(PartitionProblem(**{**base, "pinned_stages": 6})).stages) == 6


def test_interleaving_widens_the_window_that_hides_the_gradient_sync() -> None:
    """A block's reduce-scatter of 3 s behind a 1 s backward exposes 2 s on plain 1F1B;
    with v = 2 on 4 stages half the blocks (every chunk but the last) hide it behind the
    4 backwards of the next chunk: (2 + 0) / 2 = 1 s, plus the 0.5 s optimizer step.
    """
    from shardc.partition.problem import block_sync

    c = _cfg("tp1", "gpu", 1, 1.5, sync_seconds=2.5, sync_overlap=((3.0, 1.0),))
    base = dict(blocks=8, configs=(c,), devices={"gpu": 8}, capacity={"gpu": 100 * GB},
                microbatches=8)
    assert block_sync(PartitionProblem(**base), c, 4) == pytest.approx(2.5)
    two = PartitionProblem(**base, interleave=2)
    assert block_sync(two, c, 4) == pytest.approx(1.5)
    assert block_sync(two, c, 2) == pytest.approx(0.5 + (2.0 + 1.0) / 2)
    assert block_sync(two, c, 1) == pytest.approx(2.5)  # one stage: nothing interleaves
    plan = tuple(StagePlan("tp1", 2) for _ in range(4))
    assert score(two, plan) == pytest.approx((8 + 3 / 2) * 3.0 + 2 * 1.5)


def test_one_pinned_stage_is_never_interleaved() -> None:
    """``--pin pp=1`` without ``v``: the search offers v=1 only (it offered v=2 on an
    8-block model, and the one-stage problem failed an internal check: exit 1).
    """
    from shardc.partition.candidates import interleaves
    from shardc.partition.options import PartitionOptions, parse_pins

    free = PartitionOptions()
    assert interleaves(free, 8, True) == [1, 2, 4]
    one = PartitionOptions(pins=parse_pins(["pp=1"]))
    assert interleaves(one, 8, True) == [1]
