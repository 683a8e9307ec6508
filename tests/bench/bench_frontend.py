"""Model loading at scale: :func:`shardc.frontend.load_model` on 10k, 40k and 100k nodes.

The input is a chain of ``N`` nodes over a ``fp32[8, 64]`` activation, cycling
``Add(·, W) -> Relu -> Mul(·, W)`` with one shared 64-element weight ``W``: what a deep
exported graph looks like to the frontend (many nodes, few distinct weights), built in
memory and saved to a temporary ``.onnx`` file so the timed load reads it from disk like
``shardc inspect`` does. The figure is the wall time of one ``load_model`` (read, ONNX
checker, shape inference, conversion to the IR, our shape rules, IR verification),
best of two. Loading must stay linear in the node count: the budget is 100,000 nodes in
under 20 s on this 2-core machine.

Run ``python tests/bench/bench_frontend.py`` for the figures, or
``pytest tests/bench/bench_frontend.py -m bench`` to check the budget.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from shardc.frontend import load_model

SIZES = (10_000, 40_000, 100_000)
BUDGET_100K_S = 20.0


def chain_model(nodes: int) -> onnx.ModelProto:
    """A chain of ``nodes`` elementwise nodes sharing one small weight (see the docstring)."""
    ops = ("Add", "Relu", "Mul")
    body, prev = [], "X"
    for i in range(nodes):
        op = ops[i % 3]
        out = "Y" if i == nodes - 1 else f"t{i}"
        inputs = [prev] if op == "Relu" else [prev, "W"]
        body.append(helper.make_node(op, inputs, [out], name=f"n{i}"))
        prev = out
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [8, 64])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [8, 64])
    w = numpy_helper.from_array(np.ones(64, np.float32), "W")
    graph = helper.make_graph(body, "chain", [x], [y], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def load_seconds(nodes: int, repeat: int = 2) -> float:
    """Best wall time of ``repeat`` loads of a saved ``nodes``-node chain."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"chain{nodes}.onnx"
        onnx.save_model(chain_model(nodes), str(path))
        best = float("inf")
        for _ in range(repeat):
            start = time.perf_counter()
            model = load_model(path)
            best = min(best, time.perf_counter() - start)
        assert len(model.graph.nodes) == nodes
    return best


@pytest.fixture(autouse=True)
def _only_when_asked(request: pytest.FixtureRequest) -> None:
    if "bench" not in (request.config.getoption("-m") or ""):
        pytest.skip("benchmark: run with -m bench")


@pytest.mark.bench
def test_load_100k_nodes_within_budget() -> None:
    seconds = load_seconds(100_000, repeat=1)
    assert seconds < BUDGET_100K_S, f"{seconds:.1f} s"


def main() -> int:
    """Print the load time per size and the per-node cost (flat when loading is linear)."""
    print(f"python {sys.version.split()[0]}, onnx {onnx.__version__}; best of 2 loads")
    sizes = [int(a) for a in sys.argv[1:]] or list(SIZES)
    seconds = {}
    for n in sizes:
        seconds[n] = load_seconds(n)
        print(f"  {n:>7,} nodes  {seconds[n]:8.2f} s  {seconds[n] / n * 1e6:7.1f} us/node",
              flush=True)
    if 100_000 not in seconds:
        return 0
    ok = seconds[100_000] < BUDGET_100K_S
    print(f"budget: 100,000 nodes in {seconds[100_000]:.2f} s < {BUDGET_100K_S:.0f} s: "
          f"{'OK' if ok else 'OVER'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
