"""Context parallelism (CP): where the sequence lives in every activation, and what the
attention needs whole.

Why an analysis of its own and not a strategy of the table: under CP each rank of a
``cp`` group holds a contiguous chunk of the sequence of *every* activation, and the
exports flatten ``[B, S, H]`` to ``[B·S, H]`` around each projection (GPT-2's Conv1D,
Llama's linear layers under dynamo). That flattened dim is no contiguous block split of
``B·S`` when ``B > 1``, so :class:`~shardc.sharding.TensorSharding` cannot say it; but
each rank's ``[B·S/cp, H]`` is exactly its rows, so the programs stay right as long as
the sequence is the *innermost* factor of the dim that holds it. This module tracks
that dim through the graph from the token input (labelled by the strategy table, not
guessed from names) and lists what CP must do beyond running every op on its chunk:

* an activation read as the *second* operand of a MatMul along its sequence (K in
  ``Q·Kᵀ``, V in ``P·V``) is gathered whole over the cp group: the all-gather-K/V
  attention of Llama 3 (Dubey et al. 2024, §3.3.2), one all-gather per operand;
* a value computed from constants alone (the causal mask, GPT-2's position rows, Llama's
  rotary cos/sin) that meets a chunked activation along the sequence is sliced to the
  rank's rows: that is the causal mask offset by the rank's sequence position, and the
  positions of its tokens;
* reshape/expand targets and received shapes shrink by ``cp`` along the sequence.

Anything that would need more (a reduction or a softmax over the sequence of a chunked
value, a Shape read of one, a reshape that mixes the sequence with inner dims) is a
:class:`ContextError` naming the node: the plan is refused rather than emitted wrong.
Ring attention (``--cp-comm ring``, :mod:`shardc.partition.ring`) passes the same K/V
chunks round the group instead, and ``--cp-comm zigzag`` runs it on Megatron's
load-balanced causal split (:attr:`ContextMap.zigzag`: two chunks per rank). Not done:
that split for the all-gather. What CP costs, and the cp degrees the search tries:
:mod:`shardc.partition.context_pricing`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shardc.errors import OptionError
from shardc.ir import Graph, Node
from shardc.vocabulary import StrategyName as S


class ContextError(OptionError):
    """CP cannot run this graph (names the node or the value and why)."""


_POINTWISE = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Where", "Tanh", "Sigmoid", "Relu", "Gelu", "Erf",
    "Neg", "Sqrt", "Reciprocal", "Exp", "Log", "Cast", "CastLike", "Identity", "Dropout",
    "Equal", "Less", "Greater", "And", "Or", "Not", "Max", "Min", "Abs", "Sin", "Cos",
    "Softmax", "LogSoftmax", "LayerNormalization", "SimplifiedLayerNormalization",
    "ReduceMean", "ReduceSum", "ReduceMax", "IsNaN", "Clip", "Silu", "FastGelu",
    "BiasGelu", "SkipLayerNormalization", "Floor", "Ceil", "Round", "Sign",
})
_VIEWS = frozenset({"Reshape", "Squeeze", "Unsqueeze", "Flatten"})
_AXIS_OPS = frozenset({"Softmax", "LogSoftmax", "LayerNormalization",
                       "SimplifiedLayerNormalization", "SkipLayerNormalization"})
_REDUCE = frozenset({"ReduceMean", "ReduceSum", "ReduceMax"})


@dataclass(frozen=True)
class ContextMap:
    """Where the sequence is, per value, and the extra work CP needs (see module doc)."""

    length: int
    """The sequence length the cp group splits."""
    dims: Mapping[str, int]
    """Value -> the dim whose innermost factor is the sequence (chunked values only)."""
    gathers: tuple[tuple[str, int, int], ...] = ()
    """(node, input index, dim): an operand gathered whole over cp before the node."""
    slices: tuple[tuple[str, int, int], ...] = ()
    """(node, input index, dim): a constant-derived operand cut to the rank's rows."""
    inputs: Mapping[str, int] = field(default_factory=dict)
    """Graph inputs that carry the sequence, and its dim: each rank slices its chunk."""
    outputs: tuple[str, ...] = ()
    """Chunked graph outputs: gathered over cp where the program ends."""
    made_by: Mapping[str, str] = field(default_factory=dict)
    """Chunked graph output -> the node that makes it."""
    ring: tuple[Any, ...] = ()
    """With ``--cp-comm ring``, the attentions that pass K/V round the cp group instead of
    gathering them (:class:`~shardc.partition.ring.RingAttention`, their gathers listed in
    :attr:`gathers` still: the values the ring moves); empty for the all-gather."""
    zigzag: bool = False
    """Each rank holds sequence chunks ``c`` and ``2cp − 1 − c`` of ``2cp`` (the
    load-balanced causal split, ``--cp-comm zigzag``) instead of chunk ``c`` of ``cp``."""


