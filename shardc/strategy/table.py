"""The legal shardings of every node: the table the ``strategies`` pass fills.

For each node the rule of its op (:mod:`shardc.strategy.rules`) describes its dims
as loops; this module turns them into :class:`~shardc.sharding.Strategy` lists:

1. **replicate**, always legal;
2. one strategy per splittable loop: ``dp`` for a loop over the batch, ``sp`` for one over
   the sequence (and ``seq_tp``, the sequence over the tensor-parallel group, for norms
   and reductions: Megatron sequence parallelism), ``tp``/``ep`` where the rule names the
   axis (column, row, vocab, heads, channels, experts);
3. the rule's hand-made extras (expert all-to-all, KV heads kept whole);
4. every non-batch strategy combined with the batch split (``batch+column``).

Which dims are batch and sequence is not guessed from names: graph inputs carry the labels
(dim 0 of every activation input is the batch; dim 1 of token ids ``[B, S]`` or of
``[B, S, H]`` is the sequence) and the loops carry them through every op, so a reshape to
``[B·S, H]`` keeps the batch on its leading dim and drops the sequence. A batched matmul
between activations labels its unlabelled batch dims ``heads``, and ops downstream offer
``tp`` on them.

Elementwise ops and views are **followers**: their layout is a function of their inputs'
(:func:`~shardc.strategy.resolve.derive`), so the partitioner adds no variables for
them; their listed strategies only show what can flow through.
:func:`~shardc.strategy.resolve.resolve` plays a choice for the other nodes through the
graph and returns every reshard it implies: what insert_comm will emit and the cost
model will time. Strategies say which axis splits which dim, never how many
devices: :meth:`StrategyTable.legal` filters them for actual degrees.

Why here and not in ``passes/``: the partitioner reads this table (and plays choices
through it) as much as the pass builds it, and the solver sits below the passes; the
pass itself (:mod:`shardc.passes.strategies`) only runs :func:`build_table`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from shardc.ir import Graph, Node, Value
from shardc.sharding import Strategy, TensorSharding, combine, legal_for
from shardc.strategy.resolve import Resolution, derive, resolve
from shardc.strategy.rules import (
    RULES,
    Ctx,
    Loop,
    OpDims,
    param_values,
    sharding,
)
from shardc.vocabulary import StrategyName as S

BATCH, SEQ, HEADS = S.BATCH, S.SEQ, S.HEADS
_LABEL_AXIS: dict[str, str] = {BATCH: "dp", SEQ: "sp", HEADS: "tp"}

Labels = Mapping[str, tuple[str | None, ...]]


@dataclass(frozen=True)
class StrategyTable:
    """What the pass found, per node; frozen so a plan can point into it."""

    by_node: Mapping[str, tuple[Strategy, ...]]
    """Legal strategies of every node, replicate first."""
    follows: frozenset[str]
    """Nodes whose layout derives from their inputs' (elementwise ops, views)."""
    unknown_ops: tuple[str, ...]
    """Op types with no rule: replicated, and warned about."""
    dims: Mapping[str, OpDims]
    """The rule's loops of each node, which :func:`derive` reads."""
    labels: Labels
    """Batch / sequence / heads labels of each value's dims."""
    free: frozenset[str]
    """Values any layout of which costs nothing: weights, constants, what is computed from
    them alone, and graph inputs (the data loader hands each rank its part)."""
    pinned: Mapping[str, TensorSharding] = field(default_factory=dict)
    """Graph inputs and outputs held in a fixed layout at the program's edge: a serving
    phase's KV cache, split along its heads axis (see :func:`kv_pins`)."""

    def of(self, node: str) -> tuple[Strategy, ...]:
        """Strategies of ``node``."""
        return self.by_node[node]

    def named(self, node: str, name: str) -> Strategy:
        """The strategy of ``node`` called ``name`` (KeyError listing the names if absent)."""
        for s in self.by_node[node]:
            if s.name == name:
                return s
        raise KeyError(f"{node} has no strategy {name!r}: {[s.name for s in self.of(node)]}")

    @property
    def variables(self) -> tuple[str, ...]:
        """Nodes the partitioner chooses for: not followers, more than one strategy."""
        return tuple(n for n, s in self.by_node.items() if n not in self.follows and len(s) > 1)

    def legal(
        self, node: Node, graph: Graph, axis_sizes: Mapping[str, int]
    ) -> tuple[Strategy, ...]:
        """Strategies of ``node`` that fit these axis sizes (replicate always does)."""
        return tuple(s for s in self.by_node[node.name] if legal_for(s, node, graph, axis_sizes))

    def derive(
        self,
        node: Node,
        inputs: Sequence[TensorSharding | None],
        graph: Graph,
        axis_sizes: Mapping[str, int] | None = None,
    ) -> Strategy:
        """A follower's strategy given its inputs' layouts (see :func:`derive`)."""
        return derive(node, self.dims[node.name], graph, inputs, axis_sizes)

    def resolve(
        self,
        graph: Graph,
        chosen: Mapping[str, Strategy],
        axis_sizes: Mapping[str, int] | None = None,
    ) -> Resolution:
        """Every value's layout and every reshard, given choices (see :func:`resolve`)."""
        return resolve(graph, self, chosen, axis_sizes)


