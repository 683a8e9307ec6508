"""Context-parallel device programs: every rank of a plan copied ``cp`` times, copy ``c``
running the ``c``-th chunk of the sequence.

Why a rewrite of the emitted programs and not a mesh axis of the walk: CP changes no
weight shard and no tensor-parallel collective, only the sequence each activation holds
(:mod:`shardc.partition.context` says where it is); so the tensor-, pipeline- and
data-parallel programs the plan already verifies are kept node for node, and each copy
gets (1) its chunk of the token input, (2) reshape targets and received shapes shrunk
along the sequence, (3) an all-gather over its cp group of every K and V (Llama 3's
all-gather attention), (4) its rows of the causal mask, positions and rotary tables, and
(5) an all-gather of each output's chunks. Rank ``c·N + r`` is copy ``c`` of rank ``r``
of an ``N``-rank plan; the cp groups are ``{c·N + r}`` over ``c``, so a cp group spans
replicas of one rank and TP groups stay inside a copy.

:func:`context_traffic` lists the collectives this emits with the bytes each moves, and
:func:`context_seconds` prices them through the cost model's own
:func:`~shardc.cost.network.group_collective` (the function the partitioner's TP
traffic is priced by).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from shardc.cost.network import group_collective
from shardc.partition.context import ContextError, ContextMap
from shardc.plan.program import DOMAIN
from shardc.topology.model import Topology

_SHAPE_ARG = {"Reshape": 1, "Expand": 1}


@dataclass(frozen=True)
class CpComm:
    """One collective CP adds to a rank's program."""

    op: str
    value: str
    nbytes: float
    """Bytes of the gathered result on one rank (the convention of the walk's comms)."""
    group: tuple[int, ...]


def _base(name: str) -> str:
    return name.split("__", 1)[0]


def _const(name: str, array: np.ndarray, out: list[onnx.TensorProto]) -> str:
    out.append(numpy_helper.from_array(array, name))
    return name


def context_programs(
    models: Mapping[int, onnx.ModelProto],
    cmap: ContextMap,
    cp: int,
    nbytes: Mapping[tuple[str, int] | str, float],
) -> tuple[dict[int, onnx.ModelProto], dict[int, list[CpComm]]]:
    """The ``cp × N`` rank programs of an ``N``-rank plan, and each one's CP traffic.

    ``nbytes`` gives the bytes each gather moves as the plan prices them: per
    (node, input) for K and V, per output name for the outputs.
    """
    n = len(models)
    if sorted(models) != list(range(n)):
        raise ContextError("--pin cp: the plan's ranks are not numbered 0..N-1")
    out: dict[int, onnx.ModelProto] = {}
    comms: dict[int, list[CpComm]] = {}
    for c in range(cp):
        for r, proto in sorted(models.items()):
            out[c * n + r], comms[c * n + r] = _rank(proto, cmap, cp, c, r, n, nbytes)
    return out, comms


def _rank(
    proto: onnx.ModelProto,
    cmap: ContextMap,
    cp: int,
    c: int,
    r: int,
    n: int,
    nbytes: Mapping[tuple[str, int] | str, float],
) -> tuple[onnx.ModelProto, list[CpComm]]:
    """Copy ``c`` of rank ``r``'s program (see the module doc for what changes)."""
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    added: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []
    rename: dict[str, str] = {}
    traffic: list[CpComm] = []
    group = tuple(k * n + r for k in range(cp))
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

    def gather(value: str, dim: int, out: str, nbytes: float) -> None:
        nodes.append(helper.make_node("AllGather", [value], [out], name=f"{out}__cpgather",
                                      domain=DOMAIN, group=list(group), tag=0, axis=dim))
        traffic.append(CpComm("all_gather", _base(out), nbytes, group))

    for inp in g.input:
        if inp.name in cmap.inputs:
            rename[inp.name] = cut(inp.name, cmap.inputs[inp.name], "in")
    for node in g.node:
        nd = onnx.NodeProto()
        nd.CopyFrom(node)
        for i, v in enumerate(nd.input):
            if v in rename:
                nd.input[i] = rename[v]
        if nd.domain == DOMAIN:
            _remap(nd, c, n, cmap, cp)
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
                gather(v, gathers[(nd.name, i)], whole, nbytes.get((nd.name, i), 0.0))
                nd.input[i] = whole
            elif (nd.name, i) in slices:
                nd.input[i] = cut(v, slices[(nd.name, i)], "rows")
        finals = []
        for j, o in enumerate(nd.output):
            if o in outputs and cmap.dims.get(_base(o)) is not None:
                local = f"{o}__cplocal"
                nd.output[j] = rename[o] = local
                finals.append((local, o))
        nodes.append(nd)
        for local, o in finals:
            gather(local, cmap.dims[_base(o)], o, nbytes.get(o, 0.0))
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(added)
    return m, traffic


def _remap(nd: onnx.NodeProto, c: int, n: int, cmap: ContextMap, cp: int) -> None:
    """A comm node of copy ``c``: its group or peer moved into the copy; a received
    chunked value's shape shrunk along the sequence.
    """
    for a in nd.attribute:
        if a.name == "group":
            a.ints[:] = [c * n + g if g >= 0 else g for g in a.ints]
        elif a.name == "peer" and a.i >= 0:
            a.i = c * n + a.i
        elif a.name == "shape" and nd.op_type == "Recv":
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


def context_seconds(
    topology: Topology, comms: Sequence[CpComm], devices: Mapping[int, str]
) -> float:
    """One rank's CP collectives timed by the cost model on its cp group's devices."""
    return sum(
        group_collective(topology, c.op, c.nbytes, [devices[k] for k in c.group]).seconds
        for c in comms
        if len(c.group) > 1 and c.nbytes > 0
    )


def emit_context(
    state: Any, models: Mapping[int, onnx.ModelProto], cp: int | None = None
) -> tuple[dict[int, onnx.ModelProto], dict[int, list[CpComm]]]:
    """A compiled state's device programs (``models``, as :func:`shardc.emit.devices.emit`
    writes them) under its partition's cp degree (or ``cp``).

    Every stage of a plan runs one cp degree (the search tries each degree as a plan-wide
    choice, like the data-parallel width), so copy ``c`` of the whole plan is one chunk.
    """
    if cp is None:
        cps = {s.cp for s in state.partition.stages}
        if len(cps) != 1:
            raise ContextError(f"--pin cp: stages run different cp degrees {sorted(cps)}; "
                               "emission needs one")
        (cp,) = cps
    from shardc.partition.context import context_map
    from shardc.passes.lower import stage_nodes
    from shardc.passes.precision import priced_graph

    graph, table = state.graph, state.strategies
    cmap = context_map(graph, table.labels, cp)
    priced = priced_graph(state)
    res = state.lowering.resolutions
    stage = {n: j for j, names in enumerate(stage_nodes(state)) for n in names}
    nbytes: dict[tuple[str, int] | str, float] = {}
    for node, i, _ in cmap.gathers:
        j = stage[node]
        lay = res[j].strategies[node].inputs[i] if res else None
        frac = lay.local_fraction({"tp": state.partition.stages[j].tp}) if lay else 1.0
        nbytes[(node, i)] = float(priced.values[graph.node(node).inputs[i]].nbytes or 0) * frac
    for o in graph.outputs:
        nbytes[o] = float(priced.values[o].nbytes or 0)
    return context_programs(models, cmap, cp, nbytes)
