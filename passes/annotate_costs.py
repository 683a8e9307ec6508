"""Pass ``annotate_costs``: FLOPs, bytes and parameter bytes of every node.

The table and its rules are the cost model's (:mod:`shardc.cost.graph` sums the per-op
rules of :mod:`shardc.cost.ops`); this pass fills ``state.costs`` in the plan's
precision, warns once per op with no FLOP rule, and prints the table for
``--dump-after annotate_costs``.
"""

from __future__ import annotations

from shardc.cost.graph import GraphCosts, graph_costs
from shardc.ir import Node
from shardc.pipeline import CompileState, Pass

__all__ = ["PASS", "GraphCosts", "graph_costs"]
"""``GraphCosts`` and ``graph_costs`` re-exported: their home is :mod:`shardc.cost.graph`."""


def run(state: CompileState) -> CompileState:
    """Annotate ``state.graph`` and warn once per op type that has no FLOP rule.

    Prices are in the plan's precision when the ``precision`` pass ran before
    (``--dtype``), else in the model's own types.
    """
    precision = state.precision
    costs = graph_costs(
        precision.graph if precision is not None else state.graph,
        where=state.model.source,
        custom_flops=state.options.custom_flops,
        compute=precision.compute if precision is not None else None,
    )
    warnings = [
        f"no FLOP rule for {op}: costed by bytes only (give one with --op-cost {op}=F)"
        for op in costs.bytes_only_ops
    ]
    if costs.estimated:
        shown = ", ".join(costs.estimated[:3]) + (", …" if len(costs.estimated) > 3 else "")
        warnings.append(
            f"data-dependent shapes in {len(costs.estimated)} node(s) ({shown}): unknown sizes "
            "costed as 1, so their time is a lower bound"
        )
    return state.with_(costs=costs).warn(*warnings)


def dump(state: CompileState) -> str:
    """IR text with each node's FLOPs and bytes."""
    from shardc.ir.printer import format_graph

    assert state.costs is not None
    table = state.costs.nodes

    def note(node: Node) -> str:
        c = table[node.name]
        flag = "" if c.exact else " bytes-only"
        traffic = f"read={c.bytes_read} write={c.bytes_written}"
        return f"{c.kind} {c.dtype.short} flops={c.flops} {traffic}{flag}"

    return format_graph(state.graph, annotate=note)


PASS = Pass(
    name="annotate_costs",
    run=run,
    requires=("graph",),
    provides=("costs",),
    description="FLOPs, bytes read/written and parameter bytes per node, per dtype",
    dump=dump,
)
