"""Which strategy each op takes inside a tensor-parallel stage: Megatron's pairing.

Why a rule and not a variable per op: in a transformer block the cheap choice is known
(Shoeybi et al. 2019): a weight MatMul that feeds the attention core or the MLP's
nonlinearity is column-parallel, the core is split by heads, the MatMul after it is
row-parallel, so each pair costs one all-reduce in the forward pass and nothing else
moves. The rule below finds those pairs from the graph's shape alone (no names): a
product is *row* when everything it reads comes, through followers only, from ops
already split by heads or columns; *column* when everything it feeds is split by heads
or is another product. The embedding and the LM head go vocab-parallel when the degree
divides the vocabulary. Mixture-of-experts layers go expert parallel over the same group
(:mod:`shardc.partition.experts`). With sequence parallelism (Korthikanti et al. 2022)
the ops TP leaves replicated between a row product's output and the next column input
(norms, residual adds, dropout) run on ``seq_tp``, a sequence shard per device, so each
all-reduce becomes a reduce-scatter and an all-gather. What the rule cannot split stays
replicated, and
:meth:`StrategyTable.resolve` prices every reshard the choice implies, so a graph that
is not a transformer gets a correct (if unambitious) plan rather than a wrong one.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from shardc.ir import Graph, Node
from shardc.partition.experts import ExpertRule
from shardc.sharding import Strategy
from shardc.strategy.table import StrategyTable

PRODUCTS = {
    "MatMul": 1,
    "Gemm": 1,
    "MatMulInteger": 1,
    "QLinearMatMul": 3,
    "com.microsoft::MatMulNBits": 1,
}
"""Products with a weight operand, and its input position: quantized ones included."""


def weighted_products(graph: Graph, table: StrategyTable) -> Iterator[Node]:
    """Product nodes whose weight operand is a weight (or computed from weights)."""
    for n in graph.nodes:
        w = PRODUCTS.get(n.qualified_op)
        if w is not None and len(n.inputs) > w and n.inputs[w] in table.free:
            yield n


def reachable(graph: Graph, table: StrategyTable, node: Node, down: bool) -> set[str]:
    """Non-follower nodes reached from ``node`` through followers only."""
    seen: set[str] = set()
    todo, found = [node], set()
    while todo:
        n = todo.pop()
        nxt = (
            [c for o in n.outputs if o for c in graph.consumers(o)]
            if down
            else [p for i in n.present_inputs if (p := graph.producer(i)) is not None]
        )
        for m in nxt:
            if m.name in seen:
                continue
            seen.add(m.name)
            (todo.append(m) if m.name in table.follows else found.add(m.name))
    return found


def _near(graph: Graph, node: str, down: bool) -> list[str]:
    """The node's consumers (``down``) or producers, by name."""
    n = graph.node(node)
    if down:
        return [c.name for o in n.outputs if o for c in graph.consumers(o)]
    return [p.name for i in n.present_inputs if (p := graph.producer(i)) is not None]


def _closure(graph: Graph, starts: set[str], inside: set[str], down: bool) -> set[str]:
    """``starts`` and every node reached from them through nodes of ``inside`` only."""
    seen, todo = set(starts), list(starts)
    while todo:
        for m in _near(graph, todo.pop(), down):
            if m in inside and m not in seen:
                seen.add(m)
                todo.append(m)
    return seen