# -- labels ---------------------------------------------------------------------------------
def input_labels(value: Value) -> tuple[str | None, ...]:
    """Dim 0 of an activation input is the batch; dim 1 of ids ``[B, S]`` or of ``[B, S, H]``
    is the sequence (images ``[N, C, H, W]`` get the batch only).
    """
    t = value.type
    if t is None or t.shape is None or not t.shape:
        return ()
    labels: list[str | None] = [BATCH] + [None] * (len(t.shape) - 1)
    if (len(t.shape) == 2 and not t.dtype.is_float) or len(t.shape) == 3:
        labels[1] = SEQ
    return tuple(labels)


def loop_label(loop: Loop, node: Node, labels: Labels) -> str | None:
    """The label a loop carries: the first its input dims have, else ``heads`` for the
    batch loops of a product between activations.
    """
    for i, d in enumerate(loop.ins):
        lab = labels.get(node.inputs[i]) if d is not None else None
        if lab and d is not None and d < len(lab) and lab[d]:
            return lab[d]
    return HEADS if loop.name == HEADS else None


def _label_outputs(ctx: Ctx, dims: OpDims, labels: dict[str, tuple[str | None, ...]]) -> None:
    for j, out in enumerate(ctx.node.outputs):
        shape = ctx.out_shape(j)
        if not out or shape is None:
            continue
        lab: list[str | None] = [None] * len(shape)
        for loop in dims.loops:
            d = loop.outs[j]
            if d is not None and d < len(lab):
                lab[d] = loop_label(loop, ctx.node, labels)
        labels[out] = tuple(lab)


# -- enumeration ----------------------------------------------------------------------------
def replicate(ctx: Ctx, dims: OpDims) -> Strategy:
    """Every data operand whole on every rank; arguments read whole (None)."""
    node = ctx.node
    ins = tuple(
        None if i in dims.args or not node.inputs[i] else sharding(ctx.in_shape(i), {})
        for i in range(ctx.n_in)
    )
    outs = tuple(sharding(ctx.out_shape(j), {}) for j in range(len(node.outputs)))
    return Strategy(S.REPLICATE, ins, outs)


def from_loop(ctx: Ctx, dims: OpDims, loop: Loop, axis: str, name: str) -> Strategy:
    """The strategy splitting ``loop`` along ``axis`` (partial outputs for a sum loop)."""
    summed = axis if loop.kind == "sum" else None

    def layout(shape: tuple | None, d: int | None, partial: str | None) -> TensorSharding | None:
        split = {d: axis} if d is not None and shape is not None and shape[d] != 1 else {}
        return sharding(shape, split, partial)

    ins = tuple(
        None
        if i in dims.args or not ctx.node.inputs[i]
        else layout(ctx.in_shape(i), loop.ins[i], summed if i in loop.partial_ins else None)
        for i in range(ctx.n_in)
    )
    outs = tuple(
        layout(ctx.out_shape(j), loop.outs[j], summed) for j in range(len(ctx.node.outputs))
    )
    return Strategy(name, ins, outs, divides=loop.divides, notes=loop.notes)


def _trivial(ctx: Ctx, loop: Loop) -> bool:
    """True when every dim the loop maps has size 1 (nothing to split)."""
    sizes = [s[d] for i, d in enumerate(loop.ins) if d is not None and (s := ctx.in_shape(i))]
    sizes += [s[d] for j, d in enumerate(loop.outs) if d is not None and (s := ctx.out_shape(j))]
    return all(x == 1 for x in sizes)


def _offers(loop: Loop, label: str | None, dims: OpDims) -> list[tuple[str, str]]:
    """(name, axis) of each split a loop is offered with."""
    if loop.axis is not None:
        return [(loop.name, loop.axis)]
    if label in _LABEL_AXIS:
        offers = [(label, _LABEL_AXIS[label])]
        if label == SEQ and (dims.seq_tp or dims.follows):
            offers.append((S.SEQ_TP, "tp"))
        return offers
    if loop.unlabeled or dims.follows:
        return [(loop.name if loop.unlabeled else f"tp@{loop.name}", loop.unlabeled or "tp")]
    return []


