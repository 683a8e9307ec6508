"""Weights on one rank: each stored weight's shard cut from the original array, and the
views of weights (dequantization, transposes, a tied head) made per shard.

Why apart from the walk: cutting is where lowering touches weight bytes. A shard is cut
from the original (``Model.weights.array``) and recorded as a
:class:`~shardc.plan.lowered.SliceRecord` (``check-plan`` proves from them that nothing
was lost or duplicated); a weight view is made on each layout's slice, so tensor
parallelism splits a quantized or transposed weight instead of copying it whole. With
weights declared only (:class:`DeclaredWeights`) the shards get types and dims, no bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from shardc.frontend.onnx_model import attribute_proto
from shardc.ir import Node
from shardc.passes.lower_nodes import LoweringError
from shardc.plan.lowered import SliceRecord
from shardc.sharding import TensorSharding

if TYPE_CHECKING:
    from shardc.ir import Graph
    from shardc.pipeline import CompileState
    from shardc.plan.lowered import Template


class DeclaredWeights:
    """A weight source for weights that are declared but never written (synth graphs).

    It hands out each weight's type and dims and no bytes: enough to lay out the device
    programs and so the schedule and trace, which depend on shapes only, but not to write
    device files. The ``lower`` pass uses it when the real weights cannot be read.
    """

    declared_only = True

    def __init__(self, source: Any):
        self._source = source

    def tensor_proto(self, name: str, *, with_data: bool = True) -> onnx.TensorProto:
        """``name``'s type and dims, without data or a reference to an external file."""
        t = self._source.tensor_proto(name, with_data=False)
        return onnx.TensorProto(name=t.name, data_type=t.data_type, dims=list(t.dims))

    def array(self, name: str) -> np.ndarray:
        """A zero-strided stand-in of the right shape and dtype (it holds no memory)."""
        t = self.tensor_proto(name)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
        return np.broadcast_to(np.zeros((), dtype=dtype), tuple(t.dims))


def weights_available(state: CompileState) -> bool:
    """Whether the model's weights can be read (a synth graph declares them only)."""
    source = state.model.weights
    names = list(state.model.graph.initializers)
    if not names:
        return True
    if source is None:
        return False
    try:
        source.array(names[0])
    except Exception:
        return False
    return True


@runtime_checkable
class _ProtoWeights(Protocol):
    """A weight source that also hands out TensorProtos (the frontend's OnnxWeightSource)."""

    def tensor_proto(self, name: str, *, with_data: bool = True) -> onnx.TensorProto: ...

    def array(self, name: str) -> np.ndarray: ...


