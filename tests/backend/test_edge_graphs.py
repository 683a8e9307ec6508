"""Graphs at the edges of the pipeline, each planned on two devices and run.

Outputs that are inputs or weights, a graph with no nodes, zero-sized, scalar, string
and bool tensors, omitted optional inputs, several outputs, a size only known at run
time: every one compiles (``rule=split``), emits and gives onnxruntime's answer on
every rank.
"""

from __future__ import annotations

import node_suite as ns
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from shardc.emit.devices import emit
from shardc.runtime.inprocess import run_inprocess

HEAD = '<ir_version: 9, opset_import: ["" : 21]>\n'
F4 = np.arange(4, dtype=np.float32) - 1.5
X46 = np.arange(24, dtype=np.float32).reshape(4, 6) - 12
CASES = {
    "output is an input": (
        "g (float[4] X, float[4] Z) => (float[4] X, float[4] Y) { Y = Relu(Z) }",
        {"X": F4, "Z": F4},
    ),
    "output is a weight": ("g (float[4] X) => (float[4] Y, float[3] W) { Y = Relu(X) }", {"X": F4}),
    "no nodes": ("g (float[4] X) => (float[4] X) { }", {"X": F4}),
    "zero-sized": (
        "g (float[0,4] X) => (float[0,4] Y) { Y = Relu(X) }",
        {"X": np.zeros((0, 4), np.float32)},
    ),
    "scalars": (
        "g (float X, float W) => (float Y) { Y = Mul(X, W) }",
        {"X": np.array(2, np.float32), "W": np.array(3, np.float32)},
    ),
    "strings": (
        "g (string[4] X, string[4] Z) => (string[4] Y) { Y = StringConcat(X, Z) }",
        {"X": np.array(list("abcd"), object), "Z": np.array(list("efgh"), object)},
    ),
    "bools": ("g (bool[4,2] X) => (bool[4,2] Y) { Y = Not(X) }", {"X": np.eye(4, 2, dtype=bool)}),
    "omitted optional inputs": (
        "g (float[4,6] X) => (float[4,6] Y) { Y = Clip(X, , ) }",
        {"X": X46},
    ),
    "several outputs": (
        "g (float[4,6] X) => (float[4,3] A, float[4,3] B) { A, B = Split<num_outputs=2, axis=1>(X) }",
        {"X": X46},
    ),
    "size known at run time": (
        "g (float[4,6] X) => (int64[2,?] Y, float[2,?] Z) { Y = NonZero(X)  Z = Cast<to=1>(Y) }",
        {"X": X46},
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_edge_graph_runs_as_a_plan(name: str) -> None:
    text, feeds = CASES[name]
    model = onnx.parser.parse_model(HEAD + text)
    if name == "output is a weight":
        model.graph.initializer.append(numpy_helper.from_array(np.arange(3, dtype=np.float32), "W"))
    onnx.checker.check_model(model)
    state, _ = ns.compile_case(model, {})
    models = emit(state).models
    for m in models.values():
        onnx.checker.check_model(m)
    outs = run_inprocess(models, feeds)
    want = ort.InferenceSession(model.SerializeToString()).run(None, feeds)
    for rank in sorted(outs):
        for o, ref in zip(model.graph.output, want, strict=True):
            np.testing.assert_array_equal(outs[rank][o.name], ref)
