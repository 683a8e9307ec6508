"""Sequence-parallel plans are emitted as Megatron-SP and reproduce the original.

The partitioner decides per stage whether TP runs sequence parallel (Korthikanti et al.
2022) and prices it as a reduce-scatter plus an all-gather in place of each all-reduce;
these tests hold the lowering to that decision: a tiny GPT-2 and a tiny Llama exported
from ``transformers`` with random weights are compiled for training with ``sp=on``, and
their device programs must (1) run in-process to onnxruntime's outputs on the unsharded
model, (2) hold ReduceScatter/AllGather and no AllReduce inside the blocks, and (3) carry
per block exactly the TP traffic the partitioner charged (same op kinds, same bytes).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from shardc.cli.main import cli
from shardc.compiler import build_plan, partition_model
from shardc.emit.devices import emit
from shardc.frontend import load_model
from shardc.partition.megatron import megatron_choice
from shardc.partition.options import PartitionOptions, parse_pins
from shardc.partition.pricing import SP_OPS
from shardc.passes.partition import costing_for
from shardc.passes.precision import priced_graph
from shardc.passes.strategies import build_table
from shardc.plan.program import Comm
from shardc.runtime.inprocess import run_inprocess
from shardc.topology import load_topology

ROOT = Path(__file__).resolve().parents[2]
TP_COMM = ("AllReduce", "ReduceScatter", "AllGather", "AllToAll")
COST_OP = {"AllReduce": "all_reduce", "ReduceScatter": "reduce_scatter",
           "AllGather": "all_gather", "AllToAll": "all_to_all"}


def _compile(path: Path, pins: str, devices: int) -> Any:
    topo = load_topology(ROOT / "topologies/localhost.topo", {"devices": devices})
    options = PartitionOptions(pins=parse_pins([pins]))
    state = partition_model(path, topo, mode="training", partition=options).state
    return build_plan(state).state


def _feeds(path: Path) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {}
    for i in sess.get_inputs():
        assert "int" in i.type, i
        feeds[i.name] = rng.integers(0, 256, size=i.shape).astype(np.int64)
    return feeds


def check_sp_plan(path: Path, pins: str, devices: int) -> None:
    """Compile ``path`` under ``pins``; every check of the module docstring."""
    state = _compile(path, pins, devices)
    part = state.partition
    assert part.devices_used == devices
    sps = [s.sequence_parallel for s in part.stages]
    assert any(sps), "sp=on is the partitioner's decision"

    emission = emit(state)
    feeds = _feeds(path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    want = sess.run(None, feeds)
    outs = run_inprocess(emission.models, feeds)
    last = [p.rank for p in emission.programs.programs if p.outputs]
    assert last
    for rank in last:
        assert set(names) <= set(outs[rank]), (rank, sorted(outs[rank]))
        for name, ref in zip(names, want, strict=True):
            np.testing.assert_allclose(outs[rank][name], ref, rtol=2e-4, atol=2e-4)

    # (2) inside the blocks: reduce-scatter and all-gather only (all-reduce on a plain stage)
    chain = state.blocks
    for prog in emission.programs.programs:
        model = emission.models[prog.rank]
        ops = {n.op_type for n in model.graph.node if n.op_type in TP_COMM}
        if sps[prog.stage]:
            assert ops == {"ReduceScatter", "AllGather"}, ops
        else:
            assert "AllReduce" in ops and "ReduceScatter" not in ops, ops

    # (3) each block's TP traffic as the plan prices it, against the partitioner's charge
    producer_block = {o: chain.block_of(n.name) for n in state.graph.nodes for o in n.outputs if o}
    emitted: dict[int, Counter[tuple[str, float]]] = {}
    for prog in state.plan.programs.programs:
        if prog.replica or prog.tp_rank:
            continue
        for step in prog.steps:
            if isinstance(step, Comm) and step.op in TP_COMM:
                b = producer_block[step.value.split("__")[0]]
                emitted.setdefault(b, Counter())[(COST_OP[step.op], step.nbytes)] += 1
    # between SP stages the residual stream travels as sequence shards, as priced;
    # next to a plain stage it crosses whole (gathered first: a cost the search omits)
    priced = priced_graph(state)
    for prog in state.plan.programs.programs:
        for step in prog.steps:
            if isinstance(step, Comm) and step.op in ("Send", "Recv"):
                whole = priced.values[step.value.split("__")[0]].nbytes
                assert step.nbytes * (prog.tp if all(sps) else 1) == whole, (step, whole)
    costing = costing_for(state)
    for j, st in enumerate(part.stages):
        charged = costing.choice(st.tp).comm
        lo, hi = st.blocks
        mixed = j + 1 < len(sps) and sps[j + 1] != sps[j]
        for b in chain.repeated[lo : hi + (0 if mixed else 1)]:
            want = Counter(
                (one, nbytes)
                for op, nbytes in charged.get(b, ())
                for one in (SP_OPS.get(op, (op,)) if st.sequence_parallel else (op,))
            )
            assert emitted.get(b) == want, (b, emitted.get(b), want)
            assert sum(want.values()) == (4 if st.sequence_parallel else 2)  # per block


PINS = [
    ("tp=2,pp=1,dp=1,sp=on", 2),
    ("tp=4,pp=1,dp=1,sp=on", 4),
    ("tp=2,pp=2,dp=1,sp=on", 4),
    ("tp=2,pp=1,dp=2,sp=on", 4),
    ("tp=2,pp=2,dp=1,stage0.sp=on,stage1.sp=off", 4),
]


SLOW_PINS = [  # the tiny models have 4 heads: 8 devices are tp=4 with pp or dp, or all three
    ("tp=4,pp=2,dp=1,sp=on", 8),
    ("tp=4,pp=1,dp=2,sp=on", 8),
    ("tp=2,pp=2,dp=2,sp=on", 8),
]
ALL_PINS = PINS + [pytest.param(*p, marks=pytest.mark.slow) for p in SLOW_PINS]


@pytest.mark.parametrize("pins,devices", ALL_PINS)
def test_gpt2_sequence_parallel(gpt2_path: Path, pins: str, devices: int) -> None:
    check_sp_plan(gpt2_path, pins, devices)


@pytest.mark.parametrize("pins,devices", ALL_PINS)
def test_llama_sequence_parallel(llama_path: Path, pins: str, devices: int) -> None:
    check_sp_plan(llama_path, pins, devices)


# -- bad input: sp=on where the stage cannot run it ----------------------------------------------
BAD_SP = {
    "sequence 6 over tp=4": (["--pin", "tp=4,sp=on"], "tp=4"),
    "stage pin over tp=4": (["--pin", "stage0.tp=4,stage0.sp=on"], "tp=4"),
    "inference": (["--mode", "inference", "--pin", "tp=2,sp=on"], "training"),
}


@pytest.fixture(scope="module")
def seq6(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("seq6") / "gpt.onnx"
    r = CliRunner().invoke(cli, ["synth", "gpt", "--layers", "2", "--hidden", "64", "--heads",
                                 "4", "--vocab", "256", "--seq", "6", "--batch", "2",
                                 "-o", str(out)])
    assert r.exit_code == 0, r.output
    return str(out)


@pytest.mark.parametrize("case", sorted(BAD_SP))
def test_sp_pin_that_cannot_be_emitted_is_a_one_line_error(
    seq6: str, tmp_path: Path, case: str
) -> None:
    """A sequence of 6 does not split 4 ways: the norms could not run on shards, so the
    plan would say SP and run plain TP. One line, exit 2, nothing written.
    """
    flags, names = BAD_SP[case]
    out = tmp_path / "plan"
    topo = str(ROOT / "topologies/localhost.topo")
    r = CliRunner().invoke(
        cli, ["compile", seq6, "--topology", topo, "--set", "devices=4", "-o", str(out), *flags]
    )
    err = r.stderr.strip()
    assert r.exit_code == 2, (case, r.output, err)
    assert len(err.splitlines()) == 1 and "sp=on" in err and names in err, (case, err)
    assert "Traceback" not in r.output + err
    assert not out.exists()
    ok = CliRunner().invoke(cli, ["compile", seq6, "--topology", topo, "--set", "devices=2",
                                  "--pin", "tp=2,sp=on", "-o", str(tmp_path / "ok")])
    assert ok.exit_code == 0, ok.output  # 6 splits 2 ways


# -- the rule alone, and the plan folder under torch.distributed -----------------------------------
@pytest.mark.parametrize("tp", [2, 4])
def test_sequence_shards_are_found_from_the_graph(
    gpt2_path: Path, llama_path: Path, tp: int
) -> None:
    """GPT-2 (LayerNormalization, Conv1D views) and Llama (decomposed RMSNorm, grouped
    K/V heads that 4 devices cannot split): with SP every all-reduce of the plain choice
    becomes one reduce-scatter, each column input one all-gather, and nothing else moves.
    """
    for path in (gpt2_path, llama_path):
        model = load_model(path)
        graph = model.graph
        table, _ = build_table(graph, model.opset() or 18)
        sizes = {"tp": tp}
        plain = [c.step.op for c in table.resolve(graph, megatron_choice(graph, table, sizes),
                                                   sizes).collectives]
        chosen = megatron_choice(graph, table, sizes, sequence_parallel=True)
        ops = [c.step.op for c in table.resolve(graph, chosen, sizes).collectives]
        assert set(plain) == {"all_reduce"}
        assert Counter(ops) == {"reduce_scatter": len(plain), "all_gather": len(plain)}, path
        seq = {graph.node(n).op_type for n, s in chosen.items() if s.name == "seq_tp"}
        assert {"Add"} <= seq and seq & {"LayerNormalization", "ReduceMean"}, seq


@pytest.mark.slow
def test_sp_plan_folder_verifies_over_torch_distributed(llama_path: Path, tmp_path: Path) -> None:
    """``shardc verify --procs`` on a written tp=2 x pp=2 SP folder: four gloo processes."""
    out = tmp_path / "plan"
    topo = str(ROOT / "topologies/localhost.topo")
    r = CliRunner().invoke(cli, ["compile", str(llama_path), "--topology", topo, "--set",
                                 "devices=4", "--pin", "tp=2,pp=2,sp=on", "-o", str(out)])
    assert r.exit_code == 0, r.output
    v = CliRunner().invoke(cli, ["verify", str(out), "--procs", "--json"])
    assert v.exit_code == 0, v.output
