"""Memory one device needs: the peak over the phases of a step, not the sum of everything.

Components (bytes): weights at their storage format (FP8 with per-block scales
included), gradients and optimizer state for training (mixed-precision Adam: 2 + 2 + 12
= 16 bytes/param, divided across data-parallel ranks by the ZeRO stage), activations
kept for the micro-batches in flight under the pipeline schedule, the KV cache for
decode, and a workspace for the largest transient. Each *phase* of a step (forward,
backward, optimizer step; prefill, decode) holds some of them; the estimate is the worst
phase. So the optimizer's temporaries never add to activations that are already freed,
and a server's prefill activations never add to a full KV cache they precede.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from shardc.ir import DType


@dataclass(frozen=True, slots=True)
class WeightFormat:
    """How weights are stored: element type plus optional per-block scales.

    DeepSeek-V3's FP8 weights use 128×128 blocks (activations 1×128 tiles); its released
    checkpoints keep fp32 scales (4 bytes), Blackwell kernels use UE8M0 (1 byte).
    """

    dtype: DType = DType.BFLOAT16
    block: tuple[int, int] | None = None
    scale_bytes: int = 4

    def nbytes(self, shape: tuple[int, ...]) -> float:
        """Storage of one tensor of ``shape`` (scales included, blocks rounded up)."""
        elems = math.prod(shape)
        data = elems * self.dtype.bits / 8
        if self.block is None:
            return data
        rows = math.prod(shape[:-1]) if len(shape) > 1 else 1
        cols = shape[-1] if shape else 1
        br, bc = self.block
        return data + math.ceil(rows / br) * math.ceil(cols / bc) * self.scale_bytes

    def bytes_per_param(self, rows: int = 1 << 14, cols: int = 1 << 14) -> float:
        """Average bytes per parameter for a large ``rows × cols`` matrix."""
        return self.nbytes((rows, cols)) / (rows * cols)


FP8_DEEPSEEK_V3 = WeightFormat(DType.FLOAT8E4M3FN, (128, 128), 4)
FP8_UE8M0 = WeightFormat(DType.FLOAT8E4M3FN, (128, 128), 1)


@dataclass(frozen=True, slots=True)
class TrainingState:
    """Gradients and optimizer state per parameter, and how ZeRO shards them."""

    grad_bytes: float = 2.0
    optimizer_bytes: float = 12.0
    """fp32 master weight + Adam m + v."""
    zero_stage: int = 0
    dp: int = 1

    def __post_init__(self) -> None:
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"ZeRO stage must be 0..3, got {self.zero_stage}")

    def per_param(self, weight_bytes: float) -> dict[str, float]:
        """Bytes per parameter held on one rank: weights, grads, optimizer."""
        shard = 1.0 / max(self.dp, 1)
        return {
            "weights": weight_bytes * (shard if self.zero_stage >= 3 else 1.0),
            "gradients": self.grad_bytes * (shard if self.zero_stage >= 2 else 1.0),
            "optimizer": self.optimizer_bytes * (shard if self.zero_stage >= 1 else 1.0),
        }


def in_flight_microbatches(schedule: str, stage: int, stages: int, microbatches: int) -> int:
    """Micro-batches whose activations stage ``stage`` (0-based) holds at its peak.

    GPipe runs every forward before any backward, so all M are held. 1F1B (PipeDream-
    flush) lets stage i start backward after ``stages - i`` forwards, so it holds at
    most that many; the first stage holds the most.
    """
    if schedule == "gpipe":
        return microbatches
    if schedule == "1f1b":
        return min(stages - stage, microbatches)
    raise ValueError(f"unknown pipeline schedule {schedule!r}")


def transformer_layer_activation_bytes(
    seq: int,
    batch: int,
    hidden: int,
    heads: int,
    *,
    tp: int = 1,
    sequence_parallel: bool = True,
    recompute: str = "none",
    bytes_per_elem: int = 2,
) -> float:
    """Activations one transformer layer keeps for backward (Korthikanti et al. 2022).

    ``s·b·h·(34 + 5·a·s/h)`` bytes at 16-bit without parallelism: 34·s·b·h for the
    linear layers, norms and dropout masks, and 5·a·s²·b for the attention scores,
    softmax and its dropout. Tensor parallelism with sequence parallelism divides both
    by t; without sequence parallelism the 10·s·b·h of norms and dropouts stay whole.
    Selective recomputation drops the attention-core term; full recomputation keeps only
    the layer input (2·s·b·h). ``bytes_per_elem`` rescales from the paper's 2 bytes.
    """
    scale = bytes_per_elem / 2
    sbh = seq * batch * hidden
    if recompute == "full":
        return 2 * sbh * scale / (tp if sequence_parallel else 1)
    linear = 34 * sbh / tp if sequence_parallel else (24 * sbh / tp + 10 * sbh)
    attention = 5 * heads * seq * seq * batch / tp
    if recompute == "selective":
        attention = 0.0
    elif recompute != "none":
        raise ValueError(f"unknown recompute policy {recompute!r}")
    return (linear + attention) * scale


def kv_cache_bytes(
    batch: int, context: int, layers: int, kv_heads: int, head_dim: int, bytes_per_elem: float
) -> float:
    """The decode KV cache: batch · context · layers · 2 (K, V) · kv-heads · head-dim · bytes."""
    return batch * context * layers * 2 * kv_heads * head_dim * bytes_per_elem


@dataclass(frozen=True)
class MemoryEstimate:
    """Named components and the phases that hold them; the peak is the worst phase."""

    components: Mapping[str, float]
    phases: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def phase_bytes(self, phase: str) -> float:
        """Bytes held during ``phase``."""
        return sum(self.components.get(c, 0.0) for c in self.phases[phase])

    @property
    def peak_phase(self) -> str:
        """The phase that sets the peak (first one on ties, phases in declared order)."""
        if not self.phases:
            return "all"
        return max(self.phases, key=lambda p: (self.phase_bytes(p), -list(self.phases).index(p)))

    @property
    def peak(self) -> float:
        """Peak bytes on the device."""
        if not self.phases:
            return sum(self.components.values())
        return self.phase_bytes(self.peak_phase)

    def explain(self) -> str:
        """Which phase sets the peak and what it holds."""
        held = self.phases.get(self.peak_phase, tuple(self.components))
        parts = ", ".join(f"{c} {self.components.get(c, 0) / 2**30:.3g} GiB" for c in held)
        return f"peak {self.peak / 2**30:.4g} GiB during {self.peak_phase}: {parts}"


def training_memory(
    params: float,
    weight: WeightFormat,
    state: TrainingState,
    *,
    activations_per_microbatch: float,
    in_flight: int,
    workspace: float = 0.0,
    optimizer_workspace: float = 0.0,
) -> MemoryEstimate:
    """One rank's memory for a training step.

    ``params`` are the parameters this rank is responsible for after tensor and
    pipeline splits (ZeRO's data-parallel sharding is applied here).
    """
    per = state.per_param(weight.bytes_per_param())
    comps = {k: v * params for k, v in per.items()}
    comps["activations"] = activations_per_microbatch * in_flight
    comps["workspace"] = workspace
    comps["optimizer workspace"] = optimizer_workspace
    steady = ("weights", "gradients", "optimizer")
    return MemoryEstimate(
        comps,
        {
            "forward/backward": (*steady, "activations", "workspace"),
            "optimizer step": (*steady, "optimizer workspace"),
        },
    )


def inference_memory(
    weight_bytes: float,
    *,
    kv_cache: float = 0.0,
    prefill_activations: float = 0.0,
    decode_activations: float = 0.0,
) -> MemoryEstimate:
    """One rank's memory for serving: weights, then prefill's peak or decode's."""
    return MemoryEstimate(
        {
            "weights": weight_bytes,
            "kv cache": kv_cache,
            "prefill activations": prefill_activations,
            "decode activations": decode_activations,
        },
        {
            "prefill": ("weights", "kv cache", "prefill activations"),
            "decode": ("weights", "kv cache", "decode activations"),
        },
    )
