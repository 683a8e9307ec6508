"""Context-parallel device files: a rank's instantiated model rewritten for its chunk.

The ``lower`` pass made every rank ``cp`` times (:mod:`shardc.passes.lower_context`), each
copy with its own comm ranks and its K/V and output gathers as priced comm steps; the
writer (:mod:`shardc.emit.devices`) instantiates a copy's template with its own comms and
:func:`context_model` then rewrites it for its sequence chunk. Why a rewrite of the
instantiated model and not a mesh axis of the walk: CP changes no weight shard and no
tensor-parallel collective, only the sequence each activation holds
(:mod:`shardc.partition.context` says where it is); so the tensor-, pipeline- and
data-parallel programs the plan already verifies are kept node for node, and each copy
gets (1) its chunk of the token input, (2) reshape targets and received shapes shrunk
along the sequence, (3) an all-gather over its cp group of every K and V (Llama 3's
all-gather attention), (4) its rows of the causal mask, positions and rotary tables, and
(5) an all-gather of each output's chunks, last, in the order the outputs are made.
With ``--cp-comm ring`` each attention is rewritten blockwise instead of gathering its K
and V (:mod:`shardc.emit.ring`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from shardc.emit.ring import masked_blocks, ring_nodes
from shardc.emit.zigzag import Zigzag
from shardc.errors import ShardcError
from shardc.plan.lowered import CP_LOCAL, CP_WHOLE
from shardc.plan.program import DOMAIN, Comm

_SHAPE_ARG = {"Reshape": 1, "Expand": 1}


class ContextEmitError(ShardcError):
    """A copy's device file disagrees with its program (a shardc bug, named)."""


def _base(name: str) -> str:
    return name.split("__", 1)[0]


def _const(name: str, array: np.ndarray, out: list[onnx.TensorProto]) -> str:
    out.append(numpy_helper.from_array(array, name))
    return name


