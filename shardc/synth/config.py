"""What a synthesized transformer looks like: one frozen config, validated once.

`SynthConfig` holds what the user said (``None`` where they left a size to the
architecture's default); :func:`resolve` checks it against an architecture and returns a
`Resolved` config with every default filled in, so the builder, the closed-form counts and
the CLI's JSON all read the same numbers and no later code re-derives a default.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from fractions import Fraction
from typing import Any, Literal

import ml_dtypes
import numpy as np
from onnx import TensorProto

from shardc.errors import OptionError

Arch = Literal["gpt", "llama", "moe", "deepseek"]
ARCHS: tuple[str, ...] = ("gpt", "llama", "moe", "deepseek")

#: Options only the deepseek architecture takes (MLA sizes, the leading dense layers,
#: group-limited routing), and their DeepSeek-V3 values (its config.json; REFERENCE.md
#: section 3.2) used where the user leaves one out.
DEEPSEEK_DEFAULTS: dict[str, int] = {
    "dense_layers": 3, "dense_ffn": 18432, "q_lora_rank": 1536, "kv_lora_rank": 512,
    "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128, "route_groups": 4,
    "expert_groups": 0,
}
MOE_OPTIONS = ("experts", "top_k", "shared_experts", "capacity_factor")
DTYPES: tuple[str, ...] = ("bf16", "fp16", "fp32", "fp8")

#: fp8 weights carry one scale per this many input rows (1x128 blocks along the reduction
#: axis, the granularity ONNX's blocked DequantizeLinear can express).
FP8_BLOCK = 128

#: --with-weights materialises every weight in memory; above this it refuses.
MAX_MATERIALISED_BYTES = 1 << 30


@dataclass(frozen=True)
class Precision:
    """The element types of one --dtype choice.

    ``weight`` is the type of the large projection matrices, ``act`` that of activations,
    embeddings, norms and the router; they differ only for fp8, where projections are
    float8e4m3fn with bf16 block scales and everything else is bf16.
    """

    name: str
    act: int
    weight: int

    @property
    def quantized(self) -> bool:
        """Whether projection weights are stored quantized (with scales)."""
        return self.weight != self.act

    @property
    def np_act(self) -> np.dtype:
        """The numpy type of activations (ml_dtypes for bf16)."""
        return np_dtype(self.act)


_ONNX_TO_NP: dict[int, Any] = {
    TensorProto.FLOAT: np.float32,
    TensorProto.FLOAT16: np.float16,
    TensorProto.BFLOAT16: ml_dtypes.bfloat16,
    TensorProto.FLOAT8E4M3FN: ml_dtypes.float8_e4m3fn,
    TensorProto.INT64: np.int64,
    TensorProto.DOUBLE: np.float64,
}


def np_dtype(onnx_type: int) -> np.dtype:
    """The numpy dtype of an ONNX element type this package emits."""
    return np.dtype(_ONNX_TO_NP[onnx_type])


def precision(name: str) -> Precision:
    """The `Precision` of a --dtype name; fp8 means fp8 weights, bf16 activations."""
    table = {
        "fp32": Precision("fp32", TensorProto.FLOAT, TensorProto.FLOAT),
        "fp16": Precision("fp16", TensorProto.FLOAT16, TensorProto.FLOAT16),
        "bf16": Precision("bf16", TensorProto.BFLOAT16, TensorProto.BFLOAT16),
        "fp8": Precision("fp8", TensorProto.BFLOAT16, TensorProto.FLOAT8E4M3FN),
    }
    if name not in table:
        raise OptionError(f"unknown dtype {name!r}", hint=f"use one of {', '.join(DTYPES)}")
    return table[name]


@dataclass(frozen=True)
class SynthConfig:
    """The sizes of a transformer; ``None`` means "the architecture's default".

    ``seq``/``batch`` left ``None`` keep the graph's input dims symbolic (``batch``,
    ``seq``), to be bound later; ``capacity_factor`` sizes the MoE expert buffers
    (capacity = min(tokens, ceil(cf * k * tokens / experts))); ``tie_embeddings``
    defaults to True for GPT (as GPT-2) and False for Llama/MoE (as Llama 2/3 at scale).
    """

    layers: int
    hidden: int
    heads: int
    kv_heads: int | None = None
    ffn: int | None = None
    experts: int | None = None
    top_k: int | None = None
    shared_experts: int | None = None
    vocab: int | None = None
    seq: int | None = None
    batch: int | None = None
    dtype: str = "bf16"
    max_positions: int | None = None
    capacity_factor: float | None = None
    tie_embeddings: bool | None = None
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    dense_layers: int | None = None
    dense_ffn: int | None = None
    q_lora_rank: int | None = None
    kv_lora_rank: int | None = None
    qk_nope_head_dim: int | None = None
    qk_rope_head_dim: int | None = None
    v_head_dim: int | None = None
    route_groups: int | None = None
    expert_groups: int | None = None


@dataclass(frozen=True)
class Resolved:
    """A `SynthConfig` checked against one architecture, every default filled in."""

    arch: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    seq: int | None
    batch: int | None
    dtype: str
    tie_embeddings: bool
    norm_eps: float
    rope_theta: float
    max_positions: int = 0  # gpt only
    experts: int = 0  # moe only
    top_k: int = 0
    shared_experts: int = 0
    capacity_factor: float = 0.0
    dense_layers: int = 0  # deepseek only: leading layers with a dense MLP
    dense_ffn: int = 0
    q_lora_rank: int = 0  # deepseek MLA sizes; 0 q_lora_rank = a full-rank query
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    route_groups: int = 0
    """Node-limited (group-limited) routing: a token's experts span at most this many
    groups. Recorded for pricing; the graph routes by groups when ``expert_groups`` is set."""
    expert_groups: int = 0
    """Groups the routed experts are split into (DeepSeek-V3's ``n_group``: 8); 0 routes
    over all experts. Set, the router picks ``route_groups`` groups by the sum of each
    group's two best scores, then the top-k experts within them."""

    @property
    def head_dim(self) -> int:
        """Width of one attention head (deepseek: of a RoPE'd head, the rope part)."""
        if self.arch == "deepseek":
            return self.qk_rope_head_dim
        return self.hidden // self.heads

    @property
    def moe(self) -> bool:
        """Whether some layers route tokens to experts."""
        return self.arch in ("moe", "deepseek")

    @property
    def precision(self) -> Precision:
        """Element types of weights and activations."""
        return precision(self.dtype)

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON output and model metadata (fields of other archs dropped)."""
        data = asdict(self)
        if self.arch != "gpt":
            data.pop("max_positions")
        else:
            data.pop("rope_theta")
        if not self.moe:
            for key in MOE_OPTIONS:
                data.pop(key)
        if self.arch != "deepseek":
            for key in DEEPSEEK_DEFAULTS:
                data.pop(key)
        return data


def llama_ffn(hidden: int) -> int:
    """Llama's default MLP width: 8h/3 rounded up to a multiple of 256."""
    return 256 * math.ceil(int(8 * hidden / 3) / 256)


def resolve(arch: str, cfg: SynthConfig) -> Resolved:
    """Check ``cfg`` for ``arch`` and fill defaults; raise `OptionError` saying what to fix."""
    if arch not in ARCHS:
        raise OptionError(f"unknown architecture {arch!r}", hint=f"use one of {', '.join(ARCHS)}")
    precision(cfg.dtype)  # validates the name
    for field in ("layers", "hidden", "heads", "kv_heads", "ffn", "experts", "top_k", "vocab",
                  "seq", "batch", "max_positions", "dense_ffn", "kv_lora_rank",
                  "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "route_groups",
                  "expert_groups"):
        value = getattr(cfg, field)
        if value is not None and (not isinstance(value, int) or value <= 0):
            flag = "--" + field.replace("_", "-")
            raise OptionError(f"{flag} must be a positive integer, got {value}")
    if cfg.shared_experts is not None and cfg.shared_experts < 0:
        raise OptionError(f"--shared-experts must be >= 0, got {cfg.shared_experts}")
    for field in ("dense_layers", "q_lora_rank"):
        value = getattr(cfg, field)
        if value is not None and (not isinstance(value, int) or value < 0):
            raise OptionError(f"--{field.replace('_', '-')} must be >= 0, got {value}")
    if arch == "deepseek":
        return _deepseek(cfg)
    if cfg.hidden % cfg.heads:
        raise OptionError(
            f"--hidden {cfg.hidden} is not divisible by --heads {cfg.heads}",
            hint=f"pick a hidden size that is a multiple of {cfg.heads}",
        )
    _check_arch_options(arch, cfg)
    common: dict[str, Any] = dict(
        arch=arch, layers=cfg.layers, hidden=cfg.hidden, heads=cfg.heads, seq=cfg.seq,
        batch=cfg.batch, dtype=cfg.dtype, norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta,
    )
    if arch == "gpt":
        return Resolved(
            **common, kv_heads=cfg.heads, ffn=cfg.ffn or 4 * cfg.hidden, vocab=cfg.vocab or 50257,
            tie_embeddings=True if cfg.tie_embeddings is None else cfg.tie_embeddings,
            max_positions=cfg.max_positions or max(2048, cfg.seq or 0),
        )
    kv_heads = cfg.kv_heads or cfg.heads
    if cfg.heads % kv_heads:
        raise OptionError(
            f"--heads {cfg.heads} is not divisible by --kv-heads {kv_heads}",
            hint="grouped-query attention needs each KV head shared by the same number of heads",
        )
    if (cfg.hidden // cfg.heads) % 2:
        raise OptionError(
            f"head dim {cfg.hidden // cfg.heads} (= hidden/heads) is odd; RoPE rotates pairs",
            hint="pick hidden/heads even",
        )
    res = Resolved(
        **common, kv_heads=kv_heads, ffn=cfg.ffn or llama_ffn(cfg.hidden),
        vocab=cfg.vocab or 32000,
        tie_embeddings=bool(cfg.tie_embeddings),
    )
    if arch == "llama":
        return res
    return replace(res, **_moe_fields(cfg, 8, 2, 0))


def _moe_fields(cfg: SynthConfig, experts_default: int, top_k_default: int,
                shared_default: int) -> dict[str, Any]:
    experts = cfg.experts or experts_default
    top_k = cfg.top_k or min(top_k_default, experts)
    if top_k > experts:
        raise OptionError(f"--top-k {top_k} is larger than --experts {experts}",
                          hint="each token picks k distinct experts")
    cf = 1.0 if cfg.capacity_factor is None else cfg.capacity_factor
    if not (math.isfinite(cf) and Fraction(cf).limit_denominator(64) > 0):
        raise OptionError(f"--capacity-factor must be a positive number (at least 1/64), "
                          f"got {cf}")
    shared = shared_default if cfg.shared_experts is None else cfg.shared_experts
    return dict(experts=experts, top_k=top_k, shared_experts=shared, capacity_factor=float(cf))


def _deepseek(cfg: SynthConfig) -> Resolved:
    """DeepSeek-V3-shaped: MLA attention, dense leading layers, shared + routed experts.

    Sizes left out take V3's values (61 layers, hidden 7168, 128 heads, 256 experts top-8,
    1 shared, expert width 2048, vocab 129280 are the usual command line).
    """
    _check_arch_options("deepseek", cfg)
    d = {k: getattr(cfg, k) if getattr(cfg, k) is not None else v
         for k, v in DEEPSEEK_DEFAULTS.items()}
    if d["dense_layers"] > cfg.layers:
        raise OptionError(f"--dense-layers {d['dense_layers']} exceeds --layers {cfg.layers}")
    groups = d["expert_groups"]
    if groups:
        fields = _moe_fields(cfg, 256, 8, 1)
        experts, top_k = fields["experts"], fields["top_k"]
        if experts % groups or d["route_groups"] > groups:
            raise OptionError(f"--expert-groups {groups}: must divide --experts {experts} and "
                              f"be at least --route-groups {d['route_groups']}")
        if top_k > d["route_groups"] * (experts // groups):
            raise OptionError(f"--top-k {top_k} exceeds the experts of --route-groups "
                              f"{d['route_groups']} groups ({experts // groups} each)")
    if d["qk_rope_head_dim"] % 2:
        raise OptionError(f"--qk-rope-head-dim {d['qk_rope_head_dim']} is odd; RoPE rotates "
                          "pairs", hint="pick an even rope width")
    if cfg.kv_heads is not None and cfg.kv_heads != cfg.heads:
        raise OptionError("deepseek uses MLA: every head reads the shared latent; drop --kv-heads")
    return Resolved(
        arch="deepseek", layers=cfg.layers, hidden=cfg.hidden, heads=cfg.heads,
        kv_heads=cfg.heads, ffn=cfg.ffn or 2048, vocab=cfg.vocab or 129280, seq=cfg.seq,
        batch=cfg.batch, dtype=cfg.dtype, tie_embeddings=bool(cfg.tie_embeddings),
        norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta,
        **_moe_fields(cfg, 256, 8, 1), **d,
    )


def _check_arch_options(arch: str, cfg: SynthConfig) -> None:
    """Reject options that do not apply to ``arch`` instead of silently ignoring them."""
    if arch != "deepseek":
        for field in DEEPSEEK_DEFAULTS:
            if getattr(cfg, field) is not None:
                raise OptionError(f"--{field.replace('_', '-')} applies to deepseek only, "
                                  f"not {arch}")
    if arch not in ("moe", "deepseek"):
        for field in MOE_OPTIONS:
            if getattr(cfg, field) is not None:
                raise OptionError(f"--{field.replace('_', '-')} applies to moe only, not {arch}")
    if arch == "gpt":
        if cfg.kv_heads is not None and cfg.kv_heads != cfg.heads:
            raise OptionError("gpt uses multi-head attention: --kv-heads must equal --heads",
                              hint="use llama or moe for grouped-query attention")
        if cfg.max_positions is not None and cfg.seq is not None and cfg.seq > cfg.max_positions:
            raise OptionError(f"--seq {cfg.seq} exceeds --max-positions {cfg.max_positions}")
    elif cfg.max_positions is not None:
        raise OptionError(f"--max-positions applies to gpt only ({arch} uses RoPE)")


def capacity_ratio(res: Resolved) -> Fraction:
    """Capacity slots per token per expert, r = min(cf * k, E) / E, as an exact fraction.

    cf is taken as the nearest fraction with denominator <= 64 (exact for the usual 1.0,
    1.25, 1.5, 2.0), so capacity is integer arithmetic the graph can do with shapes alone.
    Clamped at 1: no expert can receive more than every token (a token's k are distinct).
    """
    cf = Fraction(res.capacity_factor).limit_denominator(64)
    return min(cf * res.top_k, Fraction(res.experts)) / res.experts


def capacity(res: Resolved, tokens: int) -> int:
    """Slots per expert for ``tokens`` tokens: C = ceil(r * tokens), r = `capacity_ratio`.

    That is C = min(tokens, ceil(cf * k * tokens / E)), in exact integer arithmetic.
    """
    r = capacity_ratio(res)
    return -(-r.numerator * tokens // r.denominator)
