"""IR: exact round trip to ONNX, validity checks, text form."""

from __future__ import annotations

from pathlib import Path

import models
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import parse

from shardc.emit import model_proto
from shardc.errors import PipelineError
from shardc.frontend import load_model
from shardc.ir import Graph, Node, verify_graph
from shardc.ir.printer import format_graph


@pytest.mark.parametrize("name", ["gpt2_path", "llama_path"])
def test_round_trip_reproduces_outputs_exactly(name: str, request: pytest.FixtureRequest) -> None:
    path: Path = request.getfixturevalue(name)
    original = onnx.load(str(path))
    rebuilt = model_proto(load_model(path))
    onnx.checker.check_model(rebuilt, full_check=True)
    assert [(n.op_type, list(n.input), list(n.output)) for n in rebuilt.graph.node] == [
        (n.op_type, list(n.input), list(n.output)) for n in original.graph.node
    ]
    feed = {"input_ids": models.example_ids().numpy()}
    want = ort.InferenceSession(str(path)).run(None, feed)
    got = ort.InferenceSession(rebuilt.SerializeToString()).run(None, feed)
    for w, g in zip(want, got, strict=True):
        np.testing.assert_array_equal(w, g)


def test_round_trip_keeps_functions_subgraphs_and_attribute_kinds() -> None:
    model = parse("""
    <ir_version: 8, opset_import: ["" : 18, "local" : 1]>
    g (float[4] X, bool c) => (float[4] Y, float[4] F) {
        Y = If(c) <then_branch = t () => (float[4] a) { a = Neg(X) },
                   else_branch = e () => (float[4] b) { b = Abs(X) }>
        F = local.Scale<alpha=2.5>(X)
    }
    <domain: "local", opset_import: ["" : 18]>
    Scale <alpha>(x) => (y) {
        a = Constant<value_float: float = @alpha>()
        y = Mul(x, a)
    }""")
    rebuilt = model_proto(load_model(model))
    onnx.checker.check_model(rebuilt)
    x = np.array([1.0, -2.0, 3.0, -4.0], np.float32)
    for c in (True, False):
        feed = {"X": x, "c": np.array(c)}
        want = ort.InferenceSession(model.SerializeToString()).run(None, feed)
        got = ort.InferenceSession(rebuilt.SerializeToString()).run(None, feed)
        for w, g in zip(want, got, strict=True):
            np.testing.assert_array_equal(w, g)


def _graph(nodes: list[Node], inputs=("x",), outputs=("y",)) -> Graph:
    from shardc.ir import DType, TensorType, Value

    t = TensorType(DType.FLOAT, (2,))
    names = {*inputs, *(o for n in nodes for o in n.outputs)}
    return Graph("g", tuple(nodes), {n: Value(n, t) for n in names}, tuple(inputs), tuple(outputs))


def test_verify_catches_broken_graphs() -> None:
    relu = Node("r", "Relu", "", ("x",), ("y",))
    verify_graph(_graph([relu]))
    with pytest.raises(PipelineError, match="before it is defined"):
        verify_graph(
            _graph([Node("a", "Relu", "", ("z",), ("y",)), Node("b", "Relu", "", ("x",), ("z",))])
        )
    with pytest.raises(PipelineError, match="assigned twice"):
        verify_graph(_graph([relu, Node("r2", "Relu", "", ("x",), ("y",))]))
    with pytest.raises(PipelineError, match="duplicate node name"):
        verify_graph(_graph([relu, Node("r", "Relu", "", ("y",), ("w",))], outputs=("w",)))
    with pytest.raises(PipelineError, match="never produced"):
        verify_graph(_graph([relu], outputs=("nope",)))


def test_producer_consumer_views_and_printer(gpt2_path: Path) -> None:
    g = load_model(gpt2_path).graph
    for node in g.nodes:
        for o in node.outputs:
            assert g.producer(o) is node
        for i in node.present_inputs:
            assert node in g.consumers(i)
    text = format_graph(g)
    assert text.count("\n") == len(g.nodes) + 3
    assert "= Gather(" in text
