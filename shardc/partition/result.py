"""The partitioner's answer: stages, step, solver status, and how it is built from a
solution.

Why apart from the search: plan.json, the schedule and the report read these records;
turning a :class:`~shardc.partition.problem.Solution` into them (placement, per-stage
breakdown, the strategies each stage runs) is bookkeeping the search loop need not see.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shardc.partition import expert_ep as xep
from shardc.partition.chunks import chunk_blocks
from shardc.partition.options import PartitionOptions
from shardc.partition.place import Placement, StageDemand, place
from shardc.partition.problem import (
    PartitionProblem,
    Solution,
    in_flight,
    stage_bytes,
    stage_seconds,
    stage_sync,
)

if TYPE_CHECKING:
    from shardc.partition.costing import Costing


@dataclass(frozen=True)
class StageResult:
    """One pipeline stage of the chosen plan."""

    index: int
    kind: str
    tp: int
    recompute: str
    blocks: tuple[int, int]
    """First and last (inclusive) repeated-block number held, 0-based; ends ride along."""
    seconds: float
    """One micro-batch through the stage (compute, TP traffic, boundary transfers)."""
    compute_seconds: float
    tp_comm_seconds: float
    p2p_seconds: float
    sync_seconds: float
    memory_bytes: float
    capacity_bytes: float
    in_flight: int
    groups: tuple[tuple[str, ...], ...]
    """Per replica, the devices of the stage's TP group in tp-rank order."""
    sequence_parallel: bool = False
    cp: int = 1
    """Context-parallel degree: ``cp`` copies of the TP group, each on a sequence chunk."""
    sync_bytes: float = 0.0
    """Gradient bytes one device of the stage syncs per step, as ``sync_seconds`` priced
    them (:meth:`~shardc.partition.costing.Costing.sync_bytes`): the schedule's sync events
    carry them, so link accounting sees the data-parallel traffic."""
    chunks: tuple[tuple[int, int], ...] = ()
    """With interleave v > 1: the v runs of blocks the stage really holds, (first, last)
    in chunk order (:func:`~shardc.partition.chunks.chunk_blocks`); ``blocks`` then gives
    only their count. Empty with one chunk (``blocks`` is the run)."""
    ep: int = 1
    """Replicas sharing each MoE layer's experts (:mod:`shardc.partition.expert_ep`)."""
    ep_comm_seconds: float = 0.0
    """Dispatch + combine all-to-alls of one micro-batch, forward and backward."""

    def to_json(self) -> dict[str, Any]:
        """Plain data for plan.json."""
        return {
            "index": self.index,
            "kind": self.kind,
            "tp": self.tp,
            "recompute": self.recompute,
            "sequence_parallel": self.sequence_parallel,
            **({"cp": self.cp} if self.cp > 1 else {}),
            "blocks": list(self.blocks),
            "seconds": self.seconds,
            "compute_seconds": self.compute_seconds,
            "tp_comm_seconds": self.tp_comm_seconds,
            "p2p_seconds": self.p2p_seconds,
            "sync_seconds": self.sync_seconds,
            "memory_bytes": self.memory_bytes,
            "capacity_bytes": self.capacity_bytes,
            "in_flight": self.in_flight,
            "groups": [list(g) for g in self.groups],
            **({"ep": self.ep, "ep_comm_seconds": self.ep_comm_seconds} if self.ep > 1 else {}),
        } | ({"chunks": [list(c) for c in self.chunks]} if self.chunks else {})


