"""Pass ``lower``: the partition turned into every rank's program and device-file nodes.

Why a pass: lowering decides what each rank runs (its graph nodes in order, the comm
steps the shardings need, the weight shards it holds) and nothing about time; the
``price`` pass then prices each step with the same cost functions the partitioner used,
and ``timeline`` lays them out. Its result (:class:`~shardc.plan.lowered.Lowering`) holds
one template per (stage, TP rank), walked by :class:`~shardc.passes.lower_walk.Walk`, and
every rank's unpriced program: compute segments (runs of nodes between comm steps) and
comm steps with their ranks, bytes and tags.

A stage the partitioner made sequence parallel runs Megatron-SP: its norms, residual adds
and dropout on ``seq_tp`` (:func:`~shardc.partition.megatron.sequence_shards`), so each
row product's all-reduce is emitted as a reduce-scatter and each column input gathered.

An interleaved plan (v model chunks per stage, Narayanan et al. 2021 §2.2.2) gives
stage ``j`` the chain's chunks ``j, j + pp, …`` (``partition.stages[j].chunks``). Its
program walks them in that order, one after the other: each chunk receives what it reads
from other stages at its start (the previous chunk's output from stage ``j − 1``, or from
the last stage when ``j = 0``: the wrap-around) and sends what it makes as soon as it is
made, so a micro-batch goes round the ring of stages v times. Cross-stage values are
found per stage, not per chunk: a value one chunk makes and a later chunk of the same
stage reads never leaves the device, and a stage receives a value once. The program marks
where each chunk begins (:attr:`~shardc.plan.program.DeviceProgram.chunk_starts`), which
the timeline runs in Megatron's interleaved order.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from shardc.ir import Graph
from shardc.partition.megatron import sequence_shards
from shardc.partition.split import tp_rule
from shardc.passes.lower_walk import Walk, reads
from shardc.passes.lower_weights import DeclaredWeights, weights_available
from shardc.pipeline import Pass
from shardc.plan.lowered import Lowering, Template
from shardc.plan.program import Comm, Compute, DeviceProgram, Programs
from shardc.sharding import TensorSharding

if TYPE_CHECKING:
    from shardc.pipeline import CompileState


def chunk_nodes(state: CompileState) -> list[list[tuple[str, ...]]]:
    """Per pipeline stage, the node names of each model chunk it holds, in graph order.

    One chunk per stage unless the plan interleaves: then stage ``j`` holds the runs of
    blocks ``partition.stages[j].chunks`` lists (chunk ``c`` is the chain's chunk
    ``c·pp + j``, :mod:`shardc.partition.chunks`). The model's ends ride with the chain's
    first and last chunk: stage 0's chunk 0 and the last stage's last chunk.
    """
    part, chain = state.partition, state.blocks
    assert part is not None and chain is not None
    repeated = chain.repeated or tuple(b.index for b in chain.blocks)
    runs = [st.chunks or (st.blocks,) for st in part.stages]
    if not repeated:  # no nodes at all: every output is an input or a weight
        return [[() for _ in r] for r in runs]
    first_rep, last_rep = repeated[0], repeated[-1]
    last = len(part.stages) - 1
    out: list[list[tuple[str, ...]]] = []
    for j, stage_runs in enumerate(runs):
        chunks = []
        for c, (lo, hi) in enumerate(stage_runs):
            keep = set(range(repeated[lo], repeated[hi] + 1))
            if j == 0 and c == 0:
                keep |= {b.index for b in chain.blocks if b.index < first_rep}
            if j == last and c == len(stage_runs) - 1:
                keep |= {b.index for b in chain.blocks if b.index > last_rep}
            chunks.append(tuple(n for b in chain.blocks if b.index in keep for n in b.nodes))
        out.append(chunks)
    return out


def _cross_stage(
    graph: Graph, stages: Sequence[Sequence[str]]
) -> tuple[dict[str, tuple[int, tuple[int, ...]]], dict[str, int]]:
    """Values made on one stage and read on others: producer stage, reader stages; and a
    tag per value (its rank in producer order), the same on the Send and the Recv.
    """
    home = {n: j for j, names in enumerate(stages) for n in names}
    readers: dict[str, set[int]] = defaultdict(set)
    made: dict[str, int] = {}
    for n in graph.nodes:
        if n.name not in home:
            continue
        for o in n.outputs:
            if o:
                made[o] = home[n.name]
        for v in reads(n, graph):
            if v in made and made[v] != home[n.name]:
                readers[v].add(home[n.name])
    order = {o: i for i, n in enumerate(graph.nodes) for o in n.outputs if o}
    cross = {v: (made[v], tuple(sorted(r))) for v, r in readers.items()}
    tags = {v: i + 1 for i, v in enumerate(sorted(cross, key=lambda x: order[x]))}
    return cross, tags


def rank_numbering(state: CompileState) -> Any:
    """``rank_of(stage, replica, tp_rank)``: Megatron's order, stage outermost."""
    part = state.partition
    assert part is not None
    tps = [s.tp for s in part.stages]
    offsets, acc = [], 0
    for s in part.stages:
        offsets.append(acc)
        acc += part.dp * s.tp

    def rank_of(stage: int, replica: int, tp_rank: int) -> int:
        return offsets[stage] + replica * tps[stage] + tp_rank

    return rank_of


