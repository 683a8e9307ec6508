"""What a serving step is about: its precision (`Quant`), how an instance splits the model
(`Parallel`), what one step carries (`StepShape`), what prices its communication
(`StepContext`) and what it costs (`StepEstimate`).

Why apart from :mod:`shardc.serving.step`: the candidates, the planner, the traffic
records, the benchmarks and the tests all name these types and byte sizes; only the step
model prices them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from shardc.cost.comm import Tier
from shardc.cost.memory import FP8_DEEPSEEK_V3
from shardc.ir import DType
from shardc.serving.kernels import KernelLines

_DTYPES = {
    "bf16": DType.BFLOAT16, "fp16": DType.FLOAT16, "fp8": DType.FLOAT8E4M3FN,
    "int8": DType.INT8, "fp32": DType.FLOAT,
}
QUANTS = ("bf16", "fp16", "fp8", "int8")


def element_bytes(name: str) -> float:
    """Bytes per element of ``name`` (fp8 weights with DeepSeek's 128×128 fp32 scales)."""
    if name == "fp8w":
        return FP8_DEEPSEEK_V3.bytes_per_param()
    return _DTYPES[name].bits / 8


@dataclass(frozen=True, slots=True)
class Quant:
    """Storage and arithmetic types of a serving instance."""

    weights: str = "bf16"
    kv: str = "bf16"
    dispatch: str = "bf16"
    combine: str = "bf16"
    activations: str = "bf16"

    @property
    def weight_bytes(self) -> float:
        """Bytes per weight (fp8 includes its block scales)."""
        return element_bytes("fp8w" if self.weights == "fp8" else self.weights)

    @property
    def activation_dtype(self) -> DType:
        """What norms, activations and attention compute in."""
        return _DTYPES[self.activations]

    @property
    def gemm_dtype(self) -> DType:
        """What weight GEMMs compute in: fp8/int8 weights run on the low-precision units."""
        return _DTYPES[self.weights]


@dataclass(frozen=True, slots=True)
class Parallel:
    """How an instance splits the model: ``devices = tp·dp·pp``; EP = ``tp·dp`` (MoE)."""

    tp: int = 1
    dp: int = 1
    pp: int = 1

    @property
    def devices(self) -> int:
        """Devices of the instance."""
        return self.tp * self.dp * self.pp

    @property
    def ep(self) -> int:
        """Expert-parallel degree of a MoE layer: every device of a stage."""
        return self.tp * self.dp


@dataclass(frozen=True, slots=True)
class StepShape:
    """What one step carries, for the whole instance (all DP ranks, one PP group).

    ``decode_seqs`` sequences each verify ``tokens_per_seq`` tokens against
    ``decode_context`` cached positions; ``prefill_tokens`` prompt tokens each attend to
    ``prefill_context`` positions on average (causal: prefix hits + half the new prompt).
    """

    decode_seqs: float = 0.0
    decode_context: float = 0.0
    prefill_tokens: float = 0.0
    prefill_context: float = 0.0
    tokens_per_seq: float = 1.0


@dataclass(frozen=True, slots=True)
class StepEstimate:
    """A step's time on the critical device, split so reports can explain it."""

    seconds: float
    parts: dict[str, float] = field(default_factory=dict)
    bound: str = ""

    def explain(self) -> str:
        """The largest parts, in ms."""
        top = sorted(self.parts.items(), key=lambda kv: -kv[1])[:4]
        return ", ".join(f"{k} {v * 1e3:.3g} ms" for k, v in top)


@dataclass(frozen=True, slots=True)
class StepContext:
    """What prices communication for one instance shape (tier views of its groups)."""

    tp_tiers: Sequence[Sequence[Tier]] = ((Tier(1, math.inf, 0.0, "local"),),)
    ep_tiers: Sequence[Sequence[Tier]] = ((Tier(1, math.inf, 0.0, "local"),),)
    overlap: bool = True
    imbalance: float = 1.0
    """Tokens on the busiest expert rank over the mean (see `expert_imbalance`)."""
    redundant: int = 0
    """Redundant expert slots over the EP group (DeepSeek's EPLB): each rank holds
    ``ceil((experts + redundant) / ep)`` experts, whose weights a step may read."""
    pp_bandwidth: float = math.inf
    """Bandwidth (B/s) of a pipeline stage hand-off."""
    pp_latency: float = 0.0
    layer_overhead: float = 0.0
    """Fixed seconds per layer per step that the kernels' rooflines and launches miss: the
    attention op's RoPE / KV-append / scheduling gaps. 0 unless the device kind gives
    one (``tag step_overhead_per_layer 8us``); see `shardc.serving.candidates`."""
    lines: KernelLines = field(default_factory=KernelLines)
    """The kind's per-kernel-family efficiency factors (`shardc.serving.kernels`)."""
    moe_comm: str = "alltoall"
    """The runtime's MoE token exchange (`shardc.cost.expert_comm.MOE_COMMS`)."""
