"""Per-op sharding rules: how each op's tensor dims line up, one small function per family.

A rule describes an op as *loops*, the way an einsum does: one :class:`Loop` per
iteration dimension, naming the dim of every input and output it runs along. Splitting a
loop along a mesh axis splits all those dims at once, which is what makes a strategy
legal: a column-parallel MatMul is its N loop split, a row-parallel one its contracted K
loop split (a ``sum`` loop, so the output holds partial sums), attention by heads is a
batch loop of the batched matmul split. ``fixed`` loops are dims the op mixes (the
Softmax axis, a norm's normalised dims, the dims a Reshape folds behind another) and
cannot be split. The generic machinery in :mod:`shardc.strategy.table` turns loops
into :class:`~shardc.sharding.Strategy` lists, propagates the batch/sequence dim labels
that decide between ``dp`` and ``sp``, and derives what elementwise and view ops (the
*followers*) do from their inputs. Rules that need more than loops (the expert
all-to-all, KV heads kept whole) add ready-made strategies in ``OpDims.extra``.

This module is the core the rule families share. The loop vocabulary (:class:`Loop`,
:class:`OpDims`, :class:`Ctx`, ``RULES`` and ``@rule``, the shape helpers) lives in
:mod:`~shardc.strategy.base` and is re-exported here; the walks over the graph around
a node, the follower marking and :func:`product_loops` are defined here. The rules live
in one module per op family, which the package imports so that importing any part of it
files every rule: :mod:`~shardc.strategy.elementwise`, :mod:`~shardc.strategy.views`,
:mod:`~shardc.strategy.products`, :mod:`~shardc.strategy.reductions`,
:mod:`~shardc.strategy.gathers` and :mod:`~shardc.strategy.contrib`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from shardc.ir import Graph
from shardc.sharding import Reshard, Strategy, TensorSharding
from shardc.strategy.base import (
    _FOLLOWER_RULES,
    RULES,
    Ctx,
    Loop,
    OpDims,
    Rule,
    Shape,
    axis_loops,
    broadcast_loops,
    norm_axis,
    reshape_groups,
    reshape_loops,
    rule,
    same,
    same_size_loops,
)
from shardc.vocabulary import StrategyName as S

__all__ = [
    "RULES",
    "Built",
    "Ctx",
    "Loop",
    "OpDims",
    "Rule",
    "Shape",
    "axis_loops",
    "broadcast_loops",
    "feeds_experts",
    "heads_after",
    "heads_before",
    "is_follower",
    "norm_axis",
    "param_values",
    "product_loops",
    "reaches_output",
    "reshape_groups",
    "reshape_loops",
    "rule",
    "same",
    "same_size_loops",
    "sharding",
]
"""The rule API: the loop vocabulary re-exported from :mod:`~shardc.strategy.base`,
and the helpers defined here."""

# -- parameters and the graph around a node -----------------------------------------------


def is_follower(op: str) -> bool:
    """Whether ``op`` (qualified) is a follower: its layout follows its inputs'. The graph
    walks below step over followers; asked of ``RULES`` when walked, so a family module
    filed later counts too.
    """
    return RULES.get(op) in _FOLLOWER_RULES



def param_values(graph: Graph) -> frozenset[str]:
    """Weights, constants and everything computed from them alone (a transposed weight)."""
    params = {v.name for v in graph.values.values() if v.is_weight or v.const is not None}
    for node in graph.nodes:
        data = [i for i in node.present_inputs]
        if all(i in params for i in data):
            params.update(o for o in node.outputs if o)
    return frozenset(params)


def _chain(graph: Graph, value: str, dim: int, down: bool, depth: int = 8) -> int | None:
    """Walk followers from ``value`` to the Reshape that splits (down) or merges (up) ``dim``
    into heads; the head count, the leading size of that group.
    """
    for _ in range(depth):
        nodes = graph.consumers(value) if down else [p] if (p := graph.producer(value)) else []
        node = next((n for n in nodes if is_follower(n.qualified_op)), None)
        if node is None:
            return None
        src = graph.values[node.inputs[0]].type if node.inputs[0] else None
        dst = graph.values[node.outputs[0]].type
        if src is None or dst is None or src.shape is None or dst.shape is None:
            return None
        if node.op_type in ("Reshape", "Flatten"):
            for gi, go in reshape_groups(src.shape, dst.shape):
                near, far = (gi, go) if down else (go, gi)
                if near[0] == dim and len(far) > 1:
                    heads = (dst.shape if down else src.shape)[far[0]]
                    return heads if isinstance(heads, int) else None
                if near[0] == dim:
                    dim = far[0]
                    break
            else:
                return None
        elif len(src.shape) != len(dst.shape):
            return None
        value = node.outputs[0] if down else node.inputs[0]
    return None


def heads_after(ctx: Ctx, value: str, dim: int) -> tuple[tuple[str, int], ...]:
    """``(("tp", heads),)`` when ``dim`` of ``value`` is later viewed as ``[heads, d]``."""
    h = _chain(ctx.graph, value, dim, down=True)
    return (("tp", h),) if h and h > 1 else ()


def heads_before(ctx: Ctx, value: str, dim: int) -> tuple[tuple[str, int], ...]:
    """``(("tp", heads),)`` when ``dim`` of ``value`` was merged from ``[heads, d]``."""
    h = _chain(ctx.graph, value, dim, down=False)
    return (("tp", h),) if h and h > 1 else ()


def reaches_output(graph: Graph, value: str, depth: int = 6) -> bool:
    """``value`` is a graph output, or becomes one through followers (logits)."""
    for _ in range(depth):
        if value in graph.outputs:
            return True
        nxt = [n for n in graph.consumers(value) if is_follower(n.qualified_op)]
        if len(nxt) != 1:
            return False
        value = nxt[0].outputs[0]
    return False


def feeds_experts(
    graph: Graph, params: frozenset[str], value: str, down: bool, depth: int = 6
) -> bool:
    """``value`` reaches (down) or comes from (up) a MatMul with batched expert weights,
    through followers only: the tokens an expert all-to-all dispatches or combines.
    """
    for _ in range(depth):
        nodes = graph.consumers(value) if down else [p] if (p := graph.producer(value)) else []
        for n in nodes:
            if n.op_type == "MatMul":
                w = graph.values[n.inputs[1]]
                if w.name in params and w.type is not None and (w.type.rank or 0) >= 3:
                    return True
        nxt = [n for n in nodes if is_follower(n.qualified_op)]
        if len(nxt) != 1:
            return False
        value = nxt[0].outputs[0] if down else nxt[0].inputs[0]
    return False


def sharding(
    shape: Shape | None,
    dims: dict[int, str],
    partial: str | None = None,
) -> TensorSharding | None:
    """A sharding of a tensor of ``shape`` with ``{dim: axis}`` split (None if rank unknown)."""
    if shape is None:
        return None
    return TensorSharding(tuple(dims.get(d) for d in range(len(shape))), partial)


@dataclass
class Built:
    """Accumulates a hand-made strategy's operand shardings (for ``OpDims.extra``)."""

    ctx: Ctx
    ins: dict[int, dict[int, str]] = field(default_factory=dict)
    outs: dict[int, dict[int, str]] = field(default_factory=dict)
    args: frozenset[int] = frozenset()

    def strategy(self, name: str, comm: tuple[Reshard, ...] = (), **kw: object) -> Strategy:
        """The strategy with every operand not mentioned replicated."""
        ctx = self.ctx
        ins = tuple(
            None
            if i in self.args or not ctx.node.inputs[i]
            else sharding(ctx.in_shape(i), self.ins.get(i, {}))
            for i in range(ctx.n_in)
        )
        outs = tuple(
            sharding(ctx.out_shape(j), self.outs.get(j, {})) for j in range(len(ctx.node.outputs))
        )
        return Strategy(name, ins, outs, comm, **kw)  # type: ignore[arg-type]


