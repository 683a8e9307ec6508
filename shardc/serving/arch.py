"""The architecture a serving plan is priced from: sizes, not a graph.

A decode step of a 671 B-parameter model is priced thousands of times while the search
tries instance shapes and batch sizes, and what it costs depends on a few sizes only
(hidden, heads, KV width, experts, top-k), so serving reads the architecture once into a
:class:`ServingModel` and prices from closed forms. The sizes come from the model file
itself: ``shardc synth`` records its resolved config in the ONNX metadata
(``shardc.synth.config``), which :func:`from_onnx` reads.

MLA (DeepSeek-V2/V3): the KV cache holds one compressed latent of ``kv_lora_rank`` plus a
shared RoPE key of ``qk_rope_head_dim`` per token and layer (512 + 64 = 576 values for V3,
DeepSeek-V3 report §2.1.1), not ``2·kv_heads·head_dim``; decode runs the absorbed form, in
which every head attends over the latent directly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shardc.errors import ModelError


@dataclass(frozen=True, slots=True)
class MLA:
    """Multi-head latent attention sizes (DeepSeek-V3 config.json values by default)."""

    q_lora_rank: int = 1536
    kv_lora_rank: int = 512
    qk_nope_head_dim: int = 128
    qk_rope_head_dim: int = 64
    v_head_dim: int = 128


@dataclass(frozen=True, slots=True)
class ServingModel:
    """A decoder-only transformer's sizes, enough to price prefill and decode."""

    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    """Width of a dense layer's MLP (SwiGLU: three h×ffn matrices)."""
    vocab: int
    dense_layers: int = 0
    """Leading layers with a dense MLP in a MoE model (DeepSeek-V3: 3); all if no experts."""
    experts: int = 0
    top_k: int = 0
    shared_experts: int = 0
    expert_ffn: int = 0
    mla: MLA | None = None
    route_nodes: int = 0
    """Node-limited routing: a token's experts span at most this many nodes (V3: 4); 0 = none."""
    mtp: int = 0
    """Multi-token-prediction modules (V3: 1), usable as a draft for speculative decode."""
    tie_embeddings: bool = False
    dtype: str = "bf16"
    """The weights' type in the model file: the default for serving's weight dtype."""

    # ------------------------------------------------------------------ structure
    @property
    def moe(self) -> bool:
        """Whether some layers route tokens to experts."""
        return self.experts > 0

    @property
    def moe_layers(self) -> int:
        """Layers whose FFN is a routed MoE."""
        return self.layers - self.dense_layers if self.moe else 0

    @property
    def attention_params(self) -> int:
        """Projection parameters of one attention layer."""
        h = self.hidden
        if self.mla is None:
            q = self.heads * self.head_dim
            return h * q + 2 * h * self.kv_heads * self.head_dim + q * h
        m = self.mla
        qk = m.qk_nope_head_dim + m.qk_rope_head_dim
        q = h * self.heads * qk
        if m.q_lora_rank:
            q = h * m.q_lora_rank + m.q_lora_rank * self.heads * qk
        kv = h * (m.kv_lora_rank + m.qk_rope_head_dim)
        kv += m.kv_lora_rank * self.heads * (m.qk_nope_head_dim + m.v_head_dim)
        return q + kv + self.heads * m.v_head_dim * h

    @property
    def dense_ffn_params(self) -> int:
        """Parameters of one dense SwiGLU MLP."""
        return 3 * self.hidden * self.ffn

    @property
    def expert_params(self) -> int:
        """Parameters of one routed (or shared) expert."""
        return 3 * self.hidden * self.expert_ffn

    @property
    def embedding_params(self) -> int:
        """Token embedding plus LM head (once if tied)."""
        return self.vocab * self.hidden * (1 if self.tie_embeddings else 2)

    @property
    def total_params(self) -> int:
        """Every parameter (MTP modules left out: they are a draft, sized separately)."""
        routed = self.experts + self.shared_experts
        per_moe = self.hidden * self.experts + routed * self.expert_params
        return (
            self.layers * self.attention_params
            + (self.layers - self.moe_layers) * self.dense_ffn_params
            + self.moe_layers * per_moe
            + self.embedding_params
        )

    @property
    def active_params(self) -> int:
        """Parameters one token's forward touches."""
        used = self.top_k + self.shared_experts
        per_moe = self.hidden * self.experts + used * self.expert_params
        return (
            self.layers * self.attention_params
            + (self.layers - self.moe_layers) * self.dense_ffn_params
            + self.moe_layers * per_moe
            + self.vocab * self.hidden
        )

    # ------------------------------------------------------------------ KV cache
    @property
    def kv_values_per_token_layer(self) -> int:
        """Cached values per token per layer: 2·kv_heads·head_dim, or MLA's latent + rope key."""
        if self.mla is not None:
            return self.mla.kv_lora_rank + self.mla.qk_rope_head_dim
        return 2 * self.kv_heads * self.head_dim

    def kv_bytes_per_token(self, value_bytes: float) -> float:
        """KV-cache bytes of one token over all layers."""
        return self.layers * self.kv_values_per_token_layer * value_bytes

    def kv_split(self, tp: int) -> int:
        """How many ways tensor parallelism splits one sequence's cache.

        MLA's latent is shared by every head, so each TP rank keeps all of it (why
        DeepSeek serves attention with data parallelism); GQA splits by KV heads up to
        ``kv_heads``, beyond which heads are replicated.
        """
        return 1 if self.mla is not None else max(1, min(tp, self.kv_heads))

    # ------------------------------------------------------------------ FLOPs
    def attention_flops_per_position(self, *, absorbed: bool) -> int:
        """Attention-core FLOPs of one query token against one cached position.

        Standard: QKᵀ and PV, ``4·heads·head_dim``. MLA absorbed (decode): every head
        scores against the 576-wide latent+rope and sums the 512-wide latent; MLA
        expanded (prefill): 192-wide keys and 128-wide values per head.
        """
        if self.mla is None:
            return 4 * self.heads * self.head_dim
        m = self.mla
        if absorbed:
            return 2 * self.heads * (2 * m.kv_lora_rank + m.qk_rope_head_dim)
        return 2 * self.heads * (m.qk_nope_head_dim + m.qk_rope_head_dim + m.v_head_dim)

    def as_dict(self) -> dict[str, Any]:
        """Plain data for plan JSON."""
        out: dict[str, Any] = {
            "name": self.name, "layers": self.layers, "dense_layers": self.dense_layers,
            "hidden": self.hidden, "heads": self.heads, "kv_heads": self.kv_heads,
            "head_dim": self.head_dim, "ffn": self.ffn, "vocab": self.vocab,
            "experts": self.experts, "top_k": self.top_k, "shared_experts": self.shared_experts,
            "expert_ffn": self.expert_ffn, "route_nodes": self.route_nodes, "mtp": self.mtp,
            "total_params": self.total_params, "active_params": self.active_params,
            "kv_values_per_token_layer": self.kv_values_per_token_layer,
        }
        if self.mla is not None:
            out["mla"] = {
                "q_lora_rank": self.mla.q_lora_rank, "kv_lora_rank": self.mla.kv_lora_rank,
                "qk_nope_head_dim": self.mla.qk_nope_head_dim,
                "qk_rope_head_dim": self.mla.qk_rope_head_dim, "v_head_dim": self.mla.v_head_dim,
            }
        return out


