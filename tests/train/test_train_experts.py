"""Expert parallelism in training: a tiny Mixtral (4 experts, top-2, ``batched_mm``) under
plans whose ``experts`` strategy spreads the experts over the stage's TP group, against one
process.

Each rank must store only its ``4/ep`` experts (checked on the local shards) and the run
must match the unsplit model: losses to a relative 1e-5 and every gradient, experts' and
router's included, to an absolute 1e-6 (fp32; observed: losses within 1e-7 relative,
gradients within ~3e-8). Not bit-exact: a token's top-2 experts may sit on two ranks, and
their outputs are then summed in another order than one process sums them.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
import train_harness as H
from test_train_dist import _check, _plan

import shardc.errors
import shardc.train

EXPERTS = 4
STACKED = ("gate_up_proj", "down_proj")


@pytest.fixture(scope="module")
def mixtral(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return H.export("mixtral", tmp_path_factory.mktemp("moe") / "mixtral.onnx")


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    return H.reference("mixtral")


def _experts_split(results: list[dict[str, Any]], ep: int, dp: int = 1) -> None:
    """Every stacked expert weight is stored as its 1/ep (at most 1/(ep*dp), rounded up, under
    FSDP) on each rank.
    """
    for rank, got in enumerate(results):
        stacked = {n: s for n, s in got["local"].items() if n.rsplit(".", 1)[-1] in STACKED}
        assert stacked, rank
        for name, shape in stacked.items():
            # FSDP2 cuts dim 0 as torch.chunk does: one expert over two replicas is 1 and 0
            want = math.ceil(EXPERTS / (ep * dp))
            assert shape[0] == want if dp == 1 else shape[0] <= want, (rank, name, shape)


def test_experts_on_two_ranks(mixtral: Path, reference: dict[str, Any], tmp_path: Path) -> None:
    """EP2: two experts per rank (tp=2, the router and attention as the plan says), without
    and with sequence parallelism (the MoE block gathers the sequence and slices it after).
    """
    plan = _plan(mixtral, tmp_path / "ep2", world=2, pins="tp=2,sp=off")
    view = shardc.train.plan_view(plan)
    assert "experts" in set(view.strategies.values())
    sp = _plan(mixtral, tmp_path / "sp", world=2, pins="tp=2,sp=on")
    assert shardc.train.plan_view(sp).stages[0].sequence_parallel
    res = H.spawn(2, [(plan, "mixtral", {}), (sp, "mixtral", {})], tmp_path / "out")
    for j in range(2):
        got = [res[r][j] for r in range(2)]
        _experts_split(got, ep=2)
        _check(got, reference)


def test_experts_on_four_ranks(mixtral: Path, reference: dict[str, Any], tmp_path: Path) -> None:
    """EP4 (one expert per rank), EP2 x FSDP2 over dp=2, and EP2 x two pipeline stages."""
    jobs = [
        (_plan(mixtral, tmp_path / "ep4", world=4, pins="tp=4,sp=off"), "mixtral", {}),
        (_plan(mixtral, tmp_path / "epdp", world=4, pins="tp=2,dp=2,sp=off"), "mixtral", {}),
        (_plan(mixtral, tmp_path / "eppp", world=4, pins="tp=2,pp=2,sp=off"), "mixtral", {}),
    ]
    res = H.spawn(4, jobs, tmp_path / "out")
    for j, (ep, dp) in enumerate([(4, 1), (2, 2), (2, 1)]):
        got = [res[r][j] for r in range(4)]
        _experts_split(got, ep=ep, dp=dp)
        _check(got, reference)


@pytest.mark.slow
def test_experts_on_eight_ranks(mixtral: Path, reference: dict[str, Any], tmp_path: Path) -> None:
    """EP4 x FSDP2 over dp=2, and EP2 x two pipeline stages x dp=2 under ZeRO-3."""
    jobs = [
        (_plan(mixtral, tmp_path / "a", world=8, pins="tp=4,dp=2,sp=off"), "mixtral", {}),
        (_plan(mixtral, tmp_path / "b", world=8, pins="tp=2,pp=2,dp=2,sp=off", zero=3),
         "mixtral", {}),
    ]  # fmt: skip
    res = H.spawn(8, jobs, tmp_path / "out")
    for j, (ep, dp) in enumerate([(4, 2), (2, 2)]):
        got = [res[r][j] for r in range(8)]
        _experts_split(got, ep=ep, dp=dp)
        _check(got, reference)


def test_ep_across_replicas(mixtral: Path, reference: dict[str, Any], tmp_path: Path) -> None:
    """``--pin ep``: experts split over data-parallel replicas whose tokens differ, dispatch
    and combine by all-to-all. dp=2 ep=2 at two ranks (ZeRO-1 as FSDP2); at four, dp=4 ep=2
    under ZeRO-3 (expert gradients reduced over the two replicas holding the same experts,
    by their own FSDP unit over ``edp``) and dp=2 tp=2 ep=2 (one expert per rank: TP picks
    its ranks' pairs, the all-to-all runs between the same TP rank of two replicas). Each rank stores ``4/ep`` experts (then
    cut by FSDP over edp); loss and gradients match one process (tolerances above;
    observed: losses bit-exact, gradients within 1.5e-8; without the expert gradients'
    1/ep scaling the gap is 1.8e-3, so the check bites).
    """
    two = _plan(mixtral, tmp_path / "ep2", world=2, pins="ep=2")
    assert [s.ep for s in shardc.train.plan_view(two).stages] == [2]
    res = H.spawn(2, [(two, "mixtral", {})], tmp_path / "out2")
    got = [res[r][0] for r in range(2)]
    _experts_split(got, ep=2)
    _check(got, reference)
    four = _plan(mixtral, tmp_path / "ep2dp4", world=4, pins="ep=2", zero=3)
    eptp = _plan(mixtral, tmp_path / "ep2tp2", world=4, pins="ep=2,tp=2,sp=off", zero=1)
    assert [(s.ep, s.tp) for s in shardc.train.plan_view(eptp).stages] == [(2, 2)]
    res = H.spawn(4, [(four, "mixtral", {}), (eptp, "mixtral", {})], tmp_path / "out4")
    for j, (split, edp) in enumerate([(2, 2), (4, 1)]):
        got = [res[r][j] for r in range(4)]
        _experts_split(got, ep=split, dp=edp)
        _check(got, reference)


@pytest.mark.slow
def test_ep_across_replicas_more(mixtral: Path, reference: dict[str, Any], tmp_path: Path) -> None:
    """Four ranks: ep=2 over dp=4 under ZeRO-0 (``replicate`` over edp) and ep=4 (one
    expert per rank, edp=1) under ZeRO-1; ep=2 over dp=2 with two pipeline stages.
    """
    jobs = [
        (_plan(mixtral, tmp_path / "a", world=4, pins="ep=2", zero=0), "mixtral", {}),
        (_plan(mixtral, tmp_path / "b", world=4, pins="ep=4", zero=1), "mixtral", {}),
        (_plan(mixtral, tmp_path / "c", world=4, pins="ep=2,pp=2", zero=1), "mixtral", {}),
    ]
    res = H.spawn(4, jobs, tmp_path / "out4")
    for j, ep in enumerate([2, 4, 2]):
        got = [res[r][j] for r in range(4)]
        _experts_split(got, ep=ep)
        _check(got, reference)


def test_ep_planned(mixtral: Path, tmp_path: Path) -> None:
    """The planner's side of ``--pin ep``: plan.json records ep per stage; the stage time
    carries the all-to-alls (forward and backward) priced over the topology, a wider ep
    group costs more per rank and stores fewer experts; bad pins are one-line errors.
    """
    plans = {
        pins: shardc.compile(str(mixtral), "topologies/localhost.topo", quiet=True, devices=4,
                             pins=pins, microbatches=2, zero=0)
        for pins in ("dp=4", "ep=2", "ep=4")
    }  # fmt: skip
    stages = {p: plan.data["partition"]["stages"][0] for p, plan in plans.items()}
    print(
        {p: (s.get("ep"), s.get("ep_comm_seconds"), s["memory_bytes"]) for p, s in stages.items()}
    )
    assert "ep" not in stages["dp=4"] and stages["ep=2"]["ep"] == 2
    for p in ("ep=2", "ep=4"):
        s, base = stages[p], stages["dp=4"]
        assert s["ep_comm_seconds"] > 0
        assert s["seconds"] == pytest.approx(base["seconds"] + s["ep_comm_seconds"])
    assert stages["ep=4"]["ep_comm_seconds"] > stages["ep=2"]["ep_comm_seconds"]
    assert stages["ep=4"]["memory_bytes"] < stages["ep=2"]["memory_bytes"]
    assert stages["ep=2"]["memory_bytes"] < stages["dp=4"]["memory_bytes"]
    bad = {
        "ep=3": "4 experts (indexed by",
        "ep=4,tp=2": "the experts spread over ep x tp = 8 ranks",
        "ep=2,dp=3": "ep must divide the data-parallel width dp=3",
    }
    for pins, why in bad.items():
        with pytest.raises(shardc.errors.OptionError, match=re.escape(why)):
            shardc.compile(str(mixtral), "topologies/localhost.topo", quiet=True, devices=4,
                           pins=pins)  # fmt: skip
    gpt2 = H.export("gpt2", tmp_path / "gpt2.onnx")
    with pytest.raises(shardc.errors.OptionError, match="no mixture-of-experts layer"):
        shardc.compile(str(gpt2), "topologies/localhost.topo", quiet=True, devices=2, pins="ep=2")


def test_ep_is_decided_when_not_pinned(mixtral: Path) -> None:
    """Unpinned, the search tries ep = 1, 2, 4 (powers of two dividing the 4 experts) and
    keeps the fastest plan that fits: on four small devices with dp=4 pinned, a replica
    with every expert does not fit at 3.0 MiB, so the plan spreads them (ep=4, the faster
    of the two that fit, as the pinned plans price them); at 4 MiB all fit and ep=1 wins
    (no all-to-all). plan.json's pins stay the user's.
    """
    def compile_(mem: float, pins: str) -> dict[str, Any]:
        plan = shardc.compile(str(mixtral), TIGHT.format(mem=mem), quiet=True, pins=pins,
                              microbatches=2, zero=0, recompute="full")  # fmt: skip
        return dict(plan.data["partition"])

    def per_sample(part: dict[str, Any]) -> float:
        return float(part["step_seconds"]) / int(part["samples_per_step"])

    fixed = "dp=4,tp=1,pp=1"
    tight = compile_(3.0, fixed)
    assert tight["stages"][0].get("ep") == 4 and "ep" not in tight["pins"]
    assert per_sample(tight) == pytest.approx(per_sample(compile_(3.0, fixed + ",ep=4")))
    assert per_sample(tight) < per_sample(compile_(3.0, fixed + ",ep=2"))
    with pytest.raises(shardc.errors.InfeasibleError):
        compile_(3.0, fixed + ",ep=1")
    roomy = compile_(4.0, fixed)
    assert "ep" not in roomy["stages"][0]
    assert per_sample(roomy) < per_sample(compile_(4.0, fixed + ",ep=2"))


TIGHT = """
# Four CPU shares with a few MiB each: sized so that the tiny Mixtral's replica fits only
# with its experts spread (figures made up for the test; only the memory matters)
kind cpu_share {{
    compute fp32 83.2 GFLOPS
    memory {mem} MiB
    memory_bandwidth 9.6 GB/s
    efficiency compute 0.9
}}
cpu[0..3]: cpu_share
switch loopback: loopback {{
    members cpu[*]
    bandwidth 4 GB/s
    latency 10 us
}}
"""
