"""A small append-only ONNX graph builder with readable, stable names.

Nodes are named after the scope they are built in (``layers.3.attn.q_proj``), and a
single-output node's value carries the node's name, so a user reading the graph (or a
plan that mentions a node) sees the model's structure. Names are deterministic: the same
calls give the same names, which is half of "same arguments, byte-identical file".
Small constants are ``Constant`` nodes, not initializers, so the initializers are exactly
the model's parameters (plus fp8 block scales).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
from onnx import NodeProto, TensorProto, helper, numpy_helper

from shardc.synth.config import FP8_BLOCK, Precision, np_dtype
from shardc.synth.weights import DEFAULT_INIT, Init, WeightSource


class GraphBuilder:
    """Collects nodes and initializers for one model; see module docstring."""

    def __init__(self, precision: Precision, weights: WeightSource):
        self.precision = precision
        self.dtype = precision.act
        self.nodes: list[NodeProto] = []
        self.initializers: list[TensorProto] = []
        self._weights = weights
        self._scope: list[str] = []
        self._taken: set[str] = set()
        self._consts: dict[tuple[int, tuple[int, ...], bytes], str] = {}

    # -- naming -------------------------------------------------------------------------
    @contextmanager
    def scope(self, name: str) -> Iterator[None]:
        """Prefix the names of everything built inside with ``name.``."""
        self._scope.append(name)
        try:
            yield
        finally:
            self._scope.pop()

    def _fresh(self, label: str) -> str:
        base = ".".join([*self._scope, label])
        name, n = base, 1
        while name in self._taken:
            n += 1
            name = f"{base}_{n}"
        self._taken.add(name)
        return name

    # -- nodes --------------------------------------------------------------------------
    def op(self, op_type: str, inputs: Sequence[str], label: str | None = None,
           output_name: str | None = None, **attrs: Any) -> str:
        """Append a one-output node; return its output value.

        The value is named like the node unless ``output_name`` is given (``logits``).
        """
        return self.op_n(op_type, inputs, [""], label, output_name, **attrs)[0]

    def op_n(self, op_type: str, inputs: Sequence[str], outputs: Sequence[str],
             label: str | None = None, output_name: str | None = None,
             **attrs: Any) -> list[str]:
        """Append a node with several outputs, named ``node.suffix`` (``node`` if empty)."""
        name = self._fresh(label or op_type.lower())
        outs = [f"{name}.{suffix}" if suffix else name for suffix in outputs]
        if output_name is not None:
            outs = [output_name]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=name, **attrs))
        return outs

    # -- constants ----------------------------------------------------------------------
    def const(self, values: Any, dtype: int) -> str:
        """A Constant node (shared by equal values) of element type ``dtype``."""
        array = np.asarray(values, dtype=np_dtype(dtype))
        key = (dtype, array.shape, array.tobytes())
        if key not in self._consts:
            name = f"const_{len(self._consts)}"  # module-wide: one node serves every scope
            self._taken.add(name)
            self._consts[key] = name
            value = numpy_helper.from_array(array, name)
            self.nodes.append(helper.make_node("Constant", [], [name], name=name, value=value))
        return self._consts[key]

    def ints(self, *values: int) -> str:
        """A 1-D int64 constant (shapes, axes, perms)."""
        return self.const(list(values), TensorProto.INT64)

    def int_scalar(self, value: int) -> str:
        """A 0-D int64 constant (indices, Range bounds)."""
        return self.const(value, TensorProto.INT64)

    def scalar(self, value: float) -> str:
        """A 0-D constant in the activation type (eps, scales, fill values)."""
        return self.const(value, self.dtype)

    # -- parameters ---------------------------------------------------------------------
    def param(self, name: str, shape: Sequence[int], init: Init = DEFAULT_INIT) -> str:
        """A parameter in the activation type (embeddings, norms, biases, router)."""
        full = ".".join([*self._scope, name])
        self.initializers.append(self._weights.dense(full, tuple(shape), self.dtype, init))
        return full

    def matrix(self, name: str, shape: Sequence[int], init: Init = DEFAULT_INIT,
               quantize: bool = True) -> str:
        """A projection weight ``[..., in, out]``; the value to MatMul with.

        Under fp8 it is stored as float8e4m3fn with bf16 scales per 128 input rows and
        dequantized by a DequantizeLinear node, so the graph's bytes are fp8 and its
        matmuls bf16 (weight-only quantization, as DeepSeek-V3 stores its checkpoint).
        """
        full = ".".join([*self._scope, name])
        if not (quantize and self.precision.quantized):
            self.initializers.append(
                self._weights.dense(full, tuple(shape), self.dtype, init))
            return full
        q, scale = self._weights.quantized(full, tuple(shape), self.precision.weight,
                                           self.dtype, FP8_BLOCK, init)
        self.initializers.extend([q, scale])
        return self.op("DequantizeLinear", [q.name, scale.name], label=f"{name}_dequant",
                       axis=len(shape) - 2, block_size=FP8_BLOCK)
