"""A value in the layout a node wants: the local copy on hand, or the reshard steps
that make one from it (collectives as ``shardc`` nodes, local slices, scales).

Why apart from the walk (:mod:`shardc.passes.lower_walk`): the walk decides the order of
a rank's program (what it receives, the nodes, what it sends); this is the one question
every node input asks on the way, "this value in that layout", answered with the fewest
communicating steps of :func:`shardc.sharding.reshard` and each step written as nodes. It
changes when a reshard step or a collective's encoding does, not when the walk's order
does. A mixin of :class:`~shardc.passes.lower_walk.Walk`, like
:class:`~shardc.passes.lower_weights.WeightViews` and
:class:`~shardc.passes.lower_nodes.NodeRewrites`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import helper, numpy_helper

from shardc.passes.lower_nodes import LoweringError
from shardc.plan.lowered import PendingComm
from shardc.sharding import Reshard, TensorSharding, reshard

if TYPE_CHECKING:
    from shardc.ir import Graph, Node
    from shardc.pipeline import CompileState
    from shardc.plan.lowered import Template

_COLLECTIVE = {
    "all_reduce": "AllReduce",
    "all_gather": "AllGather",
    "reduce_scatter": "ReduceScatter",
    "all_to_all": "AllToAll",
}


class Layouts:
    """The walk's values in layouts (a mixin of :class:`~shardc.passes.lower_walk.Walk`)."""

    state: CompileState
    graph: Graph
    t: Template
    tp: int
    rank: int
    initializers: set[str]
    lazy: dict[str, Node]
    copies: dict[str, dict[TensorSharding | None, str]]
    _name: Callable[[str, str], str]
    _emit: Callable[[onnx.NodeProto], None]
    _bytes: Callable[[str], float]
    _comm_node: Callable[..., None]
    _initializer: Callable[..., str]
    _dequantized: Callable[[str, TensorSharding | None, int], str]
    _scale: Callable[[str], str]

    def _whole(self, v: str) -> TensorSharding | None:
        t = self.graph.values[v].type
        if t is None or t.shape is None:
            return None
        return TensorSharding.replicated(len(t.shape))

    def get(self, v: str, want: TensorSharding | None, pieces: int = 1) -> str:
        """The local name of value ``v`` in layout ``want`` (None: as it is on hand)."""
        if v in self.initializers:
            if want is not None and want.partial:
                unscaled = self._initializer(v, TensorSharding(want.dims), pieces)
                return self._scale(unscaled)
            return self._initializer(v, want, pieces)
        if v in self.lazy:
            return self._dequantized(v, want, pieces)
        have = self.copies.get(v)
        if not have:
            raise LoweringError(f"value {v!r} is not available on stage {self.t.stage}")
        if want is None:
            return next(iter(have.values()))
        if want in have:
            return have[want]
        best: tuple[int, TensorSharding | None, tuple[Reshard, ...]] | None = None
        for src in have:
            base = src if src is not None else self._whole(v)
            if base is None or base.rank != want.rank:
                continue
            steps = reshard(base, want)
            cost = sum(s.communicates for s in steps)
            if best is None or cost < best[0]:
                best = (cost, src, steps)
        if best is None:
            return next(iter(have.values()))
        _, src, steps = best
        name = have[src]
        layout = src if src is not None else self._whole(v)
        assert layout is not None
        for step in steps:
            name = self._reshard(v, name, layout, step)
            layout = _after(layout, step)
            have[layout] = name
        return name

    def _reshard(self, v: str, name: str, layout: TensorSharding, step: Reshard) -> str:
        if step.axis != "tp":
            raise LoweringError(f"value {v!r}: resharding along {step.axis!r} is not emitted yet")
        if step.op == "scale":
            return self._scale(name)
        if step.op == "slice":
            return self._split(v, name, step.dst_dim)
        out = self._name(v, step.op)
        nbytes = self._bytes(v) * layout.local_fraction({"tp": self.tp})
        if step.op == "all_gather":
            nbytes *= self.tp
        dim = step.dst_dim if step.op in ("reduce_scatter", "all_to_all") else step.src_dim
        concat = -1
        if step.op == "all_to_all":
            # split along the new dim, send piece j to rank j, join what arrives along the
            # dim that was split: one exchange turns a src_dim split into a dst_dim split
            assert step.src_dim is not None
            concat = step.src_dim
        op = _COLLECTIVE[step.op]
        pending = PendingComm(
            op, name, out, nbytes, axis=dim if dim is not None else -1, concat_axis=concat
        )
        self._comm_node(op, [name], [out], pending)
        return out

    def _split(self, v: str, name: str, dim: int | None) -> str:
        """Replicated → this rank's piece along ``dim`` (a local Slice, no traffic)."""
        assert dim is not None
        t = self.graph.values[v].type
        size = t.shape[dim] if t is not None and t.shape is not None else None
        if not isinstance(size, int):
            raise LoweringError(f"value {v!r}: cannot slice a dim of unknown size")
        step = size // self.tp
        out = self._name(v, "slice")
        if (self.state.model.opset() or 18) < 10:  # Slice-1: bounds are attributes
            lo, hi = self.rank * step, (self.rank + 1) * step
            slice1 = helper.make_node("Slice", [name], [out], name=out, starts=[lo], ends=[hi])
            slice1.attribute.append(helper.make_attribute("axes", [dim]))
            self._emit(slice1)
            return out
        consts = {}
        for key, val in (
            ("starts", self.rank * step),
            ("ends", (self.rank + 1) * step),
            ("axes", dim),
        ):
            cname = self._name(v, key)
            self.t.initializers[cname] = numpy_helper.from_array(
                np.array([val], dtype=np.int64), cname
            )
            consts[key] = cname
        self._emit(
            helper.make_node(
                "Slice", [name, consts["starts"], consts["ends"], consts["axes"]], [out], name=out
            )
        )
        return out


def _after(layout: TensorSharding, step: Reshard) -> TensorSharding:
    dims = list(layout.dims)
    partial = layout.partial
    if step.op in ("all_reduce", "reduce_scatter") and partial == step.axis:
        partial = None
    if step.op == "scale":
        partial = step.axis
    if step.src_dim is not None:
        dims[step.src_dim] = None
    if step.dst_dim is not None:
        dims[step.dst_dim] = step.axis
    return TensorSharding(tuple(dims), partial)
