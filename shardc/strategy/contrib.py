"""Sharding rules for the ops deployment tools write: onnxruntime's ``com.microsoft``
contrib ops and the quantized products.

Why a module of their own: these ops come from onnxruntime's transformer optimizer
(fused attention, skip-add norms, embedding + norm), its quantizers (MatMulNBits,
MatMulInteger, QLinearMatMul, dynamic quantization) and QDQ graphs, not from exporters;
their operand layouts are onnxruntime's (docs/ContribOperators.md of onnxruntime), read
here the same way :mod:`shardc.strategy.rules` reads ONNX ops, as loops.

Attributes that count what a rank holds (``num_heads``, MatMulNBits' ``N`` and ``K``)
are divided by the emitter when the loop they count is split (see
``shardc.emit.devices._split_attributes``).
"""

from __future__ import annotations

from shardc.strategy.rules import (
    Ctx,
    Loop,
    OpDims,
    axis_loops,
    product_loops,
    reaches_output,
    rule,
    same,
)
from shardc.vocabulary import StrategyName as S

MS = "com.microsoft::"


def _present(ctx: Ctx, i: int) -> bool:
    return i < ctx.n_in and bool(ctx.node.inputs[i])


def _out_present(ctx: Ctx, j: int) -> bool:
    return j < len(ctx.node.outputs) and bool(ctx.node.outputs[j])


def _rows(ctx: Ctx, i: int, size: object) -> dict[int, int]:
    """``{i: 0}`` when input ``i`` is present and its dim 0 is ``size`` (a per-batch or
    per-row operand that splits with the loop), else nothing.
    """
    s = ctx.in_shape(i) if _present(ctx, i) else None
    return {i: 0} if s and len(s) >= 1 and s[0] != 1 and same(s[0], size) else {}  # type: ignore[arg-type]


# -- skip-add normalisations and the embedding norm ---------------------------------------
@rule(f"{MS}SkipLayerNormalization", f"{MS}SkipSimplifiedLayerNormalization")
def _skip_norm(ctx: Ctx) -> OpDims:
    """``norm(input + skip + bias)`` over the hidden (last) dim: the leading dims split
    freely (sequence over tp too, as for LayerNorm); gamma, beta and bias are per hidden
    unit. Outputs: the normed value, mean and 1/std (``[.., 1]``), the pre-norm sum.
    """
    x, skip = ctx.in_shape(0), ctx.in_shape(1)
    if x is None or skip is None:
        return OpDims()
    last = len(x) - 1
    params = [i for i in range(2, ctx.n_in) if _present(ctx, i)]
    loops = []
    for d in range(len(x)):
        sd = d - (len(x) - len(skip))
        ins = {0: d, **({1: sd} if sd >= 0 and same(skip[sd], x[d]) else {})}
        outs = {j: d for j in range(len(ctx.node.outputs)) if _out_present(ctx, j)}
        if d == last:
            ins.update(dict.fromkeys(params, 0))
            outs = {j: d for j in (0, 3) if _out_present(ctx, j)}
        loops.append(ctx.loop(f"d{d}", ins, outs, kind="fixed" if d == last else "parallel"))
    return OpDims(tuple(loops), seq_tp=True)


@rule(f"{MS}EmbedLayerNormalization")
def _embed_norm(ctx: Ctx) -> OpDims:
    """BERT's word + position + segment embeddings and LayerNorm in one op: by batch only.
    Positions are the token's index in the sequence unless given, so the sequence stays
    whole; the tables are read whole (they are small next to the encoder's weights).
    """
    ids, out = ctx.in_shape(0), ctx.out_shape(0)
    if ids is None or out is None:
        return OpDims()
    b = ids[0]
    ins = {0: 0, **_rows(ctx, 1, b), **_rows(ctx, 7, b)}
    pos = ctx.in_shape(8) if _present(ctx, 8) else None
    if pos is not None and len(pos) == 2:
        ins.update(_rows(ctx, 8, b))
    outs = {j: 0 for j in range(len(ctx.node.outputs)) if _out_present(ctx, j)}
    loops = [ctx.loop(S.BATCH, ins, outs)]
    fixed = {j: 1 for j in (0, 2) if _out_present(ctx, j)}
    loops.append(ctx.loop(S.SEQ, {0: 1}, fixed, kind="fixed"))
    loops.append(ctx.loop(S.HIDDEN, {}, {j: 2 for j in fixed}, kind="fixed"))
    return OpDims(tuple(loops))


