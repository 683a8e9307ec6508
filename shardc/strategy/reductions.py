"""Sharding rules for the ops that mix a dim: normalisations, Softmax and its kin,
cumulative ops and reductions.

Why a module of their own: every rule here fixes the dims the op reduces or normalises
over (``fixed`` loops, or ``sum`` loops where a split leaves partial results) and keeps
the others parallel, one family of axis handling shared through ``_reduce_loops``.
"""

from __future__ import annotations

from shardc.ir.opfamilies import ALONG_AXIS, LAYER_NORMS, REDUCTIONS, SCANS
from shardc.strategy.rules import (
    Ctx,
    Loop,
    OpDims,
    Shape,
    axis_loops,
    norm_axis,
    rule,
)
from shardc.vocabulary import StrategyName as S


# -- normalisations, softmax, reductions ---------------------------------------------------
@rule(*LAYER_NORMS)
def _layer_norm(ctx: Ctx) -> OpDims:
    """Normalised dims (``axis`` to the end) stay whole; the leading ones split freely,
    including the sequence over tp between tensor-parallel regions (Megatron-SP).
    """
    x = ctx.in_shape(0)
    if x is None:
        return OpDims()
    axis = norm_axis(ctx.attr_int("axis", -1), len(x))
    outs = range(len(ctx.node.outputs))
    loops = []
    for d in range(len(x)):
        params = {i: d - axis for i in range(1, ctx.n_in) if ctx.node.inputs[i] and d >= axis}
        loops.append(
            ctx.loop(
                f"d{d}",
                {0: d, **params},
                dict.fromkeys(outs, d),
                kind="fixed" if d >= axis else "parallel",
            )
        )
    return OpDims(tuple(loops), seq_tp=True)


@rule("InstanceNormalization", "GroupNormalization")
def _channel_norm(ctx: Ctx) -> OpDims:
    """Instance norm: batch and channels parallel; group norm: batch only."""
    x = ctx.in_shape(0)
    if x is None or len(x) < 2:
        return OpDims()
    group = ctx.node.op_type == "GroupNormalization"
    fixed = set(range(1 if group else 2, len(x)))
    loops = list(axis_loops(ctx, fixed, args=(1, 2)))
    if not group:
        loops[1] = ctx.loop(S.CHANNELS, {0: 1, 1: 0, 2: 0}, {0: 1}, unlabeled="tp")
    return OpDims(tuple(loops))


@rule(*ALONG_AXIS)
def _along_axis(ctx: Ctx) -> OpDims:
    """Ops that mix one axis (every dim from ``axis`` on, for Softmax before opset 13)."""
    x = ctx.in_shape(0)
    if x is None:
        return OpDims()
    old_softmax = ctx.node.op_type in ("Softmax", "LogSoftmax", "Hardmax") and ctx.opset < 13
    arg = ctx.node.op_type in ("ArgMax", "ArgMin")  # whose axis defaults to 0
    axis = norm_axis(ctx.attr_int("axis", 1 if old_softmax else 0 if arg else -1), len(x))
    fixed = set(range(axis, len(x))) if old_softmax else {axis}
    if arg:
        return OpDims(
            _reduce_loops(ctx, x, fixed, keep=bool(ctx.attr_int("keepdims", 1)), summed=False)
        )
    return OpDims(axis_loops(ctx, fixed, args=(1,)))


@rule(*SCANS)
def _cumsum(ctx: Ctx) -> OpDims:
    """A running sum (or product) mixes its axis (a constant input)."""
    x, axis = ctx.in_shape(0), ctx.ints(1)
    if x is None or not axis:
        return OpDims()
    return OpDims(axis_loops(ctx, {norm_axis(axis[0], len(x))}, args=(1,)))


def _reduce_loops(
    ctx: Ctx,
    x: Shape,
    axes: set[int],
    *,
    keep: bool,
    summed: bool,
) -> tuple[Loop, ...]:
    loops, j = [], 0
    for d in range(len(x)):
        if d in axes:
            kind, axis = ("sum", "tp") if summed else ("fixed", None)
            loops.append(
                ctx.loop(f"d{d}", {0: d}, {0: j} if keep else {}, kind=kind, unlabeled=axis)
            )
        else:
            loops.append(ctx.loop(f"d{d}", {0: d}, {0: j}))
        j += 1 if keep or d not in axes else 0
    return tuple(loops)


@rule(*REDUCTIONS)
def _reduce(ctx: Ctx) -> OpDims:
    """Kept dims split freely; a reduced dim splits only under ReduceSum (partial sums out).
    ReduceMean over a split dim would be partial too, but what follows it (RMSNorm's
    ``+ eps``, ``sqrt``) is not linear, so it is kept whole.
    """
    x = ctx.in_shape(0)
    if x is None:
        return OpDims()
    attr_axes = ctx.node.attr("axes")
    axes = ctx.ints(1) if ctx.n_in > 1 and ctx.node.inputs[1] else attr_axes
    if axes is None and ctx.n_in > 1 and ctx.node.inputs[1]:
        return OpDims(args=frozenset({1}))  # axes computed at run time: cannot tell
    if not axes:
        noop = ctx.attr_int("noop_with_empty_axes", 0)
        axes = () if noop else tuple(range(len(x)))
    reduced = {norm_axis(int(a), len(x)) for a in axes}  # type: ignore[union-attr]
    loops = _reduce_loops(
        ctx,
        x,
        reduced,
        keep=bool(ctx.attr_int("keepdims", 1)),
        summed=ctx.node.op_type == "ReduceSum",
    )
    return OpDims(loops, args=frozenset({1}), seq_tp=True)
