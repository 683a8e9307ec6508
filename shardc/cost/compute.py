"""How long a node (or a shard of it) takes on one device: a roofline.

``t = max(flops / (peak[dtype] · η_c(flops / peak)), bytes / (bandwidth · η_m(bytes)))
+ launch``

where the peak is the device kind's dense peak for the node's compute dtype and the η
are the kind's achievable-efficiency factors from the topology file. They are not one
constant: a GEMM too small to fill the device's cores with whole waves of tiles runs
below the large-GEMM efficiency, and a small copy does not reach the streaming
bandwidth. The kind states both as curves (``efficiency compute E at T``: an op that
takes T at peak runs at E; ``efficiency memory E at SIZE``), interpolated log-linearly,
with the plain factor above the largest point (Calculon's step tables by op size are
the source, REFERENCE.md §4). ``launch`` is the fixed cost of each kernel: one per GEMM,
convolution, attention, norm or reduction; element-wise and data-movement nodes ride in
their neighbours' fused kernels (Megatron's fused bias-GeLU, bias-dropout-add,
scale-mask-softmax), so they pay none. A shard scales its
FLOPs and each operand separately (:class:`ShardScale`): a column-parallel MatMul on 8
devices does 1/8 of the FLOPs and reads 1/8 of the weight, but still reads the whole
activation — which is why tensor parallelism stops paying off for small batches.

Training multiplies a forward estimate by :func:`pass_multiplier`: backward costs about
twice the forward (two GEMMs per forward GEMM), and recomputation adds forward work back.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from shardc.cost.ops import NodeCost
from shardc.ir import DType
from shardc.vocabulary import RECOMPUTES


class DeviceSpec(Protocol):
    """What the cost model reads from a device kind (satisfied by topology.DeviceKind).

    Read-only properties, so frozen dataclasses satisfy it.
    """

    @property
    def name(self) -> str: ...
    @property
    def peak_flops(self) -> Mapping[str, float]: ...
    @property
    def memory_bandwidth(self) -> float | None: ...
    @property
    def compute_efficiency(self) -> float: ...
    @property
    def memory_efficiency(self) -> float: ...


# Where a part lists no peak for a dtype, the arithmetic runs in the next wider type the
# part has: fp8 weights on a part without fp8 units are upcast to bf16, and so on.
_FALLBACK: dict[str, tuple[str, ...]] = {
    "fp4": ("fp4", "fp8", "int8", "bf16", "fp16", "fp32"),
    "fp8": ("fp8", "bf16", "fp16", "fp32"),
    "int8": ("int8", "fp16", "bf16", "fp32"),
    "bf16": ("bf16", "fp16", "fp32"),
    "fp16": ("fp16", "bf16", "fp32"),
    "fp32": ("fp32", "bf16", "fp16"),
}


def peak_for(kind: DeviceSpec, dtype: DType | str) -> tuple[float, str]:
    """(FLOP/s, dtype class used) for arithmetic in ``dtype`` on ``kind``.

    fp32 falls back to the half-precision peak only when a part lists no fp32 at all
    (some NPU datasheets): an optimistic choice, reported in the explanation.
    """
    cls = dtype.compute_class if isinstance(dtype, DType) else dtype
    for candidate in _FALLBACK.get(cls, (cls, "fp32", "bf16")):
        peak = kind.peak_flops.get(candidate)
        if peak:
            return float(peak), candidate
    raise ValueError(f"device kind {kind.name!r} lists no compute peak usable for {cls}")


@dataclass(frozen=True, slots=True)
class ShardScale:
    """Fractions of a node's work one shard does: FLOPs, each input, each output."""

    flops: float = 1.0
    inputs: tuple[float, ...] = ()
    outputs: tuple[float, ...] = ()

    @staticmethod
    def uniform(fraction: float) -> ShardScale:
        """Every operand and the FLOPs split evenly (a batch / data-parallel split)."""
        return ShardScale(fraction, (), ())


def _scaled(sizes: Sequence[int], fractions: Sequence[float], default: float) -> float:
    return sum(b * (fractions[i] if i < len(fractions) else default) for i, b in enumerate(sizes))


@dataclass(frozen=True, slots=True)
class ComputeEstimate:
    """A roofline estimate and what bound it, so reports can explain it."""

    seconds: float
    compute_seconds: float
    memory_seconds: float
    flops: float
    bytes: float
    dtype: str
    peak_flops: float
    bandwidth: float
    device: str

    @property
    def bound(self) -> str:
        """``compute`` or ``memory``: the side of the roofline the node sits on."""
        return "compute" if self.compute_seconds >= self.memory_seconds else "memory"

    def explain(self) -> str:
        """One sentence: the figures and the binding term."""
        return (
            f"{self.flops:.4g} FLOP at {self.peak_flops / 1e12:.4g} TFLOP/s ({self.dtype}) = "
            f"{self.compute_seconds * 1e6:.4g} us vs {self.bytes:.4g} B at "
            f"{self.bandwidth / 1e9:.4g} GB/s = {self.memory_seconds * 1e6:.4g} us on "
            f"{self.device}: {self.bound}-bound"
        )

    def __add__(self, other: ComputeEstimate) -> ComputeEstimate:
        """Sequential composition (a block = its nodes one after another)."""
        return ComputeEstimate(
            self.seconds + other.seconds,
            self.compute_seconds + other.compute_seconds,
            self.memory_seconds + other.memory_seconds,
            self.flops + other.flops,
            self.bytes + other.bytes,
            self.dtype if self.flops >= other.flops else other.dtype,
            max(self.peak_flops, other.peak_flops),
            self.bandwidth,
            self.device,
        )


