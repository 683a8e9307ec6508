"""A ring-attention plan: one price for the partitioner and the timeline, its memory, and
its folder written, checked and verified.

The partitioner charges each ring attention ``(cp − 1)·max(0, transfer − block)``
(:func:`shardc.partition.ring.ring_exposed`); the timeline lays the priced programs out
with each ring Send beside the block it overlaps. Both price a block with
:func:`~shardc.partition.ring.run_seconds` and a transfer with
:func:`~shardc.cost.network.point_to_point`, so the exposed time of an attention on the
timeline is the partitioner's to rounding. Memory: the ring keeps no gathered K/V for
backward, only two chunks in flight while an attention runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from test_context_plan import _compile, _verify
from test_ring_attention import compile_ring

from shardc.cli.main import cli
from shardc.partition.ring import RING_KEPT, kv_chunk_bytes, ring_exposed
from shardc.passes.partition import costing_for
from shardc.plan.lowered import is_ring_comm

ROOT = Path(__file__).resolve().parents[2]
TOPO = str(ROOT / "topologies/localhost.topo")


def _timeline_exposure(state: Any, attention: str) -> float:
    """On the slowest rank, the forward time of ``attention``'s ring (first Send to last
    block) less its blocks' compute: what its transfers added.
    """
    worst = 0.0
    for dev in state.timeline.devices:
        evs = [e for e in dev.events if e.phase == "forward" and e.microbatch == 0]
        sends = [e for e in evs if e.op == "Send" and e.value.startswith(attention + "__cpring")]
        blocks = [e for e in evs if e.type == "compute" and " ring " in e.name
                  and e.start >= sends[0].start]
        blocks = blocks[: len(sends) + 1]  # this attention's
        span = blocks[-1].end - sends[0].start
        worst = max(worst, span - sum(b.duration for b in blocks))
    return worst


TWO_PAIRS = """
# Two pairs of CPU shares: fast within a pair, slow between, so a cp=4 ring has two slow
# hops (1 -> 2 and 3 -> 0). Figures are made up for the test: only their ratio matters.
kind cpu_share {
    compute fp32 83.2 GFLOPS
    memory 4 GiB
    memory_bandwidth 9.6 GB/s
    efficiency compute 0.9
}
cpu[0..3]: cpu_share
switch pair0: loopback {
    members cpu[0..1]
    bandwidth 4 GB/s
    latency 10 us
}
switch pair1: loopback {
    members cpu[2..3]
    bandwidth 4 GB/s
    latency 10 us
}
switch between: loopback {
    members cpu[*]
    bandwidth 0.25 GB/s
    latency 100 us
}
"""


@pytest.mark.parametrize("cp,topology,comm", [(2, None, "ring"), (4, None, "ring"),
                                              (4, "two_pairs", "ring"), (4, None, "zigzag"),
                                              (4, "two_pairs", "zigzag")])
def test_the_partitioner_and_the_timeline_price_the_ring_alike(
    gpt2_path: Path, tmp_path: Path, cp: int, topology: str | None, comm: str
) -> None:
    """Inference (a forward; the backward is the next test's). At tp=1 a
    block's only comm is its ring, so the partitioner's comm for one block is its
    attention's exposed ring time; the timeline shows the same for the first attention
    (which every rank starts together), and it is not zero (the tiny model's transfers
    outlast its blocks). On ``two_pairs`` the ring's hops differ: a slow hop delays the
    ranks after it once (not every step), which the closed form and the timeline agree on.
    Under zigzag the blocks differ (the own block 3/4 of a contiguous one, the others
    1/2): the same rule, per step.
    """
    path = None
    if topology:
        path = tmp_path / f"{topology}.topo"
        path.write_text(TWO_PAIRS)
    state = compile_ring(gpt2_path, f"tp=1,pp=1,dp=1,cp={cp}", cp, mode="inference",
                         topology=path, comm=comm)
    costing = costing_for(state)
    _, block, _, _ = costing.sections
    kind = state.partition.stages[0].kind
    priced = costing.part(block, kind, 1, "none", False, cp).comm
    cmap = costing.context(cp)
    (attention,) = [a for a in cmap.ring if a.pv in set(block)]
    shown = _timeline_exposure(state, attention.pv)
    assert priced > 0
    assert shown == pytest.approx(priced, rel=1e-9)
    # each transfer moves K's and V's chunk, as the partitioner charged it
    chunk = kv_chunk_bytes(attention, lambda n, i: costing.operand_bytes(
        n, i, costing.choice(1), {"tp": 1}), cp)
    sends = [c for p in state.plan.programs.programs for c in p.comms
             if c.op == "Send" and c.value.startswith(attention.pv + "__cpring")]
    assert len(sends) == cp * (cp - 1) and all(c.nbytes == pytest.approx(chunk) for c in sends)
    print(f"cp={cp} {topology or 'localhost'} {comm}: exposed ring time per attention "
          f"{priced * 1e6:.3f} us (partitioner) = {shown * 1e6:.3f} us (timeline)")


def _backward_exposure(state: Any, attention: str) -> tuple[float, float, float]:
    """On the slowest rank, micro-batch 0's backward of ``attention``'s ring (its first
    block to its last transfer: the reversed program ends on a Recv, the gradients' way
    home) less its blocks' compute; and the bytes of one forward and one backward ring
    transfer.
    """
    worst, fwd_bytes, bwd_bytes = 0.0, 0.0, 0.0
    prefix = attention + "__cpring"
    for dev in state.timeline.devices:
        evs = [e for e in dev.events if e.microbatch == 0]
        fwd_bytes = max(e.nbytes for e in evs if e.phase == "forward" and e.op == "Send"
                        and e.value.startswith(prefix))
        bwd = [e for e in evs if e.phase == "backward"]
        sends = [e for e in bwd if e.op == "Send" and e.value.startswith(prefix)]
        bwd_bytes = max(e.nbytes for e in sends)
        first = bwd.index(sends[0]) - 1  # the block before the first backward Send
        blocks = [e for e in bwd[first:] if e.type == "compute" and " ring " in e.name]
        blocks = blocks[: len(sends) + 1]
        recvs = [e for e in bwd if e.op == "Recv" and e.value.startswith(prefix)]
        span = max(blocks[-1].end, recvs[len(sends) - 1].end) - blocks[0].start
        worst = max(worst, span - sum(b.duration for b in blocks))
    return worst, fwd_bytes, bwd_bytes


def test_the_backward_ring_moves_kv_and_their_gradients(gpt2_path: Path) -> None:
    """Training: each backward ring step moves K/V and their gradients, two transfers of a
    forward one's size (Megatron-LM's ``kv`` and ``dkv``). schedule.json carries twice the
    bytes on the backward events, and the exposed backward time of the last attention (the
    first whose backward every rank starts together) is what the partitioner charged for
    it: its training price less the forward's.
    """
    cp = 4
    state = compile_ring(gpt2_path, f"tp=1,pp=1,dp=1,cp={cp}", cp, mode="training")
    costing = costing_for(state)
    _, block, _, _ = costing.sections
    kind = state.partition.stages[0].kind
    cmap = costing.context(cp)
    inference = compile_ring(gpt2_path, f"tp=1,pp=1,dp=1,cp={cp}", cp, mode="inference")
    forward = costing_for(inference).part(block, kind, 1, "none", False, cp).comm
    training = costing.part(block, kind, 1, "none", False, cp).comm
    last = cmap.ring[-1]  # every block prices its attention alike
    shown, fwd_bytes, bwd_bytes = _backward_exposure(state, last.pv)
    assert bwd_bytes == pytest.approx(2 * fwd_bytes) and fwd_bytes > 0
    assert shown > 0
    assert shown == pytest.approx(training - forward, rel=1e-9)
    print(f"cp={cp} training: backward ring exposed {shown * 1e6:.3f} us (timeline) = "
          f"{(training - forward) * 1e6:.3f} us (partitioner)")


def test_the_ring_exposure_in_closed_form() -> None:
    """Equal hops: ``(cp − 1)·max(0, hop − block)``; one slow hop among fast ones costs
    its excess once; two slow hops two apart in a ring of four: once each, less the
    block between them.
    """
    two = [2.0] * 4
    assert ring_exposed([5.0] * 4, two) == pytest.approx(9.0)
    assert ring_exposed([1.0] * 4, two) == 0.0
    assert ring_exposed([9.0, 1.0, 1.0, 1.0], two) == pytest.approx(7.0)
    assert ring_exposed([9.0, 1.0, 9.0, 1.0], two) == pytest.approx(7.0 - 1.0 + 7.0)
    # zigzag's steps: a longer own block first hides more of the first transfer
    assert ring_exposed([5.0] * 4, [3.0, 2.0, 2.0, 2.0]) == pytest.approx(2.0 + 3.0 + 3.0)


def test_ring_keeps_no_gathered_kv_only_two_chunks_in_flight(llama_path: Path) -> None:
    """Training at cp=4: the all-gather keeps the other ranks' K/V (3/4 of it) for the
    backward; the ring keeps none, and holds two chunks (2/4) in flight as workspace.
    """
    ag = costing_for(compile_ring(llama_path, "tp=1,pp=1,dp=1,cp=4", 4, comm="allgather"))
    ring = costing_for(compile_ring(llama_path, "tp=1,pp=1,dp=1,cp=4", 4))
    _, block, _, _ = ag.sections
    kind = next(iter(ag.kinds))
    a, r = (c.part(block, kind, 1, "none", False, 4) for c in (ag, ring))
    (attention,) = [x for x in ring.context(4).ring if x.pv in set(block)]
    whole = sum(ag.operand_bytes(n, i, ag.choice(1), {"tp": 1})
                for n, i, _ in ag.context(4).gathers if n in set(block))
    assert whole > 0
    assert a.activation - r.activation == pytest.approx(whole * 3 / 4)
    chunk = kv_chunk_bytes(attention, lambda n, i: ring.operand_bytes(
        n, i, ring.choice(1), {"tp": 1}), 4)
    assert chunk == pytest.approx(whole / 4)
    assert r.workspace == pytest.approx(RING_KEPT * chunk) and a.workspace == 0.0
    assert r.compute == pytest.approx(a.compute)  # the same work, blockwise


# -- the folder --------------------------------------------------------------------------
def test_a_ring_plan_folder_is_written_checked_and_verified(
    llama_path: Path, tmp_path: Path
) -> None:
    """plan.json records ``cp_comm: ring`` (and a default plan records nothing new, so
    plans made before the option are unchanged); schedule.json carries each ring
    transfer as a comm event with bytes and links; check-plan and verify pass.
    """
    out, plain = tmp_path / "ring", tmp_path / "allgather"
    _compile(llama_path, out, "cp=2,tp=2,pp=1,dp=1", 4, "--cp-comm", "ring")
    _compile(llama_path, plain, "cp=2,tp=2,pp=1,dp=1", 4)
    assert json.loads((out / "plan.json").read_text())["options"]["cp_comm"] == "ring"
    assert "cp_comm" not in json.loads((plain / "plan.json").read_text())["options"]
    schedule = json.loads((out / "schedule.json").read_text())
    ring = [e for d in schedule["devices"] for e in d["events"]
            if e["type"] == "comm" and is_ring_comm(e["value"])]
    assert ring and all(e["bytes"] > 0 and e["links"] and e["duration"] > 0 for e in ring)
    c = CliRunner().invoke(cli, ["check-plan", str(out)])
    assert c.exit_code == 0, c.output
    worst = _verify(out)
    assert worst < 1e-4
    print(f"llama cp=2 tp=2 ring: verify max |error| {worst:.3g}")


@pytest.mark.slow
@pytest.mark.parametrize("comm", ["ring", "zigzag"])
def test_a_ring_plan_verifies_over_torch_distributed(
    gpt2_path: Path, tmp_path: Path, comm: str
) -> None:
    """``shardc verify --procs`` on a cp2 × tp2 ring folder: four gloo processes, every
    rank sending before it receives (~15 s).
    """
    out = tmp_path / "plan"
    _compile(gpt2_path, out, "cp=2,tp=2,pp=1,dp=1", 4, "--cp-comm", comm)
    assert _verify(out, "--procs") < 1e-4


@pytest.fixture(scope="module")
def gpt2_4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny GPT-2 with 4 layers: pp = 2 stages of v = 2 chunks."""
    import models

    return models.export(models.gpt2(layers=4), tmp_path_factory.mktemp("g4") / "g.onnx")


@pytest.mark.parametrize("comm", ["allgather", "ring"])
def test_context_parallel_under_an_interleaved_pipeline(
    gpt2_4: Path, tmp_path: Path, comm: str
) -> None:
    """cp=2 with two stages of two chunks each: the CP rewrite runs chunk by chunk, so
    each rank's chunks still start where the interleaved schedule sends and receives
    (before, the gathers shifted the steps and the schedule deadlocked), and the folder
    verifies.
    """
    out = tmp_path / comm
    _compile(gpt2_4, out, "cp=2,pp=2,v=2,tp=1,dp=1", 4, "--cp-comm", comm, "--mode",
             "training", "--microbatches", "4")
    plan = json.loads((out / "plan.json").read_text())
    assert all(len(s["chunks"]) == 2 for s in plan["partition"]["stages"])
    assert _verify(out) < 1e-4
