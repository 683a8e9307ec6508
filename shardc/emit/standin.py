"""Load a device program in onnxruntime, comm nodes stood in by local ops of the same shape.

Why: ``onnx.checker`` knows nothing of ``com.microsoft`` ops and checks shapes loosely, so
a device program can pass it and still be refused by onnxruntime ("Incompatible
dimensions", a Reshape that cannot apply). onnxruntime knows every op the deployment tools
emit, but not the ``shardc`` comm domain. Replacing each comm node by standard ops that
give its output the shape the collective would (a Concat for an AllGather, a Slice for a
ReduceScatter, a ConstantOfShape for a Recv…) makes the program a plain single-device
model: onnxruntime's session build then runs its full, strict type and shape inference,
and one run on zeros catches the errors only run-time shapes show. The numbers are
meaningless; only that the program loads and runs is checked.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from shardc.emit.program import DOMAIN, cpu_session, node_attr


def stand_in(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with every ``shardc`` node replaced by local ops of its shape."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes: list[onnx.NodeProto] = []
    consts: list[onnx.TensorProto] = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 18)
    for k, node in enumerate(model.graph.node):
        if node.domain != DOMAIN:
            nodes.append(node)
            continue
        made, extra = _replace(node, f"__standin{k}", opset)
        nodes += made
        consts += extra
    # what a Send ships becomes an output, so a stage that only sends still runs
    have = {o.name for o in out.graph.output}
    for node in model.graph.node:
        if node.domain == DOMAIN and node.op_type == "Send" and node.input[0] not in have:
            have.add(node.input[0])
            out.graph.output.append(helper.make_empty_tensor_value_info(node.input[0]))
    # a received integer tensor may be a shape or indices (a Reshape's target sent from an
    # earlier stage): zeros would make a valid program fail, so it is left unknown, an input
    for node in _index_recvs(model):
        shape = [int(d) for d in node_attr(node, "shape", [])]
        out.graph.input.append(
            helper.make_tensor_value_info(node.output[0], int(node_attr(node, "dtype", 0)), shape)
        )
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    out.graph.initializer.extend(consts)
    kept = [o for o in out.opset_import if o.domain != DOMAIN]
    del out.opset_import[:]
    out.opset_import.extend(kept)
    return out


_INDEX_TYPES = frozenset(
    {onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.INT16,
     onnx.TensorProto.UINT64, onnx.TensorProto.UINT32}
)
"""Element types a received value may carry shapes or indices in."""


def _index_recvs(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [
        n for n in model.graph.node
        if n.domain == DOMAIN and n.op_type == "Recv"
        and int(node_attr(n, "dtype", onnx.TensorProto.FLOAT)) in _INDEX_TYPES
    ]


def _int64(name: str, values: list[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def _replace(
    node: onnx.NodeProto, tag: str, opset: int
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The local ops standing in for one comm node (none for a Send: it makes nothing)."""
    op = node.op_type
    if op == "Send":
        return [], []
    if op == "Recv":
        shape = [int(d) for d in node_attr(node, "shape", [])]
        dtype = int(node_attr(node, "dtype", onnx.TensorProto.FLOAT))
        if dtype in _INDEX_TYPES:
            return [], []  # made a graph input by stand_in: its values are unknown here
        value = helper.make_tensor(f"{tag}_value", dtype, [1], [0])
        made = helper.make_node(
            "ConstantOfShape", [f"{tag}_shape"], [node.output[0]], name=node.name, value=value
        )
        return [made], [_int64(f"{tag}_shape", shape)]
    x, y = node.input[0], node.output[0]
    n = max(1, len(node_attr(node, "group", [])))
    axis = int(node_attr(node, "axis", -1))
    if op == "AllReduce" or n == 1:
        return [helper.make_node("Identity", [x], [y], name=node.name)], []
    if op == "AllGather":
        return [helper.make_node("Concat", [x] * n, [y], name=node.name, axis=axis)], []
    if op == "ReduceScatter":
        return [_piece(x, y, axis, n, tag, node.name, opset)], []
    if op == "AllToAll":  # a 1/n piece along axis, n of them joined along concat_axis
        cat = int(node_attr(node, "concat_axis", axis))
        piece = _piece(x, f"{tag}_piece", axis, n, tag, f"{node.name}_piece", opset)
        join = helper.make_node("Concat", [f"{tag}_piece"] * n, [y], name=node.name, axis=cat)
        return [piece, join], []
    raise ValueError(f"{node.name}: unknown comm op {op!r}")


def _piece(x: str, y: str, axis: int, n: int, tag: str, name: str, opset: int) -> onnx.NodeProto:
    """The first 1/n of ``x`` along ``axis``: Split into n equal outputs, keep the first
    (opset 18 asks for ``num_outputs``; before it, the outputs' count says it).
    """
    outs = [y] + [f"{tag}_rest{i}" for i in range(1, n)]
    if opset >= 18:
        return helper.make_node("Split", [x], outs, name=name, axis=axis, num_outputs=n)
    return helper.make_node("Split", [x], outs, name=name, axis=axis)


def onnxruntime_problem(model: onnx.ModelProto, run: bool = True) -> str | None:
    """Why onnxruntime refuses ``model`` (comm nodes stood in), or None when it loads and,
    with ``run``, runs once on zero inputs.
    """
    standin = stand_in(model)
    comm = {n.name for n in model.graph.node if n.domain == DOMAIN}
    try:
        sess = cpu_session(standin, log_level=4)
    except Exception as exc:  # onnxruntime raises its own pybind types
        if _missing_kernel(exc) or _blames_standin(exc, comm):
            return None
        return f"onnxruntime refuses it: {_first(exc)}"
    if not run or _index_recvs(model):
        return None  # received shapes or indices are unknown: zeros prove nothing
    feeds = {}
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in i.shape]
        feeds[i.name] = np.zeros(shape, dtype=_np_type(i.type))
    try:
        sess.run(None, feeds)
    except Exception as exc:
        if _missing_kernel(exc) or _blames_standin(exc, comm):
            return None
        return f"onnxruntime cannot run it: {_first(exc)}"
    return None


def _blames_standin(exc: BaseException, comm: set[str]) -> bool:
    """True when onnxruntime refuses one of the stand-ins themselves (they keep the comm
    node's name): an old opset's Concat takes floats only, so a bool AllGather cannot be
    stood in by it. That is a limit of the stand-in, not evidence against the program.
    """
    text = str(exc)
    return any(f"({name})" in text for name in comm)


def _missing_kernel(exc: BaseException) -> bool:
    """True when onnxruntime's CPU provider lacks a kernel for a type (bf16 Add, fp8): a
    fact about this machine's onnxruntime, not about the program, so it is no problem.
    """
    text = str(exc)
    return "NOT_IMPLEMENTED" in text or "Could not find an implementation" in text


def _np_type(ort_type: str) -> np.dtype:
    """``tensor(float16)`` → ``float16``; onnxruntime names element types this way."""
    name = ort_type.removeprefix("tensor(").removesuffix(")")
    return np.dtype({"float": "float32", "double": "float64"}.get(name, name))


def _first(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
