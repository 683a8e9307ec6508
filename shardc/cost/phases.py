"""Time of a block of nodes in each mode: training step, prefill, decode.

A *block* is a run of costed nodes (a transformer layer, an embedding, a head). Its
forward time is the sum of its nodes' rooflines (:func:`shardc.cost.compute.sequence_time`).

* **training**: forward × :func:`pass_multiplier` (backward ≈ 2× forward; recomputation
  adds forward work back). The optimizer step is separate (memory-bound, per parameter).
* **prefill**: the forward over a prompt of S tokens: compute-bound for large S.
* **decode**: one token per sequence per step: the block's graph bound at ``seq=1``,
  plus reading this block's share of the KV cache — bandwidth-bound, which is why a
  memory-rich, compute-poor card (H20: 96 GB at 4 TB/s, 148 TFLOPS) decodes well.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from shardc.cost.compute import (
    ComputeEstimate,
    DeviceSpec,
    ShardScale,
    pass_multiplier,
    sequence_time,
)
from shardc.cost.ops import NodeCost


@dataclass(frozen=True, slots=True)
class PhaseEstimate:
    """A block's time in one phase, with the forward estimate it was scaled from."""

    phase: str
    seconds: float
    forward: ComputeEstimate
    multiplier: float = 1.0
    extra_bytes: float = 0.0
    extra_seconds: float = 0.0

    def explain(self) -> str:
        """How the phase time was composed."""
        text = f"{self.phase}: {self.seconds * 1e3:.4g} ms = "
        text += f"{self.multiplier:g} x forward ({self.forward.explain()})"
        if self.extra_bytes:
            text += f" + {self.extra_bytes:.4g} B of KV cache in {self.extra_seconds * 1e6:.4g} us"
        return text


def training_time(
    costs: Sequence[NodeCost],
    kind: DeviceSpec,
    *,
    recompute: str = "none",
    attention_share: float = 0.0,
    shard: ShardScale | None = None,
) -> PhaseEstimate:
    """Forward + backward (+ recomputation) of one micro-batch through the block."""
    fwd = sequence_time(costs, kind, shard)
    k = pass_multiplier("training", recompute, attention_share=attention_share)
    return PhaseEstimate("training", fwd.seconds * k, fwd, k)


def prefill_time(
    costs: Sequence[NodeCost], kind: DeviceSpec, shard: ShardScale | None = None
) -> PhaseEstimate:
    """The forward over the prompt (the block's graph bound at the prompt length)."""
    fwd = sequence_time(costs, kind, shard)
    return PhaseEstimate("prefill", fwd.seconds, fwd)


def decode_time(
    costs_one_token: Sequence[NodeCost],
    kind: DeviceSpec,
    *,
    kv_cache_bytes: float,
    shard: ShardScale | None = None,
) -> PhaseEstimate:
    """One decode step: the ``seq=1`` forward plus reading ``kv_cache_bytes``.

    The KV read overlaps nothing in the step's critical path on today's kernels (the
    attention kernel streams it), so it is added at the device's memory bandwidth.
    """
    fwd = sequence_time(costs_one_token, kind, shard)
    bandwidth = float(kind.memory_bandwidth or 0.0) * kind.memory_efficiency
    extra = kv_cache_bytes / bandwidth if bandwidth else 0.0
    return PhaseEstimate("decode", fwd.seconds + extra, fwd, 1.0, kv_cache_bytes, extra)
