"""Playing a choice of strategies through the graph: followers derived, reshards listed.

:func:`derive` gives an elementwise op or a view (a *follower*) the layout its inputs
imply; :func:`resolve` walks the graph in order with the partitioner's choices and lists
every reshard each edge needs, which is what insert_comm emits and the cost model times.
Split from :mod:`shardc.strategy.table` because it is the part the partitioner runs over
and over, and the table's enumeration is the part the pass runs once.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from shardc.ir import Graph, Node
from shardc.sharding import Reshard, Strategy, TensorSharding, reshard
from shardc.strategy.rules import Loop, OpDims, sharding
from shardc.vocabulary import StrategyName as S


class Table(Protocol):
    """What :func:`resolve` reads of a :class:`~shardc.strategy.table.StrategyTable`
    (a protocol, so the table can call this module and this module not import it).
    """

    @property
    def free(self) -> frozenset[str]: ...
    @property
    def pinned(self) -> Mapping[str, TensorSharding]: ...
    @property
    def follows(self) -> frozenset[str]: ...
    @property
    def by_node(self) -> Mapping[str, tuple[Strategy, ...]]: ...
    def derive(
        self,
        node: Node,
        inputs: Sequence[TensorSharding | None],
        graph: Graph,
        axis_sizes: Mapping[str, int] | None = None,
    ) -> Strategy:
        """A follower's strategy given its inputs' layouts."""
        ...


# -- followers ------------------------------------------------------------------------------
def _loop_at(dims: OpDims, i: int, d: int) -> Loop | None:
    return next((lp for lp in dims.loops if lp.ins[i] == d), None)


def _fits(graph: Graph, node: Node, loop: Loop, k: int) -> bool:
    """Every dim the loop maps, and every count it states, divides by ``k``."""
    pairs = [*zip(node.inputs, loop.ins, strict=True), *zip(node.outputs, loop.outs, strict=True)]
    for name, d in pairs:
        t = graph.values[name].type if name and d is not None else None
        size = t.shape[d] if t is not None and t.shape is not None and d is not None else None
        if isinstance(size, int) and size % k:
            return False
    return all(n % k == 0 for _, n in loop.divides)


def _partials(
    linear: str, inputs: Sequence[TensorSharding | None], data: list[int], taken: set[str]
) -> tuple[set[int], str | None]:
    """Which inputs stay partial and the output's partial axis, by how the op is linear."""
    held = [i for i in data if inputs[i] is not None]
    part = [i for i in held if inputs[i].partial]  # type: ignore[union-attr]
    axes = {inputs[i].partial for i in part}  # type: ignore[union-attr]
    if len(axes) != 1 or axes & taken:
        return set(), None
    axis = axes.pop()
    if linear == "all" and part == held:
        return set(data), axis
    if (linear == "one" and len(part) == 1) or (linear == "first" and part == [0]):
        return set(part), axis
    return set(), None


def derive(
    node: Node,
    dims: OpDims,
    graph: Graph,
    inputs: Sequence[TensorSharding | None],
    axis_sizes: Mapping[str, int] | None = None,
) -> Strategy:
    """A follower's strategy given its inputs' layouts (None: free to take any).

    Each axis splitting an input dim keeps splitting the loop that dim belongs to, if the
    loop is parallel (and, given ``axis_sizes``, divides evenly); the first input to claim
    an axis or a loop wins. Splits on fixed dims are dropped, so the input reshards (a
    gather). Partial sums pass when the op is linear in them (Add of partials, a partial
    times a whole value, any view); otherwise they are reduced.
    """
    data = [i for i, v in enumerate(node.inputs) if v and i not in dims.args]
    assign: dict[str, Loop] = {}
    for i in data:
        s = inputs[i] if i < len(inputs) else None
        for d, axis in enumerate(s.dims if s is not None else ()):
            loop = _loop_at(dims, i, d) if axis and axis not in assign else None
            if axis is None or loop is None or loop.kind != "parallel" or loop in assign.values():
                continue
            if axis_sizes is None or _fits(graph, node, loop, axis_sizes.get(axis, 1)):
                assign[axis] = loop
    padded = [inputs[i] if i < len(inputs) else None for i in range(len(node.inputs))]
    keep, partial = _partials(dims.linear, padded, data, set(assign))

    def layout(name: str, dim_of: Mapping[str, int | None], p: str | None) -> TensorSharding | None:
        t = graph.values[name].type
        shape = t.shape if t is not None else None
        split = {d: a for a, d in dim_of.items() if d is not None and shape and shape[d] != 1}
        return sharding(shape, split, p)

    ins = tuple(
        layout(v, {a: lp.ins[i] for a, lp in assign.items()}, partial if i in keep else None)
        if i in data
        else None
        for i, v in enumerate(node.inputs)
    )
    outs = tuple(
        layout(v, {a: lp.outs[j] for a, lp in assign.items()}, partial) if v else None
        for j, v in enumerate(node.outputs)
    )
    notes = tuple(dict.fromkeys(n for lp in assign.values() for n in lp.notes))
    return Strategy(S.FOLLOW, ins, outs, notes=notes)


