"""Lazy access to initializer bytes.

The IR keeps :class:`shardc.ir.WeightRef` references; when emission or verification needs
the numbers, this source reads exactly the tensor asked for, from the model proto when
the bytes are inline or from ``offset``/``length`` of the external file otherwise. Nothing
is cached: a shard reads its slice and lets it go.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from shardc.errors import ModelError
from shardc.frontend.read import external_info


class OnnxWeightSource:
    """Reads weights of one ONNX model on demand."""

    def __init__(self, graph: onnx.GraphProto, base_dir: Path | None, where: str):
        self._tensors = {t.name: t for t in graph.initializer}
        self._base = base_dir
        self._where = where

    def names(self) -> list[str]:
        """Initializer names this source can read."""
        return list(self._tensors)

    def tensor_proto(self, name: str, *, with_data: bool = True) -> onnx.TensorProto:
        """A TensorProto for ``name``; with ``with_data`` external bytes are pulled inline."""
        t = self._tensor(name)
        if not with_data or t.data_location != onnx.TensorProto.EXTERNAL:
            return t
        out = onnx.TensorProto()
        out.CopyFrom(t)
        del out.external_data[:]
        out.data_location = onnx.TensorProto.DEFAULT
        out.raw_data = self._read_external(t)
        return out

    def array(self, name: str) -> np.ndarray:
        """The weight as a numpy array (ml_dtypes arrays for bf16/fp8)."""
        return numpy_helper.to_array(self.tensor_proto(name))

    def _tensor(self, name: str) -> onnx.TensorProto:
        try:
            return self._tensors[name]
        except KeyError:
            raise ModelError(f"no initializer named {name!r}", where=self._where) from None

    def _read_external(self, t: onnx.TensorProto) -> bytes:
        info = external_info(t)
        if self._base is None:
            raise ModelError(
                f"weight {t.name!r} is external data but the model was given in memory, "
                "so there is no folder to read it from",
                where=self._where,
                hint="load the model from its file path",
            )
        path = self._base / info["location"]
        offset = int(info.get("offset", 0) or 0)
        length = int(info["length"]) if "length" in info else None
        if not path.is_file():
            raise ModelError(
                f"weight {t.name!r}: external data file {info['location']!r} is missing",
                where=self._where,
                hint="planning works without weights; emitting and running need them",
            )
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read() if length is None else f.read(length)
        if length is not None and len(data) != length:
            raise ModelError(
                f"weight {t.name!r}: external data file {info['location']!r} is truncated "
                f"({len(data)} of {length} bytes at offset {offset})",
                where=self._where,
            )
        return data