# -- marking followers ---------------------------------------------------------------------
def _follower(linear: str, args: Iterable[int] = ()) -> Callable[[Rule], Rule]:
    """Mark a rule's op as a follower, with how partial sums pass it."""

    def deco(fn: Rule) -> Rule:
        def wrapped(ctx: Ctx) -> OpDims:
            dims = fn(ctx)
            return OpDims(dims.loops, follows=True, linear=linear, args=frozenset(args))

        _FOLLOWER_RULES.add(wrapped)
        return wrapped

    return deco


def _from_column(graph: Graph, params: frozenset[str], value: str, depth: int = 4) -> bool:
    """``value`` is a MatMul/Gemm output with a weight operand, seen through followers."""
    for _ in range(depth):
        p = graph.producer(value)
        if p is None:
            return False
        if p.op_type in ("MatMul", "Gemm"):
            return p.inputs[1] in params
        if not is_follower(p.qualified_op):
            return False
        value = p.inputs[0]
    return False


# -- batch loops of matrix products (shared with the contrib products) ---------------------
def product_loops(ctx: Ctx, a: int, b: int, wa: bool, wb: bool) -> list[Loop]:
    """Batch loops of ``[.., M, K] @ [.., K, N]``: experts on a batched weight, heads between
    activations, else by label.
    """
    sa, sb, y = ctx.in_shape(a), ctx.in_shape(b), ctx.out_shape(0)
    assert sa is not None and sb is not None and y is not None
    loops = []
    for j in range(len(y) - 2):
        ins = {}
        for i, s in ((a, sa), (b, sb)):
            d = j - (len(y) - len(s))
            if d >= 0 and same(s[d], y[j]):
                ins[i] = d
        if wb and b in ins:
            loops.append(ctx.loop(S.EXPERTS, ins, {0: j}, axis="tp"))
        else:
            loops.append(
                ctx.loop(
                    S.HEADS if not (wa or wb) else f"d{j}",
                    ins,
                    {0: j},
                    unlabeled=None if (wa or wb) else "tp",
                )
            )
    return loops
