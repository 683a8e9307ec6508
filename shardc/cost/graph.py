"""What the cost model reads of a whole graph: the types it prices in, and every node's
FLOPs and bytes with their totals.

:class:`Precision` is the graph in the plan's precision (``--dtype``) that the
``precision`` pass makes; :class:`GraphCosts` the table the ``annotate_costs`` pass fills.

Device-independent: how long a node takes on a given device kind is the rest of the cost
model's business (:mod:`shardc.cost.compute`), which reads this table. Totals are kept per
compute dtype (fp32, bf16, fp16, fp8, int8…) because devices list a different peak for
each. Opaque nodes (functions, If/Loop/Scan) get the summed cost of their bodies: If takes
its more expensive branch, Loop multiplies by a constant trip count, Scan by the scan
length. Ops with no rule get a bytes-only cost and are listed, so nothing is silently free.

Why in ``cost`` and not in the ``annotate_costs`` pass: the what-if grid
(:mod:`shardc.cost.grid`) and the partitioner read this table without running the pass
pipeline, and the cost model sits below the passes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from shardc.cost.ops import NodeCost, bindable_dims, node_cost
from shardc.errors import ModelError
from shardc.ir import DType, Graph, Node


@dataclass(frozen=True)
class Precision:
    """The precision of the plan and the graph the cost model reads."""

    dtype: str | None
    """The option (``fp32``, ``bf16``, ``fp16``, ``fp8``), or None for the model's own."""
    graph: Graph
    """``state.graph`` with its float values re-typed (the same object when None)."""
    compute: Mapping[str, DType] = field(default_factory=dict)
    """Nodes whose arithmetic runs in another type than their inputs' (fp8 GEMMs)."""


@dataclass(frozen=True)
class GraphCosts:
    """Per-node costs plus the totals reports and the partitioner start from."""

    nodes: Mapping[str, NodeCost]
    param_bytes: int
    """Bytes of all initializers, each counted once (tied weights are not doubled)."""
    param_count: int
    bytes_only_ops: tuple[str, ...]
    """Op types that got no FLOP rule (``domain::op`` for custom domains)."""
    estimated: tuple[str, ...] = ()
    """Nodes costed with a data-dependent size counted as 1 (their costs are lower bounds)."""

    @property
    def flops(self) -> int:
        """Total forward FLOPs of one run of the graph."""
        return sum(c.flops for c in self.nodes.values())

    def flops_by_dtype(self) -> dict[str, int]:
        """Total FLOPs per compute dtype (``fp32``, ``bf16``, ``fp8``…)."""
        acc: dict[str, int] = defaultdict(int)
        for c in self.nodes.values():
            acc[c.dtype.short] += c.flops
        return dict(sorted(acc.items()))

    def flops_by_kind(self) -> dict[str, int]:
        """Total FLOPs per op kind (``matmul``, ``attention``, ``norm``…)."""
        acc: dict[str, int] = defaultdict(int)
        for c in self.nodes.values():
            acc[c.kind] += c.flops
        return dict(sorted(acc.items()))

    def bytes_moved(self) -> int:
        """Total bytes read plus written by all nodes."""
        return sum(c.bytes_total for c in self.nodes.values())


def _body_flops(node: Node, graph: Graph, where: str, custom: Mapping[str, float]) -> int:
    """FLOPs of an opaque node's subgraphs, scaled by trip count where one is known.

    Bodies are costed leniently: their values often change shape from one iteration to
    the next, so what cannot be sized is an estimate, never an error.
    """
    per_body = [
        graph_costs(g, where=where, custom_flops=custom, lenient=True).flops for g in node.subgraphs
    ]
    if node.op_type == "If":
        return max(per_body, default=0)
    total = sum(per_body)
    if node.op_type == "Loop" and node.inputs and node.inputs[0]:
        trip = graph.values.get(node.inputs[0])
        if trip is not None and trip.const:
            total *= int(trip.const[0])
    elif node.op_type == "Scan":
        n_state = len(node.inputs) - int(node.attr("num_scan_inputs", 0) or 0)  # type: ignore[arg-type]
        scan_in = node.inputs[n_state] if n_state < len(node.inputs) else ""
        t = graph.values[scan_in].type if scan_in and graph.values.get(scan_in) else None
        axes = node.attr("scan_input_axes") or (0,)
        length = t.shape[int(axes[0])] if t is not None and t.shape is not None else None  # type: ignore[index]
        if isinstance(length, int):
            total *= length
    return total


def graph_costs(
    graph: Graph,
    *,
    where: str,
    custom_flops: Mapping[str, float] | None = None,
    lenient: bool = False,
    compute: Mapping[str, DType] | None = None,
) -> GraphCosts:
    """Cost every node of ``graph`` (recursing into opaque bodies).

    ``lenient`` (for control-flow bodies): a node whose values cannot be sized at all
    costs nothing and is marked estimated, instead of stopping the compile. ``compute``
    names nodes whose arithmetic runs in another type than their inputs say (``--dtype
    fp8``'s GEMMs, see :mod:`shardc.cost.precision`).
    """
    custom = dict(custom_flops or {})
    costs: dict[str, NodeCost] = {}
    bytes_only: dict[str, None] = {}
    bindable = frozenset() if lenient else bindable_dims(graph)
    for node in graph.nodes:
        try:
            c = node_cost(
                node,
                graph,
                where=where,
                custom_flops=custom,
                body_cost=lambda n: _body_flops(n, graph, where, custom),
                bindable=bindable,
            )
        except ModelError:
            if not lenient:
                raise
            c = NodeCost(0, 0, 0, 0, DType.FLOAT, "bytes-only", estimated=True)
        if compute and node.name in compute:
            c = replace(c, dtype=compute[node.name])
        costs[node.name] = c
        if not c.exact:
            bytes_only[node.qualified_op] = None
    weights = graph.weights
    return GraphCosts(
        nodes=costs,
        param_bytes=sum(v.nbytes or 0 for v in weights),
        param_count=sum(v.type.numel or 0 for v in weights if v.type is not None),
        bytes_only_ops=tuple(sorted(bytes_only)),
        estimated=tuple(n for n, c in costs.items() if c.estimated),
    )