class MegatronRule:
    """The rule for one graph: who feeds whom is found once, then any degree is cheap."""

    def __init__(self, graph: Graph, table: StrategyTable) -> None:
        self.graph, self.table = graph, table
        self.products = list(weighted_products(graph, table))
        self.names = {n.name for n in self.products}
        self.before = {n.name: self._reached(n, down=False) for n in self.products}
        self.after = {n.name: self._reached(n, down=True) for n in self.products}
        self.candidates = [
            n
            for n in graph.nodes
            if n.name not in table.follows
            and any(s.name in ("heads", "vocab") for s in table.of(n.name))
        ]
        self.experts = ExpertRule(graph, table.free)

    def _reached(self, node: Node, down: bool) -> set[str]:
        """The ops a product reads from (or feeds) through followers, looking through the
        dynamic quantization in front of an int8 product: it needs its input whole (one
        scale for the tensor) but is cheap, so the products on either side of it may still
        pair as column and row parallel (at the price of gathering its input). Only the
        quantized data is followed; a quantizer reached for its scale is dropped.
        """
        graph, table = self.graph, self.table
        found = reachable(graph, table, node, down=down)
        seen: set[str] = set()
        while todo := sorted(
            n for n in found if graph.node(n).op_type == "DynamicQuantizeLinear" and n not in seen
        ):
            for name in todo:
                seen.add(name)
                found.discard(name)
                n = graph.node(name)
                if not down:  # the product's own quantized input: look behind it
                    if n.outputs[0] in node.inputs:
                        found |= reachable(graph, table, n, down=False)
                    continue
                for c in graph.consumers(n.outputs[0]):  # the data, not its scale
                    follows = c.name in table.follows
                    found |= reachable(graph, table, c, down=True) if follows else {c.name}
        return found - seen

    def choose(
        self, sizes: Mapping[str, int], sequence_parallel: bool = False
    ) -> dict[str, Strategy]:
        """Node name -> strategy for a tensor-parallel group of ``sizes['tp']`` devices,
        the replicated stretches split along the sequence when ``sequence_parallel``.
        """
        if sizes.get("tp", 1) <= 1:
            return {}
        graph, table = self.graph, self.table
        chosen: dict[str, Strategy] = {}
        for node in self.candidates:
            legal = {s.name: s for s in table.legal(node, graph, sizes)}
            if "heads" in legal:
                chosen[node.name] = legal["heads"]
            elif node.op_type == "Gather" and "vocab" in legal:
                chosen[node.name] = legal["vocab"]
        tp_region = {n for n, s in chosen.items() if s.name in ("heads", "column")}
        for node in self.products:
            before, after = self.before[node.name], self.after[node.name]
            legal = {s.name: s for s in table.legal(node, graph, sizes)}
            if before and before <= tp_region and "row" in legal:
                chosen[node.name] = legal["row"]
            elif after and after <= tp_region | self.names and "column" in legal:
                chosen[node.name] = legal["column"]
                tp_region.add(node.name)
            elif not after and "vocab" in legal:
                chosen[node.name] = legal["vocab"]
        for node in self.products:  # stacked expert weights [E, in, out]: whole experts
            legal = {s.name: s for s in table.legal(node, graph, sizes)}  # per rank (EP = TP)
            if "experts" in legal:
                chosen[node.name] = legal["experts"]
        chosen.update(self.experts.choose(sizes))
        if sequence_parallel:
            chosen.update(sequence_shards(graph, table, chosen, sizes))
        return chosen


def sequence_shards(
    graph: Graph, table: StrategyTable, chosen: Mapping[str, Strategy], sizes: Mapping[str, int]
) -> dict[str, Strategy]:
    """The ops Megatron-SP runs on sequence shards, pinned to ``seq_tp``.

    Found from the graph's structure after playing ``chosen`` through it: the ops left
    replicated that lie downstream of a value TP all-reduces (a row product's or the
    vocab embedding's partial sum) and upstream of a split op that reads them whole (the
    next column input, the LM head), both through replicated ops only. That is the
    residual stream with its norms, adds and dropout, whatever the export calls them.
    The mask and position arithmetic, reached from neither, stays whole, and so does a
    product TP cannot split (grouped K/V heads fewer than the degree) with what follows
    it up to the heads. Ops in the stretch with no ``seq_tp`` strategy (a view that
    cannot split) derive their layout from their inputs as usual.
    """
    base = table.resolve(graph, chosen, sizes)
    whole = {n for n, s in base.strategies.items() if s.is_replicated}
    starts = {s.consumer for s in base.collectives if s.step.op == "all_reduce"}
    down = _closure(graph, starts & whole, whole, down=True)
    ends = set()  # whole ops feeding a split op that reads them whole: a column input
    for name, strat in base.strategies.items():
        if name in whole:
            continue
        for i, v in enumerate(graph.node(name).inputs):
            p = graph.producer(v) if v else None
            lay = strat.inputs[i] if i < len(strat.inputs) else None
            if p is not None and p.name in whole and lay is not None and lay.is_replicated:
                ends.add(p.name)
    up = _closure(graph, ends, whole, down=False)
    out: dict[str, Strategy] = {}
    for node in graph.nodes:
        if node.name in down and node.name in up:
            legal = {s.name: s for s in table.legal(node, graph, sizes)}
            if "seq_tp" in legal:
                out[node.name] = legal["seq_tp"]
    return out


def megatron_choice(
    graph: Graph, table: StrategyTable, sizes: Mapping[str, int], sequence_parallel: bool = False
) -> dict[str, Strategy]:
    """Node name -> strategy for a tensor-parallel group of ``sizes['tp']`` devices."""
    return MegatronRule(graph, table).choose(sizes, sequence_parallel)
