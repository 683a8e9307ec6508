"""Which strategy each op takes inside a tensor-parallel stage when every op is split.

Why a second rule beside Megatron's: Megatron's pairing splits weight products and the
attention core and leaves the rest whole, which is right for transformers and does
nothing for a convolution net or a graph of one op. The *split* rule (``--pin
rule=split``) divides the work of every op it legally can over the tensor-parallel
group: the batch first (each rank runs the op on its rows, the classic data split
brought inside the group), else a channel, column, head or any other parallel dim the
op's rule offers, else a contracted dim (partial sums, reduced where read). An op whose
rule offers nothing runs whole on every rank. Graph inputs are sliced where they enter,
outputs gathered where they leave, and :meth:`StrategyTable.resolve` prices and emit
writes every reshard in between.

Strategies are taken from the ``strategies`` pass, so a split is legal exactly when that
pass says so; a batch or sequence split there names the ``dp`` or ``sp`` axis and is
moved onto ``tp`` here. Ops are chosen greedily in graph order against the layouts
already chosen, preferring choices that need no collective, and never one that needs a
reshard the emitter cannot write (an all-to-all between two split dims).
"""

from __future__ import annotations

from collections.abc import Mapping

from shardc.ir import Graph, Node
from shardc.partition.megatron import MegatronRule
from shardc.sharding import Strategy, TensorSharding, legal_for, reshard
from shardc.strategy.table import StrategyTable

_MOVABLE = frozenset({"dp", "sp"})
"""Axes whose splits can run over the tensor-parallel group instead."""


def on_tp(strategy: Strategy) -> Strategy | None:
    """``strategy`` with its one axis moved onto ``tp``; None if it uses several, or
    performs collectives of its own (an expert all-to-all).
    """
    axes = strategy.axes
    if len(axes) != 1 or strategy.comm:
        return None
    (axis,) = axes
    if axis == "tp":
        return strategy
    if axis not in _MOVABLE:
        return None

    def move(s: TensorSharding | None) -> TensorSharding | None:
        if s is None:
            return None
        dims = tuple("tp" if a == axis else a for a in s.dims)
        return TensorSharding(dims, "tp" if s.partial == axis else s.partial)

    return Strategy(
        strategy.name,
        tuple(move(s) for s in strategy.inputs),
        tuple(move(s) for s in strategy.outputs),
        divides=tuple(("tp" if a == axis else a, n) for a, n in strategy.divides),
        notes=strategy.notes,
    )


def _preference(original: Strategy, moved: Strategy) -> int:
    """0 for the batch split, 1 for other splits, 2 when outputs hold partial sums."""
    if any(s is not None and s.partial for s in moved.outputs):
        return 2
    return 0 if original.axes == {"dp"} else 1


class SplitRule:
    """The split rule for one graph; :meth:`choose` answers for any degree."""

    def __init__(self, graph: Graph, table: StrategyTable) -> None:
        self.graph, self.table = graph, table
        self.whole = read_whole(graph, table)

    def choose(self, sizes: Mapping[str, int]) -> dict[str, Strategy]:
        """Node name -> strategy for a tensor-parallel group of ``sizes['tp']`` devices."""
        if sizes.get("tp", 1) <= 1:
            return {}
        graph, table = self.graph, self.table
        constants = table.free - set(graph.inputs)
        layouts: dict[str, TensorSharding | None] = {}
        chosen: dict[str, Strategy] = {}
        for node in graph.nodes:
            if all(v in constants for v in node.present_inputs):
                continue  # computed from weights and constants: nothing to divide
            # a follower left unnamed would derive its layout; named, it is pinned whole
            picked = chosen[node.name] = self._best(node, layouts, sizes) or table.of(node.name)[0]
            for out, s in zip(node.outputs, picked.outputs, strict=False):
                if out:
                    layouts[out] = s
        return chosen

    def _best(
        self, node: Node, layouts: Mapping[str, TensorSharding | None], sizes: Mapping[str, int]
    ) -> Strategy | None:
        """The preferred legal split of ``node``, fewest collectives first."""
        ranked: list[tuple[int, int, int, Strategy]] = []
        for index, original in enumerate(self.table.of(node.name)):
            s = on_tp(original)
            if (
                s is None
                or not legal_for(s, node, self.graph, sizes)
                or not _static_operands(s, node, self.graph)
                or any(
                    o in self.whole and x is not None and not x.is_replicated
                    for o, x in zip(node.outputs, s.outputs, strict=False)
                )
            ):
                continue
            moves = _collectives(node, s, layouts)
            if moves is not None:
                ranked.append((_preference(original, s), moves, index, s))
        return min(ranked, key=lambda t: t[:3])[3] if ranked else None