def _shape(graph: Graph, v: str) -> tuple[int, ...] | None:
    t = graph.values[v].type if v in graph.values else None
    dims = [d for d in (t.shape or ()) if isinstance(d, int)] if t is not None else []
    if t is None or t.shape is None or len(dims) != len(t.shape):
        return None
    return tuple(dims)


def _view_dim(inp: Sequence[int], k: int, out: Sequence[int], length: int) -> int | None:
    """The output dim of a view that holds the sequence as its innermost factor, or None:
    the product of the dims up to and including the sequence's must end at a dim boundary.
    """
    if inp[k] % length:
        return None
    edge = math.prod(inp[: k + 1])
    for j in range(len(out)):
        if math.prod(out[: j + 1]) == edge and out[j] % length == 0:
            return j
    return None


Consts = Callable[[str], Any]
"""A weight's array by name (None when it is not one): reads Slice axes, Reduce axes."""


def graph_consts(graph: Graph) -> Consts:
    """Small integer constants as the frontend recorded them (axes, shapes), else None."""
    import numpy as np

    def read(v: str) -> Any:
        val = graph.values.get(v)
        small = val.weight.small_value if val is not None and val.weight is not None else None
        if small is None and val is not None:
            small = val.const
        return None if small is None else np.asarray(small)

    return read


def context_map(
    graph: Graph,
    labels: Mapping[str, tuple[str | None, ...]],
    cp: int,
    consts: Consts | None = None,
) -> ContextMap:
    """Track the sequence from the graph inputs the strategy table labels ``seq``.

    Raises :class:`ContextError` (one line) when the graph has no sequence dim, the
    sequence does not divide by ``cp``, or an op would need the whole sequence of a
    chunked value.
    """
    consts = consts or graph_consts(graph)
    inputs: dict[str, int] = {}
    length = 0
    for v in graph.inputs:
        lab = labels.get(v, ())
        shape = _shape(graph, v)
        if S.SEQ in lab and shape is not None:
            k = lab.index(S.SEQ)
            if shape[k] > 1:
                inputs[v], length = k, shape[k]
    if not inputs:
        raise ContextError("--pin cp: the model's inputs carry no [batch, sequence] dim, so "
                           "there is no sequence to split over a cp group")
    if length % cp:
        raise ContextError(f"--pin cp={cp}: the sequence (length {length}) does not split "
                           f"over cp={cp}")
    dims: dict[str, int] = dict(inputs)
    gathers: list[tuple[str, int, int]] = []
    slices: list[tuple[str, int, int]] = []
    for node in graph.nodes:
        held = {i: dims[v] for i, v in enumerate(node.inputs) if v in dims}
        if not held:
            continue
        out = _out_dim(graph, node, held, length, gathers, slices, consts)
        for o in node.outputs:
            if o and out is not None:
                dims[o] = out
    gathers = _gather_early(graph, dims, gathers)
    outs = tuple(o for o in graph.outputs if o in dims)
    made = {o: p.name for o in outs if (p := graph.producer(o)) is not None}
    return ContextMap(length, dims, tuple(gathers), tuple(slices), inputs, outs, made)


_CHAIN = frozenset({"Reshape", "Expand", "Unsqueeze", "Squeeze", "Transpose"})


def _gather_early(
    graph: Graph, dims: dict[str, int], gathers: list[tuple[str, int, int]]
) -> list[tuple[str, int, int]]:
    """Each K/V gather moved up the chain of views that feeds it alone (Llama's
    grouped-query repeat, the transpose of K): the views then run on the whole sequence,
    so K and V cross the cp group once per KV head, not once per query head.
    """
    out = []
    for name, i, _ in gathers:
        v = graph.node(name).inputs[i]
        while True:
            p = graph.producer(v)
            if (p is None or p.op_type not in _CHAIN or v in graph.outputs
                    or len(graph.consumers(v)) != 1 or p.inputs[0] not in dims):
                break
            dims.pop(v, None)  # made whole: its reshape target keeps the full sequence
            name, i, v = p.name, 0, p.inputs[0]
        out.append((name, i, dims[v]))
    return out


def _refuse(node: Node, why: str) -> ContextError:
    return ContextError(f"--pin cp: node {node.name!r} ({node.op_type}) {why}; context "
                        "parallelism cannot split its sequence")


