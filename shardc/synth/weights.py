"""Where weights come from: declared (shape and type only) or random (seeded arrays).

The builder asks a `WeightSource` for every parameter and never knows which one it has,
so the graph of a 1 T-parameter model and that of a runnable toy come from the same code.
`Declared` returns data-less TensorProtos (the graph stays a few MB whatever the size);
`Random` fills them with seeded random values. `layout` then gives every initializer its
place in the (possibly never written) external weights file, the same way in both cases,
which is why the two modes save byte-identical ``.onnx`` files.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from onnx import TensorProto, numpy_helper

from shardc.synth.config import np_dtype

#: Largest finite float8e4m3fn value: the scale maps each block's max |w| onto it.
FP8_MAX = 448.0


@dataclass(frozen=True)
class Init:
    """How a random weight is drawn: ``mean + std * N(0, 1)``.

    Norm scales use mean 1, biases a small std; all weights are noisy (not the usual ones
    and zeros) so a numerical test exercises every parameter.
    """

    mean: float = 0.0
    std: float = 0.02


DEFAULT_INIT = Init()

class WeightSource(Protocol):
    """Makes the TensorProto of one parameter; see module docstring."""

    def dense(self, name: str, shape: tuple[int, ...], dtype: int, init: Init) -> TensorProto:
        """A parameter stored as ``dtype``."""
        ...

    def quantized(
        self, name: str, shape: tuple[int, ...], qtype: int, scale_type: int, block: int,
        init: Init,
    ) -> tuple[TensorProto, TensorProto]:
        """A parameter stored as ``qtype`` with one scale per ``block`` rows of axis -2."""
        ...


def scale_shape(shape: tuple[int, ...], block: int) -> tuple[int, ...]:
    """Shape of the block scales of a weight blocked along axis -2 (its input dim)."""
    return (*shape[:-2], math.ceil(shape[-2] / block), shape[-1])


def _empty(name: str, shape: tuple[int, ...], dtype: int) -> TensorProto:
    tensor = TensorProto(name=name, data_type=dtype)
    tensor.dims.extend(shape)
    return tensor


class Declared:
    """Weights with a shape and a type but no values: for planning models of any size."""

    def dense(self, name: str, shape: tuple[int, ...], dtype: int, init: Init) -> TensorProto:
        """A data-less tensor; `layout` later points it into the external file."""
        return _empty(name, shape, dtype)

    def quantized(
        self, name: str, shape: tuple[int, ...], qtype: int, scale_type: int, block: int,
        init: Init,
    ) -> tuple[TensorProto, TensorProto]:
        """A data-less quantized weight and its data-less scales."""
        return _empty(name, shape, qtype), _empty(f"{name}_scale", scale_shape(shape, block),
                                                  scale_type)


class Random:
    """Seeded random weights. Each tensor's stream is keyed by (seed, name), so values do
    not depend on the order the builder asks for them.
    """

    def __init__(self, seed: int):
        self.seed = seed

    def _draw(self, name: str, shape: tuple[int, ...], init: Init) -> np.ndarray:
        rng = np.random.default_rng([self.seed, zlib.crc32(name.encode())])
        return init.mean + init.std * rng.standard_normal(shape, dtype=np.float32)

    def dense(self, name: str, shape: tuple[int, ...], dtype: int, init: Init) -> TensorProto:
        """Random values rounded to ``dtype``."""
        return numpy_helper.from_array(self._draw(name, shape, init).astype(np_dtype(dtype)), name)

    def quantized(
        self, name: str, shape: tuple[int, ...], qtype: int, scale_type: int, block: int,
        init: Init,
    ) -> tuple[TensorProto, TensorProto]:
        """Random values quantized per block: scale = max|w| / FP8_MAX over each block."""
        w = self._draw(name, shape, init)
        rows = shape[-2]
        padded = math.ceil(rows / block) * block
        pad = [(0, 0)] * (w.ndim - 2) + [(0, padded - rows), (0, 0)]
        blocks = np.pad(w, pad).reshape(*shape[:-2], padded // block, block, shape[-1])
        amax = np.abs(blocks).max(axis=-2)
        scale = np.where(amax > 0, amax / FP8_MAX, 1.0).astype(np_dtype(scale_type))
        expanded = np.repeat(scale.astype(np.float32), block, axis=-2)[..., :rows, :]
        q = (w / expanded).astype(np_dtype(qtype))
        return numpy_helper.from_array(q, name), numpy_helper.from_array(scale, f"{name}_scale")


def nbytes(tensor: TensorProto) -> int:
    """Bytes of a tensor's data as its dims and type declare them."""
    return math.prod(tensor.dims) * np_dtype(tensor.data_type).itemsize


def layout(tensors: Iterable[TensorProto], location: str) -> int:
    """Point every tensor into ``location``, contiguously in order; return the file size.

    Only the references are set; any in-memory data is left for the caller to write (at
    the offsets set here) and clear.
    """
    offset = 0
    for tensor in tensors:
        length = nbytes(tensor)
        del tensor.external_data[:]
        for key, value in (("location", location), ("offset", offset), ("length", length)):
            tensor.external_data.add(key=key, value=str(value))
        tensor.data_location = TensorProto.EXTERNAL
        offset += length
    return offset

