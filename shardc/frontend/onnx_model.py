"""IR -> ONNX protobuf.

For a graph no pass changed this is the inverse of the frontend: the same nodes in the
same order with the same attributes, initializers read back from where the frontend
found them, so onnxruntime computes the same outputs (tested on exported GPT-2/Llama).
"""

from __future__ import annotations

from collections.abc import Callable

import onnx
from onnx import helper

from shardc.errors import ModelError
from shardc.ir import Attribute, Graph, Model, Node, TensorType, Value

_LIST_KINDS = {"FLOATS", "INTS", "STRINGS"}


def attribute_proto(a: Attribute) -> onnx.AttributeProto:
    """Rebuild one attribute; opaque kinds are parsed back from their bytes."""
    if isinstance(a.value, bytes):
        return onnx.AttributeProto.FromString(a.value)
    attr_type = getattr(onnx.AttributeProto, a.kind)
    if a.kind in _LIST_KINDS and not a.value:
        out = onnx.AttributeProto(name=a.name, type=attr_type)
        return out
    value: object = a.value
    if isinstance(a.value, str):
        value = a.value.encode("utf-8", "surrogateescape")
    elif a.kind == "STRINGS" and isinstance(a.value, tuple):
        value = [str(s).encode("utf-8", "surrogateescape") for s in a.value]
    return helper.make_attribute(a.name, value, attr_type=attr_type)


def node_proto(n: Node) -> onnx.NodeProto:
    """Rebuild one node."""
    out = onnx.NodeProto(op_type=n.op_type, domain=n.domain, name=n.name, doc_string=n.doc)
    out.input.extend(n.inputs)
    out.output.extend(n.outputs)
    out.attribute.extend(attribute_proto(a) for a in n.attributes)
    return out


def value_info(v: Value) -> onnx.ValueInfoProto:
    """Typed ValueInfo for a value (an empty type when the IR does not know it)."""
    t: TensorType | None = v.type
    if t is None:
        return helper.make_empty_tensor_value_info(v.name)
    dims = None if t.shape is None else list(t.shape)
    return helper.make_tensor_value_info(v.name, t.dtype.value, dims)


InitializerFn = Callable[[str], onnx.TensorProto]


def graph_proto(
    g: Graph, initializer: InitializerFn, *, with_value_info: bool = True
) -> onnx.GraphProto:
    """Rebuild a graph; ``initializer(name)`` supplies each weight's TensorProto."""
    out = onnx.GraphProto(name=g.name, doc_string=g.doc)
    out.node.extend(node_proto(n) for n in g.nodes)
    out.input.extend(value_info(g.values[i]) for i in g.inputs)
    weight_inputs = sorted(k for k in g.extra if k.startswith("weight_input/"))
    out.input.extend(onnx.ValueInfoProto.FromString(g.extra[k]) for k in weight_inputs)
    out.output.extend(value_info(g.values[o]) for o in g.outputs)
    out.initializer.extend(initializer(name) for name in g.initializers)
    sparse = sorted(k for k in g.extra if k.startswith("sparse_initializer/"))
    out.sparse_initializer.extend(onnx.SparseTensorProto.FromString(g.extra[k]) for k in sparse)
    if with_value_info:
        declared = {*g.inputs, *g.outputs, *g.initializers}
        for n in g.nodes:
            for o in n.outputs:
                v = g.values.get(o)
                if o and o not in declared and v is not None and v.type is not None:
                    out.value_info.append(value_info(v))
    return out


def model_proto(
    model: Model, graph: Graph | None = None, *, with_weights: bool = True
) -> onnx.ModelProto:
    """Rebuild a whole model around ``graph`` (default: the model's own graph).

    With ``with_weights`` external bytes are pulled inline (for running in onnxruntime);
    without, initializers keep their external references, as the frontend read them.
    """
    g = graph or model.graph
    source = model.weights
    tensor_proto = getattr(source, "tensor_proto", None)
    if tensor_proto is None:
        raise ModelError(
            "the model has no weight source to emit initializers from", where=model.source
        )

    def initializer(name: str) -> onnx.TensorProto:
        return tensor_proto(name, with_data=with_weights)

    out = helper.make_model(
        graph_proto(g, initializer),
        opset_imports=[helper.make_opsetid(d, v) for d, v in model.opset_imports],
        ir_version=model.ir_version,
        producer_name=model.producer_name,
        producer_version=model.producer_version,
        domain=model.domain,
        model_version=model.model_version,
        doc_string=model.doc,
    )
    for k, v in model.metadata:
        out.metadata_props.add(key=k, value=v)
    out.functions.extend(onnx.FunctionProto.FromString(b) for b in model.functions)
    return out
