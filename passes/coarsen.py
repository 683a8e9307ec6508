"""Pass ``coarsen``: fold the graph into ``prologue · N identical blocks · epilogue``.

Why: the partitioner places *blocks*, not thousands of nodes, and solves each class of
identical blocks once. The structure is found in the graph itself -- exporters rename
everything (``val_N``), so no node or value name is ever read here.

The algorithm, in linear sweeps over the topological node order (nothing is reordered):

1. **Classify.** *Static* values are computed from weights, constants and shapes alone
   (``Constant``, ``Shape`` and arithmetic on them): recomputable anywhere, they never
   decide a cut and are hashed by type and value, not by where they were made -- layer 0
   of a synth model holds the ``Constant`` nodes all layers share, yet hashes like them.
   *Small* values (integer tensors of at most 8 elements: shapes, indices) never decide
   a cut either.
2. **Liveness.** An activation is live across the gap after node ``i`` when made at or
   before ``i`` and read after it. Graph inputs start at their first reader and graph
   outputs end at their last reader (KV-cache inputs and outputs would otherwise pile up
   and hide every layer boundary). One difference array counts every gap.
3. **Broadcast** values, live across at least half the gaps (RoPE tables, a mask made
   once and read by every layer), ride along: not counted for cuts, but listed in the
   ``inputs`` of the blocks that read them.
4. **Cuts** are the gaps whose count is at most ``max(1, minimum)`` -- in a transformer
   the residual stream alone, after each residual add. Segments run between cuts; one of
   static nodes only is merged into the next.
5. **Hash** each segment: op, domain, attributes, output types, and per input slot a
   local label (node, slot), an external slot (order of first read) with its type, or a
   weight/static value's type and small value. Static nodes are left out; control-flow
   bodies are hashed alike.
6. **Fold.** For each period ``p``, runs where segment ``i`` equals segment ``i + p``; a
   run of length ``L >= p`` holds ``(L + p) // p`` whole periods. The run covering most
   nodes wins (ties: smaller ``p``, then earlier) and is folded from its first segment,
   the earliest phase, so the prologue is minimal. Pre-LN transformers cut twice per
   layer (after the attention and the MLP residual adds): ``p = 2``.
7. **Blocks**: prologue and epilogue are what lies before and after the run; each block
   is re-hashed whole (wiring between its segments included) and ``classes`` groups
   equal signatures. Without a run of two periods the graph is one ``single`` block.

Limits: a value read over less than half the graph counts as a normal activation, so a
long skip connection hides the cuts it spans; only the run covering most nodes is folded
(an encoder-decoder folds one stack); ``TENSOR`` attributes are hashed as raw bytes.

**Layers that differ.** A model whose layers are not identical (DeepSeek-V3's dense then
MoE layers, a ResNet's stages, hybrid stacks) folds into fewer repeated blocks than a
pinned pipeline depth needs, or none. Then (``--pin pp=P`` with ``P`` above the repeated
count) :func:`balanced` cuts the whole graph at its cheap cuts (step 4) into ``P``
contiguous blocks of about equal FLOPs instead, every one marked ``repeated`` so each
stage can take one. The partitioner prices a stage as whole copies of the first block,
so balancing the work is what keeps the step estimate honest; memory per stage is
estimated the same way (the device programs, schedule and check-plan use the real nodes).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from shardc.ir import Graph, Node
from shardc.ir.blocks import Block, BlockChain
from shardc.ir.printer import format_node
from shardc.ir.structure import canonical, digest, outer_reads, small_int, type_key
from shardc.pipeline import CompileState, Pass

BROADCAST_SPAN = 0.5
"""A value live across at least this share of the gaps is broadcast (rides along)."""
SMALL_ELEMENTS = 8
"""Integer tensors with at most this many elements (shapes, indices) never decide a cut."""
SHAPE_OPS = frozenset({"Shape", "Size"})
"""Ops whose result depends on their input's shape only, hence static."""


