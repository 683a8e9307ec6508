"""Sharding rules for the products: MatMul, Gemm, Conv, the pools and per-item image
ops, and fused Attention.

Why a module of their own: these are the ops tensor parallelism is about. Their rules
decide column- against row-parallel (a split ``sum`` loop leaves partial sums), heads
between activations and experts on batched weights, so they carry most of the logic
that reads the graph around a node (:func:`heads_after`, :func:`reaches_output`).
:func:`product_loops`, the batch loops of a product, lives in
:mod:`shardc.strategy.rules`: :mod:`shardc.strategy.contrib` (the quantized
and contrib products) shares it.
"""

from __future__ import annotations

from shardc.ir.opfamilies import POOLS
from shardc.ir.types import Dim
from shardc.sharding import Strategy
from shardc.strategy.rules import (
    Built,
    Ctx,
    Loop,
    OpDims,
    heads_after,
    heads_before,
    product_loops,
    reaches_output,
    rule,
    same,
)
from shardc.vocabulary import StrategyName as S


# -- matrix products -----------------------------------------------------------------------
@rule("MatMul", "MatMulInteger")
def _matmul(ctx: Ctx) -> OpDims:
    """Megatron's pair: column-parallel splits N (the weight's columns, nothing to reduce),
    row-parallel splits K (partial sums out); the LM head's column split is its vocab.
    """
    sa, sb, y = ctx.in_shape(0), ctx.in_shape(1), ctx.out_shape(0)
    if sa is None or sb is None or y is None or len(sa) < 2 or len(sb) < 2:
        return OpDims()
    wa, wb = ctx.is_param(0), ctx.is_param(1)
    a, out = ctx.node.inputs[0], ctx.node.outputs[0]
    m, k, n = len(sa) - 2, len(sa) - 1, len(sb) - 1
    loops = product_loops(ctx, 0, 1, wa, wb)
    vocab = wb and reaches_output(ctx.graph, out)
    # MatMulInteger's zero points: per row of A ([M]) and per column of B ([N]) split
    # with those; scalars are read whole
    zp_a = {2: 0} if _per_entry(ctx, 2, sa[m]) else {}
    zp_b = {3: 0} if _per_entry(ctx, 3, sb[n]) else {}
    loops += [
        ctx.loop(
            S.COLUMN if wa else "m", {0: m, **zp_a}, {0: len(y) - 2}, unlabeled="tp" if wa else None
        ),
        ctx.loop(
            S.VOCAB if vocab else S.COLUMN,
            {1: n, **zp_b},
            {0: len(y) - 1},
            axis="tp" if wb else None,
            divides=heads_after(ctx, out, len(y) - 1),
        ),
        ctx.loop(
            S.ROW,
            {0: k, 1: n - 1},
            {},
            kind="sum" if wa or wb else "fixed",
            axis="tp",
            divides=heads_before(ctx, a, k),
        ),
    ]
    if not (wa or wb):  # between activations N is the keys' sequence: splitting it adds work
        loops[-2] = Loop(loops[-2].name, loops[-2].ins, loops[-2].outs, kind="fixed")
    return OpDims(tuple(loops))


def _per_entry(ctx: Ctx, i: int, size: Dim) -> bool:
    """Input ``i`` is present, 1-D and one entry per index of a dim of ``size`` (> 1)."""
    s = ctx.in_shape(i) if i < ctx.n_in and ctx.node.inputs[i] else None
    return s is not None and len(s) == 1 and s[0] != 1 and same(s[0], size)


