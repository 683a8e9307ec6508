"""Small non-chain graphs for the coarsen tests, written as ONNX text.

Weights are written as graph inputs named ``W*``/``C*`` and turned into zero
initializers by :func:`model`, which keeps the text short (ONNX text needs initializer
values spelled out).
"""

from __future__ import annotations

import numpy as np
import onnx
from conftest import parse
from onnx import numpy_helper

HEADER = '<ir_version: 8, opset_import: ["" : 18]>\n'

SINGLE = "g (float[2,4] X, float[4,3] W) => (float[2,3] Y) { Y = MatMul(X, W) }"

MERGE_LATE = """g (float[4,8] A, float[4,8] B) => (float[4,8] Y) {
  a1 = Relu(A)
  a2 = Tanh(a1)
  a3 = Sigmoid(a2)
  b1 = Exp(B)
  b2 = Tanh(b1)
  b3 = Relu(b2)
  Y = Add(a3, b3)
}"""

ENCODER_DECODER = """g (float[4,8] X, float[4,8] T, float[8,8] W1, float[8,8] W2, float[8,8] W3,
   float[8,8] W4, float[8,8] C1, float[8,8] C2) => (float[4,8] Y) {
  e1 = MatMul(X, W1)
  e1r = Relu(e1)
  h1 = Add(X, e1r)
  e2 = MatMul(h1, W2)
  e2r = Relu(e2)
  mem = Add(h1, e2r)
  d1 = MatMul(T, W3)
  c1 = MatMul(mem, C1)
  d1c = Add(d1, c1)
  d1r = Relu(d1c)
  g1 = Add(T, d1r)
  d2 = MatMul(g1, W4)
  c2 = MatMul(mem, C2)
  d2c = Add(d2, c2)
  d2r = Relu(d2c)
  Y = Add(g1, d2r)
}"""

RESIDUAL_STACK = """g (float[4,8] X, float[8,8] W1, float[8,8] W2, float[8,8] W3) => (float[4,8] Y) {
  r1 = Relu(X)
  m1 = MatMul(r1, W1)
  h1 = Add(X, m1)
  r2 = Relu(h1)
  m2 = MatMul(r2, W2)
  h2 = Add(h1, m2)
  r3 = Relu(h2)
  m3 = MatMul(r3, W3)
  Y = Add(h2, m3)
}"""

KV_CACHE = """g (float[4,8] X, float[4,8] P1, float[4,8] P2, float[4,8] P3, float[8,8] W1,
   float[8,8] W2, float[8,8] W3) => (float[4,8] Y, float[8,8] K1, float[8,8] K2, float[8,8] K3) {
  x0 = Relu(X)
  m1 = MatMul(x0, W1)
  K1 = Concat<axis=0>(P1, m1)
  h1 = Add(x0, m1)
  m2 = MatMul(h1, W2)
  K2 = Concat<axis=0>(P2, m2)
  h2 = Add(h1, m2)
  m3 = MatMul(h2, W3)
  K3 = Concat<axis=0>(P3, m3)
  Y = Add(h2, m3)
}"""

CONTROL_FLOW = """g (bool c, float[2] X) => (float[2] Y) {
  a = Relu(X)
  b = If(c) <then_branch = g1 () => (float[2] r) { r = Neg(a) },
             else_branch = g2 () => (float[2] s) { s = Abs(a) }>
  Y = Add(b, X)
}"""

STATIC_OUTPUT = """g (float[2] X) => (float[2] Y, float[2] C, int64[1] S) {
  C = Constant <value = float[2] {1.0, 2.0}> ()
  A = Relu(X)
  S = Shape(A)
  Y = Add(A, C)
}"""

NO_NODES = "g (float[2] X) => (float[2] X) { }"


def model(text: str) -> onnx.ModelProto:
    """The model of ``text``, graph inputs named W*/C* moved to zero initializers."""
    proto = parse(HEADER + text)
    graph = proto.graph
    weights = [i for i in graph.input if i.name[0] in "WC"]
    for vi in weights:
        shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        graph.initializer.append(numpy_helper.from_array(np.zeros(shape, np.float32), vi.name))
        graph.input.remove(vi)
    onnx.checker.check_model(proto)
    return proto


def random_model(steps: list[tuple[str, int, int]], inputs: int, repeat: int) -> onnx.ModelProto:
    """A random DAG over float[4,8] values; ``steps`` (op, a, b) pick operands by index.

    The steps are applied ``repeat`` times in a row, each copy picking from what the copy
    before it made (the first from the graph inputs), so some graphs repeat and most are
    not chains; MatMuls read fresh weights. The last value made is the graph output.
    """
    from onnx import TensorProto, helper

    previous = [f"in{i}" for i in range(inputs)]
    nodes, inits = [], []
    for r in range(repeat):
        pool, made = list(previous), []
        for k, (op, a, b) in enumerate(steps):
            out, x, y = f"v{r}_{k}", pool[a % len(pool)], pool[b % len(pool)]
            if op == "MatMul":
                y = f"w{r}_{k}"
                inits.append(numpy_helper.from_array(np.zeros((8, 8), np.float32), y))
            operands = [x] if op in ("Relu", "Tanh") else [x, y]
            nodes.append(helper.make_node(op, operands, [out]))
            pool.append(out)
            made.append(out)
        previous = made
    names = [*(f"in{i}" for i in range(inputs)), previous[-1]]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4, 8]) for n in names]
    graph = helper.make_graph(nodes, "random", io[:-1], io[-1:], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
