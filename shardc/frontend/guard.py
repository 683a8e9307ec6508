"""Refusing malformed or hostile models before they reach the IR, each with one clear line.

An ONNX file is user input: it may be a FIFO, ``/dev/zero``, a protobuf whose strings are
not UTF-8, an opset from the future, external data whose offset is ``"abc"`` or whose
file is shorter than it claims, dims of ``-2`` or ``2**62``. ONNX's checker lets most of
these through (it checks structure, not sense), and each one used to surface far away as
an IndexError, a MemoryError, a hang, or a plan with a negative duration. Every check
here raises :class:`~shardc.errors.ModelError` naming the file and the node, tensor or
field, and runs in time linear in the model's size.

The limits (:data:`MAX_MODEL_BYTES`, :data:`MAX_ELEMENTS`) are far above any real model
and are listed in ``docs/cli.md``.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import onnx
from onnx import helper

from shardc.errors import ModelError
from shardc.ir import DType, Graph

MAX_MODEL_BYTES = 2 * 2**30
"""Largest ``.onnx`` file read: protobuf cannot parse more (weights go in external data)."""

MAX_ELEMENTS = 2**48
"""Largest element count of one tensor, and so of one dim (~2.8e14: a 1 PB fp32 tensor)."""


def _max_opsets() -> dict[str, int]:
    """The newest opset per standard domain that the installed onnx knows."""
    newest: dict[str, int] = {}
    for (domain, version), _ in helper.OP_SET_ID_VERSION_MAP.items():
        newest[domain] = max(newest.get(domain, 0), version)
    newest[""] = newest["ai.onnx"] = max(newest.get("ai.onnx", 0), onnx.defs.onnx_opset_version())
    return newest


MAX_OPSETS = _max_opsets()


def check_file(path: Path) -> None:
    """Refuse what is not a regular file of at most :data:`MAX_MODEL_BYTES`, before opening.

    A FIFO would block the reader forever and ``/dev/zero`` never ends.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ModelError("no such file", where=str(path)) from None
    except OSError as exc:
        raise ModelError(f"cannot read: {exc.strerror or exc}", where=str(path)) from None
    if stat.S_ISDIR(info.st_mode):
        raise ModelError("is a directory, expected an .onnx file", where=str(path))
    if not stat.S_ISREG(info.st_mode):
        raise ModelError("not a regular file (a device, FIFO or socket), expected an .onnx "
                         "file", where=str(path))
    if info.st_size > MAX_MODEL_BYTES:
        raise ModelError(f"is {info.st_size:,} bytes; an ONNX protobuf holds at most "
                         f"{MAX_MODEL_BYTES:,}", where=str(path),
                         hint="save the weights as external data (onnx.save_model(..., "
                         "save_as_external_data=True))")


