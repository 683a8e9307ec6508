"""Training under shardc plans on gloo CPU worlds, against one process.

Each world size is spawned once and runs several plans (see ``train_harness``). The
reference is the unsplit model's own ``forward`` on the whole global batch. Tolerances:
losses to a relative 1e-5 and gradients to an absolute 1e-6 (fp32 sums in another order:
the observed gaps are ~1e-7 and ~2e-8); plans without TP or DP run the same arithmetic per
micro-batch, so their first loss is asserted bit-exact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import train_harness as H

import shardc
import shardc.train

LOSS_RTOL = 1e-5
GRAD_ATOL = 1e-6


def _plan(
    onnx_path: Path, out: Path, topology: str = "topologies/localhost.topo", **kw: Any
) -> str:
    kw.setdefault("microbatches", 2)
    if topology.endswith("localhost.topo"):
        kw.setdefault("devices", kw.pop("world"))
    else:
        kw.pop("world", None)
    plan = shardc.compile(str(onnx_path), topology, quiet=True, **kw)
    plan.save(out, force=True)
    return str(out)


def _check(results: list[dict[str, Any]], ref: dict[str, Any], *, exact: bool = False) -> None:
    pairs = [(a, b) for got in results for a, b in zip(got["losses"], ref["losses"], strict=True)]
    loss_gap = max(abs(a / b - 1) for a, b in pairs)
    grad_gap = max(
        (g - ref["grads"][n]).abs().max().item() for got in results for n, g in got["grads"].items()
    )
    print(f"loss rel gap {loss_gap:.1e}, gradient abs gap {grad_gap:.1e}")  # figures (pytest -s)
    for rank, got in enumerate(results):
        assert got["losses"] == pytest.approx(ref["losses"], rel=LOSS_RTOL), rank
        if exact:
            assert got["losses"][0] == ref["losses"][0], rank
        assert got["grads"], rank
        for name, g in got["grads"].items():
            err = (g - ref["grads"][name]).abs().max().item()
            assert err <= GRAD_ATOL, (rank, name, err)


def test_two_ranks(exports: dict[str, Path], tmp_path: Path) -> None:
    """TP with sequence parallelism, PP (Llama; GPT-2's tied head across stages), DP with
    ZeRO-3 and selective recomputation, a DGX H100 plan on a simulated CPU world, and ZeRO-1
    (DDP and ZeroRedundancyOptimizer).
    """
    llama, gpt2 = exports["llama"], exports["gpt2"]
    plans = {
        "tp": _plan(llama, tmp_path / "tp", world=2, pins="tp=2,sp=on"),
        "pp": _plan(llama, tmp_path / "pp", world=2, pins="pp=2"),
        "dp": _plan(llama, tmp_path / "dp", world=2, pins="dp=2", zero=3, recompute="selective"),
        "gpt2_pp": _plan(gpt2, tmp_path / "g", world=2, pins="pp=2", schedule="gpipe"),
        "gpt2_tp": _plan(gpt2, tmp_path / "gt", world=2, pins="tp=2"),
        "zero1": _plan(llama, tmp_path / "z1", world=2, pins="dp=2", zero=1),
        "dgx": _plan(llama, tmp_path / "dgx", "topologies/dgx_h100.topo", pins="tp=2,dp=1,pp=1"),
    }
    view = shardc.train.plan_view(plans["tp"])
    assert view.stages[0].sequence_parallel and view.stages[0].tp == 2
    assert shardc.train.plan_view(plans["dp"]).zero == 3
    jobs = [
        (plans["tp"], "llama", {}),
        (plans["pp"], "llama", {}),
        (plans["dp"], "llama", {}),
        (plans["gpt2_pp"], "gpt2", {}),
        (plans["dgx"], "llama", {"simulate_devices": True}),
        (plans["gpt2_tp"], "gpt2", {}),
        (plans["zero1"], "llama", {}),
    ]
    res = H.spawn(2, jobs, tmp_path / "out")
    # ZeRO-1: each replica's optimizer steps its share of the parameters, all of them in all
    zero1 = [res[r][-1] for r in range(2)]
    assert {z["optimizer"] for z in zero1} == {"ZeroRedundancyOptimizer"}
    assert 0 < zero1[0]["stepped"] < len(zero1[0]["local"])
    assert sum(z["stepped"] for z in zero1) == len(zero1[0]["local"])
    ref_llama, ref_gpt2 = H.reference("llama"), H.reference("gpt2")
    for j, (_, family, _) in enumerate(jobs):
        _check(
            [res[r][j] for r in range(2)],
            ref_gpt2 if family == "gpt2" else ref_llama,
            exact=j in (1, 3),
        )


def test_four_ranks(exports: dict[str, Path], tmp_path: Path) -> None:
    """TP x DP (FSDP2 over DTensor shards) and TP x PP with sequence parallelism; GPT-2's
    tied head and embedding, sharded differently, across TP x PP; GPT-2's fused q|k|v split
    over TP under FSDP2 (ZeRO-2): its bias's gradient gathered whole in the right order.
    """
    llama, gpt2 = exports["llama"], exports["gpt2"]
    jobs = [
        (_plan(llama, tmp_path / "a", world=4, pins="tp=2,dp=2"), "llama", {}),
        (_plan(llama, tmp_path / "b", world=4, pins="tp=2,pp=2,sp=on"), "llama", {}),
        (_plan(gpt2, tmp_path / "c", world=4, pins="tp=2,pp=2"), "gpt2", {}),
        (_plan(gpt2, tmp_path / "d", world=4, pins="tp=2,dp=2", zero=2), "gpt2", {}),
    ]
    res = H.spawn(4, jobs, tmp_path / "out")
    refs = {"llama": H.reference("llama"), "gpt2": H.reference("gpt2")}
    for j, (_, family, _) in enumerate(jobs):
        _check([res[r][j] for r in range(4)], refs[family])


@pytest.mark.slow
def test_four_ranks_more(exports: dict[str, Path], tmp_path: Path) -> None:
    """PP x DP for both models (GPT-2 under 1F1B, its tied head across stages), with full
    recomputation; ZeRO-1 (DDP inside the pipeline stages, ZeroRedundancyOptimizer).
    """
    llama, gpt2 = exports["llama"], exports["gpt2"]
    jobs = [
        (_plan(llama, tmp_path / "a", world=4, pins="pp=2,dp=2", recompute="full"), "llama", {}),
        (_plan(gpt2, tmp_path / "b", world=4, pins="pp=2,dp=2"), "gpt2", {}),
        (_plan(gpt2, tmp_path / "c", world=4, pins="tp=2,dp=2", zero=0), "gpt2", {}),
        (_plan(llama, tmp_path / "d", world=4, pins="pp=2,dp=2", zero=1), "llama", {}),
    ]
    res = H.spawn(4, jobs, tmp_path / "out")
    refs = {"llama": H.reference("llama"), "gpt2": H.reference("gpt2")}
    for j, (_, family, _) in enumerate(jobs):
        _check([res[r][j] for r in range(4)], refs[family])


@pytest.mark.slow
def test_eight_ranks(exports: dict[str, Path], tmp_path: Path) -> None:
    """A DGX H100 plan (TP x PP x DP) on eight CPU processes, and one on localhost."""
    llama = exports["llama"]
    jobs = [
        (
            _plan(llama, tmp_path / "a", "topologies/dgx_h100.topo", pins="tp=2,pp=2,dp=2"),
            "llama",
            {"simulate_devices": True},
        ),
        (_plan(llama, tmp_path / "b", world=8, pins="tp=2,pp=2,dp=2"), "llama", {}),
    ]
    res = H.spawn(8, jobs, tmp_path / "out")
    ref = H.reference("llama")
    for j in range(len(jobs)):
        _check([res[r][j] for r in range(8)], ref)


@pytest.mark.slow
def test_four_layers_interleaved_bf16_and_plain_dp(tmp_path: Path) -> None:
    """Virtual stages (interleaved 1F1B), bf16 autocast, and ZeRO-0 (FSDP2 replicate), on a
    four-layer Llama. bf16 is held to its own precision: loss 1e-4, gradients 2e-3.
    """
    onnx_path = H.export("llama", tmp_path / "llama4.onnx", layers=4)
    kw = {"layers": 4}
    jobs = [
        (_plan(onnx_path, tmp_path / "v", world=2, pins="pp=2,v=2", microbatches=4), "llama", kw),
        (_plan(onnx_path, tmp_path / "z", world=2, pins="dp=2", zero=0), "llama", kw),
        (_plan(onnx_path, tmp_path / "b", world=2, pins="tp=2", dtype="bf16"), "llama", kw),
    ]
    assert shardc.train.plan_view(jobs[0][0]).interleave == 2
    res = H.spawn(2, jobs, tmp_path / "out")
    ref = H.reference("llama", layers=4)
    for j in range(2):
        _check([res[r][j] for r in range(2)], ref)
    for r in range(2):
        got = res[r][2]
        assert got["losses"] == pytest.approx(ref["losses"], rel=1e-4)
        assert max((g - ref["grads"][n]).abs().max().item() for n, g in got["grads"].items()) < 2e-3
