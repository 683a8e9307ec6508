"""ONNX protobuf -> IR, once, after shape inference.

Node names are made unique and stable (empty or repeated names get ``op_index``), since
passes and reports refer to nodes by name. Control-flow bodies and model-local function
calls become IR subgraphs of their node so their cost can be summed; the planner treats
the node as one opaque unit.
"""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Callable, Iterable, Mapping

import onnx

from shardc.errors import ModelError
from shardc.frontend.read import external_info
from shardc.ir import Attribute, AttrValue, DType, Graph, Node, TensorType, Value, WeightRef

SMALL_CONST_ELEMENTS = 64
"""Integer constants up to this many elements are kept in the IR (shapes, axes, pads)."""

_INLINE_KINDS = {
    onnx.AttributeProto.FLOAT: "FLOAT",
    onnx.AttributeProto.INT: "INT",
    onnx.AttributeProto.STRING: "STRING",
    onnx.AttributeProto.FLOATS: "FLOATS",
    onnx.AttributeProto.INTS: "INTS",
    onnx.AttributeProto.STRINGS: "STRINGS",
}


def tensor_type(tp: onnx.TypeProto) -> TensorType | None:
    """IR type of an ONNX TypeProto; None for sequences, maps and unknown element types."""
    if not tp.HasField("tensor_type"):
        return None
    tt = tp.tensor_type
    if tt.elem_type == 0:
        return None
    try:
        dtype = DType(tt.elem_type)
    except ValueError:
        return None
    if not tt.HasField("shape"):
        return TensorType(dtype, None)
    dims: list[int | str | None] = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param:
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return TensorType(dtype, tuple(dims))


def small_tensor_value(t: onnx.TensorProto) -> tuple[int | float, ...] | None:
    """Elements of a small integer tensor stored inline, else None."""
    if t.data_location == onnx.TensorProto.EXTERNAL:
        return None
    n = 1
    for d in t.dims:
        n *= d
    if n > SMALL_CONST_ELEMENTS or t.data_type not in (
        onnx.TensorProto.INT64,
        onnx.TensorProto.INT32,
        onnx.TensorProto.INT8,
        onnx.TensorProto.UINT8,
        onnx.TensorProto.INT16,
        onnx.TensorProto.BOOL,
    ):
        return None
    try:
        arr = onnx.numpy_helper.to_array(t)
        return tuple(int(x) for x in arr.reshape(-1).tolist())
    except (ValueError, TypeError) as exc:  # data that does not match dims and type
        raise ModelError(f"tensor {t.name!r} of dims {list(t.dims)}: its data does not match "
                         f"its dims and type ({exc})") from None


def weight_ref(t: onnx.TensorProto) -> WeightRef:
    """Reference to an initializer's bytes (location only, never the data)."""
    info = external_info(t)
    if info:
        length = info.get("length")
        return WeightRef(
            location=info.get("location"),
            offset=int(info.get("offset", 0) or 0),
            length=int(length) if length else None,
        )
    return WeightRef(small_value=small_tensor_value(t))


def convert_attribute(a: onnx.AttributeProto) -> Attribute:
    """IR attribute; kinds the IR does not interpret keep their serialized proto."""
    if a.ref_attr_name or a.type not in _INLINE_KINDS:
        kind = onnx.AttributeProto.AttributeType.Name(a.type)
        return Attribute(a.name, kind, a.SerializeToString(deterministic=True))
    kind = _INLINE_KINDS[a.type]
    value: AttrValue
    if a.type == onnx.AttributeProto.FLOAT:
        value = float(a.f)
    elif a.type == onnx.AttributeProto.INT:
        value = int(a.i)
    elif a.type == onnx.AttributeProto.STRING:
        value = a.s.decode("utf-8", "surrogateescape")
    elif a.type == onnx.AttributeProto.FLOATS:
        value = tuple(float(x) for x in a.floats)
    elif a.type == onnx.AttributeProto.INTS:
        value = tuple(int(x) for x in a.ints)
    else:
        value = tuple(s.decode("utf-8", "surrogateescape") for s in a.strings)
    return Attribute(a.name, kind, value)


def constant_value(node: onnx.NodeProto) -> tuple[int | float, ...] | None:
    """The payload of a small integer ``Constant`` node (for shape reasoning)."""
    for a in node.attribute:
        if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
            return small_tensor_value(a.t)
        if a.name == "value_int":
            return (int(a.i),)
        if a.name == "value_ints" and len(a.ints) <= SMALL_CONST_ELEMENTS:
            return tuple(int(x) for x in a.ints)
    return None


def unique_node_names(nodes: Iterable[onnx.NodeProto], prefix: str = "") -> list[str]:
    """Stable unique names: the given one when free, else ``op_type_index``."""
    taken: set[str] = set()
    out: list[str] = []
    for i, n in enumerate(nodes):
        name = prefix + n.name if n.name else f"{prefix}{n.op_type}_{i}"
        if name in taken:
            name = f"{name}__{i}"
        taken.add(name)
        out.append(name)
    return out


