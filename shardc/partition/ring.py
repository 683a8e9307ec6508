"""Ring attention: context parallelism that passes K and V round the cp group.

Why a variant next to the all-gather (:mod:`shardc.partition.context`): the all-gather
holds every rank's K and V whole before attention starts, and its time is exposed. The
ring (Liu et al., "Ring Attention with Blockwise Transformers", 2023; Megatron-LM's
default ``cp_comm_type="p2p"``) has rank ``c`` attend its query chunk to one K/V chunk at
a time: at step ``t`` it holds the chunk of rank ``c − t`` (its own first), sends it on to
``c + 1`` while it computes that block, and receives the next from ``c − 1``. Blocks are
combined with the online-softmax rule (running row max ``m``, sum ``l`` and output ``o``;
Milakov & Gimelshein 2018, as FlashAttention does), so the result is the softmax over the
whole sequence. ``cp − 1`` transfers of one chunk each, each overlapped with a block's
compute: exposed ``max(0, transfer − block)`` per step on a ring of equal hops
(:func:`ring_exposed` for unequal ones), and two chunks in flight instead of the whole
gathered K/V.

``--cp-comm zigzag`` runs the ring on the load-balanced causal split (rank ``c`` holds
chunks ``c`` and ``2cp − 1 − c``: :func:`zigzag_shares`, :mod:`shardc.emit.zigzag`).

This module recognises the attentions the ring can run and prices them; the lowering
(:mod:`shardc.passes.lower_context`) lays the steps out and the emitter
(:mod:`shardc.emit.ring`) writes the blockwise programs. An attention is
``MatMul(Q, K') → pointwise (scale, mask add) → Softmax(last axis) → MatMul(·, V')``
where ``K'`` and ``V'`` reach the two MatMuls through views of the values CP gathers
(GPT-2's reshape/transpose, Llama's grouped-query expand), as transformers' eager and
SDPA attention export with ``torch.onnx.export(dynamo=True)``. A graph whose gathered K/V
feed anything else is refused with a one-line :class:`ContextError`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shardc.ir import Graph, Node
from shardc.partition.context import Consts, ContextError, ContextMap, _out_dim, _shape

_MIDS = frozenset({"Mul", "Div", "Add", "Sub"})
"""Ops allowed between the scores and the softmax (the scale and the mask)."""


@dataclass(frozen=True)
class RingAttention:
    """One attention the ring runs, by node names (see the module doc)."""

    qk: str
    """``MatMul(Q, K')``: the scores of the rank's queries against a K chunk."""
    mids: tuple[str, ...]
    """Pointwise ops from the scores to the softmax (the scale, the mask add)."""
    softmax: str
    pv: str
    """``MatMul(P, V')``: its output is the attention's, rebuilt from the blocks."""
    k: tuple[str, int, int]
    """K's gather point (node, input, sequence dim), as :attr:`ContextMap.gathers`."""
    v: tuple[str, int, int]
    k_chain: tuple[str, ...] = ()
    """Views from K's gather point to the second operand of :attr:`qk`."""
    v_chain: tuple[str, ...] = ()
    dims: Mapping[str, int] = field(default_factory=dict)
    """Chain node -> the sequence dim of its output (a chunk in every block)."""
    cuts: tuple[tuple[str, int, int], ...] = ()
    """(mid node, input, dim): an operand (the mask) that spans the keys, cut per block."""
    q_dim: int = -1
    """The sequence dim of Q (:attr:`qk`'s first operand): zigzag cuts its two halves."""
    out_dim: int = -1
    """The sequence dim of the attention's output."""
    k_shape: tuple[int, ...] = ()
    """K's chunk at the gather point on one TP rank (set by the lowering)."""
    v_shape: tuple[int, ...] = ()
    dtype: int = 1
    """ONNX element type of K and V (the model's own)."""

    @property
    def nodes(self) -> tuple[str, ...]:
        """The per-block work: both chains, the scores, the mask, softmax and ``P·V``."""
        return (*self.k_chain, *self.v_chain, self.qk, *self.mids, self.softmax, self.pv)


def _refuse(node: Node | str, why: str) -> ContextError:
    name = node if isinstance(node, str) else node.name
    return ContextError(f"--cp-comm ring: {name!r} {why}; the ring runs MatMul(Q, K') → "
                        "scale/mask → Softmax → MatMul(·, V') only (use --cp-comm allgather)")


def _chain(graph: Graph, point: tuple[str, int, int]) -> tuple[list[str], Node]:
    """The views from a gather point to the MatMul that reads it as its second operand."""
    node, i, _ = point
    chain: list[str] = []
    cur, value = graph.node(node), graph.node(node).inputs[i]
    while not (cur.op_type == "MatMul" and cur.inputs[1] == value):
        if cur.op_type not in ("Reshape", "Expand", "Unsqueeze", "Squeeze", "Transpose"):
            raise _refuse(cur, f"reads a gathered K/V ({cur.op_type}, not a view)")
        chain.append(cur.name)
        value = cur.outputs[0]
        users = graph.consumers(value)
        if len(users) != 1 or value in graph.outputs:
            raise _refuse(cur, "shares a K/V view with other nodes")
        cur = users[0]
    return chain, cur


def _single_user(graph: Graph, node: Node) -> Node:
    users = graph.consumers(node.outputs[0])
    if len(users) != 1 or node.outputs[0] in graph.outputs:
        raise _refuse(node, "feeds more than the next step of the attention")
    return users[0]


def ring_attentions(graph: Graph, cmap: ContextMap, consts: Consts) -> tuple[RingAttention, ...]:
    """Every gathered K/V of ``cmap`` as part of one :class:`RingAttention`, in graph order.

    Raises :class:`ContextError` (one line) for a gathered value the pattern does not
    cover, so a plan is refused rather than emitted wrong.
    """
    points = {(nd, i): d for nd, i, d in cmap.gathers}
    by_matmul: dict[str, tuple[tuple[str, int, int], list[str]]] = {}
    for (nd, i), d in points.items():
        chain, mm = _chain(graph, (nd, i, d))
        by_matmul[mm.name] = ((nd, i, d), chain)
    out: list[RingAttention] = []
    order = {n.name: k for k, n in enumerate(graph.nodes)}
    for name in sorted(by_matmul, key=order.__getitem__):
        if any(a.pv == name for a in out):
            continue  # a P·V: reached from its Q·K'
        qk = graph.node(name)
        user = _single_user(graph, qk)
        if user.op_type == "MatMul":
            raise _refuse(qk, "feeds a MatMul without a softmax between")
        mids: list[str] = []
        while user.op_type in _MIDS:
            mids.append(user.name)
            user = _single_user(graph, user)
        rank = len(_shape(graph, qk.outputs[0]) or ())
        axis = user.attr("axis", -1)
        last = isinstance(axis, int) and axis % max(rank, 1) == rank - 1
        if user.op_type != "Softmax" or not last:
            raise _refuse(user, "is not a softmax over the keys after the scores")
        pv = _single_user(graph, user)
        if pv.op_type != "MatMul" or pv.inputs[0] != user.outputs[0] or pv.name not in by_matmul:
            raise _refuse(pv, "is not MatMul(softmax, gathered V)")
        (kp, kc), (vp, vc) = by_matmul[qk.name], by_matmul[pv.name]
        dims = _chain_dims(graph, kp, kc, cmap.length, consts)
        dims.update(_chain_dims(graph, vp, vc, cmap.length, consts))
        cuts = _cuts(graph, mids, qk, cmap)
        out.append(RingAttention(qk.name, tuple(mids), user.name, pv.name, kp, vp, tuple(kc),
                                 tuple(vc), dims, cuts, cmap.dims.get(qk.inputs[0], -1),
                                 cmap.dims.get(pv.outputs[0], -1)))
    covered = {a.pv for a in out} | {a.qk for a in out}
    for name in by_matmul:
        if name not in covered:
            raise _refuse(name, "reads a gathered K/V outside an attention")
    return tuple(out)


def _chain_dims(
    graph: Graph, point: tuple[str, int, int], chain: Sequence[str], length: int, consts: Consts
) -> dict[str, int]:
    """The sequence dim of each chain node's output, tracked from the gather point."""
    out, k = {}, point[2]
    for name in chain:
        got = _out_dim(graph, graph.node(name), {0: k}, length, [], [], consts)
        if got is None:
            raise _refuse(name, "loses the sequence of K/V")
        out[name] = k = got
    return out


def _cuts(
    graph: Graph, mids: Sequence[str], qk: Node, cmap: ContextMap
) -> tuple[tuple[str, int, int], ...]:
    """Operands of the scale/mask ops that span the keys (the mask's columns)."""
    score = _shape(graph, qk.outputs[0])
    assert score is not None
    out = []
    for name in mids:
        node = graph.node(name)
        for i, v in enumerate(node.inputs):
            shp = _shape(graph, v) if v else None
            if not v or v in cmap.dims or shp is None or not shp:
                continue
            d = len(shp) - 1  # right-aligned with the scores' last dim: the keys
            if shp[d] == score[-1] and score[-1] > 1:
                out.append((name, i, d))
    return tuple(out)


def ring_map(graph: Graph, cmap: ContextMap, cp: int, comm: str, consts: Consts) -> ContextMap:
    """``cmap`` with the ring attentions of ``--cp-comm ring`` or ``zigzag`` (raises
    :class:`ContextError` where the ring cannot run; zigzag also where the sequence does
    not split into ``2cp`` chunks or an attention has no mask to balance).
    """
    from dataclasses import replace

    ring = ring_attentions(graph, cmap, consts)
    if comm != "zigzag":
        return replace(cmap, ring=ring)
    if cmap.length % (2 * cp):
        raise ContextError(f"--cp-comm zigzag: the sequence (length {cmap.length}) does not "
                           f"split into 2 x cp = {2 * cp} chunks")
    for a in ring:
        if not any(graph.node(n).op_type == "Add" for n, _, _ in a.cuts):
            raise _refuse(a.qk, "has no causal mask to balance (zigzag is for causal attention)")
        if a.q_dim < 0 or a.out_dim < 0:
            raise _refuse(a.qk, "has no sequence dim on its queries or output")
    return replace(cmap, ring=ring, zigzag=True)


def block_shares(cp: int, zigzag: bool) -> tuple[float, ...]:
    """Each step's share of an attention's work: ``1/cp`` (contiguous chunks, priced as
    the last rank, which skips no block) or :func:`zigzag_shares`.
    """
    return zigzag_shares(cp) if zigzag else tuple(1.0 / cp for _ in range(cp))


def zigzag_shares(cp: int) -> tuple[float, ...]:
    """Each step's share of an attention's work for every rank under the causal zigzag
    split: the own block is three of its four (query half × key half) quarters (the
    quarter above the diagonal is masked), every other block two (Megatron-LM's
    ``AttnFuncWithCPAndKVP2P``: all queries against the first key half, or the second
    query half against both). Every rank does ``3/4 + (cp − 1)/2`` blocks, where the
    contiguous split leaves the last rank all ``cp``.
    """
    return (0.75 / cp, *(0.5 / cp for _ in range(cp - 1)))


# -- pricing: what the emitted programs do, through the cost model's functions ------------
def ring_exposed(hops: Sequence[float], blocks: Sequence[float]) -> float:
    """Seconds a ring attention's transfers add to its blocks' compute: ``blocks[t]`` the
    time of the block of step ``t`` (``cp`` of them), ``hops[i]`` the time of one chunk
    from member ``i`` of the ring to member ``i + 1``.

    Each rank sends the chunk it holds as it starts a block and starts the next block
    when both that block and the chunk from the member behind it are done:
    ``start(c, t+1) = max(start(c, t) + blocks[t], start(c−1, t) + hops[c−1])``. The
    longest path to the last block of rank ``c`` takes ``k ≤ cp − 1`` consecutive hops
    into ``c`` and the ``cp − 1 − k`` longest of the other steps' blocks; with equal hops
    and blocks that is ``(cp − 1)·max(0, hop − block)``, while a slow hop (cp across
    nodes) delays the members downstream of it once, not every step. The timeline
    (:mod:`shardc.plan.simulate`) runs the programs by the same rule (Sends beside
    compute), so both arrive at this figure when an attention's ranks start it together.
    """
    cp = len(hops)
    steps = sorted(blocks[:-1], reverse=True)
    top = [sum(steps[:m]) for m in range(cp)]  # the m longest steps
    base, worst = sum(steps), 0.0
    for c in range(cp):
        total = 0.0
        for k in range(1, cp):
            total += hops[(c - k) % cp]
            worst = max(worst, total + top[cp - 1 - k] - base)
    return worst


def run_seconds(
    pairs: Sequence[tuple[Any, Any]], time: Callable[[list[Any], Any], float],
    share: float = 1.0,
) -> float:
    """A run's forward time: its nodes (``(NodeCost, ShardScale)`` pairs) grouped by
    scale, priced by ``time`` (the cost model's ``prefill_time``), times ``share`` (a ring
    block: ``1/cp`` of its nodes' work). The partitioner's ring blocks and every compute
    step of the ``price`` pass go through it, so the two agree.
    """
    groups: dict[Any, list[Any]] = {}
    for cost, scale in pairs:
        groups.setdefault(scale, []).append(cost)
    total = sum(time(g, s) for s, g in groups.items())
    return total if share == 1.0 else total * share


def kv_chunk_bytes(a: RingAttention, operand_bytes: Callable[[str, int], float], cp: int) -> float:
    """Bytes of one ring transfer: K's and V's chunk on one TP rank (``operand_bytes`` is
    the whole gathered operand, as the all-gather prices it).
    """
    return (operand_bytes(a.k[0], a.k[1]) + operand_bytes(a.v[0], a.v[1])) / cp


def ring_comm_seconds(
    hops: Callable[[float], Sequence[float]], chunk: float, blocks: Sequence[float],
    training: bool, recompute: str,
) -> float:
    """Exposed ring time of one attention per micro-batch: the forward's
    :func:`ring_exposed`; training adds the backward, whose ring carries K/V and their
    gradients as two transfers per step (Megatron-LM's ``AttnFuncWithCPAndKVP2P.backward``
    sends ``kv`` and ``dkv`` apart) the other way round beside a block's backward (twice
    its forward), and full recomputation the forward again. ``hops(nbytes)``: a
    transfer's time on each hop of the cp ring, in ring order; ``blocks``: each step's
    block time. The timeline prices a backward ring step the same way: its forward
    transfer twice, with twice the bytes on the links (:mod:`shardc.plan.simulate`).
    """
    one = hops(chunk)
    fwd = ring_exposed(one, blocks)
    if not training:
        return fwd
    bwd = ring_exposed([2 * h for h in reversed(one)], [2 * b for b in reversed(blocks)])
    return fwd + bwd + (fwd if recompute == "full" else 0.0)


RING_KEPT = 2
"""K/V chunks a rank holds beyond its own during a ring attention: the block it computes
and the one arriving (Megatron-LM double-buffers them)."""


def in_flight_bytes(chunk: float, cp: int) -> float:
    """Memory the ring adds to a rank's own K/V chunk while an attention runs."""
    return min(RING_KEPT, cp - 1) * chunk
