"""Sharding rules for the views and data movement ops: Reshape, Transpose, Expand,
Slice/Pad/Tile, Concat, Split and the shape arithmetic ops.

Why a module of their own: these ops move data without computing on it, so each rule is
a dim mapping (which input dim an output dim runs along) and the op follows its input's
layout; they share the reshape grouping and same-size helpers of
:mod:`shardc.strategy.rules` and nothing with the products or reductions.
"""

from __future__ import annotations

from typing import cast

from shardc.ir.opfamilies import SHAPE_OPS, VIEWS
from shardc.strategy.rules import (
    Ctx,
    OpDims,
    _follower,
    _from_column,
    axis_loops,
    broadcast_loops,
    norm_axis,
    reshape_loops,
    rule,
    same_size_loops,
)


# -- views and data movement (followers too) -----------------------------------------------
@rule(*VIEWS)
@_follower("all", args=(1,))
def _reshape(ctx: Ctx) -> OpDims:
    """Views: the dim mapping of :func:`reshape_groups` (axes are implied by the shapes)."""
    return OpDims(reshape_loops(ctx))


@rule("Transpose")
@_follower("all")
def _transpose(ctx: Ctx) -> OpDims:
    """Output dim j runs along input dim perm[j]."""
    src = ctx.in_shape(0)
    if src is None:
        return OpDims()
    perm = cast(tuple[int, ...], ctx.node.attr("perm") or tuple(reversed(range(len(src)))))
    return OpDims(tuple(ctx.loop(f"d{j}", {0: int(p)}, {0: j}) for j, p in enumerate(perm)))


@rule("Expand")
@_follower("all", args=(1,))
def _expand(ctx: Ctx) -> OpDims:
    """Broadcast dims exist in the output only; the others split with the input."""
    return OpDims(broadcast_loops(ctx, args=(1,)))


@rule("Slice", "Pad", "Tile")
@_follower("all", args=(1, 2, 3, 4))
def _slice(ctx: Ctx) -> OpDims:
    """A dim the op cuts, pads or repeats is fixed; a dim it keeps whole stays parallel."""
    return OpDims(same_size_loops(ctx, args=(1, 2, 3, 4)))


@rule("Concat")
@_follower("all")
def _concat(ctx: Ctx) -> OpDims:
    """Concatenated pieces split alike on every dim but the concat axis."""
    out = ctx.out_shape(0)
    if out is None:
        return OpDims()
    axis = norm_axis(ctx.attr_int("axis", 0), len(out))
    return OpDims(axis_loops(ctx, {axis}))


@rule("Split")
@_follower("all", args=(1,))
def _split(ctx: Ctx) -> OpDims:
    """Pieces split alike on the other dims; the split axis stays whole, except on a fused
    projection (GPT-2's QKV), whose weight emit can lay out piece by piece per rank.
    """
    src = ctx.in_shape(0)
    if src is None:
        return OpDims()
    axis = norm_axis(ctx.attr_int("axis", 0), len(src))
    outs = range(len(ctx.node.outputs))
    fused = axis == len(src) - 1 and _from_column(ctx.graph, ctx.params, ctx.node.inputs[0])
    loops = [
        ctx.loop(
            "pieces" if d == axis else f"d{d}",
            {0: d},
            dict.fromkeys(outs, d),
            kind="parallel" if d != axis or fused else "fixed",
            notes=("fused projection: each rank's weight columns are its part of every piece",)
            if d == axis
            else (),
        )
        for d in range(len(src))
    ]
    return OpDims(tuple(loops))


@rule(*SHAPE_OPS)
@_follower("none", args=(0, 1, 2))
def _shape_op(ctx: Ctx) -> OpDims:
    """Shape arithmetic reads only metadata or constants: replicated, and free to have."""
    return OpDims()