@rule("Gemm")
def _gemm(ctx: Ctx) -> OpDims:
    """``α·A'·B' + β·C``: column and row parallel as MatMul; a row split adds C on one rank."""
    sa, y = ctx.in_shape(0), ctx.out_shape(0)
    if sa is None or y is None or ctx.in_shape(1) is None:
        return OpDims()
    ta, tb = ctx.attr_int("transA", 0), ctx.attr_int("transB", 0)
    sc = ctx.in_shape(2) if ctx.n_in > 2 and ctx.node.inputs[2] else None
    c_m = {2: len(sc) - 2} if sc and len(sc) == 2 and same(sc[0], y[0]) else {}
    c_n = {2: len(sc) - 1} if sc and same(sc[-1], y[1]) else {}
    bias = (2,) if sc is not None else ()
    out, a = ctx.node.outputs[0], ctx.node.inputs[0]
    vocab = reaches_output(ctx.graph, out)
    wb = ctx.is_param(1)
    return OpDims(
        (
            ctx.loop("m", {0: 1 if ta else 0, **c_m}, {0: 0}),
            ctx.loop(
                S.VOCAB if vocab else S.COLUMN,
                {1: 0 if tb else 1, **c_n},
                {0: 1},
                axis="tp" if wb else None,
                divides=heads_after(ctx, out, 1),
            ),
            ctx.loop(
                S.ROW,
                {0: 0 if ta else 1, 1: 1 if tb else 0},
                {},
                kind="sum" if wb else "fixed",
                axis="tp",
                partial_ins=bias,
                divides=heads_before(ctx, a, 1),
            ),
        )
    )


@rule("Conv", "ConvInteger")
def _conv(ctx: Ctx) -> OpDims:
    """By batch, by output channels (the filters), or by input channels (partial sums) when
    ungrouped; a grouped conv splits both channel dims together when tp divides the groups.
    """
    x, w, y = ctx.in_shape(0), ctx.in_shape(1), ctx.out_shape(0)
    if x is None or w is None or y is None:
        return OpDims()
    group = ctx.attr_int("group", 1)
    if ctx.node.op_type == "ConvInteger":  # inputs 2, 3: zero points, not a bias
        bias = {3: 0} if _per_entry(ctx, 3, w[0]) else {}
    else:
        bias = {2: 0} if ctx.n_in > 2 and ctx.node.inputs[2] else {}
    loops = [ctx.loop(S.BATCH, {0: 0}, {0: 0})]
    if group == 1:
        loops.append(ctx.loop(S.CHANNELS, {1: 0, **bias}, {0: 1}, axis="tp"))
        loops.append(
            ctx.loop(
                "in_channels",
                {0: 1, 1: 1},
                {},
                kind="sum",
                axis="tp",
                partial_ins=() if ctx.node.op_type == "ConvInteger" else tuple(bias),
            )
        )
    else:
        loops.append(
            ctx.loop(
                S.CHANNELS,
                {0: 1, 1: 0, **bias},
                {0: 1},
                axis="tp",
                divides=(("tp", group),),
                notes=(f"{group} groups",),
            )
        )
    loops += [ctx.loop(f"d{d}", {0: d}, {0: d}, kind="fixed") for d in range(2, len(y))]
    return OpDims(tuple(loops))


@rule(*POOLS)
def _pool(ctx: Ctx) -> OpDims:
    """Windows slide over the spatial dims (fixed); batch and channels are independent,
    except that LRN's window runs across channels. MaxPool's Indices count positions in
    the whole input, so a MaxPool that returns them is not split.
    """
    x, y = ctx.in_shape(0), ctx.out_shape(0)
    if x is None or y is None or len(x) != len(y) or len(x) < 2:
        return OpDims()
    if len(ctx.node.outputs) > 1 and ctx.node.outputs[1]:
        return OpDims()
    lrn = ctx.node.op_type == "LRN"
    loops = [
        ctx.loop(S.BATCH, {0: 0}, {0: 0}),
        ctx.loop(S.CHANNELS, {0: 1}, {0: 1}, kind="fixed" if lrn else "parallel", unlabeled="tp"),
    ]
    loops += [
        ctx.loop(f"d{d}", {0: d}, {0: d}, kind="parallel" if lrn else "fixed", unlabeled="tp")
        for d in range(2, len(y))
    ]
    return OpDims(tuple(loops))


