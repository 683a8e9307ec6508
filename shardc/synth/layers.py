"""Transformer building blocks written as plain ONNX (opset 18) operators.

Every block keeps the token dims ``[batch, seq, ...]`` as they are (reshapes use 0 to copy
a dim, never -1), so ONNX shape inference sizes every value even when batch and seq are
symbolic: the frontend then sees the shapes of a model it cannot load the weights of.
That is also why positions are built from a CumSum over the input ids rather than Range:
shape inference cannot size the output of a Range.

The patterns follow what torch's dynamo exporter emits for the Hugging Face models:
LayerNormalization for GPT-2, RMSNorm as Pow/ReduceMean/Add/Sqrt/Div/Mul, tanh-GELU,
SiLU as x*Sigmoid(x), rotate-half RoPE, and grouped KV heads repeated with Expand.
"""

from __future__ import annotations

import math

import numpy as np
from onnx import TensorProto

from shardc.synth.cache import KVCache, masked_scores
from shardc.synth.config import Resolved
from shardc.synth.graph import GraphBuilder
from shardc.synth.weights import DEFAULT_INIT, Init

NORM_INIT = Init(mean=1.0, std=0.1)
BIAS_INIT = Init(mean=0.0, std=0.02)


def positions(g: GraphBuilder, ids: str) -> str:
    """Positions 0..S-1 as int64 ``[seq]``, sized by shape inference (see module doc)."""
    row = g.op("Gather", [ids, g.int_scalar(0)], label="first_row", axis=0)
    ones = g.op("Cast", [g.op("Equal", [row, row], label="same")], label="ones",
                to=TensorProto.INT64)
    count = g.op("CumSum", [ones, g.int_scalar(0)], label="count")
    return g.op("Sub", [count, g.int_scalar(1)], label="positions")


def causal_mask(g: GraphBuilder, pos: str) -> str:
    """Bool ``[seq, seq]``: query i may attend to key j iff j <= i."""
    keys = g.op("Unsqueeze", [pos, g.ints(0)], label="key_pos")
    queries = g.op("Unsqueeze", [pos, g.ints(1)], label="query_pos")
    return g.op("LessOrEqual", [keys, queries], label="causal_mask")


def layer_norm(g: GraphBuilder, x: str, width: int, name: str, eps: float) -> str:
    """LayerNormalization with scale and bias over the last dim (GPT-2)."""
    with g.scope(name):
        w = g.param("weight", [width], NORM_INIT)
        b = g.param("bias", [width], BIAS_INIT)
        return g.op("LayerNormalization", [x, w, b], axis=-1, epsilon=eps)


def rms_norm(g: GraphBuilder, x: str, width: int, name: str, eps: float) -> str:
    """RMSNorm, x / sqrt(mean(x^2) + eps) * w, as primitives (opset 18 has no RMSNorm)."""
    with g.scope(name):
        w = g.param("weight", [width], NORM_INIT)
        sq = g.op("Pow", [x, g.scalar(2.0)])
        mean = g.op("ReduceMean", [sq, g.ints(-1)], keepdims=1)
        rms = g.op("Sqrt", [g.op("Add", [mean, g.scalar(eps)])])
        return g.op("Mul", [g.op("Div", [x, rms]), w])


def linear(g: GraphBuilder, x: str, d_in: int, d_out: int, name: str, bias: bool = False,
           quantize: bool = True, init: Init = DEFAULT_INIT) -> str:
    """The product x @ W (+ b), W stored ``[in, out]`` as exporters leave nn.Linear."""
    with g.scope(name):
        y = g.op("MatMul", [x, g.matrix("weight", [d_in, d_out], init, quantize)])
        if bias:
            y = g.op("Add", [y, g.param("bias", [d_out], BIAS_INIT)], label="add_bias")
        return y


