"""Saving a synthesized model: the ``.onnx`` always, the weights file only if it has data.

The weights file is ``<stem>.weights.bin`` beside the model. Every initializer points into
it (contiguously, in graph order) whether or not it is written, so a declared-only model
and a materialised one save byte-identical ``.onnx`` files and differ only in whether the
weights file exists. Replacing a model replaces its sidecar: saving a declared-only model
removes a stale weights file of the same name, so it can never be paired with a graph it
was not written for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from onnx import ModelProto, TensorProto

from shardc.errors import ModelError, OptionError
from shardc.synth.config import np_dtype
from shardc.synth.weights import layout, nbytes


@dataclass(frozen=True)
class Saved:
    """What `save` wrote: paths and sizes, for the CLI's output."""

    model_path: Path
    weights_path: Path
    weights_written: bool
    weight_bytes: int
    model_bytes: int


def weights_path_for(path: Path) -> Path:
    """``out/gpt.onnx`` -> ``out/gpt.weights.bin``."""
    return path.with_name(f"{path.stem}.weights.bin")


def _has_data(tensor: TensorProto) -> bool:
    return tensor.data_location != TensorProto.EXTERNAL and bool(tensor.raw_data)


def save(model: ModelProto, path: str | Path) -> Saved:
    """Write ``model`` to ``path`` with its weights as external data beside it.

    Weights held in the proto (``build(..., with_weights=True)``) are written to the
    weights file; declared-only weights are recorded there but never written. ``model``
    itself is not modified.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise OptionError(f"output directory {str(path.parent)!r} does not exist",
                          hint="create it first")
    out = ModelProto()
    out.CopyFrom(model)
    tensors = list(out.graph.initializer)
    with_data = [_has_data(t) for t in tensors]
    if any(with_data) and not all(with_data):
        raise ModelError("some initializers hold data and others do not", where=str(path))
    weights = weights_path_for(path)
    size = layout(tensors, weights.name)
    if tensors and all(with_data):
        with weights.open("wb") as f:
            for tensor in tensors:
                if len(tensor.raw_data) != nbytes(tensor):
                    raise ModelError(f"initializer {tensor.name!r} holds {len(tensor.raw_data)} "
                                     f"bytes, its dims declare {nbytes(tensor)}", where=str(path))
                f.write(tensor.raw_data)
                tensor.ClearField("raw_data")
    elif weights.exists():
        weights.unlink()
    data = out.SerializeToString(deterministic=True)
    path.write_bytes(data)
    return Saved(path, weights, weights.exists(), size, len(data))


def graph_parameters(model: ModelProto) -> tuple[int, int]:
    """(parameters, declared weight bytes) of a model, from initializer dims and types.

    Parameters exclude the scales of DequantizeLinear nodes (fp8 block scales); bytes
    include everything the weights file holds. Used by the CLI and the tests to check the
    graph against the closed forms of `shardc.synth.counts`.
    """
    scales = {n.input[1] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    params = sum(math.prod(t.dims) for t in model.graph.initializer if t.name not in scales)
    size = sum(math.prod(t.dims) * np_dtype(t.data_type).itemsize
               for t in model.graph.initializer)
    return params, size


def check(model: ModelProto) -> None:
    """``onnx.checker`` (full check, strict shape inference) without the weights file.

    The checker insists that external data exists on disk; a declared-only model has none
    by design. So the graph is checked with its initializers turned into graph inputs of
    the same type and shape (everything but weight storage is checked), and the external
    references themselves are checked here: one file, contiguous, lengths matching dims.
    Raises ``onnx.checker.ValidationError`` or `ModelError`.
    """
    from onnx import checker, helper

    probe = ModelProto()
    probe.CopyFrom(model)
    inits = list(probe.graph.initializer)
    del probe.graph.initializer[:]
    probe.graph.input.extend(
        helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits)
    checker.check_model(probe, full_check=True)
    offset, files = 0, set()
    for t in inits:
        if t.data_location != TensorProto.EXTERNAL:
            continue
        ref = {e.key: e.value for e in t.external_data}
        files.add(ref["location"])
        if int(ref["offset"]) != offset or int(ref["length"]) != nbytes(t):
            raise ModelError(f"external data of {t.name!r} is not contiguous: {ref}")
        offset += nbytes(t)
    if len(files) > 1:
        raise ModelError(f"weights point into several files: {sorted(files)}")