@dataclass(frozen=True)
class _Facts:
    """What every sweep needs about the graph, computed in one pass over the nodes."""

    graph: Graph
    reads: tuple[tuple[str, ...], ...]
    """Per node: names read, deduplicated (control-flow bodies' outer reads included)."""
    made_at: Mapping[str, int]
    first_read: Mapping[str, int]
    last_read: Mapping[str, int]
    static_nodes: frozenset[int]
    static: frozenset[str]
    outputs: frozenset[str]

    def is_weight(self, name: str) -> bool:
        """True for initializers."""
        v = self.graph.values.get(name)
        return v is not None and v.is_weight

    def is_activation(self, name: str) -> bool:
        """Counts for cuts: neither weight, static nor small."""
        if name in self.static or self.is_weight(name):
            return False
        v = self.graph.values.get(name)
        t = v.type if v is not None else None
        if t is None or t.dtype.is_float:
            return True
        return t.numel is None or t.numel > SMALL_ELEMENTS

    def leaves(self, name: str, end: int) -> bool:
        """True when a value made before node ``end`` is read from ``end`` on, or is output."""
        return self.last_read.get(name, -1) >= end or name in self.outputs


def _analyse(graph: Graph) -> _Facts:
    """Reads, positions and the static closure, in node order (so one pass suffices)."""
    values = graph.values
    reads: list[tuple[str, ...]] = []
    made_at: dict[str, int] = {}
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    static_nodes: set[int] = set()
    static: set[str] = set()
    for i, node in enumerate(graph.nodes):
        names = tuple(
            n for n in dict.fromkeys((*node.present_inputs, *outer_reads(node))) if n in values
        )
        reads.append(names)
        for n in names:
            first.setdefault(n, i)
            last[n] = i
        plain_op = node.domain in ("", "ai.onnx") and node.op_type in SHAPE_OPS
        if plain_op or all(n in static or values[n].is_weight for n in names):
            static_nodes.add(i)
            static.update(o for o in node.outputs if o)
        made_at.update((o, i) for o in node.outputs if o)
    frozen = (frozenset(static_nodes), frozenset(static), frozenset(graph.outputs))
    return _Facts(graph, tuple(reads), made_at, first, last, *frozen)


def _live_counts(facts: _Facts) -> np.ndarray:
    """Non-broadcast activations live across each of the ``n - 1`` gaps."""
    gaps = len(facts.graph.nodes) - 1
    diff = np.zeros(gaps + 2, dtype=np.int64)
    for name, end in facts.last_read.items():
        start = facts.made_at.get(name, facts.first_read[name])
        span = end - start
        if span <= 0 or span >= BROADCAST_SPAN * gaps or not facts.is_activation(name):
            continue
        diff[start] += 1
        diff[end] -= 1
    return np.cumsum(diff)[:gaps]