# -- attention -------------------------------------------------------------------------------
def _heads(ctx: Ctx, *attrs: str) -> tuple[tuple[str, int], ...]:
    """The tp divisibility every head count the op is told asks for (``num_heads``,
    ``kv_num_heads``): each rank holds whole heads.
    """
    counts = [ctx.attr_int(a, 0) for a in attrs]
    return tuple(("tp", c) for c in counts if c > 0)


def _qkv_dim(shape: tuple | None) -> int | None:
    """The dim heads live in: 2 of ``[B, S, N·D]``, 1 of ``[B, N, S, D]``."""
    if shape is None:
        return None
    return {3: 2, 4: 1}.get(len(shape))


@rule(f"{MS}MultiHeadAttention", f"{MS}GroupQueryAttention")
def _mha(ctx: Ctx) -> OpDims:
    """By batch, or by heads (Q, K, V, past and present split along their head dim, the
    output along its hidden dim). Packed QKV (K absent), a fused QKV bias (one tensor of
    three parts) or a 5-D query keep the heads whole: only the batch splits.
    """
    q, out = ctx.in_shape(0), ctx.out_shape(0)
    if q is None or out is None:
        return OpDims()
    gqa = ctx.node.op_type == "GroupQueryAttention"
    b = q[0]
    batch_ins = {i: 0 for i in range(ctx.n_in) if _present(ctx, i) and i in (0, 1, 2)}
    past = (3, 4) if gqa else (6, 7)
    for i in past:
        batch_ins.update(_rows(ctx, i, b))
    if gqa:  # seqlens_k [B], position_ids [B, S], attention_bias [B or 1, N or 1, S, T]
        for i in (5, 9, 10):
            batch_ins.update(_rows(ctx, i, b))
    else:
        batch_ins.update(_rows(ctx, 4, b))  # key_padding_mask [B, ..]
        batch_ins.update(_rows(ctx, 5, b))  # attention_bias [B or 1, N or 1, S, T]
    outs = {j: 0 for j in range(len(ctx.node.outputs)) if _out_present(ctx, j)}
    loops = [ctx.loop(S.BATCH, batch_ins, outs)]
    packed = not _present(ctx, 1) or len(q) == 5 or (not gqa and _present(ctx, 3))
    if packed:
        why = "Q, K and V packed in one tensor (or one fused bias): heads stay whole, batch only"
        return OpDims(tuple(loops), limit=why)
    head_ins = {0: 2}
    for i in (1, 2):
        d = _qkv_dim(ctx.in_shape(i)) if _present(ctx, i) else None
        if d is not None:
            head_ins[i] = d
    head_ins.update({i: 1 for i in past if _present(ctx, i)})
    at = 10 if gqa else 5
    bias = ctx.in_shape(at) if _present(ctx, at) else None
    if bias is not None and len(bias) == 4 and bias[1] != 1:
        head_ins[at] = 1
    # present key/value [B, N_kv, T, D] and the optional QK scores [B, N, S, T]: dim 1
    head_outs = {0: len(out) - 1, **{j: 1 for j in (1, 2, 3) if _out_present(ctx, j)}}
    counts = ("num_heads", "kv_num_heads") if gqa else ("num_heads",)
    loops.append(
        ctx.loop(
            S.HEADS,
            head_ins,
            head_outs,
            axis="tp",
            divides=_heads(ctx, *counts),
            notes=("heads split: num_heads divided on every rank",),
        )
    )
    return OpDims(tuple(loops))


