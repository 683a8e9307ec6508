"""Multi-head latent attention (DeepSeek-V2/V3), as Hugging Face's DeepseekV3Attention runs it.

The expanded (training/prefill) form, so the graph computes what the reference does:

* query: ``x @ W_qa`` (rank ``q_lora_rank``), RMSNorm, ``@ W_qb`` to ``heads × (nope + rope)``
  (or one full-rank ``x @ W_q`` when ``q_lora_rank`` is 0);
* key/value: ``x @ W_kva`` to the compressed latent (``kv_lora_rank``) plus one shared RoPE
  key (``rope``); the latent is RMSNormed and expanded by ``W_kvb`` to every head's
  ``nope`` key part and ``v`` value;
* RoPE on the query's and the shared key's rope parts; the shared key is broadcast to all
  heads; scores scaled by ``1/sqrt(nope + rope)``; output ``heads × v @ W_o``.

What a decode step caches per token is ``kv_lora_rank + rope`` values (the latent and the
rope key): the KV-cache view :mod:`shardc.serving.arch` prices.
"""

from __future__ import annotations

import math

from shardc.synth.cache import KVCache, masked_scores
from shardc.synth.config import Resolved
from shardc.synth.graph import GraphBuilder
from shardc.synth.layers import apply_rope, linear, rms_norm


def mla_attention(g: GraphBuilder, x: str, res: Resolved, mask: str,
                  rope: tuple[str, str], cache: KVCache | None = None, layer: int = 0) -> str:
    """Causal MLA self-attention of ``x [B, S, H]``.

    With a ``cache`` the normed latent and the RoPE'd shared key are what is cached
    (``[B, rows, kv_lora_rank]`` and ``[B, rows, rope]``), and the heads' keys and values
    are expanded from the cached rows: the expanded form, not the absorbed one.
    """
    h, n = res.hidden, res.heads
    nope, rp, v_dim, kv_rank = (res.qk_nope_head_dim, res.qk_rope_head_dim, res.v_head_dim,
                                res.kv_lora_rank)
    qk = nope + rp
    with g.scope("attn"):
        if res.q_lora_rank:
            q = linear(g, x, h, res.q_lora_rank, "q_a_proj")
            q = rms_norm(g, q, res.q_lora_rank, "q_a_norm", res.norm_eps)
            q = linear(g, q, res.q_lora_rank, n * qk, "q_b_proj")
        else:
            q = linear(g, x, h, n * qk, "q_proj")
        q = g.op("Reshape", [q, g.ints(0, 0, n, qk)], label="q_heads")
        q_nope, q_pe = g.op_n("Split", [q, g.ints(nope, rp)], ["nope", "pe"], label="q_split",
                              axis=-1)
        ckv = linear(g, x, h, kv_rank + rp, "kv_a_proj_with_mqa")
        latent, k_pe = g.op_n("Split", [ckv, g.ints(kv_rank, rp)], ["latent", "pe"],
                              label="kv_split", axis=-1)
        latent = rms_norm(g, latent, kv_rank, "kv_a_norm", res.norm_eps)
        k_pe = g.op("Reshape", [k_pe, g.ints(0, 0, 1, rp)], label="k_pe_head")
        k_pe = apply_rope(g, k_pe, *rope, label="k")
        if cache is not None:
            rows = [cache.batch, cache.prompt]
            latent = cache.update(g, layer, "latent", latent, [*rows, kv_rank], 1, None)
            k_pe = g.op("Reshape", [k_pe, g.ints(0, 0, rp)], label="k_pe_flat")
            k_pe = cache.update(g, layer, "rope_key", k_pe, [*rows, rp], 1, None)
            k_pe = g.op("Reshape", [k_pe, g.ints(0, 0, 1, rp)], label="k_pe_rows")
        kv = linear(g, latent, kv_rank, n * (nope + v_dim), "kv_b_proj")
        kv = g.op("Reshape", [kv, g.ints(0, 0, n, nope + v_dim)], label="kv_heads")
        k_nope, v = g.op_n("Split", [kv, g.ints(nope, v_dim)], ["k", "v"], label="kv_heads_split",
                           axis=-1)
        q_pe = apply_rope(g, q_pe, *rope, label="q")
        k_pe = g.op("Expand", [k_pe, g.ints(1, 1, n, 1)], label="k_pe_all_heads")
        q = g.op("Concat", [q_nope, q_pe], label="q_full", axis=-1)
        k = g.op("Concat", [k_nope, k_pe], label="k_full", axis=-1)
        q = g.op("Transpose", [q], label="q_t", perm=[0, 2, 1, 3])
        k = g.op("Transpose", [k], label="k_t", perm=[0, 2, 3, 1])
        v = g.op("Transpose", [v], label="v_t", perm=[0, 2, 1, 3])
        scores = g.op("MatMul", [q, k], label="scores")
        scores = g.op("Mul", [scores, g.scalar(1.0 / math.sqrt(qk))], label="scaled")
        scores = masked_scores(g, scores, mask, cache)
        probs = g.op("Softmax", [scores], label="probs", axis=-1)
        ctx = g.op("MatMul", [probs, v], label="context")
        ctx = g.op("Transpose", [ctx], label="context_t", perm=[0, 2, 1, 3])
        ctx = g.op("Reshape", [ctx, g.ints(0, 0, n * v_dim)], label="context_flat")
        return linear(g, ctx, n * v_dim, h, "o_proj")


def mla_params(res: Resolved) -> int:
    """Parameters of one MLA layer (projections and the two latent norms)."""
    h, n = res.hidden, res.heads
    qk = res.qk_nope_head_dim + res.qk_rope_head_dim
    if res.q_lora_rank:
        q = h * res.q_lora_rank + res.q_lora_rank + res.q_lora_rank * n * qk
    else:
        q = h * n * qk
    kv = h * (res.kv_lora_rank + res.qk_rope_head_dim) + res.kv_lora_rank
    kv += res.kv_lora_rank * n * (res.qk_nope_head_dim + res.v_head_dim)
    return q + kv + n * res.v_head_dim * h


def mla_matrices(res: Resolved) -> list[tuple[int, ...]]:
    """Shapes ``[in, out]`` of MLA's projection weights (those fp8 quantizes)."""
    h, n = res.hidden, res.heads
    qk = res.qk_nope_head_dim + res.qk_rope_head_dim
    q = ([(h, res.q_lora_rank), (res.q_lora_rank, n * qk)] if res.q_lora_rank
         else [(h, n * qk)])
    return [*q, (h, res.kv_lora_rank + res.qk_rope_head_dim),
            (res.kv_lora_rank, n * (res.qk_nope_head_dim + res.v_head_dim)),
            (n * res.v_head_dim, h)]


def mla_flops(res: Resolved, b: int, s: int) -> int:
    """MatMul FLOPs of one MLA layer over ``b × s`` tokens (scores over the full S × S)."""
    t = b * s
    proj = sum(2 * t * i * o for i, o in mla_matrices(res))
    qk = res.qk_nope_head_dim + res.qk_rope_head_dim
    return proj + 2 * b * res.heads * s * s * (qk + res.v_head_dim)