def context_model(
    proto: onnx.ModelProto, cmap: Any, cp: int, c: int, comms: Sequence[Comm]
) -> onnx.ModelProto:
    """Copy ``c``'s device model (``cmap``: the lowering's
    :class:`~shardc.partition.context.ContextMap`) from its rank's instantiated model (its
    tensor- and pipeline-parallel comm nodes already filled with the copy's ranks) and its
    priced CP gathers ``comms`` (:func:`~shardc.plan.lowered.is_context_comm`, in program
    order; see the module doc).
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
    half = cmap.length // (2 * cp)
    outputs = {o.name for o in g.output}
    gathers = {(nd, i): d for nd, i, d in cmap.gathers}
    slices = {(nd, i): d for nd, i, d in cmap.slices}
    ring = {a.pv: a for a in cmap.ring}
    held = {n for a in cmap.ring for n in a.nodes}
    stash: dict[str, onnx.NodeProto] = {}

    def cut(value: str, dim: int, tag: str) -> str:
        name = f"{value}__cp{tag}{len(nodes)}"
        spans = ([(c * chunk, (c + 1) * chunk)] if not cmap.zigzag else
                 [(k * half, (k + 1) * half) for k in (c, 2 * cp - 1 - c)])
        parts = []
        for k, (lo, hi) in enumerate(spans):
            piece = name if len(spans) == 1 else f"{name}_{k}"
            s = _const(f"{piece}_s", np.array([lo], np.int64), added)
            e = _const(f"{piece}_e", np.array([hi], np.int64), added)
            a = _const(f"{piece}_a", np.array([dim], np.int64), added)
            nodes.append(helper.make_node("Slice", [value, s, e, a], [piece], name=piece))
            parts.append(piece)
        if len(parts) > 1:  # zigzag: chunks c and 2cp-1-c, joined
            nodes.append(helper.make_node("Concat", parts, [name], name=name, axis=dim))
        return name

    def gather(value: str, dim: int, out: str) -> None:
        if not pending:
            raise ContextEmitError(f"--pin cp: rank copy {c} has no priced gather for {out!r}")
        step = pending.pop(0)
        into = f"{out}__cpzigzag" if cmap.zigzag else out
        nodes.append(helper.make_node(
            "AllGather", [value], [into], name=f"{out}__cpgather", domain=DOMAIN,
            group=list(step.group), tag=step.tag, algorithm=step.algorithm, axis=dim))
        if cmap.zigzag:  # copy k brought chunks k and 2cp-1-k: put the 2cp in order
            pieces = [f"{into}_{k}" for k in range(2 * cp)]
            nodes.append(helper.make_node("Split", [into], pieces, name=f"{into}_split",
                                          axis=dim, num_outputs=2 * cp))
            at = [2 * k if k < cp else 2 * (2 * cp - 1 - k) + 1 for k in range(2 * cp)]
            nodes.append(helper.make_node("Concat", [pieces[i] for i in at], [out],
                                          name=f"{into}_order", axis=dim))

    for inp in g.input:
        if inp.name in cmap.inputs:
            rename[inp.name] = cut(inp.name, cmap.inputs[inp.name], "in")
    def take(op: str) -> Comm:
        if not pending or pending[0].op != op:
            raise ContextEmitError(f"--cp-comm ring: rank copy {c} has no priced {op} next")
        return pending.pop(0)

    def chunk_outputs(nd: onnx.NodeProto) -> None:
        """A chunked graph output made under a local name, gathered into it last."""
        for j, o in enumerate(nd.output):
            if o in outputs and cmap.dims.get(_base(o)) is not None:
                local = f"{o}{CP_LOCAL}"
                nd.output[j] = rename[o] = local
                finals.append((local, o))

    def zigzag_of(a: Any) -> Callable[[], Zigzag] | None:
        if not cmap.zigzag:
            return None

        def make() -> Zigzag:
            return Zigzag(a, stash, c, cp, cmap.length, g, m.opset_import, slices,
                          lambda name: _shape_const(name, inits, g.node),
                          int(np.prod(a.k_shape)), int(np.prod(a.v_shape)))
        return make

    for node in g.node:
        nd = onnx.NodeProto()
        nd.CopyFrom(node)
        for i, v in enumerate(nd.input):
            if v in rename:
                nd.input[i] = rename[v]
        if nd.name in held:  # a ring attention's node: rewritten blockwise at its P·V
            stash[nd.name] = nd
            if nd.name in ring:
                chunk_outputs(nd)  # an attention whose output is the graph's
                a = ring[nd.name]
                skip = (frozenset() if cmap.zigzag else
                        masked_blocks(g, m.opset_import, a, stash, slices, c, chunk, cp))
                nodes.extend(ring_nodes(
                    a, stash, c, cp, chunk, take,
                    lambda n, i: (cut(stash[n].input[i], slices[(n, i)], "rows")
                                  if (n, i) in slices else stash[n].input[i]),
                    lambda name: _shape_const(name, inits, g.node), added, skip,
                    zigzag_of(a)))
            continue
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
                whole = f"{v}{CP_WHOLE}{len(nodes)}"
                gather(v, gathers[(nd.name, i)], whole)
                nd.input[i] = whole
            elif (nd.name, i) in slices:
                nd.input[i] = cut(v, slices[(nd.name, i)], "rows")
        chunk_outputs(nd)
        nodes.append(nd)
    for local, o in finals:  # last, in the order made: the program's own order
        gather(local, cmap.dims[_base(o)], o)
    if pending:
        raise ContextEmitError(f"--pin cp: rank copy {c}: {len(pending)} priced gathers unplaced")
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(added)
    return m


def _shrink(nd: onnx.NodeProto, cmap: Any, cp: int) -> None:
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
    raise ContextEmitError(f"--pin cp: the shape {name!r} of a chunked reshape is not a constant")
