"""Sharding rules for gathers and scatters: embedding lookups and expert routing.

Why a module of their own: Gather on an embedding table is where vocab parallelism
starts, and ScatterND/GatherElements around batched expert weights are where the expert
all-to-all is built by hand (``OpDims.extra`` strategies via :class:`Built`); both need
their own token-dim and exchange helpers that nothing else uses.
"""

from __future__ import annotations

from shardc.sharding import Reshard, Strategy
from shardc.strategy.rules import (
    Built,
    Ctx,
    OpDims,
    axis_loops,
    feeds_experts,
    norm_axis,
    rule,
)
from shardc.vocabulary import StrategyName as S


# -- gathers and scatters: embeddings and expert routing -----------------------------------
@rule("Gather")
def _gather(ctx: Ctx) -> OpDims:
    """Embedding lookup: by the ids' batch/sequence, by hidden, or vocab-parallel (table
    rows split: each rank looks up the ids in its row range, masks the rest to zero, and
    the output holds partial sums). Gathering expert outputs back to their tokens (the
    MoE combine) is an all-to-all over ``ep``.
    """
    data, idx, out = ctx.in_shape(0), ctx.in_shape(1), ctx.out_shape(0)
    if data is None or idx is None or out is None:
        return OpDims()
    a, q = norm_axis(ctx.attr_int("axis", 0), len(data)), len(idx)
    table = ctx.is_param(0)
    loops = [ctx.loop(f"d{d}", {0: d}, {0: d}) for d in range(a)]
    loops += [ctx.loop(f"i{d}", {1: d}, {0: a + d}) for d in range(q)]
    loops += [
        ctx.loop(
            S.HIDDEN if table else f"d{d}",
            {0: d},
            {0: d + q - 1},
            unlabeled="tp" if table else None,
        )
        for d in range(a + 1, len(data))
    ]
    loops.append(
        ctx.loop(
            S.VOCAB,
            {0: a},
            {},
            kind="sum" if table else "fixed",
            axis="tp",
            notes=("vocab-parallel: mask ids outside this rank's rows",),
        )
    )
    extra: tuple[Strategy, ...] = ()
    if (
        not table
        and a == 0
        and feeds_experts(ctx.graph, ctx.params, ctx.node.inputs[0], down=False)
    ):
        extra = _expert_exchange(ctx, data_pos=0, token_inputs=(1,), rows_out=False)
    return OpDims(tuple(loops), extra=extra)


@rule("GatherElements")
def _gather_elements(ctx: Ctx) -> OpDims:
    """Data, indices and output share a rank; every dim but ``axis`` splits alike."""
    out = ctx.out_shape(0)
    if out is None:
        return OpDims()
    return OpDims(axis_loops(ctx, {norm_axis(ctx.attr_int("axis", 0), len(out))}))


@rule("ScatterND")
def _scatter_nd(ctx: Ctx) -> OpDims:
    """Rows addressed by the indices stay whole; the trailing (hidden) dims split alike in
    data, updates and output. Scattering token copies into per-expert buffers (the MoE
    dispatch) is an all-to-all over ``ep``.
    """
    data, idx, upd = ctx.in_shape(0), ctx.in_shape(1), ctx.in_shape(2)
    if data is None or idx is None or upd is None or not isinstance(idx[-1], int):
        return OpDims()
    depth, lead = idx[-1], len(idx) - 1
    loops = [
        ctx.loop(S.HIDDEN, {0: d, 2: lead + d - depth}, {0: d}, unlabeled="tp")
        for d in range(depth, len(data))
    ]
    loops += [ctx.loop(f"u{d}", {1: d, 2: d}, {}, kind="fixed") for d in range(lead)]
    extra: tuple[Strategy, ...] = ()
    if feeds_experts(ctx.graph, ctx.params, ctx.node.outputs[0], down=True):
        extra = _expert_exchange(ctx, data_pos=0, token_inputs=(1, 2), rows_out=True)
    return OpDims(tuple(loops), extra=extra)


def _expert_exchange(
    ctx: Ctx,
    data_pos: int,
    token_inputs: tuple[int, ...],
    rows_out: bool,
) -> tuple[Strategy, ...]:
    """Tokens split over ``ep`` on their batch dim, expert rows split over ``ep`` on dim 0,
    and one all-to-all between the two layouts (GShard's dispatch and combine).
    """
    tok = next((i for i in token_inputs if ctx.in_shape(i) is not None), None)
    bdim = _token_dim(ctx, tok) if tok is not None else None
    if bdim is None:
        return ()
    built = Built(ctx)
    for i in token_inputs:
        built.ins[i] = {bdim: "ep"}
    built.ins[data_pos] = {0: "ep"}
    if rows_out:
        built.outs[0] = {0: "ep"}
        comm = Reshard("all_to_all", "ep", bdim, 0)
    else:
        shift = 0 if ctx.node.op_type != "Gather" else norm_axis(ctx.attr_int("axis", 0), 1)
        built.outs[0] = {bdim + shift: "ep"}
        comm = Reshard("all_to_all", "ep", 0, bdim + shift)
    name = "expert_dispatch" if rows_out else "expert_combine"
    return (
        built.strategy(
            name,
            (comm,),
            notes=("expert parallel: tokens travel to the rank holding their expert and back",),
        ),
    )


def _token_dim(ctx: Ctx, i: int) -> int | None:
    """The batch dim of a token tensor, else its first dim larger than 1 (the pairs)."""
    shape = ctx.in_shape(i)
    labels = ctx.labels.get(ctx.node.inputs[i], ())
    for d, lab in enumerate(labels):
        if lab == S.BATCH:
            return d
    return next((d for d, s in enumerate(shape or ()) if s != 1), None)