def from_synth_config(arch: str, cfg: dict[str, Any], name: str = "model") -> ServingModel:
    """The serving view of a resolved ``shardc synth`` config (its ``as_dict``)."""
    heads, hidden = int(cfg["heads"]), int(cfg["hidden"])
    head_dim = hidden // heads
    mla = None
    if cfg.get("kv_lora_rank"):
        mla = MLA(int(cfg.get("q_lora_rank") or 0), int(cfg["kv_lora_rank"]),
                  int(cfg["qk_nope_head_dim"]), int(cfg["qk_rope_head_dim"]),
                  int(cfg["v_head_dim"]))
    experts = int(cfg.get("experts") or 0)
    return ServingModel(
        name=name, layers=int(cfg["layers"]), hidden=hidden, heads=heads,
        kv_heads=int(cfg.get("kv_heads") or heads), head_dim=head_dim,
        ffn=int(cfg.get("dense_ffn") or cfg["ffn"]), vocab=int(cfg["vocab"]),
        dense_layers=int(cfg.get("dense_layers") or 0) if experts else int(cfg["layers"]),
        experts=experts, top_k=int(cfg.get("top_k") or 0),
        shared_experts=int(cfg.get("shared_experts") or 0),
        expert_ffn=int(cfg["ffn"]) if experts else 0, mla=mla,
        route_nodes=int(cfg.get("route_groups") or 0), mtp=int(cfg.get("mtp") or 0),
        tie_embeddings=bool(cfg.get("tie_embeddings", False)),
        dtype=str(cfg.get("dtype", "bf16")),
    )


def from_onnx(path: Path) -> ServingModel:
    """Read a model file's architecture from its ``shardc.synth`` metadata.

    Graph-only models (a Hugging Face export) carry no such record: a dense decoder's sizes
    are read from its graph (:mod:`shardc.serving.graph_arch`).
    """
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises several unrelated types for unreadable files
        raise ModelError(f"cannot read {path}: {exc}".splitlines()[0]) from None
    props = {p.key: p.value for p in model.metadata_props}
    if "shardc.synth.config" not in props:
        from shardc.serving.graph_arch import sizes_from_graph

        return from_synth_config("llama", sizes_from_graph(path), name=path.stem)
    cfg = json.loads(props["shardc.synth.config"])
    return from_synth_config(props.get("shardc.synth.arch", "llama"), cfg, name=path.stem)