def _out_dim(
    graph: Graph,
    node: Node,
    held: Mapping[int, int],
    length: int,
    gathers: list[tuple[str, int, int]],
    slices: list[tuple[str, int, int]],
    consts: Consts,
) -> int | None:
    """The sequence dim of ``node``'s outputs, recording gathers and slices it needs."""
    op = node.op_type
    ins = [_shape(graph, v) if v else None for v in node.inputs]
    outs = [_shape(graph, o) if o else None for o in node.outputs]
    out = outs[0] if outs else None
    if op in ("Shape", "Size"):
        raise _refuse(node, "reads the shape of a chunked value")
    if out is None or any(ins[i] is None for i in held):
        raise _refuse(node, "has an unknown shape")
    if op in _VIEWS or op == "Expand":
        k = held.get(0)
        if k is None:
            raise _refuse(node, "takes its shape from a chunked value")
        inp = ins[0]
        assert inp is not None
        if op == "Expand":
            return k + len(out) - len(inp)
        j = _view_dim(inp, k, out, length)
        if j is None:
            raise _refuse(node, "mixes the sequence with inner dims")
        return j
    if op == "Transpose":
        given = node.attr("perm")
        perm = [int(p) for p in given] if isinstance(given, tuple) else list(
            reversed(range(len(out))))
        return perm.index(held[0])
    if op in ("MatMul", "Gemm"):
        a, b = ins[0], ins[1]
        assert a is not None and b is not None
        if 1 in held:  # K or V: the whole sequence over cp
            gathers.append((node.name, 1, held[1]))
        if 0 not in held:
            raise _refuse(node, "reads a chunked value only as its second operand")
        k = held[0]
        if k == len(a) - 1 or (op == "Gemm" and node.attr("transA")):
            raise _refuse(node, "contracts over the sequence")
        return k + len(out) - len(a)
    if op == "Gather":
        if 0 in held:
            raise _refuse(node, "gathers from a chunked table")
        axis = int(node.attr("axis", 0) or 0)  # type: ignore[arg-type]
        return axis + held[1]
    if op in ("Split", "Slice", "Concat"):
        k = held.get(0, next(iter(held.values())))
        cut = _axes(node, graph, consts)
        if op == "Concat" and len(held) != len([v for v in node.inputs if v]):
            raise _refuse(node, "joins chunked and whole values")
        if k in cut:
            raise _refuse(node, "cuts along the sequence")
        return k
    if op in _POINTWISE:
        return _pointwise(graph, node, held, ins, out, slices, consts)
    raise _refuse(node, "has no context-parallel rule")


def _axes(node: Node, graph: Graph, consts: Consts) -> set[int]:
    """The axes a Split/Concat/Slice works along (Slice: from its constant ``axes``)."""
    rank = len(_shape(graph, node.outputs[0]) or ())
    if node.op_type == "Slice":
        if len(node.inputs) > 3 and node.inputs[3]:
            arr = consts(node.inputs[3])
            if arr is None:
                return set(range(rank))
            return {int(a) % rank for a in arr.reshape(-1)}
        return set(range(rank))
    return {int(node.attr("axis", 0) or 0) % max(rank, 1)}  # type: ignore[arg-type]


def _pointwise(
    graph: Graph,
    node: Node,
    held: Mapping[int, int],
    ins: Sequence[tuple[int, ...] | None],
    out: tuple[int, ...],
    slices: list[tuple[str, int, int]],
    consts: Consts,
) -> int:
    """Broadcasting ops: the sequence keeps its right-aligned place; a whole operand that
    spans it (the mask, positions, cos/sin) is cut to the rank's rows.
    """
    i0, k0 = next(iter(held.items()))
    shape0 = ins[i0]
    assert shape0 is not None
    k = k0 + len(out) - len(shape0)
    if out[k] != shape0[k0]:
        raise _refuse(node, "changes the size of the sequence dim")
    if node.op_type in _AXIS_OPS or node.op_type in _REDUCE:
        axis = node.attr("axis", -1)
        spans = _reduced(node, len(shape0), axis, consts)  # type: ignore[arg-type]
        if k0 in spans:
            raise _refuse(node, "normalises or reduces over the sequence")
    for i, v in enumerate(node.inputs):
        if not v or i in held or ins[i] is None:
            continue
        shp = ins[i]
        assert shp is not None
        d = k - (len(out) - len(shp))
        if d >= 0 and shp[d] != 1:
            if shp[d] != out[k]:
                raise _refuse(node, f"broadcasts {v!r} against the sequence")
            slices.append((node.name, i, d))
    for i, d in held.items():
        if d + len(out) - len(ins[i] or ()) != k:
            raise _refuse(node, "meets two chunked values along different dims")
    return k


def _reduced(node: Node, rank: int, axis: int, consts: Consts) -> set[int]:
    """Dims a norm, softmax or reduction works across."""
    op = node.op_type
    if op in _REDUCE:
        given = node.attr("axes")
        axes = [int(a) for a in given] if isinstance(given, tuple) else None
        if axes is None and len(node.inputs) > 1 and node.inputs[1]:
            arr = consts(node.inputs[1])
            axes = None if arr is None else [int(a) for a in arr.reshape(-1)]
        if axes is None:
            return set(range(rank))
        return {a % rank for a in axes}
    if op in ("LayerNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization"):
        return set(range(int(axis) % rank, rank))
    return {int(axis) % rank}