class WeightViews:
    """The walk's weight handling (a mixin of :class:`~shardc.passes.lower_walk.Walk`)."""

    state: CompileState
    graph: Graph
    t: Template
    tp: int
    rank: int
    nodes: Any
    res: Any
    table: Any
    initializers: set[str]
    lazy: dict[str, Node]
    copies: dict[str, dict[TensorSharding | None, str]]
    get: Callable[..., str]
    _name: Callable[[str, str], str]
    _emit: Callable[[onnx.NodeProto], None]
    _whole: Callable[[str], TensorSharding | None]
    _split_axis: Callable[[Node], int]

    def _fused(self) -> dict[str, int]:
        """Values on the way from a split producer to a ``Split`` cutting the split dim into
        k parts (GPT-2's fused Q/K/V): their weights must be sliced part by part.
        """
        graph, out = self.graph, {}
        for name in self.nodes:
            node = graph.node(name)
            if node.op_type != "Split":
                continue
            layouts = [self.res.layouts.get(o) for o in node.outputs if o]
            axis = self._split_axis(node)
            if not layouts or any(x is None or x.dim_of("tp") != axis for x in layouts):
                continue  # a Split along another dim than tp's cuts no fused weight
            k, chain, v = len(layouts), [], node.inputs[0]
            for _ in range(6):  # back through followers to the split producer
                chain.append(v)
                prod = graph.producer(v)
                if prod is None or prod.name not in self.table.follows:
                    break
                v = next((i for i in prod.present_inputs if i not in self.initializers), "")
                if not v:
                    break
            for c in chain:
                out[c] = k
        return out

    def _initializer(self, v: str, want: TensorSharding | None, pieces: int = 1) -> str:
        """The local initializer for weight ``v`` in layout ``want`` (cut from the original).

        ``pieces`` > 1: the split dim concatenates that many equal parts (fused Q/K/V
        split apart later), so the rank takes its share of each part.
        """
        dim = want.dim_of("tp") if want is not None else None
        name = v if dim is None else f"{v}__tp{dim}" + (f"x{pieces}" if pieces > 1 else "")
        if name in self.t.initializers:
            return name
        weights = self.state.model.weights
        if not isinstance(weights, _ProtoWeights):
            raise LoweringError(f"weight {v!r}: the model has no weight source to cut shards from")
        if dim is None:
            proto = weights.tensor_proto(v, with_data=True)
            self.t.slices[name] = SliceRecord(v, -1, 0, 0)
        else:
            array = weights.array(v)
            size = array.shape[dim]
            if size % (self.tp * pieces):
                raise LoweringError(
                    f"weight {v!r} dim {dim} ({size}) does not split {self.tp} ways"
                )
            part = size // pieces
            step = part // self.tp
            lo, hi = self.rank * step, (self.rank + 1) * step
            if getattr(weights, "declared_only", False):
                # no bytes to cut (schedule only): the shard's type and dims, never its data
                proto = weights.tensor_proto(v, with_data=False)
                proto = onnx.TensorProto(name=name, data_type=proto.data_type,
                                         dims=[*array.shape[:dim], size // self.tp,
                                               *array.shape[dim + 1:]])
            else:
                rows = np.concatenate(
                    [np.arange(k * part + lo, k * part + hi) for k in range(pieces)]
                )
                piece = np.ascontiguousarray(np.take(array, rows, axis=dim))
                proto = numpy_helper.from_array(piece, name)
            self.t.slices[name] = SliceRecord(v, dim, lo, hi, pieces, size)
        proto.name = name
        self.t.initializers[name] = proto
        self.t.weight_bytes += tensor_nbytes(proto)
        return name

    def _weight_view(self, node: Node) -> bool:
        """A view of a stored weight: DequantizeLinear (a QDQ weight, with stored scale and
        zero point), QuantizeLinear (a QDQ graph requantizing a transposed weight) or
        Transpose (a tied LM head reading the embedding) of a stored weight or of another
        such view, whose one output is no graph output. Made on each
        layout's slice of the weight, rather than whole and then sliced, it lets tensor
        parallelism split the weight instead of copying it to every rank; each stage makes
        its own rather than receiving the float weight.
        """
        return (
            node.op_type in ("DequantizeLinear", "QuantizeLinear", "Transpose")
            and node.domain in ("", "com.microsoft")
            and len(node.outputs) == 1
            and node.outputs[0] not in self.graph.outputs
            and all(v in self.initializers or v in self.lazy for v in node.present_inputs)
        )

    def _stored(self, name: str, layout: TensorSharding | None, pieces: int) -> str:
        """A stored weight's slice, or a weight view's (made on demand)."""
        if name in self.lazy:
            return self.get(name, layout, pieces)
        return self._initializer(name, layout, pieces)

    def _dequantized(self, v: str, want: TensorSharding | None, pieces: int) -> str:
        """``v`` = DequantizeLinear(weight, scale, zero point) in layout ``want``: the
        dequantization of this rank's slice, scales and zero points cut alongside when
        they run along the split dim (per-axis on it, or blocked), else read whole.
        """
        base = TensorSharding(want.dims) if want is not None else None
        dim = base.dim_of("tp") if base is not None else None
        key = base if dim is not None else self._whole(v)
        made = self.copies[v].get(key)
        if made is None and self.lazy[v].op_type == "Transpose":
            made = self._transposed(v, dim, pieces)
            self.copies[v][key] = made
        if made is None:
            node = self.lazy[v]
            w = self.graph.values[node.inputs[0]].type
            rank = len(w.shape) if w is not None and w.shape is not None else 0
            axis = int(node.attr("axis", 1) or 0) % max(rank, 1)  # type: ignore[arg-type]
            ins = []
            for i, name in enumerate(node.inputs):
                t = self.graph.values[name].type if name else None
                r = len(t.shape) if t is not None and t.shape is not None else 0
                if not name:
                    ins.append("")
                elif dim is None or (i > 0 and (r == 0 or (r == 1 and axis != dim))):
                    ins.append(self._stored(name, None, 1))
                else:
                    d = dim if i == 0 or r == rank else 0
                    layout = TensorSharding(tuple("tp" if j == d else None for j in range(r)))
                    ins.append(self._stored(name, layout, pieces))
            made = self._name(v, "dq")
            proto = onnx.NodeProto(op_type=node.op_type, domain=node.domain, name=made)
            proto.input.extend(ins)
            proto.output.append(made)
            proto.attribute.extend(attribute_proto(a) for a in node.attributes)
            self._emit(proto)
            self.copies[v][key] = made
        if want is not None and want.partial:
            return self._scale(made)
        return made

    def _transposed(self, v: str, dim: int | None, pieces: int) -> str:
        """``v`` = Transpose(weight) split along its ``dim``: the weight's slice along the
        dim ``perm`` brings there, transposed.
        """
        node = self.lazy[v]
        t = self.graph.values[node.inputs[0]].type
        rank = len(t.shape) if t is not None and t.shape is not None else 0
        given = node.attr("perm", None)
        perm = [int(p) for p in given] if given else list(range(rank))[::-1]  # type: ignore[union-attr]
        src = None
        if dim is not None:
            src = TensorSharding(tuple("tp" if perm[dim] == j else None for j in range(rank)))
        made = self._name(v, "transposed")
        weight = self._stored(node.inputs[0], src, pieces)
        proto = helper.make_node("Transpose", [weight], [made], name=made)
        proto.attribute.extend(attribute_proto(a) for a in node.attributes)
        self._emit(proto)
        return made

    def _scale(self, name: str) -> str:
        """Replicated → partial sums: each of the tp ranks contributes 1/tp."""
        const = self._name(name, "inv_tp")
        self.t.initializers[const] = numpy_helper.from_array(
            np.array(1.0 / self.tp, dtype=np.float32), const
        )
        out = self._name(name, "scaled")
        cast = self._name(name, "inv_tp_cast")
        self._emit(helper.make_node("CastLike", [const, name], [cast], name=cast))
        self._emit(helper.make_node("Mul", [name, cast], [out], name=out))
        return out


def tensor_nbytes(t: onnx.TensorProto) -> int:
    return (
        int(np.prod(t.dims, dtype=np.int64))
        * np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    )
