"""From a model the user has (file, ``ModelProto``, ``torch.nn.Module``) to the IR.

The recipe, in order: read (no weights) -> check -> bind symbolic dims -> ONNX shape
inference on a weight-stripped skeleton -> convert to IR -> fill remaining shapes with our
own rules. Weights stay where they are; :class:`OnnxWeightSource` reads them on demand.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import onnx

from shardc.errors import ModelError, OptionError
from shardc.frontend import guard, read, shapes
from shardc.frontend.convert import convert_graph, weight_ref
from shardc.frontend.weights import OnnxWeightSource
from shardc.ir import Graph, Model, TensorType, Value, verify_graph

__all__ = ["ModelLike", "OnnxWeightSource", "load_model", "model_source", "to_model_proto"]

ModelLike = str | os.PathLike[str] | onnx.ModelProto | Any


def to_model_proto(
    model: ModelLike, *, example_inputs: Any = None
) -> tuple[onnx.ModelProto, Path | None, str]:
    """Normalise what the user passed to (proto, folder for external data, display name)."""
    if isinstance(model, onnx.ModelProto):
        return model, None, "<ModelProto>"
    if isinstance(model, str | os.PathLike):
        path = Path(model)
        return read.read_model(path), path.resolve().parent, str(path)
    if _is_torch_module(model):
        from shardc.frontend.torch_export import export_module

        return export_module(model, example_inputs), None, f"<{type(model).__name__}>"
    raise ModelError(
        f"cannot load a model from a {type(model).__name__}",
        hint="pass a path to an .onnx file, an onnx.ModelProto or a torch.nn.Module",
    )


def model_source(model: ModelLike, *, example_inputs: Any = None) -> tuple[Any, dict[str, str]]:
    """(what :func:`load_model` should read, plan.json's record of where it came from).

    A path is read later, where the compile can name it in errors, and recorded by path; a
    ModelProto or an exported ``nn.Module`` is recorded by the hash of its deterministic
    serialisation, since it has no file to point at.
    """
    if isinstance(model, str | os.PathLike):
        if example_inputs is not None:
            raise OptionError("example_inputs is for a torch.nn.Module; this model is a file")
        return Path(model), {"path": str(Path(model))}
    if isinstance(model, onnx.ModelProto):
        if example_inputs is not None:
            raise OptionError("example_inputs is for a torch.nn.Module; this is a ModelProto")
        proto, where = model, "<ModelProto>"
    else:
        proto, _, where = to_model_proto(model, example_inputs=example_inputs)
    data = proto.SerializeToString(deterministic=True)
    return proto, {"path": where, "sha256": hashlib.sha256(data).hexdigest()}


def _is_torch_module(obj: object) -> bool:
    return any(
        c.__module__.startswith("torch.nn") and c.__name__ == "Module" for c in type(obj).__mro__
    )


def load_model(
    model: ModelLike,
    *,
    dims: Mapping[str, int] | None = None,
    example_inputs: Any = None,
    check: bool = True,
) -> Model:
    """Load ``model`` into the IR with shapes bound and inferred, weights left on disk.

    ``dims`` binds symbolic input dims (``{"batch": 8, "seq": 4096}``). Raises
    :class:`shardc.errors.ModelError` for unreadable or invalid models and
    :class:`shardc.errors.OptionError` for dims the model does not have.
    """
    proto, base_dir, where = to_model_proto(model, example_inputs=example_inputs)
    # what ONNX's checker lets through but would crash or mislead us later
    guard.check_strings(proto, where=where)
    guard.check_opsets(proto, where=where)
    guard.check_types(proto, where=where)
    guard.check_external(proto, base_dir, where=where)
    skel = shapes.skeleton(proto)
    if check:
        read.check_model(shapes.checkable(skel), where=where)
    shapes.bind_dims(skel, dict(dims or {}), where=where)
    inferred = shapes.infer(skel, where=where)
    functions = {(f.domain, f.name): f for f in inferred.functions}
    opsets = [(o.domain, o.version) for o in inferred.opset_import]

    def function_body(node: onnx.NodeProto, scope: Mapping[str, TensorType | None]) -> Graph | None:
        fn = functions.get((node.domain, node.op_type))
        return None if fn is None else _function_body(node, fn, functions, opsets, scope)

    graph = convert_graph(inferred.graph, function_body=function_body)
    refs = {t.name: weight_ref(t) for t in proto.graph.initializer}
    values = dict(graph.values)
    for name, ref in refs.items():
        v = values[name]
        values[name] = Value(name, v.type, weight=ref, const=ref.small_value)
    graph = graph.replace(values=values)
    guard.check_dims(graph, where=where)  # declared and inferred dims
    graph, _ = shapes.propagate(graph, where=where)
    guard.check_dims(graph, where=where)  # and those our rules computed
    verify_graph(graph)
    return Model(
        graph=graph,
        opset_imports=tuple(opsets),
        ir_version=proto.ir_version,
        source=where,
        weights=OnnxWeightSource(proto.graph, base_dir, where),
        producer_name=proto.producer_name,
        producer_version=proto.producer_version,
        model_version=proto.model_version,
        domain=proto.domain,
        doc=proto.doc_string,
        metadata=tuple((p.key, p.value) for p in proto.metadata_props),
        functions=tuple(f.SerializeToString(deterministic=True) for f in proto.functions),
        dims=dict(dims or {}),
    )


def _function_body(
    node: onnx.NodeProto,
    fn: onnx.FunctionProto,
    functions: Mapping[tuple[str, str], onnx.FunctionProto],
    opsets: list[tuple[str, int]],
    scope: Mapping[str, TensorType | None],
) -> Graph | None:
    """IR of one call's body, typed from the call site, by inlining it into a tiny model.

    Inlining resolves attribute references and nested calls exactly as ONNX defines them,
    so the body we cost is the body that would run.
    """
    from onnx import helper, inliner

    def vi(name: str) -> onnx.ValueInfoProto:
        t = scope.get(name)
        if t is None:
            return helper.make_empty_tensor_value_info(name)
        dims = None if t.shape is None else list(t.shape)
        return helper.make_tensor_value_info(name, t.dtype.value, dims)

    inputs = [vi(i) for i in node.input if i]
    outputs = [helper.make_empty_tensor_value_info(o) for o in node.output if o]
    g = helper.make_graph([node], f"{node.op_type}_body", inputs, outputs)
    tiny = helper.make_model(
        g,
        opset_imports=[helper.make_opsetid(d, v) for d, v in opsets],
        functions=list(functions.values()),
    )
    try:
        inlined = inliner.inline_local_functions(tiny)
        inlined = onnx.shape_inference.infer_shapes(inlined, strict_mode=False, data_prop=True)
    except Exception:  # a body we cannot type is costed as unknown, not fatal
        return None
    return convert_graph(inlined.graph, prefix=f"{node.name or node.op_type}/")