def read_whole(graph: Graph, table: StrategyTable) -> frozenset[str]:
    """Values some node reads whole, outside the layouts strategies state: arguments
    (a Reshape's shape, a Slice's starts, computed at run time) and what control-flow
    bodies capture from the enclosing graph. Their producers must leave them whole.
    """
    out: set[str] = set()
    for node in graph.nodes:
        args = table.dims[node.name].args
        out.update(v for i, v in enumerate(node.inputs) if v and i in args)
        for body in node.subgraphs:
            out.update(_captured(body))
        if node.op_type == "Scan":
            out |= _upstream(graph, node)
    return frozenset(out)


def _upstream(graph: Graph, node: Node) -> set[str]:
    """Every value a node depends on, captures included. A Scan needs all of them whole
    and in its own onnxruntime run (no collective before it): the runtime cuts runs at
    collectives, and onnxruntime must infer the body's per-iteration output shapes,
    which it cannot when they come from values that arrive as plain run inputs.
    """
    seen: set[str] = set()
    todo = [*node.present_inputs, *(v for b in node.subgraphs for v in _captured(b))]
    while todo:
        v = todo.pop()
        if v in seen:
            continue
        seen.add(v)
        producer = graph.producer(v)
        if producer is not None:
            todo += [*producer.present_inputs]
            todo += [c for b in producer.subgraphs for c in _captured(b)]
    return seen


def _captured(body: Graph) -> set[str]:
    """Names a body (or a body inside it) reads from outside itself."""
    names = set(body.outer)
    for node in body.nodes:
        for inner in node.subgraphs:
            names |= _captured(inner) - set(body.values)
    return names


def _static_operands(s: Strategy, node: Node, graph: Graph) -> bool:
    """Every operand of a split node has a static shape, arguments aside.

    A dim known only at run time may be the split dim (emit could not cut it) or may
    line up with it under broadcasting while the rule, unable to compare sizes, left it
    whole; an operand of unknown rank has no layout at all, like an argument. Either
    way the split could be wrong, so it is not offered.
    """
    pairs = [
        *zip(node.inputs, s.inputs, strict=False),
        *zip(node.outputs, s.outputs, strict=False),
    ]
    for name, layout in pairs:
        if not name:
            continue
        t = graph.values[name].type
        if layout is None and (t is None or t.shape is None):
            return False
        if layout is not None and (t is None or not t.is_static):
            return False
    return True


def _collectives(
    node: Node, s: Strategy, layouts: Mapping[str, TensorSharding | None]
) -> int | None:
    """Collectives needed to feed ``node`` under ``s``; None when one cannot be written."""
    count = 0
    for v, want in zip(node.inputs, s.inputs, strict=False):
        have = layouts.get(v) if v else None
        if want is None or have is None:
            continue  # read whole as an argument, or free (a weight, a graph input)
        if have.rank != want.rank:
            return None
        steps = reshard(have, want)
        if any(step.op == "all_to_all" for step in steps):
            return None
        count += sum(step.communicates for step in steps)
    return count


def tp_rule(graph: Graph, table: StrategyTable, name: str | None) -> MegatronRule | SplitRule:
    """The rule ``name`` of :data:`~shardc.partition.options.TP_RULES` for ``graph``
    (Megatron's pairing when None).
    """
    return SplitRule(graph, table) if name == "split" else MegatronRule(graph, table)
