"""Context parallelism in the lowering: every rank of a plan copied ``cp`` times, copy
``c`` running the ``c``-th chunk of the sequence.

Why in the lowering (called by the ``lower`` pass when the partition's cp > 1): the
``price``, ``timeline`` and ``plan`` passes then see each K/V and output all-gather as an
ordinary :class:`~shardc.plan.program.Comm` with its bytes and cp group, priced by the
cost model's :func:`~shardc.cost.network.group_collective` over the group's real devices,
and schedule.json, the trace, the link load and the report carry them. Copies are placed
where the partitioner placed them, so cp groups ride the links it priced. The device files
are :func:`shardc.emit.context.context_model`'s rewrite of each copy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from shardc.partition.context import ContextError, ContextMap
from shardc.plan.lowered import CP_LOCAL, CP_RING, CP_WHOLE, Lowering
from shardc.plan.program import Comm, Compute

RING_TAG = 1 << 20
"""First tag of the ring transfers: above any pipeline tag the walk numbers from 0."""


def _gather_bytes(
    state: Any, resolutions: Sequence[Any], cmap: ContextMap, stages: Sequence[Sequence[str]]
) -> dict[tuple[str, int] | str, float]:
    """Bytes each CP gather moves as the partitioner charged them: the gathered K/V on one
    TP rank (its strategy's layout), each chunked output whole.
    """
    from shardc.passes.precision import priced_graph

    graph, part = state.graph, state.partition
    priced = priced_graph(state)
    stage = {n: j for j, names in enumerate(stages) for n in names}
    out: dict[tuple[str, int] | str, float] = {}
    for node, i, _ in cmap.gathers:
        j = stage[node]
        lay = resolutions[j].strategies[node].inputs[i] if resolutions else None
        frac = lay.local_fraction({"tp": part.stages[j].tp}) if lay else 1.0
        out[(node, i)] = float(priced.values[graph.node(node).inputs[i]].nbytes or 0) * frac
    for o in graph.outputs:
        out[o] = float(priced.values[o].nbytes or 0)
    return out


def _ring(
    state: Any, resolutions: Sequence[Any], cmap: ContextMap, stages: Sequence[Sequence[str]],
    cp: int, comm: str,
) -> ContextMap:
    """``cmap`` with its ring attentions (:func:`~shardc.partition.ring.ring_map`), each
    with the shape of the K and V chunk one TP rank holds at the gather point (what a
    Recv declares).
    """
    from shardc.partition.context import graph_consts
    from shardc.partition.ring import ring_map

    graph, part = state.graph, state.partition
    stage = {n: j for j, names in enumerate(stages) for n in names}

    def chunk(point: tuple[str, int, int]) -> tuple[int, ...]:
        node, i, d = point
        j = stage[node]
        value = graph.values[graph.node(node).inputs[i]]
        assert value.type is not None and value.type.shape is not None
        shape = [int(x) for x in value.type.shape]
        lay = resolutions[j].strategies[node].inputs[i] if resolutions else None
        if lay is not None:
            tp = part.stages[j].tp
            shape = [x // tp if a else x for x, a in zip(shape, lay.dims, strict=True)]
        shape[d] //= cp
        return tuple(shape)

    out = []
    cmap = ring_map(graph, cmap, cp, comm, graph_consts(graph))
    for a in cmap.ring:
        value = graph.values[graph.node(a.k[0]).inputs[a.k[1]]]
        dtype = int(value.type.dtype.value) if value.type is not None else 1
        out.append(replace(a, k_shape=chunk(a.k), v_shape=chunk(a.v), dtype=dtype))
    return replace(cmap, ring=tuple(out))


def context_lowering(
    state: Any, lowering: Lowering, stages: Sequence[Sequence[str]]
) -> Lowering:
    """``lowering`` (an ``N``-rank plan, ``stages`` the nodes of each stage) as the ``cp × N``
    ranks context parallelism runs.

    Why in the lowering: the price, timeline and plan passes then see each K/V all-gather
    as an ordinary :class:`~shardc.plan.program.Comm` with its bytes and cp group, priced on
    the devices the partitioner placed: copy ``c`` of (stage ``j``, replica ``r``, TP rank
    ``t``) sits on the placement's device ``(r, j, c·tp + t)`` (the stage's group is ``cp``
    TP groups side by side, :meth:`~shardc.partition.costing.Costing.configs`). Ranks keep
    Megatron's order with the copy between replica and TP rank: ``offset_j + (r·cp + c)·tp
    + t``, so a stage's ranks stay contiguous and each TP group stays inside a copy.
    """
    part = state.partition
    cps = {s.cp for s in part.stages}
    if len(cps) != 1:
        raise ContextError(f"--pin cp: stages run different cp degrees {sorted(cps)}; "
                           "emission needs one")
    (cp,) = cps
    from shardc.partition.context import context_map

    cmap = context_map(state.graph, state.strategies.labels, cp)
    comm = state.options.partition.cp_comm
    if comm != "allgather":
        cmap = _ring(state, lowering.resolutions, cmap, stages, cp, comm)
    nbytes = _gather_bytes(state, lowering.resolutions, cmap, stages)
    offsets, acc = [], 0
    for s in part.stages:
        offsets.append(acc)
        acc += part.dp * s.tp * cp
    base = {p.rank: p for p in lowering.programs.programs}

    def rank(b: int, c: int) -> int:
        p = base[b]
        return offsets[p.stage] + (p.replica * cp + c) * p.tp + p.tp_rank

    programs = []
    for p in lowering.programs.programs:
        for c in range(cp):
            group = tuple(rank(p.rank, k) for k in range(cp))
            # interleaved plans: each model chunk is rewritten on its own, so chunk_starts
            # point at the rewritten steps (the outputs' gathers close the last chunk)
            steps: list[Compute | Comm] = []
            starts: list[int] = []
            chunks = p.chunks
            def moved(b: int, c: int = c) -> int:
                return rank(b, c)

            for k, part_steps in enumerate(chunks):
                last = k == len(chunks) - 1
                done = _copy_steps(part_steps, cmap, group, nbytes, moved,
                                   set(p.outputs) if last else set(), state.graph, cp,
                                   made=p.steps)
                if cmap.ring:
                    done = _ring_steps(done, cmap, group, c, nbytes)
                starts.append(len(steps))
                steps.extend(done)
            device = part.placement.devices[(p.replica, p.stage, c * p.tp + p.tp_rank)]
            programs.append(replace(p, rank=rank(p.rank, c), device=device, steps=tuple(steps),
                                    copy=c, chunk_starts=tuple(starts) if p.chunk_starts else ()))
    programs.sort(key=lambda q: q.rank)
    unpriced = replace(lowering.programs, programs=tuple(programs))
    return replace(lowering, programs=unpriced, context=(cmap, cp))


def _copy_steps(
    steps: Sequence[Compute | Comm],
    cmap: ContextMap,
    group: tuple[int, ...],
    nbytes: Mapping[tuple[str, int] | str, float],
    rank: Callable[[int], int],
    outputs: set[str],
    graph: Any,
    cp: int,
    made: Sequence[Compute | Comm] = (),
) -> tuple[Compute | Comm, ...]:
    """One copy's steps (``made``: the whole program, whose order the output gathers
    follow; ``steps`` when empty): comm ranks moved into the copy, their bytes the chunk's (the
    tensor- and pipeline-parallel traffic of activations is over cp, the partitioner's
    ``nbytes / cp``); before each node that reads a
    gathered K/V an all-gather of it, and of each chunked output an all-gather of
    it once the program has run (the order :func:`shardc.emit.context.context_model`
    puts the nodes in).
    """
    gathers: dict[str, list[tuple[int, int]]] = {}
    ringed = {(a.k[0], a.k[1]) for a in cmap.ring} | {(a.v[0], a.v[1]) for a in cmap.ring}
    for nd, i, d in cmap.gathers:
        if (nd, i) not in ringed:  # the ring moves these (_ring_steps)
            gathers.setdefault(nd, []).append((i, d))
    chunked = [o for o in cmap.outputs if o in outputs]

    def out_gather(o: str) -> Comm:
        return Comm("AllGather", f"{o}{CP_LOCAL}", o, nbytes.get(o, 0.0), group, -1, 0,
                    cmap.dims[o])

    out: list[Compute | Comm] = []
    for s in steps:
        if isinstance(s, Comm):
            # a copy moves its chunk: the bytes over cp, as the partitioner charged them
            out.append(replace(s, group=tuple(rank(g) for g in s.group),
                               peer=rank(s.peer) if s.peer >= 0 else s.peer,
                               nbytes=s.nbytes / cp))
            continue
        run: list[str] = []
        for n in s.nodes:
            if n in gathers:
                if run:
                    out.append(Compute(tuple(run), 0.0, s.label))
                    run = []
                for i, d in sorted(gathers[n]):
                    v = graph.node(n).inputs[i]
                    out.append(Comm("AllGather", v, f"{v}{CP_WHOLE}", nbytes.get((n, i), 0.0),
                                    group, -1, 0, d))
            run.append(n)
        if run:
            out.append(Compute(tuple(run), 0.0, s.label))
    return (*out, *(out_gather(o) for o in _made_order(chunked, cmap, made or steps)))


def _made_order(chunked: Sequence[str], cmap: ContextMap, steps: Sequence[Any]) -> list[str]:
    """The chunked outputs in the order their nodes run (the rewrite gathers them last, in
    that order).
    """
    if not chunked:  # a chunk that makes no output: nothing to order
        return []
    order = {n: k for k, n in enumerate(n for s in steps if isinstance(s, Compute)
                                        for n in s.nodes)}
    return sorted(chunked, key=lambda o: order.get(cmap.made_by[o], len(order)))


def _ring_steps(
    steps: Sequence[Compute | Comm],
    cmap: ContextMap,
    group: tuple[int, ...],
    c: int,
    nbytes: Mapping[tuple[str, int] | str, float],
) -> tuple[Compute | Comm, ...]:
    """Copy ``c``'s steps with each ring attention's nodes taken out of their runs and
    laid out where its ``P·V`` ran as ``cp`` blocks: before block ``t`` a Send of the K/V
    chunk it holds to the next rank of the cp group, after it a Recv of the next chunk
    from the previous one (none after the last). The Send goes first so it runs beside
    the block's compute (the timeline's overlap; the runtime sends without waiting), and
    every rank issues the same order, so the ring cannot deadlock.
    """
    from shardc.partition.ring import block_shares

    cp = len(group)
    nxt, prev = group[(c + 1) % cp], group[(c - 1) % cp]
    shares = block_shares(cp, cmap.zigzag)
    held = {n for a in cmap.ring for n in a.nodes}
    at = {a.pv: (k, a) for k, a in enumerate(cmap.ring)}
    out: list[Compute | Comm] = []
    for s in steps:
        if not isinstance(s, Compute) or not held.intersection(s.nodes):
            out.append(s)
            continue
        run: list[str] = []
        for n in s.nodes:
            if n not in at:
                if n not in held:
                    run.append(n)
                continue
            if run:
                out.append(Compute(tuple(run), 0.0, s.label))
                run = []
            k, a = at[n]
            chunk = (nbytes.get(a.k[:2], 0.0) + nbytes.get(a.v[:2], 0.0)) / cp
            for t in range(cp):
                value, tag = f"{a.pv}{CP_RING}{t}", RING_TAG + k * cp + t
                if t < cp - 1:
                    out.append(Comm("Send", value, "", chunk, (), nxt, tag))
                out.append(Compute(a.nodes, 0.0, f"{s.label} ring {t + 1}/{cp}", shares[t]))
                if t < cp - 1:
                    out.append(Comm("Recv", value, value, chunk, (), prev, tag))
        if run:
            out.append(Compute(tuple(run), 0.0, s.label))
    return tuple(out)
