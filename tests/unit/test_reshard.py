"""Layout changes the partitioner can price are emitted, all-to-all included, and run.

A column-parallel MatMul leaves its output split along the hidden dim; a LayerNorm run
sequence-parallel over tp wants it split along the sequence instead. Pinning those two
strategies forces the emitter's all-to-all (split along the sequence, exchange, join along
the hidden dim), which is checked against onnxruntime on the unsharded graph, and
check-plan's onnxruntime load catches the same program with the join axis removed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

import shardc.passes.lower as lower_pass
from shardc.compiler import analyse, build_plan, partition_passes
from shardc.emit.check import check_outdir
from shardc.emit.devices import emit
from shardc.emit.outdir import write_outdir
from shardc.emit.outputs import state_files
from shardc.emit.standin import onnxruntime_problem
from shardc.partition.options import PartitionOptions, parse_pins
from shardc.runtime.inprocess import run_inprocess
from shardc.topology import load_topology

ROOT = Path(__file__).resolve().parents[2]


def _model(path: Path) -> Path:
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "g"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b"),
    ]
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["X", "W"], ["Y"], name="mm"),
            helper.make_node("LayerNormalization", ["Y", "g", "b"], ["Z"], name="ln", axis=-1),
        ],
        "reshard",
        [helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, [2, 4, 8])],
        [helper.make_tensor_value_info("Z", onnx.TensorProto.FLOAT, [2, 4, 8])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


class _Pinned:
    """A tensor-parallel rule that answers with fixed strategies, by name."""

    def __init__(self, table, names: dict[str, str]) -> None:
        self.chosen = {n: next(s for s in table.of(n) if s.name == k) for n, k in names.items()}

    def choose(self, sizes):
        return dict(self.chosen) if sizes.get("tp", 1) > 1 else {}


def _pinned_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A two-device plan of the test graph whose MatMul is column parallel and whose
    LayerNorm is split along the sequence: the layout change between them is an all-to-all.
    """
    path = _model(tmp_path / "reshard.onnx")
    topo = load_topology(ROOT / "topologies/localhost.topo", {"devices": 2})
    options = PartitionOptions(pins=parse_pins(["tp=2,pp=1,dp=1,rule=split"]))
    state = analyse(
        path, topology=topo, mode="inference", partition=options, passes=partition_passes()
    ).state
    pinned = _Pinned(state.strategies, {"mm": "column", "ln": "seq_tp"})
    monkeypatch.setattr(lower_pass, "tp_rule", lambda *_: pinned)
    return build_plan(state).state


def test_all_to_all_reshard_is_emitted_and_matches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = _pinned_state(tmp_path, monkeypatch)
    emission = emit(state)

    a2a = [n for n in emission.models[0].graph.node if n.op_type == "AllToAll"]
    assert len(a2a) == 1
    attrs = {a.name: helper.get_attribute_value(a) for a in a2a[0].attribute}
    assert (attrs["axis"], attrs["concat_axis"]) == (1, 2)  # split seq, join hidden

    feeds = {"X": np.random.default_rng(1).standard_normal((2, 4, 8)).astype(np.float32)}
    want = ort.InferenceSession(str(tmp_path / "reshard.onnx"), providers=["CPUExecutionProvider"]).run(None, feeds)
    outs = run_inprocess(emission.models, feeds)
    for rank in (0, 1):
        np.testing.assert_allclose(outs[rank]["Z"], want[0], rtol=1e-5, atol=1e-5)

    # the same program without the join axis joins along the split one: shapes go wrong
    broken = onnx.ModelProto()
    broken.CopyFrom(emission.models[0])
    node = next(n for n in broken.graph.node if n.op_type == "AllToAll")
    kept = [a for a in node.attribute if a.name != "concat_axis"]
    del node.attribute[:]
    node.attribute.extend(kept)
    assert onnxruntime_problem(emission.models[0]) is None
    assert onnxruntime_problem(broken) is not None


def test_check_plan_catches_a_program_onnxruntime_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The written folder checks clean; with the AllToAll's join axis dropped (the bug an
    unpaired emitter once had) the same files pass onnx.checker but not check-plan.
    """
    state = _pinned_state(tmp_path, monkeypatch)
    files = state_files(state)
    out = write_outdir(tmp_path / "plan", files)
    assert check_outdir(out).problems == []

    device = out / "device_0.onnx"
    model = onnx.load(str(device))
    node = next(n for n in model.graph.node if n.op_type == "AllToAll")
    kept = [a for a in node.attribute if a.name != "concat_axis"]
    del node.attribute[:]
    node.attribute.extend(kept)
    onnx.save(model, str(device))
    onnx.checker.check_model(str(device))  # the checker alone sees nothing wrong
    problems = check_outdir(out).problems
    assert any("device_0.onnx: onnxruntime" in p for p in problems), problems