def node_strategies(ctx: Ctx, dims: OpDims, labels: Labels) -> tuple[Strategy, ...]:
    """Replicate, each offered loop split, the extras, and the batch split combined in."""
    singles: list[Strategy] = []
    for loop in dims.loops:
        if not loop.splittable or _trivial(ctx, loop):
            continue
        for name, axis in _offers(loop, loop_label(loop, ctx.node, labels), dims):
            singles.append(from_loop(ctx, dims, loop, axis, name))
    singles += dims.extra
    if not dims.follows:
        batch = [s for s in singles if s.axes == {"dp"}]
        singles += [
            c
            for b in batch
            for s in singles
            if "dp" not in s.axes
            if (c := combine(b, s)) is not None
        ]
    seen: dict[tuple, Strategy] = {}
    names: dict[str, int] = defaultdict(int)
    for s in [replicate(ctx, dims), *singles]:
        key = (s.inputs, s.outputs, s.comm)
        if key not in seen:
            names[s.name] += 1
            n = names[s.name]
            seen[key] = s if n == 1 else Strategy(f"{s.name}#{n}", *key, s.divides, s.notes)
    return tuple(seen.values())


# -- the table ----------------------------------------------------------------------------
def _dims_of(ctx: Ctx) -> tuple[OpDims, str | None]:
    """The rule's answer, or a replicate-only stand-in and why."""
    fn = RULES.get(ctx.node.qualified_op)
    if fn is None or ctx.node.subgraphs:
        return OpDims(known=False), None
    try:
        return fn(ctx), None
    except (ValueError, IndexError, TypeError, KeyError, AssertionError) as exc:
        return OpDims(known=False), f"{type(exc).__name__}: {exc}"


KV_METADATA = "shardc.kv_cache"
"""Model metadata naming a serving phase graph's KV-cache inputs and outputs (JSON with
``entries``: per cached tensor its ``past`` and ``present`` names and ``heads_axis``),
written by :mod:`shardc.synth.cache` and :mod:`shardc.frontend.kv_export`."""


def kv_pins(graph: Graph, metadata: Sequence[tuple[str, str]]) -> dict[str, TensorSharding]:
    """The KV-cache values of a serving phase graph, split along their heads axis.

    Why pinned: a decode step reads the cache the prefill (or the previous step) wrote on
    the same rank. Were the cache a free graph input, the partitioner could pick a
    replicated attention and the lowering would gather the cache whole at every step;
    pinned, each rank's program reads and writes only its heads (contiguous blocks, as the
    weights' heads are split), so rank r's present cache is rank r's next past cache. An
    entry without a heads axis (MLA's latent) is not pinned: it stays whole.
    """
    record = dict(metadata).get(KV_METADATA)
    if record is None:
        return {}
    out: dict[str, TensorSharding] = {}
    for entry in json.loads(record).get("entries", ()):
        axis = entry.get("heads_axis")
        for name in (entry.get("past"), entry.get("present")):
            v = graph.values.get(name) if name else None
            if axis is None or v is None or v.type is None or v.type.shape is None:
                continue
            out[name] = TensorSharding.split(len(v.type.shape), axis, "tp")
    return out


def build_table(
    graph: Graph, opset: int = 18, pinned: Mapping[str, TensorSharding] | None = None
) -> tuple[StrategyTable, list[str]]:
    """Strategies of every node of ``graph``, and the warnings to report; ``pinned``:
    the layouts fixed at the graph's edge (:func:`kv_pins`).
    """
    params = param_values(graph)
    labels: dict[str, tuple[str | None, ...]] = {
        v: input_labels(graph.values[v]) for v in graph.inputs if v not in params
    }
    by_node: dict[str, tuple[Strategy, ...]] = {}
    all_dims: dict[str, OpDims] = {}
    unknown: dict[str, list[str]] = defaultdict(list)
    limited: dict[tuple[str, str], list[str]] = defaultdict(list)
    failed: list[str] = []
    for node in graph.nodes:
        ctx = Ctx(node, graph, opset, params, labels)
        dims, error = _dims_of(ctx)
        if error:
            failed.append(
                f"sharding rule for {node.qualified_op} failed on node {node.name!r} "
                f"({error}): replicated"
            )
        elif not dims.known:
            unknown[node.qualified_op].append(node.name)
        elif dims.limit:
            limited[(node.qualified_op, dims.limit)].append(node.name)
        all_dims[node.name] = dims
        by_node[node.name] = (
            node_strategies(ctx, dims, labels) if dims.known else (replicate(ctx, dims),)
        )
        _label_outputs(ctx, dims, labels)
    warnings = [
        f"no sharding rule for {op} (node{'s' * (len(ns) > 1)} {', '.join(ns[:3])}"
        f"{', …' if len(ns) > 3 else ''}): replicated on every device"
        for op, ns in sorted(unknown.items())
    ] + [
        f"{op} (node{'s' * (len(ns) > 1)} {', '.join(ns[:3])}{', …' if len(ns) > 3 else ''}) "
        f"is only partly shardable: {why}"
        for (op, why), ns in sorted(limited.items())
    ]
    table = StrategyTable(
        by_node=by_node,
        follows=frozenset(n for n, d in all_dims.items() if d.follows),
        unknown_ops=tuple(sorted(unknown)),
        dims=all_dims,
        labels=labels,
        free=params | {v for v in graph.inputs},
        pinned=dict(pinned or {}),
    )
    return table, warnings + failed