def gelu_tanh(g: GraphBuilder, x: str) -> str:
    """GPT-2's GELU: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    cube = g.op("Pow", [x, g.scalar(3.0)])
    inner = g.op("Add", [x, g.op("Mul", [cube, g.scalar(0.044715)])])
    t = g.op("Tanh", [g.op("Mul", [inner, g.scalar(math.sqrt(2.0 / math.pi))])])
    return g.op("Mul", [g.op("Mul", [x, g.scalar(0.5)]), g.op("Add", [t, g.scalar(1.0)])],
                label="gelu")


def silu(g: GraphBuilder, x: str) -> str:
    """SiLU: x * sigmoid(x)."""
    return g.op("Mul", [x, g.op("Sigmoid", [x])], label="silu")


def rope_tables(g: GraphBuilder, pos: str, head_dim: int, theta: float) -> tuple[str, str]:
    """The cos and sin ``[seq, 1, head_dim]`` for rotate-half RoPE, computed in float32.

    Computed once per model from the positions (as HF's rotary embedding module does), so
    the graph holds no position table and works for any sequence length.
    """
    with g.scope("rope"):
        inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.int64)
                                    .astype(np.float32) / head_dim))
        posf = g.op("Cast", [pos], label="pos_float", to=TensorProto.FLOAT)
        freqs = g.op("Mul", [g.op("Unsqueeze", [posf, g.ints(1)]),
                             g.const(inv_freq.astype(np.float32), TensorProto.FLOAT)],
                     label="freqs")
        emb = g.op("Concat", [freqs, freqs], label="emb", axis=-1)
        tables = []
        for fn in ("Cos", "Sin"):
            t = g.op(fn, [emb], label=fn.lower())
            if g.dtype != TensorProto.FLOAT:
                t = g.op("Cast", [t], label=f"{fn.lower()}_cast", to=g.dtype)
            tables.append(g.op("Unsqueeze", [t, g.ints(1)], label=f"{fn.lower()}_table"))
        return tables[0], tables[1]


def apply_rope(g: GraphBuilder, x: str, cos: str, sin: str, label: str) -> str:
    """x*cos + rotate_half(x)*sin on ``[batch, seq, heads, head_dim]``."""
    x1, x2 = g.op_n("Split", [x], ["0", "1"], label=f"{label}_halves", axis=-1, num_outputs=2)
    rot = g.op("Concat", [g.op("Neg", [x2], label=f"{label}_neg"), x1],
               label=f"{label}_rotated", axis=-1)
    return g.op("Add", [g.op("Mul", [x, cos], label=f"{label}_cos"),
                        g.op("Mul", [rot, sin], label=f"{label}_sin")], label=f"{label}_rope")


def _repeat_kv(g: GraphBuilder, x: str, heads: int, kv: int, d: int, label: str) -> str:
    """``[B, S, kv, d]`` -> ``[B, S, heads, d]``, KV head j serving heads j*r .. j*r+r-1.

    As HF's repeat_kv, with Unsqueeze/Expand/Reshape so the sharing is visible in the graph.
    """
    t = g.op("Unsqueeze", [x, g.ints(3)], label=f"{label}_group")
    t = g.op("Expand", [t, g.ints(1, 1, 1, heads // kv, 1)], label=f"{label}_repeat")
    return g.op("Reshape", [t, g.ints(0, 0, heads, d)], label=f"{label}_repeated")


def _repeat_heads(g: GraphBuilder, x: str, heads: int, kv: int, rows: int, d: int,
                  label: str) -> str:
    """``[B, kv, rows, d]`` -> ``[B, heads, rows, d]``: `_repeat_kv` on a cached layout."""
    t = g.op("Unsqueeze", [x, g.ints(2)], label=f"{label}_group")
    t = g.op("Expand", [t, g.ints(1, 1, heads // kv, 1, 1)], label=f"{label}_repeat")
    return g.op("Reshape", [t, g.ints(0, heads, rows, d)], label=f"{label}_repeated")


def attention(g: GraphBuilder, x: str, res: Resolved, mask: str, bias: bool,
              rope: tuple[str, str] | None, cache: KVCache | None = None,
              layer: int = 0) -> str:
    """Causal self-attention (MHA, or GQA when kv_heads < heads) of ``x [B, S, H]``.

    Q, K, V are separate projections so that a head-parallel split is a plain split of
    each weight's output dim. Scores are computed over the full S x S and masked with
    Where, as eager attention does; FLOPs therefore count the full square. With a
    ``cache`` (see :mod:`shardc.synth.cache`) the RoPE'd K and V are cached heads-first
    and a decode step attends over the cache's rows.
    """
    heads, kv, d = res.heads, res.kv_heads, res.head_dim
    with g.scope("attn"):
        q = linear(g, x, res.hidden, heads * d, "q_proj", bias)
        k = linear(g, x, res.hidden, kv * d, "k_proj", bias)
        v = linear(g, x, res.hidden, kv * d, "v_proj", bias)
        q = g.op("Reshape", [q, g.ints(0, 0, heads, d)], label="q_heads")
        k = g.op("Reshape", [k, g.ints(0, 0, kv, d)], label="k_heads")
        v = g.op("Reshape", [v, g.ints(0, 0, kv, d)], label="v_heads")
        if rope is not None:
            q = apply_rope(g, q, *rope, label="q")
            k = apply_rope(g, k, *rope, label="k")
        if cache is not None:
            k, v = _cached_kv(g, k, v, res, cache, layer)
        elif kv < heads:
            k = _repeat_kv(g, k, heads, kv, d, "k")
            v = _repeat_kv(g, v, heads, kv, d, "v")
        q = g.op("Transpose", [q], label="q_t", perm=[0, 2, 1, 3])
        if cache is None:
            k = g.op("Transpose", [k], label="k_t", perm=[0, 2, 3, 1])
            v = g.op("Transpose", [v], label="v_t", perm=[0, 2, 1, 3])
        scores = g.op("MatMul", [q, k], label="scores")
        scores = g.op("Mul", [scores, g.scalar(1.0 / math.sqrt(d))], label="scaled")
        scores = masked_scores(g, scores, mask, cache)
        probs = g.op("Softmax", [scores], label="probs", axis=-1)
        ctx = g.op("MatMul", [probs, v], label="context")
        ctx = g.op("Transpose", [ctx], label="context_t", perm=[0, 2, 1, 3])
        ctx = g.op("Reshape", [ctx, g.ints(0, 0, heads * d)], label="context_flat")
        return linear(g, ctx, heads * d, res.hidden, "o_proj", bias)


def _cached_kv(g: GraphBuilder, k: str, v: str, res: Resolved, cache: KVCache,
               layer: int) -> tuple[str, str]:
    """K ``[B, heads, d, rows]`` and V ``[B, heads, rows, d]`` read from the cache, after
    writing this phase's ``[B, S, kv, d]`` K and V into it heads-first.
    """
    heads, kv, d = res.heads, res.kv_heads, res.head_dim
    shape = [cache.batch, kv, cache.prompt, d]
    out = []
    for name, t in (("key", k), ("value", v)):
        t = g.op("Transpose", [t], label=f"{name}_heads_first", perm=[0, 2, 1, 3])
        t = cache.update(g, layer, name, t, shape, seq_axis=2, heads_axis=1)
        rows = cache.context if cache.decoding else cache.prompt
        if kv < heads:
            t = _repeat_heads(g, t, heads, kv, rows, d, name[0])
        out.append(t)
    return g.op("Transpose", [out[0]], label="k_t", perm=[0, 1, 3, 2]), out[1]


def gelu_mlp(g: GraphBuilder, x: str, hidden: int, ffn: int) -> str:
    """GPT-2's MLP: fc_out(gelu(fc_in(x))), both with bias."""
    with g.scope("mlp"):
        h = gelu_tanh(g, linear(g, x, hidden, ffn, "fc_in", bias=True))
        return linear(g, h, ffn, hidden, "fc_out", bias=True)


def swiglu(g: GraphBuilder, x: str, hidden: int, ffn: int, name: str = "mlp") -> str:
    """Llama's MLP: down(silu(gate(x)) * up(x)), no biases."""
    with g.scope(name):
        gate = silu(g, linear(g, x, hidden, ffn, "gate_proj"))
        up = linear(g, x, hidden, ffn, "up_proj")
        return linear(g, g.op("Mul", [gate, up], label="swiglu"), ffn, hidden, "down_proj")