KERNEL_KINDS = frozenset({"matmul", "conv", "attention", "norm", "reduce"})
"""Node kinds that run as kernels of their own (and pay ``launch``)."""


def efficiency(points: Sequence[tuple[float, float]], top: float, size: float) -> float:
    """The efficiency at ``size`` on a curve of ``(size, efficiency)`` points, ascending:
    log-linear between points, the first point's value below it, ``top`` from the
    largest point up (the curve's knee).
    """
    if not points or size >= points[-1][0]:
        return top
    if size <= points[0][0]:
        return points[0][1]
    for (x0, e0), (x1, e1) in itertools.pairwise(points):
        if size <= x1:
            f = math.log(size / x0) / math.log(x1 / x0)
            return e0 + f * (e1 - e0)
    return top  # pragma: no cover - the loop always returns


def node_time(cost: NodeCost, kind: DeviceSpec, shard: ShardScale | None = None) -> ComputeEstimate:
    """Roofline time of ``cost`` (or of one shard of it) on ``kind``, plus its launch."""
    shard = shard or ShardScale()
    default = shard.flops if not shard.inputs and not shard.outputs else 1.0
    flops = cost.flops * shard.flops
    if cost.input_bytes or cost.output_bytes:
        nbytes = _scaled(cost.input_bytes, shard.inputs, default) + _scaled(
            cost.output_bytes, shard.outputs, default
        )
    else:
        nbytes = cost.bytes_total * default
    peak, used = peak_for(kind, cost.dtype) if flops else (0.0, cost.dtype.short)
    bandwidth = float(kind.memory_bandwidth or 0.0)
    eta_c = efficiency(getattr(kind, "compute_curve", ()), kind.compute_efficiency,
                       flops / peak if flops else 0.0)
    eta_m = efficiency(getattr(kind, "memory_curve", ()), kind.memory_efficiency, nbytes)
    t_compute = flops / (peak * eta_c) if flops else 0.0
    t_memory = nbytes / (bandwidth * eta_m) if nbytes and bandwidth else 0.0
    launch = float(getattr(kind, "kernel_launch", 0.0)) if cost.kind in KERNEL_KINDS else 0.0
    return ComputeEstimate(
        max(t_compute, t_memory) + launch,
        t_compute,
        t_memory,
        flops,
        nbytes,
        used,
        peak,
        bandwidth,
        kind.name,
    )


def sequence_time(
    costs: Sequence[NodeCost], kind: DeviceSpec, shard: ShardScale | None = None
) -> ComputeEstimate:
    """Time of nodes run one after another (no overlap between kernels)."""
    total = ComputeEstimate(
        0.0, 0.0, 0.0, 0.0, 0.0, "fp32", 0.0, float(kind.memory_bandwidth or 0.0), kind.name
    )
    for c in costs:
        total = total + node_time(c, kind, shard)
    return total




def pass_multiplier(mode: str, recompute: str = "none", *, attention_share: float = 0.0) -> float:
    """Work of one training step of a block relative to its forward pass.

    Forward 1 + backward 2 = 3. Full recomputation runs the forward again (4). Selective
    recomputation (Korthikanti et al. 2022) redoes only the attention core (scores,
    softmax, dropout, weighted sum), whose share of the forward is ``attention_share``.
    Inference is the forward alone.
    """
    if mode == "inference":
        return 1.0
    if mode != "training":
        raise ValueError(f"unknown mode {mode!r}")
    if recompute not in RECOMPUTES:
        raise ValueError(f"unknown recompute policy {recompute!r}")
    extra = {"none": 0.0, "selective": attention_share, "full": 1.0}[recompute]
    return 3.0 + extra


ADAM_BYTES_PER_PARAM_STEP = (4 + 4 + 4 + 2) + (4 + 4 + 4 + 2)
"""Mixed-precision Adam reads the fp32 master weight, m and v and the bf16 gradient, and
writes master, m, v and the bf16 weight copy: a memory-bound pass of 28 bytes/param."""


def optimizer_time(params: float, kind: DeviceSpec) -> float:
    """Seconds for the Adam update of ``params`` parameters held on one device."""
    bandwidth = float(kind.memory_bandwidth or 0.0)
    if not bandwidth:
        return 0.0
    return params * ADAM_BYTES_PER_PARAM_STEP / (bandwidth * kind.memory_efficiency)
