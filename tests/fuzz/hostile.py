"""Hostile inputs for the topology language and ONNX loading, from a random source.

Every generator takes a :class:`random.Random`: the default-run properties pass the
shrinkable one hypothesis draws (``st.randoms(use_true_random=False)``), the long run a
``Random(seed)`` per case, so a case is named by its seed and re-made in any process.

* :func:`dsl_case` starts from a valid cluster (the generators of
  ``tests/topology/topo_gen.py``, both spellings) and applies one to three mutations: a
  token replaced by a hostile number, unit or name, lines dropped, duplicated or swapped,
  deep expressions and nesting, huge ranges, text truncated or garbled, bad overrides.
* :func:`onnx_case` starts from a small valid model (an MLP with weights, a shape chain
  with constants, an ``If`` with bodies, a model with external data) and mutates the
  proto (op types, attributes, dims, dtypes, opsets, names, external-data fields, UTF-8)
  or its bytes (truncated, flipped, spliced).

:func:`run_dsl` and :func:`run_onnx` run one case the way ``shardc topo check`` and
``shardc inspect`` run it, and :func:`outcome` classifies what happened: ``accepted``,
``handled`` (a :class:`~shardc.errors.ShardcError`) or ``unhandled`` (anything else).
"""

from __future__ import annotations

import random
import re
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "topology"))

from topo_gen import DevM, GroupM, KindM, Model, render

from shardc.errors import ShardcError

# ---------------------------------------------------------------- the topology language
HOSTILE_NUMBERS = [
    "0", "0 - 1", "1e308", "1e309", "1e-400", "1e999999999", "9" * 80, "9" * 4301, "2e30",
    "1/0", "0.5", "(1)", "1_000_000_001", "9223372036854775808", "1e29", "1.5e-31",
    "((((((((1))))))))", "x", "nodes", "-1",
]
HOSTILE_WORDS = ["GB", "GB/s", "Gb/s", "b/s", "TFLOPS", "TOPS", "us", "µs", "kind", "let",
                 "include", "link", "switch", "*", "..", "[", "]", "{", "}", ";", ":",
                 "<->", "extends", "members", '"x"', "\x00", "é", "\t", "#"]
HOSTILE_RANGES = ["0..1e9", "0..1000000", "0..9223372036854775807", "5..1", "0..0.5",
                  "*", "0..1e30", "1e29..1e29"]


def _cluster(rng: random.Random) -> Model:
    """A small valid cluster (1-3 kinds, 1-3 groups of 1-3 instances)."""
    kinds = []
    for i in range(rng.randint(1, 3)):
        dtypes = rng.sample(["fp32", "bf16", "fp16", "fp8", "fp4"], rng.randint(1, 3))
        kinds.append(KindM(f"k{i}", tuple((d, rng.randint(1, 5000)) for d in dtypes),
                           rng.randint(1, 300), rng.randint(1, 9000)))
    groups, index = [], 0
    for g in range(rng.randint(1, 3)):
        devices = []
        for _ in range(rng.randint(1, 2)):
            devices.append(DevM(f"d{index}", rng.randint(1, 4), rng.choice(kinds).name))
            index += 1
        groups.append(GroupM(f"g{g}", rng.randint(1, 3), tuple(devices),
                             rng.choice(["switch", "mesh"]), rng.randint(1, 900),
                             rng.randint(1, 5000)))
    return Model(tuple(kinds), tuple(groups), rng.randint(1, 100), rng.randint(1, 20000),
                 rng.choice([None, 1, 2, 4]), rng.random() < 0.5)


_TOKEN = re.compile(r"[0-9][0-9_.]*(?:[eE][+-]?[0-9]+)?|[A-Za-z_µ/]+|\.\.|<->|\S")


