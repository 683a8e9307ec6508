"""One forward step of a serving instance: decode tokens, prefill tokens, or both mixed.

The instance runs attention with tensor parallelism ``tp`` inside each of ``dp``
attention-data-parallel ranks, MoE layers with expert parallelism over all ``tp·dp``
devices of a pipeline stage (DeepSeek's serving layout, REFERENCE.md §3.2), and ``pp``
stages. Per device and layer, each piece is a roofline of :func:`shardc.cost.compute.node_time`
(the project's one compute model), so the device kind's peaks and efficiencies apply:

* **weights**: every step reads the device's share of every weight it uses once, however
  many tokens the step carries: the reason decode is memory-bound and batching pays;
* **KV cache**: a decode token reads its sequence's whole cache (``ctx`` positions of
  ``kv_values_per_token_layer`` each); MLA's latent is not split by TP (every head reads
  it), GQA's is, up to ``kv_heads`` ways;
* **attention core**: ``attention_flops_per_position × ctx`` per query token (MLA absorbed
  in decode, expanded in prefill);
* **batch-dependent GEMM efficiency**: tensor-core GEMMs run on tiles of ``M_TILE`` rows,
  so an expert that receives 3 tokens costs the FLOPs of 64 (and the bytes of its whole
  weight); the padded FLOPs go into the roofline;
* **the latency floor**: every GEMM, grouped expert GEMM, norm, activation and attention
  op is one ``node_time`` call, so the kind's per-kernel ``launch`` and its efficiency
  curves by op size (a 10 µs GEMM runs below a 1 ms one) apply kernel by kernel; the
  kind's ``step_overhead_per_layer`` tag adds what the attention op costs beyond its
  kernels (RoPE, KV append, scheduling: fitted per kind, see the stock kinds);
* **communication**: TP all-reduce of each layer's output (priced by
  :func:`shardc.cost.comm.collective_time`) and the EP dispatch/combine
  (:mod:`shardc.cost.expert_comm`; decode-only steps use the low-latency kernels), or
  TensorRT-LLM's all-gather + reduce-scatter with ``moe_comm="allgather"``.
  With ``overlap`` (DeepSeek's two-micro-batch
  overlap, Open-Infra-Index day 6) a MoE layer takes ``max(compute, all-to-all)``.

Multi-token prediction verifies ``1 + draft`` tokens per sequence per step and emits
``1 + Σ acceptance^i`` of them on average (Leviathan et al. 2023's expected accepted
length for a chain of ``draft`` guesses with per-token acceptance ``a``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from shardc.cost.comm import Tier, collective_time
from shardc.cost.compute import DeviceSpec, node_time
from shardc.cost.expert_comm import moe_exchange
from shardc.cost.ops import NodeCost
from shardc.serving.kernels import PLAIN, KernelLines, Line, scaled
from shardc.serving.shapes import (
    Parallel,
    Quant,
    StepContext,
    StepEstimate,
    StepShape,
    element_bytes,
)

if TYPE_CHECKING:
    from shardc.serving.arch import ServingModel


M_TILE = 64
"""Rows of one tensor-core GEMM tile: Hopper's wgmma instructions are m64nNk16 (NVIDIA PTX
ISA, "warpgroup level matrix multiply"); Ascend's cube unit is 16×16×16, so 64 is the
conservative end. A GEMM of m rows costs the FLOPs of ``ceil(m/M_TILE)·M_TILE``."""

def _gemm(m: float, k: float, n: float, quant: Quant, kind: DeviceSpec, *, groups: int = 1,
          weight_fraction: float = 1.0, line: Line = PLAIN) -> float:
    """Seconds of one GEMM kernel: ``m`` rows of width ``k`` against a ``k×n`` weight.

    ``groups`` > 1 is a grouped GEMM (one kernel over that many experts' weights); the
    ``weight_fraction`` of them some token routed to are read and computed, ``m`` rows
    each, padded to whole tiles (an expert no token picked costs nothing). One
    :func:`node_time` call is one kernel, so the kind's launch cost and its size-dependent
    efficiency curves apply per kernel; ``line`` is the kernel family's factors on them and
    its extra seconds (`shardc.serving.kernels`).
    """
    if k <= 0 or n <= 0 or groups <= 0 or m <= 0:
        return 0.0
    rows = math.ceil(m / M_TILE) * M_TILE
    act = element_bytes(quant.activations)
    weights = k * n * groups * quant.weight_bytes
    active = groups * weight_fraction
    cost = NodeCost(
        flops=int(2 * rows * k * n * active),
        bytes_read=int(weights * weight_fraction + m * k * act * active),
        bytes_written=int(m * n * act * active), param_bytes=int(weights),
        dtype=quant.gemm_dtype, kind="matmul",
    )
    return node_time(cost, scaled(kind, line.compute, line.memory)).seconds + line.extra


def _elementwise(values: float, quant: Quant, kind: DeviceSpec, passes: float = 2.0) -> float:
    """One fused memory-bound kernel (RMSNorm + residual add, SwiGLU's gate) over
    ``values`` activations, read and written ``passes`` times in all: it pays a launch.
    """
    if values <= 0:
        return 0.0
    nbytes = int(values * passes * element_bytes(quant.activations))
    cost = NodeCost(flops=0, bytes_read=nbytes, bytes_written=0, param_bytes=0,
                    dtype=quant.activation_dtype, kind="norm")
    return node_time(cost, kind).seconds


def _attention_core(flops: float, nbytes: float, quant: Quant, kind: DeviceSpec,
                    factor: float = 1.0) -> float:
    if flops <= 0 and nbytes <= 0:
        return 0.0
    cost = NodeCost(flops=int(flops), bytes_read=int(nbytes), bytes_written=0, param_bytes=0,
                    dtype=quant.activation_dtype, kind="attention")
    return node_time(cost, scaled(kind, factor)).seconds


def context_attention(flops: float, quant: Quant, kind: DeviceSpec, lines: KernelLines) -> float:
    """Seconds of one prefill attention kernel of ``flops`` (causal flash attention; MLA
    runs expanded, as full heads of qk 192 / v 128): compute-bound, on the kind's
    context-attention line.
    """
    return _attention_core(flops, 0.0, quant, kind, lines.context_attention)


def _allreduce(tiers: Sequence[Sequence[Tier]], nbytes: float) -> float:
    best = math.inf
    for view in tiers:
        try:
            best = min(best, collective_time("all_reduce", nbytes, view).seconds)
        except ValueError:
            continue
    return 0.0 if best == math.inf else best


def dense_lines(lines: KernelLines, quant: Quant) -> Line:
    """The line of a dense GEMM with ``quant``'s weights."""
    return lines.line("gemm", quant.weights)


def _attention_gemms(m: ServingModel, rows: float, tp: int, quant: Quant,
                     kind: DeviceSpec, lines: KernelLines | None = None) -> float:
    """The attention projections of one layer on one device, one kernel each.

    GQA: the fused QKV GEMM and the output projection. MLA: the fused down-projections
    of Q and KV (``q_a``, ``kv_a``: replicated, each rank runs them whole), ``q_b``, the
    absorbed ``kv_b`` (two batched GEMMs), and the output projection.
    """
    fx = dense_lines(lines or KernelLines(), quant)
    h = m.hidden
    if m.mla is None:
        qkv = (m.heads + 2 * m.kv_heads) * m.head_dim / tp
        o_in = m.heads * m.head_dim / tp
        return (_gemm(rows, h, qkv, quant, kind, line=fx)
                + _gemm(rows, o_in, h, quant, kind, line=fx))
    a = m.mla
    qk = a.qk_nope_head_dim + a.qk_rope_head_dim
    down = (a.q_lora_rank or 0) + a.kv_lora_rank + a.qk_rope_head_dim
    t = _gemm(rows, h, down, quant, kind, line=fx)
    t += _gemm(rows, a.q_lora_rank or h, m.heads * qk / tp, quant, kind, line=fx)
    kv_b = a.kv_lora_rank * m.heads * (a.qk_nope_head_dim + a.v_head_dim) / tp
    t += _gemm(rows, a.kv_lora_rank, kv_b / a.kv_lora_rank / 2, quant, kind, groups=2,
               line=fx)
    return t + _gemm(rows, m.heads * a.v_head_dim / tp, h, quant, kind, line=fx)


def expert_imbalance(tokens: float, ranks: int, redundant_fraction: float) -> float:
    """Busiest EP rank's routed tokens over the mean, for uniform random routing.

    Tokens per rank are ~Poisson(μ); the expected maximum of ``ranks`` of them is about
    ``μ + √(2μ·ln ranks)`` (Gaussian extreme value). Redundant experts let the balancer
    (DeepSeek's EPLB) split the hottest experts' load, which we model as shrinking the
    excess by the share of redundant slots.
    """
    if tokens <= 0 or ranks <= 1:
        return 1.0
    mu = tokens / ranks
    excess = math.sqrt(2.0 * mu * math.log(ranks)) / mu
    return 1.0 + excess / (1.0 + 4.0 * redundant_fraction * ranks)


def routed_experts(tokens: float, hidden: int, ffn: int, slots_total: int, top_k: int, ep: int,
                   quant: Quant, kind: DeviceSpec, lines: KernelLines,
                   imbalance: float = 1.0) -> float:
    """Seconds of one MoE op's routed experts on the busiest of ``ep`` ranks.

    ``tokens`` (the whole EP group's) each pick ``top_k`` of ``slots_total`` expert slots
    (experts plus redundant copies), ``slots_total / ep`` per rank. Two grouped GEMMs
    (gate+up, down) over the experts some token picked, each one's rows padded to whole
    tiles, on the kind's MoE line; the activation; and the op's extra
    seconds (routing, permute, finalize), once.
    """
    slots = math.ceil(slots_total / ep)
    routed = tokens * top_k / ep * imbalance  # rows on the busiest device
    # a slot is read when some token picks its expert; a replicated expert's tokens are
    # split among its copies, so each copy sees the picks over (experts + redundant) slots
    p_active = 1.0 - (1.0 - top_k / slots_total) ** max(tokens, 0.0)
    per_expert = routed / (slots * p_active) if p_active > 0 else 0.0  # rows per active one
    line = lines.line("moe", quant.weights)
    e = Line(line.compute, line.memory)
    return (_gemm(per_expert, hidden, 2 * ffn, quant, kind, groups=slots,
                  weight_fraction=p_active, line=e)
            + _gemm(per_expert, ffn, hidden, quant, kind, groups=slots,
                    weight_fraction=p_active, line=e)
            + _elementwise(routed * 2 * ffn, quant, kind, 1.5)
            + (line.extra if tokens > 0 else 0.0))


def _moe_layer(m: ServingModel, kind: DeviceSpec, par: Parallel, quant: Quant,
               tokens: float, ctx: StepContext, low_latency: bool) -> tuple[float, float, float]:
    """(routed experts s, shared expert + router s, all-to-all s) of one MoE layer.

    Routed experts run as two grouped GEMMs (gate+up, down) over the device's expert
    slots, each expert's rows padded to whole tiles; only the experts some token picked
    are read. The shared expert and the router run on the device's own tokens. Under
    ``allgather`` a rank scans every gathered token but computes only the pairs routed
    to its experts, the same ``tokens·top_k/ep`` rows: only the exchange differs.
    """
    ep = par.ep
    f, h = m.expert_ffn, m.hidden
    t_exp = routed_experts(tokens, h, f, m.experts + ctx.redundant, m.top_k, ep, quant, kind,
                           ctx.lines, ctx.imbalance)
    own = tokens / ep
    fx = dense_lines(ctx.lines, quant)
    t_sh = _gemm(own, h, m.experts, quant, kind, line=fx)  # router
    if m.shared_experts:
        sf = m.shared_experts * f
        t_sh += (_gemm(own, h, 2 * sf, quant, kind, line=fx)
                 + _gemm(own, sf, h, quant, kind, line=fx)
                 + _elementwise(own * 2 * sf, quant, kind, 1.5))
    a2a = moe_exchange(
        ctx.moe_comm, ctx.ep_tiers, tokens_per_rank=own, hidden=h, top_k=m.top_k,
        dispatch_bytes=element_bytes(quant.dispatch),
        combine_bytes=element_bytes(quant.combine),
        route_nodes=m.route_nodes, low_latency=low_latency,
    ) if ep > 1 else None
    return t_exp, t_sh, a2a.seconds if a2a else 0.0


def step_time(m: ServingModel, kind: DeviceSpec, par: Parallel, quant: Quant,
              shape: StepShape, ctx: StepContext) -> StepEstimate:
    """Time of one step of the instance: every layer once (a token crosses all stages)."""
    tp, dp = par.tp, par.dp
    act = element_bytes(quant.activations)
    dec_tok = shape.decode_seqs * shape.tokens_per_seq
    tokens = dec_tok + shape.prefill_tokens  # whole instance
    per_rank = tokens / dp  # each attention-DP rank's tokens
    parts: dict[str, float] = {}

    def add(key: str, seconds: float, times: float = 1.0) -> None:
        parts[key] = parts.get(key, 0.0) + seconds * times

    # attention, per layer per device: projections, the core over the cache, norms
    fx = dense_lines(ctx.lines, quant)
    t_proj = _attention_gemms(m, per_rank, tp, quant, kind, ctx.lines)
    seqs = shape.decode_seqs / dp
    kv_read = seqs * shape.decode_context * m.kv_values_per_token_layer * element_bytes(
        quant.kv) / m.kv_split(tp)
    core_flops = (dec_tok / dp) * shape.decode_context * m.attention_flops_per_position(
        absorbed=True) / tp
    pre_flops = (shape.prefill_tokens / dp) * shape.prefill_context * (
        m.attention_flops_per_position(absorbed=False)) / tp
    t_core = (_attention_core(core_flops, kv_read, quant, kind)
              + context_attention(pre_flops, quant, kind, ctx.lines) + ctx.layer_overhead)
    t_norm = 2 * _elementwise(per_rank * m.hidden, quant, kind)
    t_ar = _allreduce(ctx.tp_tiers, per_rank * m.hidden * act) if tp > 1 else 0.0
    add("attention_weights", t_proj, m.layers)
    add("attention_core_kv", t_core, m.layers)
    add("norms", t_norm, m.layers)
    add("tp_allreduce", t_ar, m.layers)

    # dense FFN layers (TP inside the DP rank): gate+up, SwiGLU, down, all-reduce
    dense = m.layers - m.moe_layers
    if dense:
        f = m.ffn / tp
        t_ffn = (_gemm(per_rank, m.hidden, 2 * f, quant, kind, line=fx)
                 + _gemm(per_rank, f, m.hidden, quant, kind, line=fx)
                 + _elementwise(per_rank * 2 * f, quant, kind, 1.5))
        add("dense_ffn", t_ffn, dense)
        add("tp_allreduce", t_ar, dense)

    # MoE layers (EP over the stage's tp·dp devices)
    if m.moe_layers:
        t_exp, t_sh, comm = _moe_layer(m, kind, par, quant, tokens, ctx,
                                       low_latency=shape.prefill_tokens == 0)
        compute = t_exp + t_sh + t_proj + t_core + t_norm + t_ar
        layer = max(compute, comm) if ctx.overlap else compute + comm
        add("experts", t_exp, m.moe_layers)
        add("shared_experts", t_sh, m.moe_layers)
        add("ep_alltoall_exposed", layer - compute, m.moe_layers)
        parts["ep_alltoall_total"] = comm * m.moe_layers

    # LM head over the tokens that produce logits (decode tokens, one per prompt)
    head_rows = dec_tok / dp + (shape.prefill_tokens / dp > 0)
    add("lm_head", _gemm(head_rows, m.hidden, m.vocab / tp, quant, kind))
    # a token crosses the pp stages one after another, each holding 1/pp of the layers:
    # the parts above, summed over all layers, are that latency; plus the hand-offs
    if par.pp > 1:
        add("pp_handoff", ctx.pp_latency + per_rank * m.hidden * act / ctx.pp_bandwidth,
            par.pp - 1)
    total = sum(v for k, v in parts.items() if k != "ep_alltoall_total")
    bound = max((k for k in parts if k != "ep_alltoall_total"), key=lambda k: parts[k])
    return StepEstimate(total, parts, bound)


def accepted_tokens(draft: int, acceptance: float) -> float:
    """Expected tokens a step emits with ``draft`` MTP guesses of acceptance ``a``."""
    return 1.0 + sum(acceptance ** i for i in range(1, draft + 1))
