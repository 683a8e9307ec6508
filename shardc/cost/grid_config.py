"""A Megatron grid (t, p, d, micro-batch, recompute, SP, v, ZeRO) and its step estimate.

Why a module apart: both pricers of a grid — the closed-form estimator
(:mod:`shardc.cost.grid`) and the partitioner's (:func:`shardc.partition.grid.price_grid`)
— take the same configuration and answer with the same record, so a benchmark compares
them field by field.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shardc.cost import memory as mem
from shardc.errors import OptionError
from shardc.vocabulary import RECOMPUTES, SCHEDULES


@dataclass(frozen=True, slots=True)
class GridConfig:
    """The parallel degrees and batch of one Megatron run; checked on construction."""

    tp: int
    pp: int
    dp: int
    micro_batch: int
    global_batch: int
    recompute: str = "none"
    schedule: str = "1f1b"
    interleave: int = 1
    sequence_parallel: bool = False
    zero_stage: int = 0
    grad_bytes: float = 2.0
    """Bytes per gradient element reduced across data-parallel ranks (bf16)."""
    scatter_gather: bool = True
    """Pipeline sends split over the TP group's links and re-gathered inside the node."""

    def __post_init__(self) -> None:
        for name in ("tp", "pp", "dp", "micro_batch", "global_batch", "interleave"):
            if getattr(self, name) < 1:
                raise OptionError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.global_batch % (self.dp * self.micro_batch):
            raise OptionError(f"global batch {self.global_batch} is not a multiple of dp × "
                              f"micro-batch = {self.dp} × {self.micro_batch}")
        if self.recompute not in RECOMPUTES:
            raise OptionError(f"unknown recompute {self.recompute!r}", hint=f"use {RECOMPUTES}")
        if self.schedule not in SCHEDULES:
            raise OptionError(f"unknown schedule {self.schedule!r}", hint=f"use {SCHEDULES}")
        if self.interleave > 1 and (self.schedule != "1f1b" or self.pp == 1):
            raise OptionError("interleaved chunks need the 1f1b schedule and pp > 1")
        if self.interleave > 1 and self.microbatches % self.pp:
            # Narayanan et al. 2021 §2.2.2; shardc.partition.problem.interleave_fits
            raise OptionError(f"interleaving needs the {self.microbatches} micro-batches "
                              f"to be a multiple of pp={self.pp}")

    @property
    def devices(self) -> int:
        """Devices the grid occupies: t·p·d."""
        return self.tp * self.pp * self.dp

    @property
    def microbatches(self) -> int:
        """Micro-batches per pipeline per step: m = B / (d·b)."""
        return self.global_batch // (self.dp * self.micro_batch)

    @property
    def bubble_fraction(self) -> float:
        """Pipeline bubble over ideal time: (p−1)/(m·v) (Narayanan et al. 2021, §2.2)."""
        return (self.pp - 1) / (self.microbatches * self.interleave)


@dataclass(frozen=True)
class StepEstimate:
    """One optimizer step of a grid: time, its exposed parts, memory, work done."""

    config: GridConfig
    compute: float
    tp_comm: float
    pp_comm: float
    bubble: float
    dp_comm: float
    optimizer: float
    memory: mem.MemoryEstimate
    flops: float
    """FLOPs executed per step by all devices (recomputation included)."""
    capacity: float | None = None
    """Memory of one device, bytes (None if the kind does not say)."""
    notes: tuple[str, ...] = field(default=())

    @property
    def seconds(self) -> float:
        """Step time: the sum of the exposed parts."""
        return sum(self.breakdown().values())

    @property
    def peak_memory(self) -> float:
        """Peak bytes on the most loaded device (the first pipeline stage)."""
        return self.memory.peak

    @property
    def fits(self) -> bool:
        """Whether the peak fits the device's memory (True when capacity is unknown)."""
        return self.capacity is None or self.peak_memory <= self.capacity

    def breakdown(self) -> dict[str, float]:
        """Seconds per part, in the order they are explained."""
        return {"compute": self.compute, "tp comm": self.tp_comm, "pp send/recv": self.pp_comm,
                "pipeline bubble": self.bubble, "dp all-reduce": self.dp_comm,
                "optimizer": self.optimizer}

    def tflops_per_device(self, flops_per_step: float | None = None) -> float:
        """Achieved TFLOP/s per device for ``flops_per_step`` (default: the executed FLOPs).

        Pass a paper's own FLOP count (e.g. Narayanan's) to compare like with like.
        """
        flops = self.flops if flops_per_step is None else flops_per_step
        return flops / (self.seconds * self.config.devices) / 1e12

    def explain(self) -> str:
        """The grid, each part with its share of the step, and how the parts were timed."""
        c = self.config
        lines = [f"tp={c.tp} pp={c.pp} dp={c.dp}, micro-batch {c.micro_batch} x "
                 f"{c.microbatches} per pipeline, recompute {c.recompute}, {c.schedule}"
                 f"{f' v={c.interleave}' if c.interleave > 1 else ''}: step "
                 f"{self.seconds * 1e3:.4g} ms, {self.tflops_per_device():.4g} TFLOP/s per device"]
        for name, sec in self.breakdown().items():
            lines.append(f"  {name:<16} {sec * 1e3:10.4g} ms  {sec / self.seconds:6.1%}")
        fit = "" if self.capacity is None else f" of {self.capacity / 2**30:.4g} GiB"
        lines.append(f"  memory{fit}: {self.memory.explain()}")
        lines.extend(f"  {n}" for n in self.notes)
        return "\n".join(lines)