def _mutate_text(rng: random.Random, text: str) -> str:
    lines = text.split("\n")
    op = rng.randrange(14)
    if op == 0:  # a number replaced by a hostile one
        spots = [m for m in re.finditer(r"\b[0-9][0-9_.]*\b", text)]
        if spots:
            m = rng.choice(spots)
            return text[:m.start()] + rng.choice(HOSTILE_NUMBERS) + text[m.end():]
    if op == 1:  # a range replaced by a hostile one
        spots = [m for m in re.finditer(r"\[[^\]\n]*\]", text)]
        if spots:
            m = rng.choice(spots)
            return text[:m.start()] + "[" + rng.choice(HOSTILE_RANGES) + "]" + text[m.end():]
    if op == 2:  # any token replaced by a hostile word or dropped
        tokens = list(_TOKEN.finditer(text))
        if tokens:
            m = rng.choice(tokens)
            word = rng.choice([*HOSTILE_WORDS, ""])
            return text[:m.start()] + word + text[m.end():]
    if op == 3:  # a line dropped
        del lines[rng.randrange(len(lines))]
    elif op == 4:  # a line duplicated
        i = rng.randrange(len(lines))
        lines.insert(i, lines[i])
    elif op == 5:  # two lines swapped
        i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
        lines[i], lines[j] = lines[j], lines[i]
    elif op == 6:  # a deep sum or product
        n = rng.choice([5, 60, 99, 101, 500, 3000])
        lines.insert(0, "let deep = " + rng.choice(["+", "*", "-", "//"]).join(["1"] * n))
    elif op == 7:  # deep brackets
        n = rng.choice([10, 200, 5000])
        lines.insert(0, "let paren = " + "(" * n + "1" + ")" * n)
    elif op == 8:  # deep nesting of groups
        n = rng.choice([3, 31, 33, 250])
        body = "".join(f"n{i} {{\n" for i in range(n)) + "}\n" * n
        lines.append(body)
    elif op == 9:  # truncated
        return text[: rng.randrange(len(text) + 1)]
    elif op == 10:  # garbled characters
        chars = list(text)
        for _ in range(rng.randint(1, 5)):
            chars[rng.randrange(len(chars))] = chr(rng.choice([0, 9, 10, 34, 35, 42, 59, 91,
                                                               123, 125, 0xFFFD, 0x1F600,
                                                               rng.randrange(32, 127)]))
        return "".join(chars)
    elif op == 11:  # a kind that extends another, maybe in a cycle
        lines.append(f"kind x{rng.randrange(3)} extends {rng.choice(['k0', 'x0', 'x1', 'zz'])}"
                     " { }")
    elif op == 12:  # an extra statement of any sort
        lines.append(rng.choice([
            'include "nope.topo"', 'include "/etc/passwd"', "let nodes = 2",
            "link g0[0].d0[0] <-> g0[0].d0[0]: nvlink { bandwidth 1 GB/s; latency 1 us }",
            "mesh m: hccs { members g0[*].d0[*]; bandwidth 1 GB/s; latency 1 us }",
            "switch s: nvlink { members *; bandwidth 0 GB/s; latency 1 us }",
            "network big: ib { members g0[0..1e9]; bandwidth 1 GB/s; latency 1 us }",
            "extra[0..3]: k0", "kind k0 { }", "tag role host", "bandwidth 1 GB/s",
        ]))
    else:  # a parameter used for a count, to be overridden
        lines.insert(0, "let nodes = 2")
        lines.append("extra[0..nodes-1]: k0")
    return "\n".join(lines)


HOSTILE_OVERRIDES: list[object] = [
    None, float("inf"), float("nan"), "abc", 10**40, "1e30", -1, 0, 3, "1/0", "1/3", [1],
    True, 2**63, "1e999999999", "9" * 5000, 1.5, "", " 2 ",
]


