"""Expert regions on one rank: keep the pairs routed to this rank's experts, run the
region on those rows, scatter the results back as partial sums.

Why here and not in the generic walk: the region's values are split by routing, not in
contiguous blocks (see :mod:`shardc.partition.experts`), so no ``Slice`` may cut them.
On rank ``r`` of a group of ``d`` holding experts ``[lo, hi)`` (``lo = r·E/d``):

1. ``pos = NonZero(lo <= ids < hi)``, once per region: the pairs this rank owns;
2. every row input of the region (the tokens, repeated per top-k) is gathered at
   ``pos``; the expert ids too, shifted by ``-lo`` to index the local weights, which are
   rows ``[lo, hi)`` of the stacked originals (recorded as slices for check-plan);
3. the region's nodes run unchanged on those rows;
4. the last product's rows are scattered into zeros of the full shape (``ScatterND``):
   the ranks' results sum to the unsharded one, and the walk carries on with a value
   held as partial sums, reduced where a consumer needs it whole.

A rank that owns no pair runs the region on zero rows, which onnxruntime allows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from shardc.frontend.onnx_model import attribute_proto
from shardc.ir import Node
from shardc.partition.experts import ExpertRegion, ExpertRule
from shardc.passes.lower_nodes import LoweringError


class ExpertEmitter:
    """Writes the expert regions the plan spreads over the walk's group."""

    def __init__(self, walk: Any) -> None:
        # ``walk`` is the :class:`shardc.passes.lower_walk.Walk` that owns this emitter; not
        # imported for its type, since the walk imports this module (no cycle in a part).
        self.walk = walk
        graph, res, table = walk.graph, walk.res, walk.table
        assert table is not None
        self.free = table.free
        rule = ExpertRule(graph, table.free)
        mine = set(walk.nodes)
        chosen = [
            r
            for r in rule.regions
            if r.gathers[0] in mine and res.strategies[r.gathers[0]].name == "experts"
        ]
        for r in chosen:
            if not set(r.nodes) <= mine:
                raise LoweringError(f"expert region of {r.exit!r} spans two pipeline stages")
        self.region_of: dict[str, ExpertRegion] = {n: r for r in chosen for n in r.nodes}
        self.rows: dict[str, str] = {}
        """Original value -> its local rows (entries gathered at ``pos``, region values)."""
        self.pos: dict[str, str] = {}
        """Region ids -> the positions of this rank's pairs."""
        self.local_ids: dict[str, str] = {}

    def owns(self, node: str) -> bool:
        """True for the nodes of a region this emitter writes."""
        return node in self.region_of

    # -- helpers ---------------------------------------------------------------------
    def _const(self, base: str, what: str, value: np.ndarray) -> str:
        name = self.walk._name(base, what)
        self.walk.t.initializers[name] = numpy_helper.from_array(value, name)
        return name

    def _op(self, op: str, ins: list[str], base: str, what: str, **attrs: Any) -> str:
        out = self.walk._name(base, what)
        self.walk._emit(helper.make_node(op, ins, [out], name=out, **attrs))
        return out

    def _whole(self, v: str) -> str:
        return self.walk.get(v, self.walk._whole(v))

    def _positions(self, region: ExpertRegion) -> str:
        """Indices of the pairs routed to this rank's experts (``[n]``, int64)."""
        if region.ids in self.pos:
            return self.pos[region.ids]
        w, ids = self.walk, region.ids
        per = region.experts // w.tp
        lo, hi = w.rank * per, (w.rank + 1) * per
        flat_shape = self._const(ids, "flat", np.array([-1], dtype=np.int64))
        ids64 = self._op("Cast", [self._whole(ids)], ids, "ids64", to=onnx.TensorProto.INT64)
        flat = self._op("Reshape", [ids64, flat_shape], ids, "ids_flat")
        lo_c = self._const(ids, "lo", np.array(lo, dtype=np.int64))
        hi_c = self._const(ids, "hi", np.array(hi, dtype=np.int64))
        ge = self._op("GreaterOrEqual", [flat, lo_c], ids, "ge")
        lt = self._op("Less", [flat, hi_c], ids, "lt")
        mine = self._op("And", [ge, lt], ids, "mine")
        found = self._op("NonZero", [mine], ids, "nonzero")
        pos = self._op("Reshape", [found, flat_shape], ids, "pos")
        self.pos[ids] = pos
        rows = self._op("Gather", [ids64, pos], ids, "rows", axis=0)
        self.local_ids[ids] = self._op("Sub", [rows, lo_c], ids, "local")
        return pos

    def _input(self, region: ExpertRegion, node: Node, i: int, v: str) -> str:
        w = self.walk
        if v in self.rows:
            return self.rows[v]
        pos = self._positions(region)
        if v == region.ids and node.name in region.gathers:
            return self.local_ids[v]
        if node.name in region.gathers and i == 0:
            return w.get(v, w.res.strategies[node.name].inputs[0])  # this rank's experts
        if v in self.free and v not in w.graph.inputs:
            return w.get(v, None)
        got = self._op("Gather", [self._whole(v), pos], v, "rows", axis=0)
        self.rows[v] = got
        return got

    # -- the node ----------------------------------------------------------------------
    def node(self, node: Node) -> list[str]:
        """Emit one region node on this rank's rows; the names of its outputs as held."""
        region = self.region_of[node.name]
        ins = [self._input(region, node, i, v) if v else "" for i, v in enumerate(node.inputs)]
        last = node.name == region.exit
        outs = [(self.walk._name(o, "rows") if last else o) if o else "" for o in node.outputs]
        proto = onnx.NodeProto(op_type=node.op_type, domain=node.domain, name=node.name)
        proto.input.extend(ins)
        proto.output.extend(outs)
        proto.attribute.extend(attribute_proto(a) for a in node.attributes)
        self.walk._emit(proto)
        for o, local in zip(node.outputs, outs, strict=True):
            if o:
                self.rows[o] = local
        if not last:
            return outs
        return [self._scatter(region, node.outputs[0], outs[0])]

    def _scatter(self, region: ExpertRegion, out: str, rows: str) -> str:
        """Scatter this rank's rows back to their pairs' places in zeros of the full shape."""
        w = self.walk
        t = w.graph.values[out].type
        assert t is not None and t.shape is not None
        shape = self._const(out, "shape", np.array(t.shape, dtype=np.int64))
        zero = helper.make_tensor("value", t.dtype.value, [1], [0])
        zeros = self._op("ConstantOfShape", [shape], out, "zeros", value=zero)
        axes = self._const(out, "axes", np.array([-1], dtype=np.int64))
        index = self._op("Unsqueeze", [self._positions(region), axes], out, "index")
        w._emit(helper.make_node("ScatterND", [zeros, index, rows], [out], name=f"{out}__scatter"))
        return out