def _sequence_crossings(
    state: CompileState,
    cross: Mapping[str, tuple[int, tuple[int, ...]]],
    resolutions: Sequence[Any],
) -> dict[str, TensorSharding]:
    """Cross-stage values that travel as sequence shards, with their layout: those whose
    producer and readers are all sequence-parallel stages of one TP degree holding the
    value in the same split layout (the residual stream between SP stages). Rank t sends
    its shard to rank t, as Megatron-SP does, where a whole value would be gathered
    first; the partitioner prices these transfers sharded.
    """
    part = state.partition
    assert part is not None
    out: dict[str, TensorSharding] = {}
    for v, (src, readers) in cross.items():
        stages = [part.stages[k] for k in (src, *readers)]
        if not all(s.sequence_parallel and s.tp == stages[0].tp > 1 for s in stages):
            continue
        layouts = {resolutions[k].layouts.get(v) for k in (src, *readers)}
        (layout,) = layouts if len(layouts) == 1 else (None,)
        if layout is not None and layout.partial is None and not layout.is_replicated:
            out[v] = layout
    return out


def lower(state: CompileState) -> Lowering:
    """Every (stage, TP rank)'s template and every rank's unpriced program."""
    part, graph, table = state.partition, state.graph, state.strategies
    assert part is not None and table is not None
    declared = not weights_available(state)
    if declared:  # a what-if: shapes for the programs, no bytes to cut
        model = replace(state.model, weights=DeclaredWeights(state.model.weights))
        state = state.with_(model=model)
    chunks = chunk_nodes(state)
    stages = [tuple(n for c in cs for n in c) for cs in chunks]
    cross, tags = _cross_stage(graph, stages)
    tps = [s.tp for s in part.stages]
    rule = tp_rule(graph, table, state.options.partition.pins.rule)
    rank_of = rank_numbering(state)
    templates: dict[tuple[int, int], Template] = {}
    resolutions = []
    programs: list[DeviceProgram] = []
    for st in part.stages:
        sizes = {"tp": st.tp}
        chosen = rule.choose(sizes)
        if st.sequence_parallel and st.tp > 1:  # the partitioner's decision, emitted
            chosen.update(sequence_shards(graph, table, chosen, sizes))
        resolutions.append(table.resolve(graph, chosen, sizes))
    shards = _sequence_crossings(state, cross, resolutions)
    for j, st in enumerate(part.stages):
        resolution = resolutions[j]
        for t in range(st.tp):
            tmpl = Walk(
                state, j, t, st.tp, stages[j], resolution, cross, tags, tps, shards,
                chunks=chunks[j] if len(chunks[j]) > 1 else None,
            ).run()
            templates[(j, t)] = tmpl
            for r in range(part.dp):
                group = tuple(rank_of(j, r, k) for k in range(st.tp))
                steps, starts = _steps(state, tmpl, group, rank_of, r)
                programs.append(
                    DeviceProgram(
                        rank=rank_of(j, r, t),
                        device=part.placement.devices[(r, j, t)],
                        kind=st.kind,
                        stage=j,
                        replica=r,
                        tp_rank=t,
                        tp=st.tp,
                        steps=steps,
                        chunk_starts=starts,
                        inputs=tuple(tmpl.inputs),
                        outputs=tuple(tmpl.outputs),
                        memory_bytes=st.memory_bytes,
                        weight_bytes=tmpl.weight_bytes,
                    )
                )
    programs.sort(key=lambda p: p.rank)
    unpriced = Programs(
        tuple(programs), part.mode, part.schedule, part.microbatches, part.dp, len(part.stages)
    )
    lowering = Lowering(templates, unpriced, declared, tuple(resolutions))
    if any(st.cp > 1 for st in part.stages):  # every rank copied once per sequence chunk
        from shardc.passes.lower_context import context_lowering

        return context_lowering(state, lowering, stages)
    return lowering