@rule(f"{MS}Attention")
def _ms_attention(ctx: Ctx) -> OpDims:
    """BERT's fused attention (input projection included): by batch, or by heads, with
    the QKV weight and bias cut per head in each of their three parts (as GPT-2's fused
    c_attn is). Unequal ``qkv_hidden_sizes`` and ``past`` keep the heads whole.
    """
    x, w, out = ctx.in_shape(0), ctx.in_shape(1), ctx.out_shape(0)
    if x is None or w is None or out is None:
        return OpDims()
    b = x[0]
    mask = ctx.in_shape(3) if _present(ctx, 3) else None
    ins = {0: 0, **(_rows(ctx, 3, b) if mask is not None and len(mask) >= 2 else {})}
    ins.update(_rows(ctx, 5, b))
    outs = {0: 0}
    loops = [ctx.loop(S.BATCH, ins, outs)]
    sizes = ctx.node.attr("qkv_hidden_sizes", None)
    equal = not sizes or len(set(sizes)) == 1  # type: ignore[arg-type]
    if not equal or _present(ctx, 4) or _out_present(ctx, 1) or not ctx.is_param(1):
        why = "unequal qkv_hidden_sizes, a past state or a computed QKV weight: batch only"
        return OpDims(tuple(loops), limit=why)
    head_ins = {1: 1, **({2: 0} if _present(ctx, 2) else {})}
    bias = ctx.in_shape(5) if _present(ctx, 5) else None
    if bias is not None and len(bias) == 4 and bias[1] != 1:
        head_ins[5] = 1
    loops.append(
        ctx.loop(
            S.HEADS,
            head_ins,
            {0: len(out) - 1},
            axis="tp",
            divides=_heads(ctx, "num_heads"),
            notes=("QKV weight cut per head in each of its three parts",),
        )
    )
    return OpDims(tuple(loops))


@rule(f"{MS}RotaryEmbedding")
def _rotary(ctx: Ctx) -> OpDims:
    """Rotation of each head's first ``rotary_embedding_dim`` units by position: by batch,
    or by heads (``[B, N, S, D]``'s N, or ``[B, S, N·D]``'s hidden dim, whole heads per
    rank); positions and the cos/sin caches are read whole.
    """
    x = ctx.in_shape(0)
    if x is None or len(x) not in (3, 4):
        return OpDims()
    pos = ctx.in_shape(1) if _present(ctx, 1) else None
    batch = {0: 0, **(_rows(ctx, 1, x[0]) if pos is not None and len(pos) == 2 else {})}
    loops = [ctx.loop(S.BATCH, batch, {0: 0})]
    if len(x) == 4:
        loops.append(ctx.loop(S.HEADS, {0: 1}, {0: 1}, unlabeled="tp"))
        loops += [ctx.loop(f"d{d}", {0: d}, {0: d}, kind="fixed") for d in (2, 3)]
        return OpDims(tuple(loops))
    heads = ctx.attr_int("num_heads", 0)
    cos = ctx.in_shape(2)
    if not heads and not ctx.attr_int("rotary_embedding_dim", 0) and cos and x[2]:
        # onnxruntime takes the head size from the cache (2 x its last dim) then
        heads = int(x[2]) // (2 * int(cos[-1])) if isinstance(cos[-1], int) else 0
    loops.append(ctx.loop(S.SEQ, {0: 1}, {0: 1}, kind="fixed"))
    if heads:
        loops.append(ctx.loop(S.HEADS, {0: 2}, {0: 2}, axis="tp", divides=(("tp", heads),)))
    else:
        loops.append(ctx.loop(S.HIDDEN, {0: 2}, {0: 2}, kind="fixed"))
    return OpDims(tuple(loops))


