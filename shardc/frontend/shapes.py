"""Binding symbolic dims and inferring every value's shape.

Order matters here: dims are bound on the proto *before* ONNX's inference so that its
data propagation (Shape -> Gather -> Concat -> Reshape chains in exported graphs) works
on numbers; then our own rules (:mod:`shardc.frontend.shape_rules`) fill what it left.
Inference runs on a *skeleton* of the model whose large weights are stripped, so a model
handed in memory with gigabytes of inline weights is never copied or serialized whole.
"""

from __future__ import annotations

from collections.abc import Mapping

import onnx

from shardc.errors import ModelError, OptionError
from shardc.frontend import contrib_shapes  # noqa: F401  (files the contrib-op shape rules)
from shardc.frontend.guard import MAX_ELEMENTS
from shardc.frontend.shape_rules import BadNode, apply_rule
from shardc.ir import Graph, TensorType, Value

_KEEP_INLINE_BYTES = 4096
"""Initializers up to this size stay inline in the skeleton: shape constants live there."""


def skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose large inline initializers are replaced by stubs."""
    out = onnx.ModelProto()
    for field in (
        "ir_version",
        "producer_name",
        "producer_version",
        "domain",
        "model_version",
        "doc_string",
    ):
        setattr(out, field, getattr(model, field))
    out.opset_import.extend(model.opset_import)
    out.metadata_props.extend(model.metadata_props)
    out.functions.extend(model.functions)
    g, src = out.graph, model.graph
    g.name, g.doc_string = src.name, src.doc_string
    g.node.extend(src.node)
    g.input.extend(src.input)
    g.output.extend(src.output)
    g.value_info.extend(src.value_info)
    g.sparse_initializer.extend(src.sparse_initializer)
    for t in src.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL or t.ByteSize() <= _KEEP_INLINE_BYTES:
            g.initializer.append(t)
            continue
        stub = g.initializer.add()
        stub.name, stub.data_type = t.name, t.data_type
        stub.dims.extend(t.dims)
        stub.data_location = onnx.TensorProto.EXTERNAL
        entry = stub.external_data.add()
        entry.key, entry.value = "location", "__shardc_stub__"
    return out


def checkable(skel: onnx.ModelProto) -> onnx.ModelProto:
    """The skeleton with external weights turned into typed graph inputs.

    ONNX's checker insists that external data files exist; planning must not need them,
    and a weight seen as an input of the same type and shape checks the same structure.
    """
    out = onnx.ModelProto()
    out.CopyFrom(skel)
    kept = [t for t in out.graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL]
    moved = [t for t in out.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if not moved:
        return out
    declared = {i.name for i in out.graph.input}
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept)
    for t in moved:
        if t.name not in declared:
            out.graph.input.append(
                onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
            )
    return out


def symbolic_dims(model: onnx.ModelProto) -> list[str]:
    """Names of the symbolic dims of the graph inputs, in first-seen order."""
    names: dict[str, None] = {}
    for vi in model.graph.input:
        if vi.type.HasField("tensor_type"):
            for d in vi.type.tensor_type.shape.dim:
                if d.HasField("dim_param") and d.dim_param:
                    names[d.dim_param] = None
    return list(names)


def bind_dims(model: onnx.ModelProto, dims: Mapping[str, int], *, where: str) -> None:
    """Replace ``dim_param`` by user-given values everywhere in the top-level graph."""
    if not dims:
        return
    known = set(symbolic_dims(model))
    for vi in model.graph.output:
        known.update(_params(vi))
    unknown = sorted(set(dims) - known)
    if unknown:
        have = ", ".join(sorted(known)) or "none"
        raise OptionError(
            f"--dim {unknown[0]}: the model has no symbolic dim named {unknown[0]!r}",
            where=where,
            hint=f"its symbolic dims are: {have}",
        )
    for name, v in dims.items():
        if not isinstance(v, int) or v <= 0:
            raise OptionError(f"--dim {name}={v}: a dim must be a positive integer")
        if v > MAX_ELEMENTS:
            raise OptionError(f"--dim {name}={v}: a dim is at most {MAX_ELEMENTS:,}")
    for vi in (*model.graph.input, *model.graph.output, *model.graph.value_info):
        if not vi.type.HasField("tensor_type"):
            continue
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and d.dim_param in dims:
                d.dim_value = dims[d.dim_param]


def _params(vi: onnx.ValueInfoProto) -> set[str]:
    if not vi.type.HasField("tensor_type"):
        return set()
    return {d.dim_param for d in vi.type.tensor_type.shape.dim if d.dim_param}


def infer(model: onnx.ModelProto, *, where: str) -> onnx.ModelProto:
    """ONNX shape inference with data propagation; never fatal, gaps are filled later."""
    try:
        return onnx.shape_inference.infer_shapes(
            model, check_type=False, strict_mode=False, data_prop=True
        )
    except (onnx.shape_inference.InferenceError, RuntimeError, ValueError) as exc:
        raise ModelError(
            f"shape inference failed: {str(exc).splitlines()[0]}", where=where
        ) from None


def _merge(old: TensorType | None, new: TensorType | None) -> TensorType | None:
    """Keep what was known, fill unknown dims from ``new``."""
    if new is None:
        return old
    if old is None or old.shape is None:
        return new if old is None else TensorType(old.dtype, new.shape)
    if new.shape is None or len(new.shape) != len(old.shape):
        return old
    dims = tuple(
        o if isinstance(o, int) or n is None else n
        for o, n in zip(old.shape, new.shape, strict=True)
    )
    return TensorType(old.dtype, dims)


def propagate(graph: Graph, *, where: str = "<model>") -> tuple[Graph, int]:
    """Fill unknown output types with our rules; returns the graph and values improved.

    A rule that finds a node's attributes at odds with its input shapes (a Transpose
    ``perm`` naming dim 5 of a matrix, a Concat ``axis`` of 7) is the model's mistake:
    :class:`ModelError` naming the node, never an IndexError.
    """
    values = dict(graph.values)
    improved = 0
    for node in graph.nodes:
        outs = [values.get(o) for o in node.outputs]
        if all(v is not None and v.type is not None and v.type.is_static for v in outs):
            continue
        ins = [values.get(i) if i else None for i in node.inputs]
        ts = [v.type if v else None for v in ins]
        cs = [v.const if v else None for v in ins]
        try:
            new_types = apply_rule(node, ts, cs)
        except BadNode as exc:
            raise ModelError(f"node {node.name!r} ({node.op_type}): {exc}", where=where) from None
        except (IndexError, ValueError, TypeError, KeyError, ZeroDivisionError,
                OverflowError) as exc:  # malformed attributes the rule did not foresee
            raise ModelError(f"node {node.name!r} ({node.op_type}): its attributes or constant "
                             f"inputs do not fit its input shapes ({type(exc).__name__}: {exc})",
                             where=where) from None
        if new_types is None:
            continue
        for name, old, new in zip(node.outputs, outs, new_types, strict=True):
            if not name:
                continue
            merged = _merge(old.type if old else None, new)
            if old is None or merged != old.type:
                improved += 1
                values[name] = Value(name, merged, const=old.const if old else None)
    if not improved:
        return graph, 0
    return graph.replace(values=values), improved
