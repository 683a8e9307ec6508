"""Context-parallel device programs: every rank of a plan copied ``cp`` times, copy ``c``
running the ``c``-th chunk of the sequence.

Why a rewrite of the emitted programs and not a mesh axis of the walk: CP changes no
weight shard and no tensor-parallel collective, only the sequence each activation holds
(:mod:`shardc.partition.context` says where it is); so the tensor-, pipeline- and
data-parallel programs the plan already verifies are kept node for node, and each copy
gets (1) its chunk of the token input, (2) reshape targets and received shapes shrunk
along the sequence, (3) an all-gather over its cp group of every K and V (Llama 3's
all-gather attention), (4) its rows of the causal mask, positions and rotary tables, and
(5) an all-gather of each output's chunks.

:func:`context_lowering` makes the copies part of the lowering (called by the ``lower``
pass when the partition's cp > 1): ``cp`` programs per rank, ranked and placed as the
partitioner placed them, each K/V and output gather an ordinary
:class:`~shardc.plan.program.Comm` on the cp group, so ``price`` times it with the cost
model's :func:`~shardc.cost.network.group_collective` over the group's real devices and the
timeline, schedule.json and the report see it. :func:`context_model` is the device-file
side: the rewrite above of a rank's instantiated model, its gathers filled from the
rank's priced CP comms in order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from shardc.partition.context import ContextError, ContextMap
from shardc.plan.lowered import Lowering
from shardc.plan.program import DOMAIN, Comm, Compute

_SHAPE_ARG = {"Reshape": 1, "Expand": 1}


def _base(name: str) -> str:
    return name.split("__", 1)[0]


def _const(name: str, array: np.ndarray, out: list[onnx.TensorProto]) -> str:
    out.append(numpy_helper.from_array(array, name))
    return name


def context_model(
    proto: onnx.ModelProto, cmap: ContextMap, cp: int, c: int, comms: Sequence[Comm]
) -> onnx.ModelProto:
    """Copy ``c``'s device model from its rank's instantiated model (its tensor- and
    pipeline-parallel comm nodes already filled with the copy's ranks) and its priced CP
    gathers ``comms`` (:func:`is_context_comm`, in program order; see the module doc).
    """
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    added: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []
    rename: dict[str, str] = {}
    pending = list(comms)
    finals: list[tuple[str, str]] = []
    chunk = cmap.length // cp
    outputs = {o.name for o in g.output}
    gathers = {(nd, i): d for nd, i, d in cmap.gathers}
    slices = {(nd, i): d for nd, i, d in cmap.slices}

    def cut(value: str, dim: int, tag: str) -> str:
        name = f"{value}__cp{tag}{len(nodes)}"
        s = _const(f"{name}_s", np.array([c * chunk], np.int64), added)
        e = _const(f"{name}_e", np.array([(c + 1) * chunk], np.int64), added)
        a = _const(f"{name}_a", np.array([dim], np.int64), added)
        nodes.append(helper.make_node("Slice", [value, s, e, a], [name], name=name))
        return name

    def gather(value: str, dim: int, out: str) -> None:
        if not pending:
            raise ContextError(f"--pin cp: rank copy {c} has no priced gather for {out!r}")
        step = pending.pop(0)
        nodes.append(helper.make_node(
            "AllGather", [value], [out], name=f"{out}__cpgather", domain=DOMAIN,
            group=list(step.group), tag=step.tag, algorithm=step.algorithm, axis=dim))

    for inp in g.input:
        if inp.name in cmap.inputs:
            rename[inp.name] = cut(inp.name, cmap.inputs[inp.name], "in")
    for node in g.node:
        nd = onnx.NodeProto()
        nd.CopyFrom(node)
        for i, v in enumerate(nd.input):
            if v in rename:
                nd.input[i] = rename[v]
        if nd.domain == DOMAIN and nd.op_type == "Recv":
            _shrink(nd, cmap, cp)
        seq = cmap.dims.get(_base(nd.output[0])) if nd.output else None
        if nd.op_type in _SHAPE_ARG and seq is not None and nd.domain == "":
            arg = _SHAPE_ARG[nd.op_type]
            shape = _shape_const(nd.input[arg], inits, g.node)
            if shape[seq] > 1:
                shape[seq] //= cp
            nd.input[arg] = _const(f"{nd.name}__cpshape", shape, added)
        for i, v in enumerate(list(nd.input)):
            if (nd.name, i) in gathers:
                whole = f"{v}__cpwhole{len(nodes)}"
                gather(v, gathers[(nd.name, i)], whole)
                nd.input[i] = whole
            elif (nd.name, i) in slices:
                nd.input[i] = cut(v, slices[(nd.name, i)], "rows")
        for j, o in enumerate(nd.output):
            if o in outputs and cmap.dims.get(_base(o)) is not None:
                local = f"{o}__cplocal"
                nd.output[j] = rename[o] = local
                finals.append((local, o))
        nodes.append(nd)
    for local, o in finals:  # last, in the order made: the program's own order
        gather(local, cmap.dims[_base(o)], o)
    if pending:
        raise ContextError(f"--pin cp: rank copy {c}: {len(pending)} priced gathers unplaced")
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(added)
    return m


def _shrink(nd: onnx.NodeProto, cmap: ContextMap, cp: int) -> None:
    """A Recv of a chunked value: its declared shape shrunk along the sequence."""
    for a in nd.attribute:
        if a.name == "shape":
            seq = cmap.dims.get(_base(nd.output[0]))
            if seq is not None:
                a.ints[seq] //= cp


def _shape_const(
    name: str, inits: Mapping[str, onnx.TensorProto], nodes: Sequence[onnx.NodeProto]
) -> np.ndarray:
    """The int64 shape a Reshape/Expand reads: an initializer or a Constant node."""
    if name in inits:
        return np.array(numpy_helper.to_array(inits[name]), dtype=np.int64).copy()
    for nd in nodes:
        if nd.op_type == "Constant" and name in nd.output:
            for a in nd.attribute:
                if a.name == "value":
                    return np.array(numpy_helper.to_array(a.t), dtype=np.int64).copy()
    raise ContextError(f"--pin cp: the shape {name!r} of a chunked reshape is not a constant")


# -- the lowering: cp copies of every rank as ordinary programs ---------------------------


def _gather_bytes(
    state: Any, resolutions: Sequence[Any], cmap: ContextMap
) -> dict[tuple[str, int] | str, float]:
    """Bytes each CP gather moves as the partitioner charged them: the gathered K/V on one
    TP rank (its strategy's layout), each chunked output whole.
    """
    from shardc.passes.lower import stage_nodes
    from shardc.passes.precision import priced_graph

    graph, part = state.graph, state.partition
    priced = priced_graph(state)
    stage = {n: j for j, names in enumerate(stage_nodes(state)) for n in names}
    out: dict[tuple[str, int] | str, float] = {}
    for node, i, _ in cmap.gathers:
        j = stage[node]
        lay = resolutions[j].strategies[node].inputs[i] if resolutions else None
        frac = lay.local_fraction({"tp": part.stages[j].tp}) if lay else 1.0
        out[(node, i)] = float(priced.values[graph.node(node).inputs[i]].nbytes or 0) * frac
    for o in graph.outputs:
        out[o] = float(priced.values[o].nbytes or 0)
    return out


def context_lowering(state: Any, lowering: Lowering) -> Lowering:
    """``lowering`` (an ``N``-rank plan) as the ``cp × N`` ranks context parallelism runs.

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
    nbytes = _gather_bytes(state, lowering.resolutions, cmap)
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
            steps = _copy_steps(p.steps, cmap, group, nbytes, lambda b, c=c: rank(b, c),
                                set(p.outputs), state.graph)
            device = part.placement.devices[(p.replica, p.stage, c * p.tp + p.tp_rank)]
            programs.append(replace(p, rank=rank(p.rank, c), device=device, steps=steps,
                                    copy=c))
    programs.sort(key=lambda q: q.rank)
    unpriced = replace(lowering.programs, programs=tuple(programs))
    return replace(lowering, programs=unpriced, context=(cmap, cp))


def is_context_comm(c: Comm) -> bool:
    """Whether ``c`` is a CP gather :func:`context_lowering` added (by its names)."""
    return "__cpwhole" in c.output or c.value.endswith("__cplocal")


def _copy_steps(
    steps: Sequence[Compute | Comm],
    cmap: ContextMap,
    group: tuple[int, ...],
    nbytes: Mapping[tuple[str, int] | str, float],
    rank: Callable[[int], int],
    outputs: set[str],
    graph: Any,
) -> tuple[Compute | Comm, ...]:
    """One copy's steps: comm ranks moved into the copy; before each node that reads a
    gathered K/V an all-gather of it, and of each chunked output an all-gather of
    it once the program has run (the order :func:`context_model` puts the nodes in).
    """
    gathers: dict[str, list[tuple[int, int]]] = {}
    for nd, i, d in cmap.gathers:
        gathers.setdefault(nd, []).append((i, d))
    chunked = [o for o in cmap.outputs if o in outputs]

    def out_gather(o: str) -> Comm:
        return Comm("AllGather", f"{o}__cplocal", o, nbytes.get(o, 0.0), group, -1, 0,
                    cmap.dims[o])

    out: list[Compute | Comm] = []
    for s in steps:
        if isinstance(s, Comm):
            out.append(replace(s, group=tuple(rank(g) for g in s.group),
                               peer=rank(s.peer) if s.peer >= 0 else s.peer))
            continue
        run: list[str] = []
        for n in s.nodes:
            if n in gathers:
                if run:
                    out.append(Compute(tuple(run), 0.0, s.label))
                    run = []
                for i, d in sorted(gathers[n]):
                    v = graph.node(n).inputs[i]
                    out.append(Comm("AllGather", v, f"{v}__cpwhole", nbytes.get((n, i), 0.0),
                                    group, -1, 0, d))
            run.append(n)
        if run:
            out.append(Compute(tuple(run), 0.0, s.label))
    return (*out, *(out_gather(o) for o in _made_order(chunked, cmap, steps)))


def _made_order(chunked: Sequence[str], cmap: ContextMap, steps: Sequence[Any]) -> list[str]:
    """The chunked outputs in the order their nodes run (the rewrite gathers them last, in
    that order)."""
    order = {n: k for k, n in enumerate(n for s in steps if isinstance(s, Compute)
                                        for n in s.nodes)}
    return sorted(chunked, key=lambda o: order.get(cmap.made_by[o], len(order)))