@dataclass(frozen=True)
class PartitionResult:
    """The partitioner's answer with its estimate and how the solver got there."""

    mode: str
    objective: str
    schedule: str
    dp: int
    microbatches: int
    stages: tuple[StageResult, ...]
    step_seconds: float
    """The objective's time: a training/throughput step, or one request's latency."""
    samples_per_step: int
    status: str
    bound: float | None
    solver_seconds: float
    candidates: tuple[tuple[int, str, float | None], ...]
    """(dp, outcome, step seconds) of every width tried, in order."""
    placement: Placement
    strategies: Mapping[str, str] = field(default_factory=dict)
    """Non-replicated strategy of each node, by the TP degree of its stage."""
    pins: Mapping[str, Any] = field(default_factory=dict)
    blocks: int = 1
    interleave: int = 1
    """Virtual stages per device (interleaved 1F1B); 1 is plain 1F1B."""
    p2p_overlapped: bool = False
    """Pipeline transfers overlap compute: only the fill and drain expose them."""

    @property
    def gap(self) -> float | None:
        """Relative optimality gap (0 when proven optimal)."""
        if self.bound is None or not self.step_seconds:
            return None
        return max(0.0, (self.step_seconds - self.bound) / self.step_seconds)

    @property
    def pp(self) -> int:
        """Pipeline stages."""
        return len(self.stages)

    @property
    def devices_used(self) -> int:
        """Devices the plan occupies."""
        return sum(self.dp * s.tp * s.cp for s in self.stages)

    def breakdown(self) -> dict[str, float]:
        """The step split into compute, exposed TP traffic, pipeline transfers, bubble and
        per-step sync, read off the slowest stage (the one that sets the pace).
        """
        slow = max(self.stages, key=lambda s: s.seconds)
        if self.objective == "latency":
            return {
                "compute": sum(s.compute_seconds for s in self.stages),
                "tp comm": sum(s.tp_comm_seconds for s in self.stages),
                "pp send/recv": sum(s.p2p_seconds for s in self.stages),
            }
        m = self.microbatches
        pp = m * slow.p2p_seconds
        if self.p2p_overlapped:  # exposed on the fill and drain only, once per boundary
            v = self.interleave  # stage p2p_seconds already count v hand-offs
            pp = sum(s.p2p_seconds for s in self.stages[:-1]) + self.stages[-1].p2p_seconds * (
                v - 1
            ) / v
        return {
            "compute": m * slow.compute_seconds,
            "tp comm": m * slow.tp_comm_seconds,
            "pp send/recv": pp,
            "pipeline bubble": (self.pp - 1) / self.interleave * slow.seconds,
            "dp sync + optimizer": max(s.sync_seconds for s in self.stages),
        }

    def to_json(self) -> dict[str, Any]:
        """Plain data for plan.json (what ``--warm-start`` reads back).

        Nothing wall-clock goes in: the same inputs must give byte-identical files.
        """
        return {
            "mode": self.mode,
            "objective": self.objective,
            "schedule": self.schedule,
            "dp": self.dp,
            "pp": self.pp,
            "microbatches": self.microbatches,
            "samples_per_step": self.samples_per_step,
            "blocks": self.blocks,
            "interleave": self.interleave,
            "step_seconds": self.step_seconds,
            "breakdown": self.breakdown(),
            "devices_used": self.devices_used,
            "solver": {
                "status": self.status,
                "bound_seconds": self.bound,
                "gap": self.gap,
                "candidates": [
                    {"dp": d, "outcome": o, "step_seconds": s} for d, o, s in self.candidates
                ],
            },
            "pins": dict(self.pins),
            "stages": [
                {**s.to_json(), "tp_domain_bandwidth": self.placement.domain_bandwidth[s.index]}
                for s in self.stages
            ],
            "strategies": dict(sorted(self.strategies.items())),
        }



