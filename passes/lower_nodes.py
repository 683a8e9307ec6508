"""One graph node rewritten for its shard: shape arguments, split sizes, attributes that
count what a rank holds, and a Gather from a vocabulary-split table.

Why apart from the walk (:mod:`shardc.passes.lower_walk`): the walk decides which layout
each value is in and what to communicate; this is what one node must look like on a rank
that holds a piece, a table of per-op fix-ups that grows with the ops tensor parallelism
splits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import helper, numpy_helper

from shardc.errors import ShardcError
from shardc.frontend.onnx_model import attribute_proto
from shardc.ir import Node, TensorType
from shardc.sharding import Strategy

if TYPE_CHECKING:
    from shardc.ir import Graph
    from shardc.plan.lowered import Template

SHAPE_ARGS = {"Reshape": 1, "Expand": 1}
"""Ops whose shape argument must shrink when their output is split."""


class LoweringError(ShardcError):
    """The plan asks for something lowering cannot write (names the node and why)."""


def static_shape(t: TensorType | None) -> list[int] | None:
    """The dims of ``t`` when every one is a known integer, else None."""
    if t is None or t.shape is None:
        return None
    dims = [int(d) for d in t.shape if isinstance(d, int)]
    return dims if len(dims) == len(t.shape) else None


class NodeRewrites:
    """The walk's per-node rewrites (a mixin of :class:`~shardc.passes.lower_walk.Walk`)."""

    graph: Graph
    t: Template
    tp: int
    rank: int

    def _name(self, base: str, what: str) -> str:  # pragma: no cover - the walk's
        raise NotImplementedError

    def _emit(self, node: onnx.NodeProto) -> None:  # pragma: no cover - the walk's
        raise NotImplementedError

    def _node(self, node: Node, strat: Strategy, ins: list[str], outs: list[str]) -> None:
        graph = self.graph
        split_out = any(
            s is not None and s.dim_of("tp") is not None for s in strat.outputs[: len(outs)]
        )
        if node.op_type in SHAPE_ARGS and split_out:
            shape = static_shape(graph.values[node.outputs[0]].type)
            layout = strat.outputs[0]
            assert layout is not None
            if shape is None:
                raise LoweringError(
                    f"{node.name}: a split {node.op_type} needs a static output shape"
                )
            d = layout.dim_of("tp")
            assert d is not None
            shape[d] //= self.tp
            cname = self._name(node.name, "shape")
            self.t.initializers[cname] = numpy_helper.from_array(
                np.array(shape, dtype=np.int64), cname
            )
            ins = list(ins)
            ins[SHAPE_ARGS[node.op_type]] = cname
        if node.op_type == "Split" and len(ins) > 1 and ins[1] and self._splits_axis(node, strat):
            sizes = [self._dim(o, self._split_axis(node)) // self.tp for o in node.outputs]
            cname = self._name(node.name, "split")
            self.t.initializers[cname] = numpy_helper.from_array(
                np.array(sizes, dtype=np.int64), cname
            )
            ins = list(ins)
            ins[1] = cname
        data = strat.inputs[0] if node.op_type == "Gather" and strat.inputs else None
        if data is not None and data.dim_of("tp") == self._split_axis(node):
            self._masked_gather(node, ins, outs[0])
            return
        proto = onnx.NodeProto(op_type=node.op_type, domain=node.domain, name=node.name)
        proto.input.extend(ins)
        proto.output.extend(outs)
        proto.attribute.extend(attribute_proto(a) for a in node.attributes)
        _split_attributes(node.qualified_op, strat, proto, self.tp)
        group = int(node.attr("group", 1) or 1)  # type: ignore[arg-type]
        if node.op_type in ("Conv", "ConvInteger") and group > 1 and tp_dim(strat) == 1:
            for a in proto.attribute:  # a grouped conv split by channels: tp-th of the groups
                if a.name == "group":
                    a.i = group // self.tp
        self._emit(proto)

    def _splits_axis(self, node: Node, strat: Strategy) -> bool:
        """True when tp splits the dim ``node`` cuts along (its ``split`` sizes shrink);
        a Split along another dim (MLA's rope/nope cut of heads-split tensors) keeps them.
        """
        axis = self._split_axis(node)
        return any(s is not None and s.dim_of("tp") == axis for s in strat.outputs)

    def _dim(self, v: str, axis: int) -> int:
        """The known size of dim ``axis`` of value ``v``."""
        t = self.graph.values[v].type
        size = t.shape[axis] if t is not None and t.shape is not None else None
        if not isinstance(size, int):
            raise LoweringError(f"value {v!r}: dim {axis} has an unknown size")
        return size

    def _split_axis(self, node: Node) -> int:
        axis = int(node.attr("axis", 0) or 0)  # type: ignore[arg-type]
        t = self.graph.values[node.inputs[0]].type
        return axis % len(t.shape) if t is not None and t.shape is not None else axis

    def _masked_gather(self, node: Node, ins: list[str], out: str) -> None:
        """Vocab-parallel lookup: ids outside this rank's rows read row 0 and are zeroed,
        so the ranks' partial results sum to the full lookup.
        """
        weight, ids = ins[0], ins[1]
        record = self.t.slices.get(weight)
        if record is not None:
            start, stop = record.start, record.stop
        else:  # a table computed on the rank (a dequantized weight), cut by a local Slice
            step = self._dim(node.inputs[0], self._split_axis(node)) // self.tp
            start, stop = self.rank * step, (self.rank + 1) * step
        n = self._name
        consts = {}
        for key, val, shape in (
            ("lo", start, ()),
            ("hi", stop, ()),
            ("zero", 0, ()),
            ("axes", -1, (1,)),
        ):
            c = n(node.name, key)
            self.t.initializers[c] = numpy_helper.from_array(
                np.array(val, dtype=np.int64).reshape(shape), c
            )
            consts[key] = c
        ids64, shifted, ge, lt, inside, safe, got, mask, maskf = (
            n(node.name, k)
            for k in ("ids64", "shift", "ge", "lt", "in", "safe", "rows", "mask", "maskf")
        )
        axis = int(node.attr("axis", 0) or 0)  # type: ignore[arg-type]
        for proto in (
            helper.make_node("Cast", [ids], [ids64], name=ids64, to=onnx.TensorProto.INT64),
            helper.make_node("Sub", [ids64, consts["lo"]], [shifted], name=shifted),
            helper.make_node("GreaterOrEqual", [ids64, consts["lo"]], [ge], name=ge),
            helper.make_node("Less", [ids64, consts["hi"]], [lt], name=lt),
            helper.make_node("And", [ge, lt], [inside], name=inside),
            helper.make_node("Where", [inside, shifted, consts["zero"]], [safe], name=safe),
            helper.make_node("Gather", [weight, safe], [got], name=got, axis=axis),
            helper.make_node("Unsqueeze", [inside, consts["axes"]], [mask], name=mask),
            helper.make_node("CastLike", [mask, got], [maskf], name=maskf),
            helper.make_node("Mul", [got, maskf], [out], name=node.name),
        ):
            self._emit(proto)


_HEAD_COUNTS = ("num_heads", "kv_num_heads")
_HEADS_OPS = frozenset(
    f"com.microsoft::{op}"
    for op in ("Attention", "MultiHeadAttention", "GroupQueryAttention", "RotaryEmbedding")
)


def _split_attributes(op: str, strat: Strategy, proto: onnx.NodeProto, tp: int) -> None:
    """Divide the attributes that count what a rank holds when tp splits it: the heads of
    onnxruntime's attention ops, MatMulNBits' ``N`` (output columns) and ``K`` (input
    features, a row split). Without this the kernels read the shard's shape as whole.
    """

    def split(i: int, dim: int, outputs: bool = False) -> bool:
        side = strat.outputs if outputs else strat.inputs
        s = side[i] if i < len(side) else None
        return s is not None and s.dim_of("tp") == dim

    divide: set[str] = set()
    if op == "com.microsoft::MatMulNBits":
        out = strat.outputs[0] if strat.outputs else None
        if out is not None and out.dim_of("tp") == len(out.dims) - 1:
            divide.add("N")
        if split(1, 1):
            divide.add("K")
    elif op in _HEADS_OPS and tp_dim(strat) is not None and tp_dim(strat) != 0:
        divide.update((*_HEAD_COUNTS, "qkv_hidden_sizes"))
    for a in proto.attribute:
        if a.name not in divide:
            continue
        if a.type == onnx.AttributeProto.INT and a.i > 0:
            a.i //= tp
        elif a.type == onnx.AttributeProto.INTS:
            a.ints[:] = [v // tp for v in a.ints]


def tp_dim(strat: Strategy) -> int | None:
    """The dim of the first output that tp splits."""
    out = strat.outputs[0] if strat.outputs else None
    return out.dim_of("tp") if out is not None else None