# -- playing a choice through the graph -----------------------------------------------------
@dataclass(frozen=True)
class ReshardStep:
    """One reshard on the edge from ``value`` into ``consumer``."""

    value: str
    consumer: str
    step: Reshard


@dataclass(frozen=True)
class Resolution:
    """A full assignment: each node's strategy, each value's layout, every reshard."""

    strategies: Mapping[str, Strategy]
    layouts: Mapping[str, TensorSharding | None]
    """The producer's layout of each value; None for free values."""
    reshards: tuple[ReshardStep, ...]

    @property
    def collectives(self) -> tuple[ReshardStep, ...]:
        """Reshards that communicate, then collectives strategies perform themselves."""
        own = tuple(ReshardStep("", n, r) for n, s in self.strategies.items() for r in s.comm)
        return tuple(r for r in self.reshards if r.step.communicates) + own


def pinned_layouts(
    graph: Graph, table: Table, axis_sizes: Mapping[str, int] | None
) -> dict[str, TensorSharding]:
    """The table's pinned edge layouts that hold under ``axis_sizes``: a split dim must
    divide by its axis' degree, else the value stays whole (KV heads fewer than TP).
    """
    out = {}
    for v, layout in table.pinned.items():
        t = graph.values[v].type
        if t is None or t.shape is None:
            continue
        ok = all(
            a is None or (isinstance(n, int) and n % (axis_sizes or {}).get(a, 1) == 0)
            for n, a in zip(t.shape, layout.dims, strict=True)
        )
        if ok and (axis_sizes is None or all(a in axis_sizes for a in layout.split_axes)):
            out[v] = layout
    return out


def _sources(
    v: str, layouts: Mapping[str, TensorSharding | None], made: Mapping[str, list[TensorSharding]]
) -> list[TensorSharding]:
    """Layouts of ``v`` on hand: the producer's, then those earlier reshards made."""
    first = layouts.get(v)
    return ([first] if first is not None else []) + list(made.get(v, ()))


def _cheapest(sources: list[TensorSharding], want: TensorSharding) -> tuple[Reshard, ...]:
    """The reshard from whichever layout on hand needs the fewest collectives."""
    options = [reshard(src, want) for src in sources]
    return min(options, key=lambda steps: sum(s.communicates for s in steps))


def _follower_input(have: list[TensorSharding]) -> TensorSharding | None:
    """What a follower sees of a value: a reduced copy beats the partial original."""
    if not have:
        return None
    reduced = [h for h in have if h.partial is None]
    return reduced[0] if have[0].partial and reduced else have[0]


def resolve(
    graph: Graph,
    table: Table,
    chosen: Mapping[str, Strategy],
    axis_sizes: Mapping[str, int] | None = None,
) -> Resolution:
    """Play ``chosen`` (node name → strategy) through the graph in order and list the
    reshards each edge needs.

    Unnamed followers derive from their inputs; unnamed others replicate; naming a
    follower pins it (the residual Add on ``seq_tp`` for Megatron-SP). A value resharded
    once to a layout serves every later consumer wanting it, and a follower reading a
    partial value that was already reduced for someone else reads the reduced copy.
    """
    layouts: dict[str, TensorSharding | None] = dict.fromkeys(table.free)
    for v, layout in pinned_layouts(graph, table, axis_sizes).items():
        if v in layouts:  # a pinned input arrives split; a pinned output is resharded at
            layouts[v] = layout  # the edge by the lowering (a local slice at most)
    made: dict[str, list[TensorSharding]] = defaultdict(list)
    picked: dict[str, Strategy] = {}
    steps: list[ReshardStep] = []
    for node in graph.nodes:
        strat = chosen.get(node.name)
        if strat is None and node.name in table.follows:
            seen = [_follower_input(_sources(v, layouts, made)) if v else None for v in node.inputs]
            strat = table.derive(node, seen, graph, axis_sizes)
        strat = strat or table.by_node[node.name][0]
        picked[node.name] = strat
        for i, v in enumerate(node.inputs):
            want = strat.inputs[i] if i < len(strat.inputs) else None
            have = _sources(v, layouts, made) if v else []
            if want is None or not have or want in have:
                continue
            steps += [ReshardStep(v, node.name, r) for r in _cheapest(have, want)]
            made[v].append(want)
        free = (
            node.name in table.follows
            and node.name not in chosen
            and all(v in layouts and layouts[v] is None for v in node.present_inputs)
        )
        for j, out in enumerate(node.outputs):
            if out:
                layouts[out] = None if free else strat.outputs[j]
    return Resolution(picked, layouts, tuple(steps))
