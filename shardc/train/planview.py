"""What training on torch needs from a plan, as one small frozen view.

Why an adapter and not direct reads of ``plan.data`` all over :mod:`shardc.train`: the Plan
object is being reshaped into a typed package, and the trainer should depend on the few
facts it uses (mesh shape, rank placement, per-stage blocks/TP/SP/recompute, ZeRO, the
schedule, micro-batches, virtual stages, dtype, per-node strategies), not on the layout of
plan.json. This module is the only place in :mod:`shardc.train` that reads the plan, and
it reads the typed Plan (``plan.typed``: the partition, stage and rank records), never the
plan.json dict.

>>> import shardc
>>> plan = shardc.compile("examples/models/tiny_gpt2.onnx", "topologies/localhost.topo",
...                       devices=4, pins="tp=2,pp=2", quiet=True)
>>> view = plan_view(plan)
>>> view.pp, view.dp, [s.tp for s in view.stages], view.rank(3).stage
(2, 1, [2, 2], 1)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import onnx

from shardc.errors import ShardcError

if TYPE_CHECKING:
    from shardc.handle import Plan


class TrainPlanError(ShardcError):
    """The plan cannot be applied to this model, world or torch build."""


@dataclass(frozen=True)
class StageView:
    """One pipeline stage as training sees it."""

    index: int
    blocks: tuple[int, int]
    """First and last repeated block (inclusive); the model's ends ride on the end stages."""
    tp: int
    sequence_parallel: bool
    recompute: str
    """``none``, ``selective`` or ``full``."""
    ranks: tuple[int, ...]
    """Global ranks, replica by replica, TP rank fastest (the plan's order)."""
    devices: tuple[str, ...]
    """Physical device of each rank in ``ranks``."""
    chunks: tuple[tuple[int, int], ...] = ()
    """Interleaved plans: the runs of blocks the stage holds, (first, last) in chunk
    order, as plan.json records them (empty with one chunk: ``blocks`` is the run)."""
    ep: int = 1
    """Consecutive replicas sharing each MoE layer's experts (all-to-all dispatch)."""


@dataclass(frozen=True)
class RankView:
    """Where one global rank sits in the plan."""

    rank: int
    device: str
    stage: int
    replica: int
    tp_rank: int


@dataclass(frozen=True)
class PlanView:
    """The facts of a plan that :func:`shardc.train.apply` turns into torch objects."""

    world_size: int
    pp: int
    dp: int
    interleave: int
    """Virtual stages per rank (interleaved 1F1B when above 1)."""
    microbatches: int
    schedule: str
    """``1f1b`` or ``gpipe``."""
    zero: int
    dtype: str | None
    mode: str
    stages: tuple[StageView, ...]
    ranks: tuple[RankView, ...]
    strategies: Mapping[str, str]
    """ONNX node name -> TP strategy (``column``, ``row``, ``heads``, ``vocab`` ...)."""
    blocks: int
    """Repeated blocks in the model (the length of the chain the stages split)."""
    step_seconds: float
    breakdown: Mapping[str, float]
    """The estimated step split (compute, tp comm, pp send/recv, bubble, dp sync)."""
    model_path: Path | None
    """The compiled ONNX file when the plan names a readable one."""
    source: onnx.ModelProto | None
    """The compiled ModelProto when the plan was made in this process."""
    devices_per_node: Mapping[str, int]
    """Node name -> devices of the plan on it, in rank order of first appearance."""

    def rank(self, r: int) -> RankView:
        """Placement of global rank ``r``."""
        return self.ranks[r]

    @property
    def uniform_tp(self) -> int | None:
        """The TP degree when every stage has the same one, else None."""
        tps = {s.tp for s in self.stages}
        return tps.pop() if len(tps) == 1 else None

    def onnx_model(self) -> onnx.ModelProto | None:
        """The compiled model's graph (weights not loaded), for its node metadata."""
        if self.source is not None:
            return self.source
        if self.model_path is not None and self.model_path.is_file():
            return onnx.load(str(self.model_path), load_external_data=False)
        return None


def node_of(device: str) -> str:
    """The node part of a device name: ``node3.gpu5`` -> ``node3``; a single-host
    topology's ``cpu0`` or ``gpu0`` -> the empty string.
    """
    return device.rsplit(".", 1)[0] if "." in device else ""


def plan_view(plan: Plan | str | os.PathLike[str]) -> PlanView:
    """The training view of ``plan`` (a :class:`shardc.plan.Plan` or a plan folder)."""
    from shardc.handle import Plan

    if not isinstance(plan, Plan):
        plan = Plan.load(plan)
    typed = plan.typed
    part = typed.pipeline
    if part.mode != "training":
        raise TrainPlanError(
            f"the plan was compiled with --mode {part.mode}; training needs one "
            "compiled for training",
            hint="recompile with --mode training",
        )
    if any((s.cp or 1) > 1 for s in typed.stages):
        # the device programs of a CP plan verify (shardc verify); torch's own
        # context_parallel rewrites SDPA calls, which the exported modules do not all make
        raise TrainPlanError(
            "the plan uses context parallelism (cp > 1), which apply() does not map to torch "
            "yet",
            hint="recompile without --pin cp, or run its device programs with shardc verify",
        )
    stages = tuple(
        StageView(
            index=s.index,
            blocks=s.blocks,
            tp=s.tp,
            sequence_parallel=bool(s.sequence_parallel),
            recompute=s.recompute,
            ranks=s.ranks,
            devices=tuple(d for g in s.groups for d in g),
            chunks=s.chunks or (),
            ep=s.ep or 1,
        )
        for s in typed.stages
    )
    ranks = tuple(
        RankView(rank=d.rank, device=d.device, stage=d.stage, replica=d.replica, tp_rank=d.tp_rank)
        for d in typed.ranks
    )
    per_node: dict[str, int] = {}
    for r in ranks:
        per_node[node_of(r.device)] = per_node.get(node_of(r.device), 0) + 1
    model_path = None
    recorded = typed.inputs.model.path if typed.inputs is not None else ""
    if recorded and not recorded.startswith("<"):
        p = Path(recorded)
        if not p.is_absolute() and plan.path is not None:
            p = plan.path / p
        model_path = p
    options = typed.options
    return PlanView(
        world_size=part.devices_used,
        pp=part.pp,
        dp=part.dp,
        interleave=int(part.interleave or 1),
        microbatches=part.microbatches,
        schedule=part.schedule,
        zero=int((options.get("zero", 0) if options is not None else 0) or 0),
        dtype=options.dtype if options is not None else None,
        mode=part.mode,
        stages=stages,
        ranks=ranks,
        # plain strings in plan.json's (sorted) order, however the Plan was made
        strategies={
            k: str(getattr(v, "value", v)) for k, v in sorted((part.strategies or {}).items())
        },
        blocks=int(part.blocks or 0),
        step_seconds=part.step_seconds,
        breakdown=dict(sorted(part.breakdown.items())),
        model_path=model_path,
        source=plan.source,
        devices_per_node=per_node,
    )