def dsl_case(rng: random.Random) -> tuple[str, dict[str, object]]:
    """Topology text and overrides: a valid cluster, mutated one to three times."""
    text = render(_cluster(rng), rng.randrange(2))
    for _ in range(rng.choice([0, 1, 1, 1, 2, 3])):
        text = _mutate_text(rng, text)
    overrides: dict[str, object] = {}
    if rng.random() < 0.2:
        name = rng.choice(["nodes", "n_g0", "unknown"])
        overrides[name] = rng.choice(HOSTILE_OVERRIDES)
    if "\n" not in text:
        text += "\n"  # a str without a newline is a path
    return text, overrides


def run_dsl(text: str, overrides: dict[str, object]) -> None:
    """Load and summarise, as ``shardc topo check`` does."""
    from shardc.topology import load_topology
    from shardc.topology.summary import summarize

    summarize(load_topology(text, overrides))  # type: ignore[arg-type]


# ---------------------------------------------------------------- ONNX
def _mlp() -> onnx.ModelProto:
    w1 = numpy_helper.from_array(np.ones((8, 16), np.float32), "W1")
    b1 = numpy_helper.from_array(np.zeros(16, np.float32), "B1")
    w2 = numpy_helper.from_array(np.ones((16, 4), np.float32), "W2")
    nodes = [
        helper.make_node("MatMul", ["X", "W1"], ["h"], name="mm1"),
        helper.make_node("Add", ["h", "B1"], ["a"], name="add"),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "W2"], ["Y"], name="mm2"),
    ]
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 8])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 4])
    g = helper.make_graph(nodes, "mlp", [x], [y], [w1, b1, w2])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def _shapes() -> onnx.ModelProto:
    shape = numpy_helper.from_array(np.array([4, 6], np.int64), "S")
    idx = numpy_helper.from_array(np.array([0, 2], np.int64), "I")
    nodes = [
        helper.make_node("Transpose", ["X"], ["t"], name="tr", perm=[1, 0]),
        helper.make_node("Reshape", ["t", "S"], ["r"], name="rs"),
        helper.make_node("Concat", ["r", "r"], ["c"], name="cat", axis=1),
        helper.make_node("Gather", ["c", "I"], ["g"], name="ga", axis=0),
        helper.make_node("Split", ["g"], ["s1", "s2"], name="sp", axis=1, num_outputs=2),
        helper.make_node("Unsqueeze", ["s1", "A"], ["u"], name="un"),
        helper.make_node("Flatten", ["u"], ["Y"], name="fl", axis=1),
        helper.make_node("ReduceSum", ["s2"], ["Z"], name="red", keepdims=0),
    ]
    axes = numpy_helper.from_array(np.array([0], np.int64), "A")
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [6, 4])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)
    z = helper.make_tensor_value_info("Z", TensorProto.FLOAT, None)
    y.type.tensor_type.shape.dim.add().dim_param = "y0"
    z.type.tensor_type.ClearField("shape")
    g = helper.make_graph(nodes, "shapes", [x], [y, z], [shape, idx, axes])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def _branch() -> onnx.ModelProto:
    def body(name: str, op: str) -> onnx.GraphProto:
        out = helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, [2, 3])
        return helper.make_graph([helper.make_node(op, ["X"], [f"{name}_y"], name=f"{name}_n")],
                                 name, [], [out])

    cond = helper.make_tensor_value_info("C", TensorProto.BOOL, [])
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, 3])
    node = helper.make_node("If", ["C"], ["Y"], name="if", then_branch=body("then", "Relu"),
                            else_branch=body("else", "Neg"))
    g = helper.make_graph([node], "branch", [cond, x], [y])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def _external() -> onnx.ModelProto:
    w = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[4, 4])
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "w.bin"), ("offset", "0"), ("length", "64")):
        w.external_data.add(key=key, value=value)
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 4])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, 4])
    g = helper.make_graph([helper.make_node("MatMul", ["X", "W"], ["Y"], name="mm")], "ext",
                          [x], [y], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


BASES: list[Callable[[], onnx.ModelProto]] = [_mlp, _shapes, _branch, _external]
EXTERNAL_BYTES = 64
"""Size of ``w.bin`` next to every case (what ``_external`` declares)."""

OPS = ["MatMul", "Add", "Relu", "Transpose", "Reshape", "Concat", "Gather", "Split",
       "Unsqueeze", "Squeeze", "Flatten", "ReduceSum", "Softmax", "Gemm", "Cast", "Expand",
       "ConstantOfShape", "Shape", "If", "Loop", "Conv", "Custom", "LayerNormalization"]
INTS = [-2**63, -9, -1, 0, 1, 2, 3, 7, 2**31, 2**62, 2**63 - 1]


def _all_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    out, stack = [], [model.graph]
    while stack:
        g = stack.pop()
        for n in g.node:
            out.append(n)
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    stack.append(a.g)
    return out


def _value_infos(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    g = model.graph
    return [*g.input, *g.output, *g.value_info]


def _mutate_proto(rng: random.Random, model: onnx.ModelProto) -> None:
    nodes = _all_nodes(model)
    node = rng.choice(nodes)
    op = rng.randrange(13)
    if op == 0:
        node.op_type = rng.choice(OPS)
    elif op == 1 and node.attribute:  # an int attribute set to a hostile value
        a = rng.choice(list(node.attribute))
        if a.type == onnx.AttributeProto.INTS:
            a.ints[:] = [rng.choice(INTS) for _ in range(rng.randint(0, 4))]
        elif a.type == onnx.AttributeProto.INT:
            a.i = rng.choice(INTS)
        else:
            node.attribute.remove(a)
    elif op == 2:  # an attribute added with a hostile value
        name = rng.choice(["axis", "perm", "axes", "to", "keepdims", "split", "num_outputs",
                           "allowzero", "transA", "x"])
        value = rng.choice([rng.choice(INTS), [rng.choice(INTS) for _ in range(3)], "s", 1.5])
        kept = [a for a in node.attribute if a.name != name]
        del node.attribute[:]
        node.attribute.extend([*kept, helper.make_attribute(name, value)])
    elif op == 3:  # a dim of a declared value
        infos = [vi for vi in _value_infos(model) if vi.type.HasField("tensor_type")]
        dims = [d for vi in infos for d in vi.type.tensor_type.shape.dim]
        if dims:
            rng.choice(dims).dim_value = rng.choice([-2, -1, 0, 1, 3, 2**40, 2**62, 2**63 - 1])
    elif op == 4 and model.graph.initializer:  # an initializer's dims
        t = rng.choice(list(model.graph.initializer))
        t.dims[:] = [rng.choice([-1, 0, 1, 2, 5, 2**40, 2**62]) for _ in range(rng.randint(0, 3))]
    elif op == 5:  # an element type
        code = rng.choice([0, 7, 16, 17, 27, 28, 29, 77, 2**31 - 1])
        if model.graph.initializer and rng.random() < 0.5:
            rng.choice(list(model.graph.initializer)).data_type = code
        else:
            infos = [vi for vi in _value_infos(model) if vi.type.HasField("tensor_type")]
            rng.choice(infos).type.tensor_type.elem_type = code
    elif op == 6:  # an opset version or domain
        opset = model.opset_import[0]
        if rng.random() < 0.7:
            opset.version = rng.choice([0, 1, 6, 13, 28, 29, 99999, 2**62])
        else:
            model.opset_import.append(helper.make_opsetid(
                rng.choice(["ai.onnx.ml", "com.microsoft", "ai.onnx"]), rng.choice([1, 5, 999])))
    elif op == 7:  # a dangling or repeated name
        names = [*node.input, *node.output]
        if names:
            k = rng.randrange(len(names))
            new = rng.choice(["", "ghost", "X", "Y", names[0]])
            if k < len(node.input):
                node.input[k] = new
            else:
                node.output[k - len(node.input)] = new
    elif op == 8:  # a node removed or duplicated
        g = model.graph
        if len(g.node) > 1 and rng.random() < 0.5:
            del g.node[rng.randrange(len(g.node))]
        else:
            g.node.append(g.node[rng.randrange(len(g.node))])
    elif op == 9:  # external-data fields
        tensors = [t for t in model.graph.initializer]
        if tensors:
            t = rng.choice(tensors)
            if t.data_location != TensorProto.EXTERNAL or rng.random() < 0.3:
                t.ClearField("raw_data")
                t.data_location = TensorProto.EXTERNAL
                del t.external_data[:]
                t.external_data.add(key="location", value=rng.choice(["w.bin", "../w.bin", "w\x00.bin",
                                                                      "/etc/passwd", ""]))
            key = rng.choice(["offset", "length", "location", "checksum"])
            value = rng.choice(["abc", "-5", "0", "32", "64", "1.5", str(2**70), " 8", ""])
            kept = [e for e in t.external_data if e.key != key]
            del t.external_data[:]
            t.external_data.extend(kept)
            t.external_data.add(key=key, value=value)
    elif op == 10 and model.graph.initializer:  # inline data cut short
        t = rng.choice(list(model.graph.initializer))
        if t.raw_data:
            t.raw_data = t.raw_data[: rng.randrange(len(t.raw_data))]
    elif op == 11:  # a value declared with a different rank
        infos = [vi for vi in _value_infos(model) if vi.type.HasField("tensor_type")]
        vi = rng.choice(infos)
        shape = vi.type.tensor_type.shape
        if rng.random() < 0.5 and shape.dim:
            del shape.dim[-1]
        else:
            shape.dim.add().dim_value = rng.choice([1, 3, 2**40])
    elif op == 12 and rng.random() < 0.5:  # a name made invalid UTF-8 after serialising
        node.name = "UTF8SLOT"


def _mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    op = rng.randrange(4)
    if op == 0:
        return data[: rng.randrange(len(data))]
    buf = bytearray(data)
    if op == 1:
        for _ in range(rng.randint(1, 8)):
            buf[rng.randrange(len(buf))] = rng.randrange(256)
    elif op == 2:
        i = rng.randrange(len(buf))
        buf[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    else:
        i, j = sorted(rng.randrange(len(buf)) for _ in range(2))
        buf[i:i] = buf[i:j]
    return bytes(buf)


def onnx_case(rng: random.Random) -> bytes:
    """The bytes of a mutated model (saved next to ``w.bin`` of :data:`EXTERNAL_BYTES`)."""
    model = rng.choice(BASES)()
    for _ in range(rng.choice([1, 1, 2, 3])):
        _mutate_proto(rng, model)
    data = model.SerializeToString()
    data = data.replace(b"UTF8SLOT", b"UTF8\xff\xfeOT")
    if rng.random() < 0.15:
        data = _mutate_bytes(rng, data)
    return data


def run_onnx(data: bytes, folder: Path) -> None:
    """Write the case into ``folder`` (with its ``w.bin``) and analyse it as ``inspect``
    does: load, then the analysis passes (costs), which read what loading let through.
    """
    from shardc.compiler import analyse

    (folder / "w.bin").write_bytes(b"\1" * EXTERNAL_BYTES)
    path = folder / "case.onnx"
    path.write_bytes(data)
    analyse(path)


# ---------------------------------------------------------------- outcomes
def outcome(fn: Callable[[], object]) -> tuple[str, str]:
    """``("accepted" | "handled" | "memory" | "unhandled", detail)`` of calling ``fn``."""
    try:
        fn()
    except ShardcError as exc:
        return "handled", str(exc)[:200]
    except MemoryError:
        return "memory", "MemoryError"
    except Exception as exc:
        return "unhandled", f"{type(exc).__name__}: {str(exc)[:200]}"
    return "accepted", ""