# ---------------------------------------------------------------- strings
def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every subgraph in it (If/Loop/Scan bodies), without recursion."""
    stack = [graph]
    while stack:
        g = stack.pop()
        yield g
        for node in g.node:
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    stack.append(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    stack.extend(a.graphs)


def _bad_text(value: object) -> bool:
    # protobuf hands back bytes for a string field that is not valid UTF-8
    return not isinstance(value, str)


def check_strings(model: onnx.ModelProto, *, where: str) -> None:
    """Refuse names and types that are not valid UTF-8 (protobuf returns them as bytes)."""
    for field in ("producer_name", "producer_version", "domain", "doc_string"):
        if _bad_text(getattr(model, field)):
            raise ModelError(f"the model's {field} is not valid UTF-8", where=where)
    for opset in model.opset_import:
        if _bad_text(opset.domain):
            raise ModelError(f"an opset_import domain is not valid UTF-8: {opset.domain!r}",
                             where=where)
    for prop in model.metadata_props:
        if _bad_text(prop.key) or _bad_text(prop.value):
            raise ModelError(f"metadata entry {prop.key!r} is not valid UTF-8", where=where)
    bodies: list[tuple[str, onnx.GraphProto | onnx.FunctionProto]] = [
        ("graph", g) for g in _graphs(model.graph)
    ]
    bodies += [("function", f) for f in model.functions]
    for what, body in bodies:
        if _bad_text(body.name) or _bad_text(body.doc_string):
            raise ModelError(f"a {what} name or doc_string is not valid UTF-8: {body.name!r}",
                             where=where)
        if isinstance(body, onnx.GraphProto):
            infos = [*body.input, *body.output, *body.value_info]
            names = [vi.name for vi in infos] + [t.name for t in body.initializer]
            names += [vi.doc_string for vi in infos]
        else:
            names = [*body.input, *body.output, *body.attribute, body.domain]
        for name in names:
            if _bad_text(name):
                raise ModelError(f"a {what} input, output or value name is not valid UTF-8: "
                                 f"{name!r}", where=where)
        for index, node in enumerate(body.node):
            _check_node_strings(node, index, where)
    for t in _tensors(model):
        for entry in t.external_data:
            if _bad_text(entry.key) or _bad_text(entry.value):
                raise ModelError(f"initializer {t.name!r}: an external_data entry is not valid "
                                 "UTF-8", where=where)


def _check_node_strings(node: onnx.NodeProto, index: int, where: str) -> None:
    label = f"node #{index}"
    if not _bad_text(node.name) and node.name:
        label = f"node {node.name!r}"
    for field in ("name", "op_type", "domain", "doc_string"):
        value = getattr(node, field)
        if _bad_text(value):
            raise ModelError(f"{label}: its {field} is not valid UTF-8: {value!r}", where=where,
                             hint="names in an ONNX file must be UTF-8 text")
    for name in [*node.input, *node.output]:
        if _bad_text(name):
            raise ModelError(f"{label} ({node.op_type}): an input or output name is not valid "
                             f"UTF-8: {name!r}", where=where)
    for a in node.attribute:
        if _bad_text(a.name) or _bad_text(a.ref_attr_name) or _bad_text(a.doc_string):
            raise ModelError(f"{label} ({node.op_type}): an attribute name is not valid UTF-8: "
                             f"{a.name!r}", where=where)


# ---------------------------------------------------------------- opsets and types
def check_opsets(model: onnx.ModelProto, *, where: str) -> None:
    """Refuse standard-domain opsets newer than the installed onnx (custom domains pass).

    ONNX's checker accepts ``opset 99999``; shape inference then knows no schema for any
    node and every shape is silently unknown.
    """
    for opset in model.opset_import:
        newest = MAX_OPSETS.get(opset.domain)
        if newest is not None and opset.version > newest:
            domain = opset.domain or "ai.onnx"
            raise ModelError(
                f"opset {opset.version} of {domain} is newer than this onnx "
                f"({onnx.__version__}) supports (up to {newest})", where=where,
                hint="re-export with an older opset, or upgrade onnx")
        if opset.version < 1 and newest is not None:
            raise ModelError(f"opset {opset.version} of {opset.domain or 'ai.onnx'} is not a "
                             "valid version", where=where)


def _tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    for g in _graphs(model.graph):
        yield from g.initializer


def _dtype(code: int) -> DType | None:
    try:
        return DType(code)
    except ValueError:
        return None


def check_types(model: onnx.ModelProto, *, where: str) -> None:
    """Refuse initializers, graph inputs and outputs whose element type is unknown."""
    for g in _graphs(model.graph):
        for t in g.initializer:
            if _dtype(t.data_type) is None:
                raise ModelError(f"initializer {t.name!r} has an unknown data_type "
                                 f"{t.data_type}", where=where, hint=_dtype_hint())
        for vi in (*g.input, *g.output):
            if vi.type.WhichOneof("value") != "tensor_type":
                continue
            code = vi.type.tensor_type.elem_type
            if code != 0 and _dtype(code) is None:
                raise ModelError(f"graph input or output {vi.name!r} has an unknown elem_type "
                                 f"{code}", where=where, hint=_dtype_hint())


def _dtype_hint() -> str:
    return f"shardc knows ONNX element types 1 to {max(d.value for d in DType)}"


# ---------------------------------------------------------------- external data
def check_external(model: onnx.ModelProto, base: Path | None, *, where: str) -> None:
    """Check every external tensor's ``offset``/``length``, and the file when it is there.

    ``offset`` and ``length`` must be non-negative integers and ``length`` must match the
    tensor's dims and type. When the data file exists it must hold ``offset + length``
    bytes: a short file used to pass planning and then write an invalid device file. A
    missing file is fine (planning never reads weights).
    """
    sizes: dict[str, int | None] = {}
    for t in _tensors(model):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        offset = _field(t, info, "offset", where)
        length = _field(t, info, "length", where)
        expected = _expected_bytes(t)
        if length is not None and expected is not None and length != expected:
            raise ModelError(f"initializer {t.name!r}: external data length {length:,} does "
                             f"not match its type and dims ({expected:,} bytes)", where=where)
        need = (offset or 0) + (length if length is not None else expected or 0)
        location = info.get("location", "")
        if base is None or not location:
            continue
        if location not in sizes:
            sizes[location] = _file_size(base / location)
        size = sizes[location]
        if size is not None and need > size:
            raise ModelError(f"initializer {t.name!r}: external data file {location!r} has "
                             f"{size:,} bytes, shorter than offset + length = {need:,}",
                             where=where, hint="the data file is truncated or belongs to "
                             "another model")


def _field(t: onnx.TensorProto, info: dict[str, str], key: str, where: str) -> int | None:
    raw = info.get(key)
    if raw is None or raw == "":
        return None
    text = raw.strip()
    if not text.isdigit() or len(text) > 19 or int(text) > MAX_ELEMENTS * 16:
        raise ModelError(f"initializer {t.name!r}: external data {key} {raw[:40]!r} is not a "
                         f"non-negative integer below {MAX_ELEMENTS * 16:,}", where=where)
    return int(text)


def _expected_bytes(t: onnx.TensorProto) -> int | None:
    dtype = _dtype(t.data_type)
    if dtype is None or dtype is DType.STRING or any(d < 0 for d in t.dims):
        return None
    numel = 1
    for d in t.dims:
        numel *= d
        if numel > MAX_ELEMENTS:
            return None  # check_dims reports it
    return (numel * dtype.bits + 7) // 8


def _file_size(path: Path) -> int | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None


# ---------------------------------------------------------------- dims
def check_dims(graph: Graph, *, where: str) -> None:
    """Refuse negative dims and tensors over :data:`MAX_ELEMENTS` anywhere in the IR.

    Zero is a legal dim (an empty tensor). Runs on the IR, so dims that shape inference or
    our own rules computed (a Reshape to ``[-2, 4]``) are caught as well as declared ones.
    """
    stack = [graph]
    while stack:
        g = stack.pop()
        for value in g.values.values():
            t = value.type
            if t is None or t.shape is None:
                continue
            numel = 1
            for i, d in enumerate(t.shape):
                if not isinstance(d, int):
                    continue
                if d < 0 or d > MAX_ELEMENTS:
                    raise ModelError(f"{_owner(g, value.name)} has dim {i} = {d}; dims are "
                                     f"between 0 and {MAX_ELEMENTS:,}", where=where)
                numel *= d
            if numel > MAX_ELEMENTS:
                raise ModelError(f"{_owner(g, value.name)} of shape {t} has more than "
                                 f"{MAX_ELEMENTS:,} elements", where=where)
        for node in g.nodes:
            stack.extend(node.subgraphs)


def _owner(graph: Graph, name: str) -> str:
    """How a message names a value: with the node that makes it, if any."""
    node = graph.producer(name)
    if node is not None:
        return f"value {name!r} (output of node {node.name!r}, {node.op_type})"
    if name in graph.initializers:
        return f"initializer {name!r}"
    if name in graph.inputs:
        return f"graph input {name!r}"
    return f"value {name!r}"