def _steps(
    state: CompileState, tmpl: Template, group: tuple[int, ...], rank_of: Any, replica: int
) -> tuple[tuple[Compute | Comm, ...], tuple[int, ...]]:
    """One replica's steps of a template: node runs between comm steps, comms with ranks;
    and where each model chunk's steps begin (empty with one chunk).
    """
    steps: list[Compute | Comm] = []
    run: list[str] = []
    starts: list[int] = []
    for i, (what, item) in enumerate(tmpl.steps):
        if i in tmpl.chunk_starts:  # a chunk's segments never merge with the last one's
            if run:
                steps.append(Compute(tuple(run), 0.0, _label(state, run)))
                run = []
            starts.append(len(steps))
        if what == "node":
            run.append(item)
            continue
        if run:
            steps.append(Compute(tuple(run), 0.0, _label(state, run)))
            run = []
        p = item[1]
        if p.op in ("Send", "Recv"):
            assert p.peer is not None, f"{p.op} of {p.value!r} has no peer"
            peer = rank_of(p.peer[0], replica, p.peer[1])
            steps.append(Comm(p.op, p.value, p.output, p.nbytes, (), peer, p.tag, -1))
        else:
            steps.append(Comm(p.op, p.value, p.output, p.nbytes, group, -1, p.tag, p.axis))
    if run:
        steps.append(Compute(tuple(run), 0.0, _label(state, run)))
    return tuple(steps), tuple(starts)


def _label(state: CompileState, run: Sequence[str]) -> str:
    chain = state.blocks
    assert chain is not None
    blocks = sorted({chain.block_of(n) for n in run})
    roles = {chain.blocks[b].role for b in blocks}
    if roles == {"repeated"}:
        rep = chain.repeated
        idx = [rep.index(b) for b in blocks]
        return f"block {idx[0]}" if len(idx) == 1 else f"blocks {idx[0]}-{idx[-1]}"
    return "+".join(sorted(roles))


def run(state: CompileState) -> CompileState:
    """Lower the partitioned graph (see the module docstring)."""
    return state.with_(lowering=lower(state))


def dump(state: CompileState) -> str:
    """Every rank's program: segments (label, nodes) and comm steps (op, value, bytes, ranks)."""
    assert state.lowering is not None
    lines = []
    for p in state.lowering.programs.programs:
        lines.append(f"rank {p.rank} ({p.device}, stage {p.stage}, replica {p.replica}, "
                     f"tp {p.tp_rank}/{p.tp})")
        for s in p.steps:
            if isinstance(s, Compute):
                lines.append(f"  compute {s.label}: {len(s.nodes)} nodes")
            else:
                whom = f"peer {s.peer}" if s.op in ("Send", "Recv") else f"group {list(s.group)}"
                lines.append(f"  {s.op} {s.value} {s.nbytes:.0f} B {whom} tag {s.tag}")
    return "\n".join(lines) + "\n"


PASS = Pass(
    name="lower",
    run=run,
    requires=("graph", "blocks", "strategies", "partition"),
    provides=("lowering",),
    description="every rank's program: node runs, comm steps and weight shards (unpriced)",
    dump=dump,
)
