"""Closed-form sizes of the synthesized models: parameters, weight bytes, forward FLOPs.

Written from the architecture, not from the graph, so that tests can compare the graph
(and, elsewhere, shardc's own FLOP counter) against an independent formula.

FLOP convention: 2*M*N*K for every MatMul (a multiply-add is 2 FLOPs), nothing for
elementwise ops, norms, softmax or routing bookkeeping. Attention scores and context are
counted over the full S x S square, as the graph computes them (masked, not skipped).
With h = hidden, a*d = h, F = ffn, V = vocab, T = batch*seq tokens, per layer:

- gpt:   2T*4h^2 + 4*B*S^2*h + 2T*2hF                          (+ 2ThV for the LM head)
- llama: 2T*(2h^2 + 2h*kv*d) + 4*B*S^2*h + 2T*3hF
- moe:   llama attention + 2ThE (router) + 2*E*C*3hF (experts, C = capacity slots per
         expert, ~ cf*k*T/E) + 2T*3h*S_sh*F (shared experts)
- deepseek: MLA projections (`shardc.synth.mla.mla_flops`) + 2*B*n*S^2*(nope+rope+v) for
         scores and context; the first ``dense_layers`` a SwiGLU of ``dense_ffn``, the rest
         as moe

so a dense model's forward is ~2 FLOPs per parameter per token plus attention. For gpt
with F = 4h that is 24*l*h^2 + 4*l*s*h + 2*V*h per token; Megatron's 96*B*s*l*h^2*(1 +
s/(6h) + V/(16*l*h)) (Narayanan et al. 2021) is four of the layer terms (forward,
backward twice, recomputation) plus three of the logit term, over B*s tokens.
"""

from __future__ import annotations

import math

from shardc.errors import OptionError
from shardc.synth.config import FP8_BLOCK, Resolved, SynthConfig, capacity, np_dtype, resolve
from shardc.synth.mla import mla_flops, mla_matrices, mla_params


def _layer_params(r: Resolved, experts_counted: int, dense: bool = False) -> int:
    h, f, d = r.hidden, r.ffn, r.head_dim
    if r.arch == "gpt":
        return 4 * h * h + 4 * h + 2 * h * f + f + h + 4 * h
    attn = mla_params(r) if r.arch == "deepseek" else 2 * h * h + 2 * h * r.kv_heads * d
    if r.arch == "llama" or dense:
        return attn + 3 * h * (r.dense_ffn or f) + 2 * h
    return attn + h * r.experts + 3 * experts_counted * h * f + 3 * h * r.shared_experts * f + 2 * h


def _params(r: Resolved, experts_counted: int) -> int:
    h = r.hidden
    dense = r.dense_layers
    total = r.vocab * h + (r.layers - dense) * _layer_params(r, experts_counted)
    total += dense * _layer_params(r, experts_counted, dense=True)
    total += 2 * h if r.arch == "gpt" else h  # final norm (LN has a bias, RMSNorm not)
    if r.arch == "gpt":
        total += r.max_positions * h
    if not r.tie_embeddings:
        total += h * r.vocab
    return total


def parameter_count(arch: str, config: SynthConfig) -> int:
    """Number of parameters (fp8 block scales not included)."""
    r = resolve(arch, config)
    return _params(r, r.experts)


def active_parameter_count(arch: str, config: SynthConfig) -> int:
    """Parameters one token touches: all of a dense model, only k routed experts of a MoE."""
    r = resolve(arch, config)
    return _params(r, r.top_k)


def _quantized_matrices(r: Resolved, dense: bool = False) -> list[tuple[int, ...]]:
    """Shapes ``[..., in, out]`` of the weights stored fp8 under --dtype fp8 (per layer)."""
    h, f, q, kv = r.hidden, r.ffn, r.heads * r.head_dim, r.kv_heads * r.head_dim
    attn: list[tuple[int, ...]] = [(h, q), (h, kv), (h, kv), (q, h)]
    if r.arch == "deepseek":
        attn = list(mla_matrices(r))
    if dense:
        return [*attn, (h, r.dense_ffn), (h, r.dense_ffn), (r.dense_ffn, h)]
    if r.arch == "gpt":
        return [*attn, (h, f), (f, h)]
    if r.arch == "llama":
        return [*attn, (h, f), (h, f), (f, h)]
    e, sf = r.experts, r.shared_experts * f
    shared = [(h, sf), (h, sf), (sf, h)] if sf else []
    return [*attn, (e, h, f), (e, h, f), (e, f, h), *shared]


def weight_bytes(arch: str, config: SynthConfig) -> int:
    """Bytes of the weights file as declared (fp8: 1 byte/weight plus bf16 block scales)."""
    r = resolve(arch, config)
    params = _params(r, r.experts)
    act = np_dtype(r.precision.act).itemsize
    if not r.precision.quantized:
        return params * act
    quantized = scales = 0
    for dense, count in ((False, r.layers - r.dense_layers), (True, r.dense_layers)):
        for shape in _quantized_matrices(r, dense) if count else []:
            quantized += math.prod(shape) * count
            scales += math.prod(shape[:-2]) * math.ceil(shape[-2] / FP8_BLOCK) * shape[-1] * count
    return quantized * 1 + (params - quantized) * act + scales * act


def forward_flops(arch: str, config: SynthConfig, *, batch: int | None = None,
                  seq: int | None = None) -> int:
    """MatMul FLOPs of one forward pass over ``batch`` x ``seq`` tokens.

    ``batch``/``seq`` default to the config's; the formula is in the module docstring.
    """
    r = resolve(arch, config)
    b, s = batch or r.batch, seq or r.seq
    if not (b and s):
        raise OptionError("forward_flops needs batch and seq (the config leaves them symbolic)",
                          hint="pass batch=... and seq=...")
    t, h, f = b * s, r.hidden, r.ffn
    attn_scores = 4 * b * s * s * h
    if r.arch == "gpt":
        layer = 2 * t * 4 * h * h + attn_scores + 2 * t * 2 * h * f
    elif r.arch == "deepseek":
        moe = 2 * t * h * r.experts + 2 * r.experts * capacity(r, t) * 3 * h * f
        moe += 2 * t * 3 * h * r.shared_experts * f
        dense = 2 * t * 3 * h * r.dense_ffn
        return (r.layers * mla_flops(r, b, s) + r.dense_layers * dense
                + (r.layers - r.dense_layers) * moe + 2 * t * h * r.vocab)
    else:
        layer = 2 * t * (2 * h * h + 2 * h * r.kv_heads * r.head_dim) + attn_scores
        if r.arch == "llama":
            layer += 2 * t * 3 * h * f
        else:
            layer += 2 * t * h * r.experts + 2 * r.experts * capacity(r, t) * 3 * h * f
            layer += 2 * t * 3 * h * r.shared_experts * f
    return r.layers * layer + 2 * t * h * r.vocab


def flops_per_token(arch: str, config: SynthConfig, *, batch: int | None = None,
                    seq: int | None = None) -> float:
    """`forward_flops` divided by the number of tokens (batch defaults to 1 if unset)."""
    r = resolve(arch, config)
    b, s = batch or r.batch or 1, seq or r.seq
    if not s:
        raise OptionError("flops_per_token needs seq (attention FLOPs grow with it)",
                          hint="pass seq=...")
    return forward_flops(arch, config, batch=b, seq=s) / (b * s)
