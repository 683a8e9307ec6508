"""FLOPs and memory traffic of one node: the op-level half of the cost model.

The formulas per op live in :mod:`shardc.cost.flops`; this module applies them: the
rule, the per-element table or the category an op falls in, the bytes each node reads
and writes, and the type its arithmetic runs in.

What a FLOP is here (multiply-add = 2, per-element costs, fused normalisations priced
as their unfused patterns, bytes read by a Gather) is stated once, in
:mod:`shardc.cost.flops`, next to the formulas that follow it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from shardc.cost.flops import (
    ELEMENTWISE_FLOPS,
    FLOP_RULES,
    MOVEMENT_OPS,
    REDUCE_OPS,
    VIEW_OPS,
    Need,
    bindable_dims,
    elementwise,
    reduce,
)
from shardc.ir import DType, Graph, Node

__all__ = ["Need", "NodeCost", "bindable_dims", "node_cost"]
"""``Need`` and ``bindable_dims`` re-exported: their home is :mod:`shardc.cost.flops`."""


@dataclass(frozen=True, slots=True)
class NodeCost:
    """What one node costs, independent of the device it will run on."""

    flops: int
    bytes_read: int
    bytes_written: int
    param_bytes: int
    dtype: DType
    kind: str
    """``matmul``, ``conv``, ``attention``, ``norm``, ``elementwise``, ``reduce``,
    ``movement``, ``view``, ``control`` (opaque bodies), ``custom`` or ``bytes-only``."""
    exact: bool = True
    """False when only bytes are known (unknown op): its FLOPs are a lower bound (0)."""
    input_bytes: tuple[int, ...] = ()
    """Bytes read from each input position (0 for omitted ones), so a shard can scale
    each operand by what it actually reads: a column-split MatMul reads all of X but an
    eighth of W."""
    output_bytes: tuple[int, ...] = ()
    estimated: bool = False
    """True when a data-dependent size (NonZero's count, a shape computed at run time) was
    unknown and counted as 1: FLOPs and bytes are then lower bounds."""

    @property
    def bytes_total(self) -> int:
        """Memory traffic: the roofline's denominator."""
        return self.bytes_read + self.bytes_written

    @property
    def intensity(self) -> float:
        """FLOPs per byte moved (arithmetic intensity)."""
        return self.flops / self.bytes_total if self.bytes_total else math.inf


_QUANTIZED = frozenset({"QLinearMatMul", "MatMulInteger", "ConvInteger", "QLinearConv"})


def _compute_dtype(node: Node, graph: Graph) -> DType:
    """The type the arithmetic runs in: the widest float input, else the first input's.

    Quantized kernels run in their data's type (int8, fp8), not their fp32 scales'.
    MatMulNBits quantizes only its weight: the product runs in the activations' type,
    or in int8 when ``accuracy_level`` is 4 (onnxruntime then quantizes A to int8 too).
    """
    if node.qualified_op == "com.microsoft::MatMulNBits" and node.attr("accuracy_level", 0) == 4:
        return DType.INT8
    if node.op_type in _QUANTIZED and node.inputs and graph.values.get(node.inputs[0]):
        t = graph.values[node.inputs[0]].type
        if t is not None:
            return t.dtype
    types = [graph.values[i].type for i in node.present_inputs if graph.values.get(i)]
    floats = [t.dtype for t in types if t is not None and t.dtype.is_float]
    if floats:
        return max(floats, key=lambda d: d.bits)
    outs = [graph.values[o].type for o in node.outputs if o and graph.values.get(o)]
    for t in (*types, *outs):
        if t is not None:
            return t.dtype
    return DType.FLOAT


def node_cost(
    node: Node,
    graph: Graph,
    *,
    where: str,
    custom_flops: Mapping[str, float] | None = None,
    body_cost: Callable[[Node], int] | None = None,
    bindable: frozenset[str] | None = None,
) -> NodeCost:
    """Cost of ``node``; unknown ops get a bytes-only cost with ``exact=False``.

    ``custom_flops`` maps ``domain::op`` to FLOPs per output element for ops shardc has
    no rule for; ``body_cost`` sums the FLOPs of an opaque node's subgraphs;
    ``bindable`` are the dims the user can bind (default: the graph inputs' symbolic dims).
    """
    need = Need(node, graph, where, bindable)
    key = node.qualified_op
    exact = True
    if node.subgraphs and body_cost is not None:
        flops, kind = body_cost(node), "control"
    elif key in FLOP_RULES:
        try:
            flops, kind = FLOP_RULES[key](node, need)
        except (IndexError, ValueError):
            if not need.estimated:
                raise
            flops, kind = 0, "bytes-only"  # the rule needs a dim a run-time shape hides
    elif key in ELEMENTWISE_FLOPS:
        flops, kind = elementwise(node, need)
    elif key in REDUCE_OPS:
        flops, kind = reduce(node, need)
    elif key in VIEW_OPS:
        return NodeCost(0, 0, 0, 0, _compute_dtype(node, graph), "view")
    elif key in MOVEMENT_OPS:
        flops, kind = 0, "movement"
    elif custom_flops and key in custom_flops:
        flops, kind = int(custom_flops[key] * _all_out_elems(node, need)), "custom"
    else:
        flops, kind, exact = 0, "bytes-only", False
    reads = [need.nbytes((i,)) for i in node.inputs]
    if node.op_type == "Gather" and node.domain == "" and graph.values[node.inputs[0]].is_weight:
        reads[0] = need.nbytes(node.outputs)  # the rows gathered, not the table
    writes = tuple(need.nbytes((o,)) for o in node.outputs)
    return NodeCost(
        flops=int(flops),
        bytes_read=sum(reads),
        bytes_written=sum(writes),
        param_bytes=need.param_bytes(),
        dtype=_compute_dtype(node, graph),
        kind=kind,
        exact=exact,
        estimated=need.estimated,
        input_bytes=tuple(reads),
        output_bytes=writes,
    )


def _all_out_elems(node: Node, need: Need) -> int:
    return sum(math.prod(need.shape(o)) for o in node.outputs if o)