@rule("ConvTranspose", "DepthToSpace", "SpaceToDepth", "GridSample", "Trilu", "Det")
def _per_item(ctx: Ctx) -> OpDims:
    """Ops that treat each item of the batch alone and mix the rest: split by batch only
    (GridSample also by channels, Trilu and Det by every dim before their matrices).
    """
    x, y = ctx.in_shape(0), ctx.out_shape(0)
    if x is None or y is None or not x or not y:
        return OpDims()
    op = ctx.node.op_type
    free = len(x) - 2 if op in ("Trilu", "Det") else 2 if op == "GridSample" else 1
    grid = {1: 0} if op == "GridSample" else {}
    loops = [ctx.loop(f"d{d}", {0: d, **(grid if d == 0 else {})}, {0: d}) for d in range(free)]
    loops += [ctx.loop(f"d{d}", {0: d}, {}, kind="fixed") for d in range(free, len(x))]
    return OpDims(tuple(loops), args=frozenset(range(1, ctx.n_in)) - set(grid))


def _mask_dim(ctx: Ctx, dim: int) -> dict[int, int]:
    """``{3: d}``: the dim of Attention's mask lined up with ``dim`` of [B, H, S_q, S_kv]
    under broadcasting, unless the mask is absent, shorter, or broadcasts there.
    """
    mask = ctx.in_shape(3) if ctx.n_in > 3 and ctx.node.inputs[3] else None
    d = dim - (4 - len(mask)) if mask is not None else -1
    return {3: d} if mask is not None and d >= 0 and mask[d] != 1 else {}


@rule("Attention")
def _attention(ctx: Ctx) -> OpDims:
    """ONNX Attention (opset 23): by batch, or by heads; with grouped KV heads a second
    option keeps K and V whole so that tp need not divide the KV head count.
    """
    q, k, y = ctx.in_shape(0), ctx.in_shape(1), ctx.out_shape(0)
    if q is None or k is None or y is None:
        return OpDims()
    four = len(q) == 4
    hq = q[1] if four else ctx.attr_int("q_num_heads", 0)
    hkv = k[1] if len(k) == 4 else ctx.attr_int("kv_num_heads", 0)
    hd = 1 if four else 2
    # past_key/value (inputs 4, 5) and present_key/value (outputs 1, 2) are always
    # [B, H_kv, S, D]; the mask (input 3) broadcasts to [B, H_q, S_q, S_kv]
    kv_outs = {j: 1 for j in (1, 2) if j < len(ctx.node.outputs) and ctx.node.outputs[j]}
    past = {i: 1 for i in (4, 5) if i < ctx.n_in and ctx.node.inputs[i]}
    divides = () if four else tuple(("tp", h) for h in (hq, hkv) if isinstance(h, int) and h)
    heads = ctx.loop(
        S.HEADS,
        {0: hd, 1: hd, 2: hd, **past, **_mask_dim(ctx, 1)},
        {0: hd, **kv_outs, 3: 1},
        axis="tp",
        divides=divides,
        notes=(f"{hq} query heads, {hkv} KV heads",),
    )
    lengths = {6: 0} if ctx.n_in > 6 and ctx.node.inputs[6] else {}
    batch = ctx.loop(
        S.BATCH,
        {0: 0, 1: 0, 2: 0, **dict.fromkeys(past, 0), **_mask_dim(ctx, 0), **lengths},
        {0: 0, **dict.fromkeys(kv_outs, 0), 3: 0},
    )
    mask_heads = {i: {d: "tp"} for i, d in _mask_dim(ctx, 1).items()}
    built = Built(ctx, ins={0: {hd: "tp"}, **mask_heads}, outs={0: {hd: "tp"}, 3: {1: "tp"}})
    extra: tuple[Strategy, ...] = ()
    if hq != hkv:
        extra = (
            built.strategy(
                "heads_kv_whole",
                divides=divides[:1],
                notes=(f"{hkv} KV heads kept whole on every rank",),
            ),
        )
    return OpDims((batch, heads), extra=extra)
