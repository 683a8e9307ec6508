"""Pass ``strategies``: the legal shardings of every node and the resharding each implies.

The rules (:mod:`shardc.strategy.rules`, one module per op family) and the table they
fill (:mod:`shardc.strategy.table`) live below the passes, because the partitioner reads
the table too; this pass builds it for ``state.graph``, warns about ops that can only be
replicated, and prints it for ``--dump-after strategies``.
"""

from __future__ import annotations

from shardc.ir import Node
from shardc.pipeline import CompileState, Pass
from shardc.strategy.resolve import ReshardStep, Resolution, derive, resolve
from shardc.strategy.table import (
    StrategyTable,
    build_table,
    input_labels,
    kv_pins,
    loop_label,
)

__all__ = [
    "PASS",
    "ReshardStep",
    "Resolution",
    "StrategyTable",
    "build_table",
    "derive",
    "input_labels",
    "loop_label",
    "resolve",
]
"""Re-exported so ``shardc.passes.strategies`` still names what it always did."""


def run(state: CompileState) -> CompileState:
    """Fill ``state.strategies`` and warn about ops that can only be replicated."""
    pinned = kv_pins(state.graph, state.model.metadata)
    table, warnings = build_table(state.graph, state.model.opset() or 18, pinned)
    return state.with_(strategies=table).warn(*warnings)


def dump(state: CompileState) -> str:
    """IR text with each node's strategy names, then every non-follower's layouts."""
    from shardc.ir.printer import format_graph

    table = state.strategies
    assert table is not None

    def note(node: Node) -> str:
        if node.name in table.follows:
            return "follows its inputs"
        return " | ".join(s.name for s in table.of(node.name))

    lines = [format_graph(state.graph, annotate=note), "", "strategies:"]
    for node in state.graph.nodes:
        if node.name not in table.follows:
            lines.append(f"  {node.name} ({node.qualified_op}):")
            lines += [f"    {s}" for s in table.of(node.name)]
    return "\n".join(lines)


PASS = Pass(
    name="strategies",
    run=run,
    requires=("graph",),
    provides=("strategies",),
    description="legal shardings per op (replicate, batch, sequence, column/row, heads, "
    "vocab, channels, experts) and the resharding each implies",
    dump=dump,
)