# -- quantized products ----------------------------------------------------------------------
@rule(f"{MS}MatMulNBits")
def _matmul_nbits(ctx: Ctx) -> OpDims:
    """``A[.., K] @ dequant(B)ᵀ`` with B packed ``[N, K/block, block·bits/8]``.

    Column parallel splits N: B's rows, the scales' and zero points' rows (stored
    ``[N, blocks]`` or flattened N-major, so a contiguous 1/tp of them is the same rows)
    and the bias. Row parallel splits K along whole blocks (tp must divide the block
    count): A's last dim, B's block dim, and ``[N, blocks]`` scales (and zero points
    stored one per block), leaving partial sums; flattened scales, zero points packed
    several to a byte (a block split could cut a byte) and act-order ``g_idx`` keep K
    whole.
    """
    a, b, y = ctx.in_shape(0), ctx.in_shape(1), ctx.out_shape(0)
    if a is None or b is None or y is None or len(b) != 3:
        return OpDims()
    n_dim, bits = len(y) - 1, ctx.attr_int("bits", 4)
    blocks = b[1]
    loops: list[Loop] = [
        ctx.loop(f"d{d}", {0: d}, {0: d}, unlabeled=None) for d in range(len(a) - 1)
    ]
    col = {1: 0, 2: 0, **{i: 0 for i in (3, 5) if _present(ctx, i)}}
    vocab = reaches_output(ctx.graph, ctx.node.outputs[0])  # the LM head: vocab parallel
    loops.append(ctx.loop(S.VOCAB if vocab else S.COLUMN, col, {0: n_dim}, axis="tp"))
    scales = ctx.in_shape(2)
    zp = ctx.in_shape(3) if _present(ctx, 3) else None
    zp_ok = zp is None or (len(zp) == 2 and same(zp[1], blocks) and bits == 8)
    row_ok = (
        scales is not None and len(scales) == 2 and zp_ok and not _present(ctx, 4)
        and isinstance(blocks, int)
    )  # fmt: skip
    if row_ok:
        row = {0: len(a) - 1, 1: 1, 2: 1, **({3: 1} if zp is not None else {})}
        loops.append(
            ctx.loop(
                S.ROW,
                row,
                {},
                kind="sum",
                axis="tp",
                partial_ins=(5,) if _present(ctx, 5) else (),
                divides=(("tp", int(blocks)),),  # type: ignore[arg-type]
                notes=("K split along whole quantisation blocks",),
            )
        )
    else:
        loops.append(ctx.loop(S.ROW, {0: len(a) - 1, 1: 1}, {}, kind="fixed"))
        why = (
            "K kept whole (flattened scales, zero points packed several to a byte, or "
            "act-order g_idx): split along N only"
        )
        return OpDims(tuple(loops), limit=why)
    return OpDims(tuple(loops))


@rule("QLinearMatMul")
def _qlinear_matmul(ctx: Ctx) -> OpDims:
    """Requantized product: column parallel with B's per-column scale and zero point; the
    contracted K stays whole (each rank's output is requantized, so partial sums of it
    would not add up).
    """
    a, b, y = ctx.in_shape(0), ctx.in_shape(3), ctx.out_shape(0)
    if a is None or b is None or y is None or len(a) < 2 or len(b) < 2:
        return OpDims()
    n = b[-1]
    per_col = {i: 0 for i in (4, 5) if (s := ctx.in_shape(i)) and len(s) == 1 and s[0] != 1}
    per_row = {i: 0 for i in (1, 2) if (s := ctx.in_shape(i)) and len(s) == 1 and s[0] != 1}
    # batch dims as MatMul's: heads between activations, experts on a batched weight
    loops: list[Loop] = product_loops(ctx, 0, 3, ctx.is_param(0), ctx.is_param(3))
    loops.append(ctx.loop("m", {0: len(a) - 2, **per_row}, {0: len(y) - 2}))
    loops.append(
        ctx.loop(S.COLUMN, {3: len(b) - 1, **per_col}, {0: len(y) - 1}, axis="tp")
        if ctx.is_param(3) and same(n, y[-1])
        else ctx.loop(S.COLUMN, {3: len(b) - 1, **per_col}, {0: len(y) - 1}, kind="fixed")
    )
    loops.append(ctx.loop(S.ROW, {0: len(a) - 1, 3: len(b) - 2}, {}, kind="fixed"))
    why = "K kept whole: each rank requantizes its output, so partial sums would not add up"
    return OpDims(tuple(loops), limit=why)


@rule("DynamicQuantizeLinear")
def _dynamic_quantize(ctx: Ctx) -> OpDims:
    """One scale from the whole tensor's min and max: a shard would pick its own scale,
    so every dim stays whole (the input is gathered first; the op is cheap).
    """
    x = ctx.in_shape(0)
    if x is None:
        return OpDims()
    why = "one scale from the whole tensor's min and max: its input is gathered first"
    return OpDims(axis_loops(ctx, set(range(len(x)))), limit=why)