FunctionBody = Callable[[onnx.NodeProto, Mapping[str, TensorType | None]], Graph | None]


def convert_graph(
    g: onnx.GraphProto,
    *,
    outer_types: Mapping[str, TensorType | None] | None = None,
    function_body: FunctionBody | None = None,
    prefix: str = "",
) -> Graph:
    """Convert one (shape-inferred) GraphProto, recursing into control-flow bodies.

    ``function_body(node, types)`` returns the IR body of a call to a model-local
    function (or None); it is supplied by the frontend, which owns the function table.
    """
    # ``scope`` is every name visible to a node: this graph's values over the outer scope,
    # kept up to date as nodes are converted. Built once and updated in place (it was
    # rebuilt per node: loading was quadratic, 40k nodes took two minutes); bodies and
    # function calls only read it during the call, and chain to it instead of copying it.
    outer_map: Mapping[str, TensorType | None] = outer_types or {}
    scope: ChainMap[str, TensorType | None] = ChainMap({}, outer_map)  # type: ignore[arg-type]
    types: dict[str, TensorType | None] = {}
    for vi in (*g.input, *g.value_info, *g.output):
        t = tensor_type(vi.type)
        if t is not None or vi.name not in types:
            types[vi.name] = t
    values: dict[str, Value] = {}
    for t in g.initializer:
        tt = TensorType(DType(t.data_type), tuple(int(d) for d in t.dims))
        ref = weight_ref(t)
        values[t.name] = Value(t.name, tt, weight=ref, const=ref.small_value)
    for name in (*[i.name for i in g.input], *[o.name for o in g.output]):
        if name not in values:
            values[name] = Value(name, types.get(name))
    scope.update((k, v.type) for k, v in values.items())

    defined = set(values)
    outer: list[str] = []
    outer_seen: set[str] = set()
    nodes: list[Node] = []
    for proto, name in zip(g.node, unique_node_names(g.node, prefix), strict=True):
        for i in proto.input:
            if i and i not in defined and i not in outer_seen:
                outer.append(i)
                outer_seen.add(i)
                values[i] = Value(i, outer_map.get(i, types.get(i)))
                scope[i] = values[i].type
        subgraphs: list[Graph] = []
        for a in proto.attribute:
            bodies = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
            for body in bodies:
                subgraphs.append(
                    convert_graph(
                        body,
                        outer_types=scope,
                        function_body=function_body,
                        prefix=f"{name}/{a.name}/",
                    )
                )
        if not subgraphs and function_body is not None:
            body = function_body(proto, scope)
            if body is not None:
                subgraphs.append(body)
        const = constant_value(proto) if proto.op_type == "Constant" and not proto.domain else None
        for o in proto.output:
            if o:
                values[o] = Value(o, types.get(o), const=const)
                scope[o] = values[o].type
                defined.add(o)
        nodes.append(
            Node(
                name=name,
                op_type=proto.op_type,
                domain="" if proto.domain == "ai.onnx" else proto.domain,
                inputs=tuple(proto.input),
                outputs=tuple(proto.output),
                attributes=tuple(convert_attribute(a) for a in proto.attribute),
                subgraphs=tuple(subgraphs),
                doc=proto.doc_string,
            )
        )
    for o in g.output:  # an output may be an outer value or an input passed through
        if o.name not in values:
            values[o.name] = Value(o.name, types.get(o.name))
            outer.append(o.name)
    weights = {t.name for t in g.initializer}
    return Graph(
        name=g.name,
        nodes=tuple(nodes),
        values=values,
        inputs=tuple(i.name for i in g.input if i.name not in weights),
        outputs=tuple(o.name for o in g.output),
        initializers=tuple(t.name for t in g.initializer),
        outer=tuple(outer),
        doc=g.doc_string,
        extra=_graph_extras(g),
    )


def _graph_extras(g: onnx.GraphProto) -> dict[str, bytes]:
    """Parts of a graph the IR does not model but a round trip must keep."""
    extras: dict[str, bytes] = {}
    for i, s in enumerate(g.sparse_initializer):
        extras[f"sparse_initializer/{i}"] = s.SerializeToString(deterministic=True)
    inputs_that_are_weights = [i for i in g.input if i.name in {t.name for t in g.initializer}]
    for i, vi in enumerate(inputs_that_are_weights):
        extras[f"weight_input/{i}"] = vi.SerializeToString(deterministic=True)
    # Sequences and optionals have no IR type; emission writes them back from here.
    for vi in (*g.input, *g.output):
        if vi.type.WhichOneof("value") not in (None, "tensor_type"):
            extras[f"type/{vi.name}"] = vi.type.SerializeToString(deterministic=True)
    return extras
