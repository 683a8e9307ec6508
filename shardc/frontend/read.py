"""Reading ONNX from disk or memory, without weights, refusing unsafe files.

Planning needs shapes and dtypes only, so files are read with
``load_external_data=False``: a 1 T-parameter model costs a few MB to plan. External data
locations are checked before anything follows them: a path that leaves the model's
folder (absolute, ``..``, a symlink out) is refused, as ONNX's own loader does for
``load_external_data=True``.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from shardc.errors import ModelError
from shardc.frontend import guard


def read_model(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Parse ``path`` as ONNX without loading external weights."""
    p = Path(path)
    guard.check_file(p)  # before opening: a FIFO blocks, /dev/zero never ends
    try:
        model = onnx.load(str(p), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, UnicodeDecodeError) as exc:
        raise ModelError(
            f"not a readable ONNX model (truncated or corrupt?): {_short(exc)}", where=str(p)
        ) from None
    if not model.HasField("graph") or (not model.graph.node and not model.graph.output):
        raise ModelError("not an ONNX model: it has no graph", where=str(p))
    guard.check_strings(model, where=str(p))  # before any name is used as a path
    check_external_locations(model, p.parent.resolve(), where=str(p))
    return model


def iter_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto stored in a graph: initializers, Constant values, subgraphs'."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == onnx.AttributeProto.TENSORS:
                yield from attr.tensors
            elif attr.type == onnx.AttributeProto.GRAPH:
                yield from iter_tensors(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from iter_tensors(g)


def external_info(tensor: onnx.TensorProto) -> dict[str, str]:
    """The ``external_data`` key/value entries of a tensor (empty if stored inline)."""
    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        return {}
    return {e.key: e.value for e in tensor.external_data}


def check_external_locations(model: onnx.ModelProto, base: Path, *, where: str) -> None:
    """Refuse external-data paths that would read outside the model's folder."""
    for tensor in iter_tensors(model.graph):
        info = external_info(tensor)
        if not info:
            continue
        loc = info.get("location", "")
        if not loc:
            raise ModelError(
                f"initializer {tensor.name!r} is marked external but names no location",
                where=where,
            )
        if "\x00" in loc:
            raise ModelError(f"initializer {tensor.name!r}: external data location has a NUL "
                             "character", where=where)
        lp = Path(loc)
        if lp.is_absolute() or lp.drive or ".." in lp.parts:
            raise ModelError(
                f"initializer {tensor.name!r} points its external data outside the "
                f"model's folder ({loc!r}); refusing to follow it",
                where=where,
                hint="external data must be a relative path inside the model's directory",
            )
        resolved = (base / lp).resolve()
        if not resolved.is_relative_to(base):
            raise ModelError(
                f"initializer {tensor.name!r}: external data {loc!r} resolves outside "
                "the model's folder (symlink?); refusing to follow it",
                where=where,
            )


ORT_DEFAULT_DOMAIN_OPS = frozenset({"SimplifiedLayerNormalization"})
"""Ops onnxruntime registers in the default ONNX domain without ONNX defining them, used
when onnxruntime is not installed. Its transformer optimizer writes
``SimplifiedLayerNormalization`` there (not in ``com.microsoft``), and onnxruntime runs it,
so a model that uses it is valid for the runtime the plan targets.
"""

_CHECK_DOMAIN = "ai.shardc.ort_default"
"""Domain the checked copy moves those nodes to: ONNX's checker skips ops of domains it
does not know, and only this copy is renamed; the model keeps its nodes as written.
"""


@cache
def ort_default_domain_ops() -> frozenset[str]:
    """Default-domain op names onnxruntime registers and ONNX itself does not define.

    Asked of the installed onnxruntime, whose list is the truth for the runtime that runs
    the plan; :data:`ORT_DEFAULT_DOMAIN_OPS` when it is not importable.
    """
    try:
        ort_c = importlib.import_module("onnxruntime.capi.onnxruntime_pybind11_state")
        schemas = ort_c.get_all_operator_schema()
    except Exception:  # not installed, or a build without the schema list
        return ORT_DEFAULT_DOMAIN_OPS
    onnx_ops = {
        s.name for s in onnx.defs.get_all_schemas_with_history() if s.domain in ("", "ai.onnx")
    }
    ort_ops = {s.name for s in schemas if s.domain in ("", "ai.onnx")}
    return frozenset(ort_ops - onnx_ops) | ORT_DEFAULT_DOMAIN_OPS


def ort_ops_aside(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model``, or a copy whose top-level onnxruntime-only default-domain nodes are moved
    to a private domain so ONNX's checker accepts them; any other unknown op (a typo) stays
    in the default domain and is refused as before.
    """
    extra = ort_default_domain_ops()
    hits = [
        i
        for i, n in enumerate(model.graph.node)
        if n.domain in ("", "ai.onnx") and n.op_type in extra and not onnx.defs.has(n.op_type)
    ]
    if not hits:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for i in hits:
        out.graph.node[i].domain = _CHECK_DOMAIN
    out.opset_import.append(onnx.helper.make_opsetid(_CHECK_DOMAIN, 1))
    return out


def check_model(model: onnx.ModelProto, *, where: str) -> None:
    """Run ONNX's checker and turn a failure into a one-line user error.

    Ops onnxruntime defines in the default domain (:func:`ort_default_domain_ops`) pass:
    the plan runs on onnxruntime, which accepts them.
    """
    try:
        onnx.checker.check_model(ort_ops_aside(model), full_check=False)
    except onnx.checker.ValidationError as exc:
        raise ModelError(f"fails the ONNX checker: {_short(exc)}", where=where) from None
    except ValueError as exc:  # e.g. a >2 GB proto handed in memory
        raise ModelError(f"cannot be checked: {_short(exc)}", where=where) from None


def _short(exc: BaseException) -> str:
    """First meaningful line of an exception, so CLI errors stay on one line."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = lines[0] if lines else type(exc).__name__
    for ln in lines[1:]:  # the checker puts the useful part after a header line
        if "==>" in ln or "Context" in ln:
            break
        text += " " + ln
        if len(text) > 300:
            break
    return text[:300]
