"""Measured step time split beside the plan's estimate, as ``shardc verify`` tables it.

The PyTorch profiler records every op of a few training steps on each rank; ops are put in
the plan's breakdown parts by what they are:

- ``pp send/recv``: point-to-point ops (``send``, ``recv``), waiting on a peer included,
  so the pipeline bubble shows up here and the ``pipeline bubble`` row stays unmeasured;
- ``dp sync + optimizer``: FSDP's collectives (its ``FSDP::`` regions) and the optimizer step;
- ``tp comm``: the other collectives (DTensor redistributions, the loss's reductions);
- ``compute``: the rest of the step's wall time.

Each part is the mean over ranks of the per-step mean; the step is the slowest rank's.
Collective times are CPU-side (gloo blocks the caller), so on accelerators they hold the
launch and wait, not the kernel: read the GPU rows with that in mind.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.profiler import ProfilerActivity, profile, record_function

from shardc.train.step import ParallelModel

PARTS = ("compute", "tp comm", "pp send/recv", "pipeline bubble", "dp sync + optimizer")
_COLLECTIVE = ("allreduce", "all_reduce", "allgather", "all_gather", "reduce_scatter",
               "broadcast", "all_to_all", "alltoall")  # fmt: skip


@dataclass(frozen=True)
class StepProfile:
    """Measured seconds per part next to the plan's estimate."""

    measured: Mapping[str, float]
    estimated: Mapping[str, float]
    measured_step: float
    estimated_step: float
    steps: int
    ranks: int

    def table(self) -> Any:
        """A rich Table: part, measured ms, estimated ms, measured / estimated."""
        from rich.table import Table

        t = Table(title=f"step time: measured ({self.steps} steps, {self.ranks} ranks) vs plan")
        for col in ("part", "measured ms", "estimated ms", "ratio"):
            t.add_column(col, justify="left" if col == "part" else "right")
        rows = [(p, self.measured.get(p), self.estimated.get(p, 0.0)) for p in PARTS]
        rows.append(("step", self.measured_step, self.estimated_step))
        for part, m, e in rows:
            ms = "-" if m is None else f"{m * 1e3:.3f}"
            ratio = "-" if m is None or not e else f"{m / e:.2f}x"
            t.add_row(part, ms, f"{e * 1e3:.3f}", ratio)
        return t

    def __str__(self) -> str:
        import io

        from rich.console import Console

        out = io.StringIO()
        Console(file=out, width=100, color_system=None).print(self.table())
        return out.getvalue()


def _part(name: str) -> str | None:
    low = name.lower()
    if low.startswith("shardc::loss"):
        return "skip"
    if low.startswith("fsdp::") or low.startswith("shardc::optimizer"):
        return "dp sync + optimizer"
    if "send" in low or "recv" in low:
        return "pp send/recv"
    if any(c in low for c in _COLLECTIVE) and ("c10d" in low or "gloo" in low or "nccl" in low):
        return "tp comm"
    return None


def measure_step(
    pm: ParallelModel,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    *,
    steps: int = 3,
    warmup: int = 1,
) -> StepProfile:
    """Profile ``steps`` training steps (after ``warmup``) on every rank; collective."""
    for _ in range(warmup):
        pm.step(inputs, labels, optimizer)
    dist.barrier()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            pm.forward_backward(inputs, labels)
            with record_function("shardc::optimizer"):
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        wall = (time.perf_counter() - t0) / steps
    parts = dict.fromkeys(("tp comm", "pp send/recv", "dp sync + optimizer"), 0.0)
    for ev in prof.events():
        part = _part(ev.name)
        # only outermost matches: a region's children are already in its time
        if part is None or (ev.cpu_parent is not None and _part(ev.cpu_parent.name)):
            continue
        if part != "skip":
            parts[part] += ev.cpu_time_total * 1e-6 / steps
    parts["compute"] = max(wall - sum(parts.values()), 0.0)
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (wall, parts))
    n = len(gathered)
    measured = {p: sum(g[1][p] for g in gathered) / n for p in parts}
    est = dict(pm.view.breakdown)
    return StepProfile(
        measured=measured,
        estimated=est,
        measured_step=max(g[0] for g in gathered),
        estimated_step=pm.view.step_seconds,
        steps=steps,
        ranks=n,
    )
