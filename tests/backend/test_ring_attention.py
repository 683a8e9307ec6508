"""Ring attention (``--cp-comm ring``) reproduces the original model, with the ring's traffic.

Each rank attends its query chunk to one K/V chunk at a time, passing the chunk it holds
to the next rank of its cp group while it computes, and folds the blocks together with
the online-softmax rule; blocks its causal mask hides wholly are skipped. A tiny GPT-2
and a tiny Llama (grouped KV heads) exported from ``transformers`` are compiled with
cp=2 and cp=4 pinned (and with tensor parallelism beside, and with pipeline stages under
``-m slow``), emitted and run in-process against onnxruntime on the unsharded model, at
the tolerance of the all-gather tests (:mod:`test_context_parallel`). The traffic must be
``cp − 1`` Sends and Recvs of one K/V chunk per attention per rank, round the cp group,
and no K/V all-gather.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper
from test_context_parallel import worst_error

from shardc.cli.main import cli
from shardc.compiler import build_plan, partition_model
from shardc.emit.devices import emit
from shardc.partition.context import ContextError
from shardc.plan.lowered import is_ring_comm
from shardc.runtime.inprocess import run_inprocess
from shardc.topology import load_topology

ROOT = Path(__file__).resolve().parents[2]
TOPO = str(ROOT / "topologies/localhost.topo")
LAYERS = 2


def compile_ring(path: Path, pins: str, devices: int, mode: str = "training",
                 comm: str = "ring", topology: Path | None = None) -> Any:
    """Partition and build (no emission) with ``cp_comm`` = ``comm``; on ``topology``
    (its own size) or ``devices`` of localhost.
    """
    from shardc.partition.options import PartitionOptions, parse_pins

    topo = (load_topology(topology, {}) if topology is not None else
            load_topology(ROOT / "topologies/localhost.topo", {"devices": devices}))
    options = PartitionOptions(pins=parse_pins([pins]), cp_comm=comm)
    state = partition_model(path, topo, mode=mode, partition=options).state
    return build_plan(state).state


def _run(path: Path, models: Any) -> tuple[dict[int, Any], dict[str, np.ndarray]]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {i.name: rng.integers(0, 256, size=i.shape).astype(np.int64)
             for i in sess.get_inputs()}
    want = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))
    return run_inprocess(models, feeds), want


_worst = worst_error


def check_ring_plan(path: Path, pins: str, devices: int, cp: int, comm: str = "ring") -> float:
    """Compile with ``cp`` pinned and the ring (``comm``: ``ring`` or ``zigzag``), emit,
    run; returns the max error.
    """
    state = compile_ring(path, f"{pins},cp={cp}", cp * devices, comm=comm)
    models = emit(state).models
    outs, want = _run(path, models)
    worst, checked = _worst(outs, want)
    assert checked >= cp
    programs = {p.rank: p for p in state.plan.programs.programs}
    stages = len(state.partition.stages)
    for rank, prog in programs.items():
        ring = [c for c in prog.comms if is_ring_comm(c.value)]
        gathers = [c for c in prog.comms if c.op == "AllGather" and "__cpwhole" in c.output]
        assert not gathers, (rank, gathers)  # K and V go round, not gathered
        attentions = LAYERS // stages
        assert Counter(c.op for c in ring) == {"Send": attentions * (cp - 1),
                                              "Recv": attentions * (cp - 1)}, rank
        group = sorted({r for r, q in programs.items() if q.stage == prog.stage
                        and q.replica == prog.replica and q.tp_rank == prog.tp_rank})
        at = group.index(rank)
        for c in ring:  # round the cp group: send on, receive from behind
            want_peer = group[(at + 1) % cp] if c.op == "Send" else group[(at - 1) % cp]
            assert c.peer == want_peer and c.nbytes > 0 and c.seconds > 0 and c.links
        # the device file runs what the program lists, in its order
        nodes = [n for n in models[rank].graph.node
                 if n.op_type in ("Send", "Recv") and "__ring" in n.name]
        assert [(n.op_type, _attr(n, "peer"), _attr(n, "tag")) for n in nodes] == [
            (c.op, c.peer, c.tag) for c in ring]
    print(f"{path.stem} {pins} cp={cp} {comm}: max |error| {worst:.3g}")
    return worst


def _attr(node: onnx.NodeProto, name: str) -> Any:
    return next(helper.get_attribute_value(a) for a in node.attribute if a.name == name)


CASES = [
    ("tp=1,pp=1,dp=1", 1, 2),
    ("tp=1,pp=1,dp=1", 1, 4),
    ("tp=2,pp=1,dp=1", 2, 2),
    pytest.param("tp=2,pp=2,dp=1", 4, 2, marks=pytest.mark.slow),  # 8 ranks, pipelined
    pytest.param("tp=1,pp=2,dp=2", 4, 2, marks=pytest.mark.slow),  # 8 ranks, cp beside dp
]


@pytest.mark.parametrize("comm", ["ring", "zigzag"])
@pytest.mark.parametrize("pins,devices,cp", CASES)
def test_gpt2_ring_attention(gpt2_path: Path, pins: str, devices: int, cp: int, comm: str) -> None:
    check_ring_plan(gpt2_path, pins, devices, cp, comm)


@pytest.mark.parametrize("comm", ["ring", "zigzag"])
@pytest.mark.parametrize("pins,devices,cp", CASES)
def test_llama_ring_attention(
    llama_path: Path, pins: str, devices: int, cp: int, comm: str
) -> None:
    check_ring_plan(llama_path, pins, devices, cp, comm)


def test_zigzag_gives_every_rank_the_same_causal_work(llama_path: Path) -> None:
    """Under zigzag (rank c holds chunks c and 2cp−1−c) every rank computes 3 of the own
    block's 4 (query half × key half) quarters and 2 of every other block's: 3 + 2(cp−1)
    quarters per attention, on every rank, where the contiguous ring gives rank c
    4(c + 1) (test below). A score MatMul against one key half is one quarter, against
    both two.
    """
    cp = 4
    models = emit(compile_ring(llama_path, f"tp=1,pp=1,dp=1,cp={cp}", cp, comm="zigzag")).models
    for rank, m in sorted(models.items()):
        names = {n.name for n in m.graph.node}
        scores = [n.name for n in m.graph.node if n.op_type == "MatMul" and "__ring_s" in n.name]
        quarters = sum(1 if n.replace("__ring_s", "__ring_k") in names else 2 for n in scores)
        assert quarters == LAYERS * (3 + 2 * (cp - 1)), (rank, quarters)


def test_causal_blocks_above_the_diagonal_are_skipped(llama_path: Path) -> None:
    """Under the causal mask copy ``c`` attends chunks ``0..c`` only: its device file
    holds ``c + 1`` blocks (two MatMuls each) per attention, yet it still forwards every
    chunk round the ring (its peers need them).
    """
    state = compile_ring(llama_path, "tp=1,pp=1,dp=1,cp=4", 4)
    models = emit(state).models
    for rank, m in sorted(models.items()):
        ops = Counter(n.op_type for n in m.graph.node if "__ring" in n.name)
        assert ops["MatMul"] == LAYERS * 2 * (rank + 1), (rank, ops)
        assert ops["Send"] == ops["Recv"] == LAYERS * 3


def test_the_mask_columns_are_what_make_it_right(gpt2_path: Path) -> None:
    """Negative control: copy 1 reading mask columns 0.. for every block (its own
    block's columns for the block of copy 0) must give wrong outputs, so the tests above
    cannot pass whatever columns the blocks read.
    """
    state = compile_ring(gpt2_path, "tp=1,pp=1,dp=1,cp=2", 2)
    models = emit(state).models
    for init in models[1].graph.initializer:
        if "__ring_m" in init.name and init.name.endswith(("_s", "_e")):
            arr = onnx.numpy_helper.to_array(init).copy()
            arr[...] = 8 if init.name.endswith("_s") else 16  # chunk 1's columns, always
            init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    outs, want = _run(gpt2_path, models)
    name = next(iter(want))
    assert float(np.abs(outs[1][name] - want[name]).max()) > 1e-2


# -- what the ring cannot run ------------------------------------------------------------
def _no_softmax(tmp_path: Path) -> Path:
    """Scores fed straight into a second product: gathered K/V, but no attention."""
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 4])
    rng = np.random.default_rng(0)
    inits = [onnx.numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("emb", (16, 4)), ("wq", (4, 4)), ("wk", (4, 4)))]
    nodes = [helper.make_node("Gather", ["emb", "input_ids"], ["h"]),
             helper.make_node("MatMul", ["h", "wq"], ["q"]),
             helper.make_node("MatMul", ["h", "wk"], ["k"]),
             helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["q", "kt"], ["s"]),
             helper.make_node("MatMul", ["s", "k"], ["y"])]
    g = helper.make_graph(nodes, "bare", [ids], [y], inits)
    path = tmp_path / "bare.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


def _bidirectional(tmp_path: Path) -> Path:
    """One attention with no mask (every query sees every key): the ring runs it with no
    block skipped; zigzag, which balances causal work, refuses it.
    """
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, [2, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8, 4])
    rng = np.random.default_rng(0)
    inits = [onnx.numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("emb", (256, 4)), ("wq", (4, 4)), ("wk", (4, 4)), ("wv", (4, 4)))]
    inits.append(onnx.numpy_helper.from_array(np.array(0.5, np.float32), "scale"))
    nodes = [helper.make_node("Gather", ["emb", "input_ids"], ["h"]),
             helper.make_node("MatMul", ["h", "wq"], ["q"]),
             helper.make_node("MatMul", ["h", "wk"], ["k"]),
             helper.make_node("MatMul", ["h", "wv"], ["v"]),
             helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["q", "kt"], ["s"]),
             helper.make_node("Mul", ["s", "scale"], ["s2"]),
             helper.make_node("Softmax", ["s2"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "v"], ["y"])]
    g = helper.make_graph(nodes, "bidirectional", [ids], [y], inits)
    path = tmp_path / "bidirectional.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


def test_the_ring_runs_an_unmasked_attention_and_zigzag_refuses_it(tmp_path: Path) -> None:
    path = _bidirectional(tmp_path)
    state = compile_ring(path, "tp=1,pp=1,dp=1,cp=2", 2)
    outs, want = _run(path, emit(state).models)
    worst, checked = _worst(outs, want)
    assert checked == 2 and worst < 1e-5
    r = CliRunner().invoke(cli, ["compile", str(path), "--topology", TOPO, "--set",
                                 "devices=2", "--pin", "cp=2,tp=1,pp=1,dp=1", "--cp-comm",
                                 "zigzag", "-o", str(tmp_path / "z")])
    err = r.stderr.strip()
    assert r.exit_code == 2 and len(err.splitlines()) == 1, (r.output, err)
    assert "zigzag" in err and "causal" in err


def test_a_graph_without_a_recognisable_attention_exits_2_in_one_line(tmp_path: Path) -> None:
    path = _no_softmax(tmp_path)
    args = ["compile", str(path), "--topology", TOPO, "--set", "devices=2", "--pin",
            "cp=2,tp=1,pp=1,dp=1", "--force"]
    ok = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "ag")])
    assert ok.exit_code == 0, ok.output  # the all-gather runs it
    out = tmp_path / "ring"
    r = CliRunner().invoke(cli, [*args, "--cp-comm", "ring", "-o", str(out)])
    err = r.stderr.strip()
    assert r.exit_code == 2 and len(err.splitlines()) == 1, (r.output, err)
    assert "--cp-comm ring" in err and "Softmax" in err and not out.exists()
    with pytest.raises(ContextError):
        compile_ring(path, "cp=2,tp=1,pp=1,dp=1", 2)


def test_an_unknown_cp_comm_exits_2(gpt2_path: Path, tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["compile", str(gpt2_path), "--topology", TOPO, "--set",
                                 "devices=2", "--pin", "cp=2", "--cp-comm", "tree",
                                 "-o", str(tmp_path / "p")])
    assert r.exit_code == 2 and "tree" in r.output + r.stderr
