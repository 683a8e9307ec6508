"""Shape rules for onnxruntime's contrib ops (``com.microsoft``), which ONNX cannot infer.

ONNX has no schema for them, so without these every value downstream of a fused
attention or a SkipLayerNorm would lose its shape. Split from
:mod:`shardc.frontend.shape_rules` (these file themselves in its ``RULES``; the shape
pass, :mod:`shardc.frontend.shapes`, imports this module) because they follow
onnxruntime's docs/ContribOperators.md, not ONNX's spec.
"""

from __future__ import annotations

from shardc.frontend.shape_rules import RULES, Consts, Types, rule, same_type
from shardc.ir import Dim, DType, Node, TensorType
from shardc.ir.opfamilies import MS


@rule("com.microsoft::SkipLayerNormalization", "com.microsoft::SkipSimplifiedLayerNormalization")
def _skip_norm(node: Node, ts: Types, cs: Consts) -> list[TensorType | None]:
    """Outputs: the normed value, mean and 1/std (``[.., 1]``), input + skip + bias."""
    x = ts[0] if ts else None
    if x is None or x.shape is None:
        return [None] * len(node.outputs)
    stats = TensorType(DType.FLOAT, (*x.shape[:-1], 1))
    return [same_type(x), stats, stats, same_type(x)][: len(node.outputs)]


@rule("com.microsoft::MatMulNBits")
def _matmul_nbits(node: Node, ts: Types, cs: Consts) -> list[TensorType | None]:
    """``A[.., K]`` times the packed ``[N, K]`` weight: ``[.., N]`` with N an attribute."""
    a, n = ts[0] if ts else None, node.attr("N", None)
    if a is None or a.shape is None or not isinstance(n, int):
        return [None]
    return [TensorType(a.dtype, (*a.shape[:-1], n))]


def _heads_dims(q: TensorType, node: Node) -> tuple[Dim, Dim] | None:
    """(head count, head size) of a query ``[B, S, N·D]``."""
    heads = node.attr("num_heads", 0)
    if q.shape is None or len(q.shape) != 3 or not isinstance(heads, int) or heads <= 0:
        return None
    hidden = q.shape[2]
    return heads, hidden // heads if isinstance(hidden, int) else None


@rule("com.microsoft::Attention")
def _ms_attention(node: Node, ts: Types, cs: Consts) -> list[TensorType | None]:
    """``[B, S, H_in]`` through a ``[H_in, 3H]`` QKV weight: ``[B, S, H]`` (H the value
    part of ``qkv_hidden_sizes`` when given).
    """
    x, w = (ts[i] if len(ts) > i else None for i in (0, 1))
    if x is None or x.shape is None or w is None or w.shape is None:
        return [None] * len(node.outputs)
    sizes = node.attr("qkv_hidden_sizes", None)
    total = w.shape[-1]
    h: Dim = int(sizes[2]) if sizes else (total // 3 if isinstance(total, int) else None)  # type: ignore[index]
    outs: list[TensorType | None] = [None] * len(node.outputs)
    outs[0] = TensorType(x.dtype, (*x.shape[:-1], h))
    return outs


@rule("com.microsoft::MultiHeadAttention", "com.microsoft::GroupQueryAttention")
def _mha(node: Node, ts: Types, cs: Consts) -> list[TensorType | None]:
    """The output is the query's shape with the value's hidden size; present key and
    value are ``[B, N_kv, T, D]`` (T: past + new, or ``total_sequence_length``).
    """
    q = ts[0] if ts else None
    v = ts[2] if len(ts) > 2 else None
    outs: list[TensorType | None] = [None] * len(node.outputs)
    if q is None or q.shape is None or len(q.shape) != 3:
        return outs
    hidden: Dim = q.shape[2]
    if v is not None and v.shape is not None:
        hidden = v.shape[2] if len(v.shape) == 3 else None
        if len(v.shape) == 4 and all(isinstance(d, int) for d in v.shape[1::2]):
            hidden = int(v.shape[1]) * int(v.shape[3])  # type: ignore[arg-type]
    outs[0] = TensorType(q.dtype, (q.shape[0], q.shape[1], hidden))
    hd = _heads_dims(q, node)
    if node.op_type == "GroupQueryAttention" and hd is not None and len(outs) > 1:
        kv = node.attr("kv_num_heads", 0)
        total = cs[6][0] if len(cs) > 6 and cs[6] else q.shape[1]
        past = ts[3] if len(ts) > 3 else None
        if past is not None and past.shape is not None and len(past.shape) == 4:
            p = past.shape[2]
            known = isinstance(total, int | float) and isinstance(p, int)
            total = max(int(total), int(p)) if known else None  # type: ignore[arg-type]
        present = TensorType(q.dtype, (q.shape[0], kv, total, hd[1]))  # type: ignore[arg-type]
        outs[1:3] = [present, present][: len(outs) - 1]
    return outs


@rule("com.microsoft::EmbedLayerNormalization")
def _embed_norm(node: Node, ts: Types, cs: Consts) -> list[TensorType | None]:
    """``[B, S]`` ids: ``[B, S, H]`` (H the word table's width), mask index ``[B]``."""
    ids = ts[0] if ts else None
    table = ts[2] if len(ts) > 2 else None
    if ids is None or ids.shape is None or table is None or table.shape is None:
        return [None] * len(node.outputs)
    out = TensorType(table.dtype, (*ids.shape, table.shape[-1]))
    made: list[TensorType | None] = [out, TensorType(DType.INT32, ids.shape[:1]), out]
    return made[: len(node.outputs)]


@rule(f"{MS}DequantizeLinear")
def _dequantize(node: Node, ts: Types, cs: Consts) -> list[TensorType | None]:
    """``x``'s shape in the scale's type."""
    scale = ts[1] if len(ts) > 1 else None
    return [same_type(ts[0] if ts else None, scale.dtype if scale is not None else None)]


@rule(f"{MS}QuantizeLinear")
def _quantize(node: Node, ts: Types, cs: Consts) -> list[TensorType | None]:
    """``x``'s shape in the zero point's type (uint8 without one, as onnxruntime does)."""
    zero = ts[2] if len(ts) > 2 else None
    return [same_type(ts[0] if ts else None, zero.dtype if zero is not None else DType.UINT8)]


@rule(f"{MS}FusedMatMul")
def _fused_matmul(node: Node, ts: Types, cs: Consts) -> list[TensorType | None]:
    """MatMul of ``A`` and ``B``, each transposed first when ``transA`` / ``transB``."""
    flipped = []
    for t, attr in zip(ts[:2], ("transA", "transB"), strict=False):
        if t is not None and t.shape is not None and len(t.shape) >= 2 and node.attr(attr, 0):
            t = TensorType(t.dtype, (*t.shape[:-2], t.shape[-1], t.shape[-2]))
        flipped.append(t)
    return RULES["MatMul"](node, flipped, cs)