def build_result(
    costing: Costing,
    options: PartitionOptions,
    problem: PartitionProblem,
    sol: Solution,
    status: str,
    bound: float,
    tried: list[tuple[int, str, float | None]],
    wall: float,
    b: int,
) -> PartitionResult:
    stages = sol.stages
    placement = place(
        costing.topology,
        [StageDemand(problem.config(s.config).kind, problem.config(s.config).width)
         for s in stages],
        problem.dp,
    )
    pro, block, epi, _ = costing.sections
    out: list[StageResult] = []
    first = 0
    chunks = (
        chunk_blocks([s.blocks for s in stages], problem.interleave)
        if problem.interleave > 1 else ((),) * len(stages)
    )
    strategies: dict[str, str] = {}
    for j, st in enumerate(stages):
        c = problem.config(st.config)
        sp = c.sequence_parallel
        b_part = costing.part(block, c.kind, c.tp, c.recompute, sp, c.cp)
        ends = []
        if j == 0 and pro:
            ends.append(costing.part(pro, c.kind, c.tp, "none", sp, c.cp))
        if j == len(stages) - 1 and epi:
            ends.append(costing.part(epi, c.kind, c.tp, "none", sp, c.cp))
        compute = st.blocks * b_part.compute + sum(e.compute for e in ends)
        comm = st.blocks * b_part.comm + sum(e.comm for e in ends)
        b_sync = b_part
        if costing.settings.ep > 1:  # expert gradients: 1/ep of theirs, as the sync priced
            experts, _ = xep.expert_params(costing, block, c.tp)
            b_sync = xep.synced_part(b_part, experts, costing.settings.ep)
        synced = st.blocks * costing.sync_bytes(b_sync, problem.dp * c.cp)
        if len(ends) == 2 and costing.tied:  # a tied embedding / head is synced once
            ends_part = costing.part(pro + epi, c.kind, c.tp, "none", sp, c.cp)
            synced += costing.sync_bytes(ends_part, problem.dp * c.cp)
        else:
            synced += sum(costing.sync_bytes(e, problem.dp * c.cp) for e in ends)
        out.append(
            StageResult(
                index=j,
                kind=c.kind,
                tp=c.tp,
                recompute=c.recompute,
                blocks=(first, first + st.blocks - 1),
                seconds=stage_seconds(problem, stages, j),
                compute_seconds=compute,
                tp_comm_seconds=comm,
                p2p_seconds=c.p2p_seconds * problem.interleave if len(stages) > 1 else 0.0,
                sync_seconds=stage_sync(problem, stages, j),
                memory_bytes=stage_bytes(problem, stages, j),
                capacity_bytes=problem.capacity[c.kind],
                in_flight=in_flight(problem, len(stages), j),
                groups=tuple(placement.tp_group(r, j) for r in range(problem.dp)),
                sequence_parallel=sp,
                cp=c.cp,
                sync_bytes=synced,
                chunks=chunks[j],
                ep=costing.settings.ep,
                ep_comm_seconds=st.blocks * costing.ep_seconds(c.kind, c.tp, problem.dp),
            )
        )
        first += st.blocks
        if c.tp > 1:
            runs = chunks[j] or (out[-1].blocks,)
            names = [n for run in runs for n in _stage_nodes(costing, j, len(stages), run)]
            for node in names:
                s = costing.choice(c.tp).strategies[node]
                if not s.is_replicated and node not in costing.table.follows:
                    strategies[node] = s.name
    per = 1 if options.objective == "latency" else problem.dp * problem.microbatches
    return PartitionResult(
        mode=costing.settings.mode,
        objective=options.objective,
        schedule=options.schedule,
        dp=problem.dp,
        microbatches=problem.microbatches,
        stages=tuple(out),
        step_seconds=sol.seconds,
        samples_per_step=per * b if options.objective != "latency" else b,
        status=status,
        bound=bound if status != "OPTIMAL" else sol.seconds,
        solver_seconds=wall,
        candidates=tuple(tried),
        placement=placement,
        strategies=strategies,
        pins=options.pins.to_json(),
        blocks=problem.blocks,
        interleave=problem.interleave,
        p2p_overlapped=problem.overlap_p2p,
    )


def _stage_nodes(costing: Costing, j: int, count: int, blocks: tuple[int, int]) -> list[str]:
    """Nodes stage ``j`` runs: its repeated blocks, plus the ends on the end stages."""
    chain = costing.chain
    rep = chain.repeated
    if not rep:
        return [n for b in chain.blocks for n in b.nodes]
    idx = list(rep[blocks[0] : blocks[1] + 1])
    if j == 0:
        idx = list(range(rep[0])) + idx
    if j == count - 1:
        idx += list(range(rep[-1] + 1, len(chain.blocks)))
    return [n for i in idx for n in chain.blocks[i].nodes]

