"""Numpy reference forward passes of the synthesized GPT, Llama and MoE models.

Written from the architectures' definitions (HF GPT-2 / Llama / Mixtral-style top-k
routing with GShard capacity), in float64 and with plain loops for the routing, so that
it shares nothing with the ONNX builder but the weight names.
"""

from __future__ import annotations

import math

import numpy as np
from onnx import ModelProto, numpy_helper


def weights_of(model: ModelProto) -> dict[str, np.ndarray]:
    """The initializers of a model built with weights, as float64 arrays."""
    return {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x**2).mean(-1, keepdims=True) + eps) * w


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1 + np.exp(-x))


def _rope(x: np.ndarray, theta: float) -> np.ndarray:
    """Rotate-half RoPE on ``[B, S, heads, d]`` at positions 0..S-1."""
    s, d = x.shape[1], x.shape[-1]
    inv = 1.0 / theta ** (np.arange(0, d, 2) / d)
    freqs = np.outer(np.arange(s), inv)
    emb = np.concatenate([freqs, freqs], -1)[None, :, None, :]
    rot = np.concatenate([-x[..., d // 2:], x[..., : d // 2]], -1)
    return x * np.cos(emb) + rot * np.sin(emb)


def _attention(x: np.ndarray, w: dict, p: str, cfg: dict, rope: bool) -> np.ndarray:
    b, s, _ = x.shape
    heads, kv = cfg["heads"], cfg["kv_heads"]
    d = cfg["hidden"] // heads

    def proj(name: str, n: int) -> np.ndarray:
        y = x @ w[f"{p}.{name}.weight"] + w.get(f"{p}.{name}.bias", 0.0)
        return y.reshape(b, s, n, d)

    q, k, v = proj("q_proj", heads), proj("k_proj", kv), proj("v_proj", kv)
    if rope:
        q, k = _rope(q, cfg["rope_theta"]), _rope(k, cfg["rope_theta"])
    k, v = np.repeat(k, heads // kv, axis=2), np.repeat(v, heads // kv, axis=2)
    scores = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d)
    scores = np.where(np.tril(np.ones((s, s), bool)), scores, -np.inf)
    ctx = np.einsum("bhqk,bkhd->bqhd", _softmax(scores), v).reshape(b, s, heads * d)
    return ctx @ w[f"{p}.o_proj.weight"] + w.get(f"{p}.o_proj.bias", 0.0)


def _swiglu(x: np.ndarray, gate: np.ndarray, up: np.ndarray, down: np.ndarray) -> np.ndarray:
    return (_silu(x @ gate) * (x @ up)) @ down


def moe(x: np.ndarray, w: dict, p: str, cfg: dict, capacity: int | None) -> tuple[np.ndarray, int]:
    """Top-k MoE of ``x [B, S, H]``: (output, number of dropped (token, slot) pairs).

    Softmax router, top-k (ties to the lower expert id), gates renormalised over the k;
    with a capacity, pairs are admitted slot-major (every token's first choice before any
    second choice), tokens in (batch, seq) order, and an expert's pairs beyond the
    capacity are dropped. ``capacity=None`` is plain top-k routing.
    """
    b, s, h = x.shape
    k, n_exp = cfg["top_k"], cfg["experts"]
    tokens = x.reshape(b * s, h)
    probs = _softmax(tokens @ w[f"{p}.router.weight"])
    choice = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
    gates = np.take_along_axis(probs, choice, -1)
    gates /= gates.sum(-1, keepdims=True)
    load, dropped = [0] * n_exp, 0
    out = np.zeros_like(tokens)
    ex = {n: w[f"{p}.experts.{n}_proj.weight"] for n in ("gate", "up", "down")}
    for slot in range(k):
        for t in range(b * s):
            e = choice[t, slot]
            load[e] += 1
            if capacity is not None and load[e] > capacity:
                dropped += 1
                continue
            y = _swiglu(tokens[t], ex["gate"][e], ex["up"][e], ex["down"][e])
            out[t] += gates[t, slot] * y
    if cfg.get("shared_experts"):
        out += _swiglu(tokens, *(w[f"{p}.shared.{n}_proj.weight"] for n in ("gate", "up", "down")))
    return out.reshape(b, s, h), dropped


def forward(arch: str, w: dict, cfg: dict, ids: np.ndarray,
            capacity: int | None = None) -> tuple[np.ndarray, int]:
    """Logits ``[B, S, V]`` of ``arch`` and the MoE pairs dropped over all layers."""
    eps, dropped = cfg["norm_eps"], 0
    h = w["embed_tokens.weight"][ids]
    if arch == "gpt":
        h = h + w["embed_positions.weight"][: ids.shape[1]]
    for i in range(cfg["layers"]):
        p = f"layers.{i}"
        if arch == "gpt":
            a = _layer_norm(h, w[f"{p}.attn_norm.weight"], w[f"{p}.attn_norm.bias"], eps)
            h = h + _attention(a, w, f"{p}.attn", cfg, rope=False)
            m = _layer_norm(h, w[f"{p}.mlp_norm.weight"], w[f"{p}.mlp_norm.bias"], eps)
            h = h + _gelu(m @ w[f"{p}.mlp.fc_in.weight"] + w[f"{p}.mlp.fc_in.bias"]) @ w[
                f"{p}.mlp.fc_out.weight"] + w[f"{p}.mlp.fc_out.bias"]
            continue
        h = h + _attention(_rms_norm(h, w[f"{p}.attn_norm.weight"], eps), w, f"{p}.attn", cfg,
                           rope=True)
        m = _rms_norm(h, w[f"{p}.mlp_norm.weight"], eps)
        if arch == "moe":
            y, n = moe(m, w, f"{p}.moe", cfg, capacity)
            h, dropped = h + y, dropped + n
        else:
            h = h + _swiglu(m, *(w[f"{p}.mlp.{n}_proj.weight"] for n in ("gate", "up", "down")))
    if arch == "gpt":
        h = _layer_norm(h, w["norm.weight"], w["norm.bias"], eps)
    else:
        h = _rms_norm(h, w["norm.weight"], eps)
    head = w["lm_head.weight"] if "lm_head.weight" in w else w["embed_tokens.weight"].T
    return h @ head, dropped