def _segments(facts: _Facts, middle: bool = False) -> list[tuple[int, int]]:
    """``[start, end)`` node ranges between min-cut gaps; static-only ones merged forward.

    ``middle`` takes the cut level from the middle half of the graph instead of all of it:
    a pre-LN transformer whose skip-adds are fused (onnxruntime's SkipLayerNormalization
    returns the normed value and the running sum) carries two values between its layers,
    while its embedding carries one, so the whole-graph minimum finds no layer boundary.
    """
    n = len(facts.graph.nodes)
    counts = _live_counts(facts)
    if counts.size == 0:
        return [(0, n)] if n else []
    inner = counts[counts.size // 4 : max(counts.size * 3 // 4, counts.size // 4 + 1)]
    level = max(1, int((inner if middle else counts).min()))
    bounds = [0, *(int(g) + 1 for g in np.flatnonzero(counts <= level)), n]
    segments: list[tuple[int, int]] = []
    start = 0
    for end in bounds[1:]:
        if all(i in facts.static_nodes for i in range(start, end)) and end < n:
            continue  # only static nodes so far: let the next segment absorb them
        segments.append((start, end))
        start = end
    return segments


def _signature(facts: _Facts, start: int, end: int) -> str:
    """Structural hash of nodes ``[start, end)``: canonical relabelling, no names.

    Weights and static values are seen by type and small value; other values from
    outside by their slot (order of first read) and type. Static nodes are left out.
    """
    graph = facts.graph
    external: dict[str, int] = {}

    def outside(name: str) -> object:
        if name in facts.static or facts.is_weight(name):
            v = graph.values.get(name)
            return ("C", type_key(graph, name), small_int(v))
        return ("X", external.setdefault(name, len(external)), type_key(graph, name))

    kept = (graph.nodes[i] for i in range(start, end) if i not in facts.static_nodes)
    parts, local = canonical(graph, kept, outside)
    parts.append(tuple(sorted(label for v, label in local.items() if facts.leaves(v, end))))
    return digest(parts)


def _best_run(ids: np.ndarray, sizes: np.ndarray) -> tuple[int, int, int] | None:
    """``(first segment, period, periods)`` of the repetition covering most nodes.

    For each period ``p`` the matches ``ids[i] == ids[i + p]`` are found in one vectorised
    comparison, so the whole search is ``O(m²)`` element work for ``m`` segments but only
    ``m / 2`` Python iterations (``m`` is a few hundred for an 80-layer model).
    """
    m = len(ids)
    cum = np.concatenate(([0], np.cumsum(sizes)))
    best: tuple[int, int, int] | None = None
    best_cover = 0
    for p in range(1, m // 2 + 1):
        match = np.concatenate(([False], ids[: m - p] == ids[p:], [False]))
        edges = np.flatnonzero(np.diff(match.astype(np.int8)))
        starts, length = edges[0::2], edges[1::2] - edges[0::2]
        keep = length >= p
        if not keep.any():
            continue
        starts, count = starts[keep], (length[keep] + p) // p
        cover = cum[starts + count * p] - cum[starts]
        i = int(np.argmax(cover))  # first maximum: the earliest run
        if cover[i] > best_cover:  # strict: a longer period must cover more
            best, best_cover = (int(starts[i]), p, int(count[i])), int(cover[i])
    return best


def _fold(
    segments: list[tuple[int, int]], sigs: list[str]
) -> tuple[list[tuple[int, int, str]], int]:
    """Node ranges ``(start, end, role)`` of the chain, and the period of the fold."""
    n = segments[-1][1] if segments else 0
    codes: dict[str, int] = {}
    ids = np.array([codes.setdefault(s, len(codes)) for s in sigs], dtype=np.int64)
    sizes = np.array([e - s for s, e in segments], dtype=np.int64)
    run = _best_run(ids, sizes) if len(segments) > 1 else None
    if run is None:
        return ([(0, n, "single")] if n else []), 0
    first, p, count = run
    head, tail = segments[first][0], segments[first + count * p - 1][1]
    spans = [(0, head, "prologue")] if head > 0 else []
    for k in range(first, first + count * p, p):
        spans.append((segments[k][0], segments[k + p - 1][1], "repeated"))
    return spans + ([(tail, n, "epilogue")] if tail < n else []), p


def _block(facts: _Facts, index: int, start: int, end: int, role: str) -> Block:
    """One block over nodes ``[start, end)``: its interface and its signature."""
    graph = facts.graph
    inputs: dict[str, None] = {}
    constants: dict[str, None] = {}
    weights: dict[str, None] = {}
    outputs: dict[str, None] = {}
    for i in range(start, end):
        for name in facts.reads[i]:
            made = facts.made_at.get(name, -1)
            if facts.is_weight(name):
                weights[name] = None
            elif made < start:
                (constants if name in facts.static else inputs)[name] = None
        for o in graph.nodes[i].outputs:
            if o and facts.leaves(o, end) and (o not in facts.static or o in facts.outputs):
                outputs[o] = None
    names = tuple(graph.nodes[i].name for i in range(start, end))
    interface = (tuple(inputs), tuple(outputs), tuple(weights))
    return Block(index, names, *interface, _signature(facts, start, end), role, tuple(constants))


def coarsen(graph: Graph) -> BlockChain:
    """Fold ``graph`` into a chain of blocks (see the module docstring for how)."""
    facts = _analyse(graph)
    segments = _segments(facts)
    sigs = [_signature(facts, s, e) for s, e in segments]
    spans, period = _fold(segments, sigs)
    if not period:  # no repetition at the graph's narrowest cut: try the layers' own
        segments = _segments(facts, middle=True)
        sigs = [_signature(facts, s, e) for s, e in segments]
        spans, period = _fold(segments, sigs)
    blocks = tuple(_block(facts, k, s, e, role) for k, (s, e, role) in enumerate(spans))
    classes: dict[str, list[int]] = {}
    for b in blocks:
        classes.setdefault(b.signature, []).append(b.index)
    return BlockChain(blocks, {s: tuple(ix) for s, ix in classes.items()}, period)


def balanced(graph: Graph, parts: int, weight: Callable[[Node], float]) -> BlockChain | None:
    """The graph cut at cheap cuts into ``parts`` blocks of about equal ``weight``.

    Each cut is the segment boundary nearest its share of the total (``i / parts``),
    kept strictly increasing so no block is empty. None when the graph has fewer cheap
    cuts than that.
    """
    facts = _analyse(graph)
    segments = _segments(facts)
    if parts < 2 or len(segments) < parts:
        return None
    sizes = [sum(weight(graph.nodes[i]) for i in range(s, e)) + 1e-9 for s, e in segments]
    cum = np.concatenate(([0.0], np.cumsum(sizes)))
    cuts = [0]
    for i in range(1, parts):
        lo, hi = cuts[-1] + 1, len(segments) - (parts - i)  # leave a segment per block left
        target = cum[-1] * i / parts
        cuts.append(lo + int(np.argmin(np.abs(cum[lo : hi + 1] - target))))
    cuts.append(len(segments))
    spans = [(segments[a][0], segments[b - 1][1]) for a, b in itertools.pairwise(cuts)]
    blocks = tuple(_block(facts, k, s, e, "repeated") for k, (s, e) in enumerate(spans))
    classes: dict[str, list[int]] = {}
    for b in blocks:
        classes.setdefault(b.signature, []).append(b.index)
    return BlockChain(blocks, {s: tuple(ix) for s, ix in classes.items()}, 0)


def run(state: CompileState) -> CompileState:
    """Coarsen ``state.graph`` into ``state.blocks``.

    A pinned pipeline deeper than the repeated blocks found cuts the graph into balanced
    blocks instead (see :func:`balanced`), so models whose layers differ can pipeline.
    """
    chain = coarsen(state.graph)
    pp = state.options.partition.pins.pp or 0
    if pp > len(chain.repeated):
        costs = state.costs.nodes if state.costs is not None else {}

        def flops(node: Node) -> float:
            cost = costs.get(node.name)
            return float(cost.flops) if cost is not None else 1.0

        even = balanced(state.graph, pp, flops)
        if even is not None:
            return state.with_(blocks=even)
    return state.with_(blocks=chain)


def dump(state: CompileState) -> str:
    """The IR grouped by block, each headed by its role, class and interface."""
    chain, graph = state.blocks, state.graph
    assert chain is not None
    lines = [
        f"# coarsen: {len(chain.blocks)} blocks, {len(chain.classes)} classes, "
        f"{len(chain.repeated)} repeated (period {chain.period} segments)"
    ]
    for b in chain.blocks:
        same = chain.classes[b.signature]
        lines += [
            f"block {b.index} {b.role} sig={b.signature} class={list(same)} "
            f"nodes={len(b.nodes)} weights={len(b.weights)}",
            f"  # in: {', '.join('%' + v for v in b.inputs) or '-'}",
            f"  # out: {', '.join('%' + v for v in b.outputs) or '-'}",
            *(f"  {format_node(graph.node(n), graph)}" for n in b.nodes),
        ]
    return "\n".join(lines)


PASS = Pass(
    name="coarsen",
    run=run,
    requires=("graph",),
    provides=("blocks",),
    description="fold the graph into prologue, N identical blocks and epilogue, by structure",
    dump=dump,
)
