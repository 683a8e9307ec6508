"""The Plan: one frozen, typed object between deciding and writing.

Why: the passes after ``partition`` (``lower``, ``price``, ``timeline``, ``plan``) build
it, and everything downstream (the folder writer, the device-file writer, the report,
``explain``, the runtime, ``check-plan``) reads it, or its folder through the one reader
in :mod:`shardc.plan.folder`, which gives the same object back. Nothing downstream
re-decides or re-prices: a number a reader shows is a number held here.

What it holds: the inputs and options compiled (records), the partitioner's answer
(:class:`~shardc.plan.records.Partition`: stages, estimate, solver), every rank
(:class:`~shardc.plan.records.Rank`), every rank's program outline with each
communication's bytes, links, algorithm and seconds (:class:`~shardc.plan.program.Programs`),
and the timeline (:class:`~shardc.plan.timeline.Timeline`: events, link loads, step time).
plan.json is :meth:`PlanData.to_json`; schedule.json is ``timeline.to_json()``.

A serving plan (``compile --mode serving``) is the same object with ``serving`` (the
instances, KV hand-off, all-to-all traffic, TTFT/TPOT and Pareto table of
:mod:`shardc.plan.serving`) instead of a partition, written as format
:data:`SERVING_FORMAT`: a reader that predates serving plans refuses the format instead
of failing on the missing partition.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shardc.plan.program import Comm, Compute, DeviceProgram, Programs, Sync
from shardc.plan.records import Block, Inputs, Options, Partition, Rank, Stage, frozen
from shardc.plan.serving import ServingPlan
from shardc.plan.timeline import Timeline

PLAN_FORMAT = "shardc-plan/1"
SERVING_FORMAT = "shardc-plan/2"
"""plan.json's format when it holds a serving plan (``serving`` instead of ``partition``)."""


@dataclass(frozen=True)
class Estimate:
    """The step estimate and where its time goes."""

    mode: str
    """``training`` or ``inference``."""
    objective: str
    """``throughput`` or ``latency``."""
    step_seconds: float
    """A training/throughput step, or (latency) one request through the pipeline."""
    breakdown: Mapping[str, float]
    """The step split into compute, exposed TP traffic, pipeline transfers, bubble and
    gradient sync (latency: compute, TP traffic and transfers), read off the slowest stage."""
    samples_per_step: int
    """Samples one step processes across all replicas."""
    microbatches: int
    """Micro-batches per replica per step."""
    status: str
    """Solver status: ``OPTIMAL`` (proven) or ``FEASIBLE`` (stopped at its limit)."""
    bound_seconds: float | None
    """The solver's lower bound on the step (equal to it when optimal)."""
    gap: float | None
    """Relative distance between the step and the bound (0 when optimal)."""
    simulated_step_seconds: float | None
    """The step as the timeline simulates it (None when the plan was not lowered)."""

    @property
    def samples_per_second(self) -> float:
        """Throughput the estimate implies."""
        return self.samples_per_step / self.step_seconds if self.step_seconds else 0.0


@dataclass(frozen=True)
class PlanData:
    """The compiled plan (see the module docstring)."""

    partition: Partition | None
    """The pipeline plan (None for a serving plan)."""
    ranks: tuple[Rank, ...]
    """Every rank, by rank (Megatron's order: stage, replica, TP rank)."""
    programs: Programs | None = None
    """Every rank's forward program (None when the plan was not lowered)."""
    timeline: Timeline | None = None
    inputs: Inputs | None = None
    """What was compiled (None until the build records it)."""
    options: Options | None = None
    weights: Mapping[str, int] | None = None
    """Bytes of each original weight the device files shard (None without device files)."""
    device_files: bool = False
    """Whether device files were written (plan.json then lists them)."""
    blocks: tuple[Block, ...] = ()
    """The model's chain of blocks in order, each with its nodes (empty when the model
    folded into none, or the plan has no device files to explain)."""
    shardc: str = ""
    """The shardc version that made the plan."""
    format: str = PLAN_FORMAT
    warnings: tuple[str, ...] = field(default=(), compare=False)
    serving: ServingPlan | None = None
    """The serving plan (``compile --mode serving``; None for a pipeline plan)."""

    # ------------------------------------------------------------------ what readers ask
    @property
    def stages(self) -> tuple[Stage, ...]:
        """The pipeline stages in order (none in a serving plan)."""
        return self.partition.stages if self.partition is not None else ()

    @property
    def pipeline(self) -> Partition:
        """The partition, for readers that only take pipeline plans (LookupError on a
        serving plan: its instances are in :attr:`serving`).
        """
        if self.partition is None:
            raise LookupError("a serving plan has no pipeline partition (see its serving "
                              "section)")
        return self.partition

    @property
    def estimate(self) -> Estimate:
        """Step time, its breakdown, throughput and how sure the solver is."""
        p = self.pipeline
        return Estimate(
            p.mode, p.objective, p.step_seconds, p.breakdown, p.samples_per_step,
            p.microbatches, p.solver.status, p.solver.bound_seconds, p.solver.gap,
            self.timeline.step_seconds if self.timeline is not None else None,
        )

    @property
    def comms(self) -> Mapping[int, tuple[Comm, ...]]:
        """Every rank's communications in issue order, by rank (empty if not lowered)."""
        if self.programs is None:
            return frozen({})
        return frozen({p.rank: p.comms for p in self.programs.programs})

    @property
    def syncs(self) -> tuple[Sync, ...]:
        """The data-parallel sync of each stage (training; empty otherwise)."""
        return self.programs.syncs if self.programs is not None else ()

    def block_of(self, node: str) -> tuple[str, int | None] | None:
        """The role of the block holding ``node`` and, for a repeated block, which one it
        is (0-based among the repeated blocks); None when the plan does not say.
        """
        k = 0
        for b in self.blocks:
            if node in b.nodes:
                return b.role, (k if b.role == "repeated" else None)
            k += b.role == "repeated"
        return None

    def program(self, rank: int) -> DeviceProgram:
        """Rank ``rank``'s program outline."""
        if self.programs is None:
            raise LookupError("the plan was not lowered to programs")
        return self.programs.rank(rank)

    # ------------------------------------------------------------------ plan.json
    def to_json(self) -> dict[str, Any]:
        """plan.json as data."""
        assert self.inputs is not None and self.options is not None, "a recorded plan"
        out: dict[str, Any] = {
            "format": self.format,
            "shardc": self.shardc,
            "inputs": self.inputs.to_json(),
            "options": self.options.to_json(),
        }
        if self.partition is not None:
            out["partition"] = self.partition.to_json()
        if self.serving is not None:
            out["serving"] = self.serving.to_json()
        if self.device_files:
            out["emission"] = {
                "ranks": [r.to_json() for r in self.ranks],
                "weights": dict(sorted((self.weights or {}).items())),
            }
            if self.blocks:
                out["emission"]["blocks"] = [b.to_json() for b in self.blocks]
        return out

    @classmethod
    def from_json(cls, plan: Mapping[str, Any], schedule: Mapping[str, Any] | None) -> PlanData:
        """The Plan of a validated plan.json and schedule.json (see :mod:`.folder`)."""
        if "serving" in plan:
            return cls(
                partition=None, ranks=(), inputs=Inputs.from_json(plan["inputs"]),
                options=Options.from_json(plan["options"]), shardc=plan["shardc"],
                format=plan["format"], serving=ServingPlan.from_json(plan["serving"]),
            )
        partition = Partition.from_json(plan["partition"])
        emission = plan.get("emission")
        emitted = {r["rank"]: r for r in emission["ranks"]} if emission else {}
        timeline = Timeline.from_json(dict(schedule)) if schedule is not None else None
        ranks = stage_ranks(partition, emitted)
        return cls(
            partition=partition,
            ranks=ranks,
            programs=_programs(partition, ranks, timeline) if timeline is not None else None,
            timeline=timeline,
            inputs=Inputs.from_json(plan["inputs"]),
            options=Options.from_json(plan["options"]),
            weights=frozen(emission["weights"]) if emission else None,
            device_files=bool(emission),
            blocks=tuple(Block.from_json(b) for b in (emission or {}).get("blocks", ())),
            shardc=plan["shardc"],
            format=plan["format"],
        )


def stage_ranks(
    partition: Partition, emitted: Mapping[int, Mapping[str, Any]] | None = None
) -> tuple[Rank, ...]:
    """Every rank from the stages, with what the device files record where there are any."""
    out = []
    for st in partition.stages:
        for replica, group in enumerate(st.groups):
            for t, name in enumerate(group):  # under cp: cp TP groups side by side
                rank = st.ranks[replica * len(group) + t]
                e = (emitted or {}).get(rank, {})
                out.append(Rank(
                    rank, name, st.kind, st.index, replica, t % st.tp, st.tp, st.memory_bytes,
                    st.capacity_bytes, tuple(e.get("inputs", ())), tuple(e.get("outputs", ())),
                    e.get("weight_bytes"), e.get("file"),
                ))
    return tuple(sorted(out, key=lambda r: r.rank))


def _programs(partition: Partition, ranks: tuple[Rank, ...], timeline: Timeline) -> Programs:
    """The program outlines a timeline records: each rank's forward events of its first
    micro-batch, in order, and the sync's bytes and links (node names and comm outputs are
    in the device files, not here).
    """
    programs = []
    sync_bytes: dict[int, float] = {}
    sync_seconds: dict[int, float] = {}
    chunked = timeline.chunked_programs
    for r, dev in zip(ranks, timeline.devices, strict=True):
        steps: list[Compute | Comm] = []
        starts: list[int] = []
        sync_links: tuple[Any, ...] = ()
        # one-pass programs: a chunk's compute and collectives are 1/v of the stage's
        v = 1 if chunked else timeline.interleave
        program = dev.program_events(timeline.stages, timeline.interleave, chunked)
        for ev in (*program, *(e for e in dev.events if e.phase == "sync")):
            share = 1 if ev.op in ("Send", "Recv") else v
            if ev.phase == "sync":
                sync_bytes[dev.stage], sync_seconds[dev.stage] = ev.nbytes, ev.duration
                sync_links = ev.links
                continue
            if ev.microbatch != 0:
                continue
            if chunked and len(starts) == ev.chunk:  # the first step of the next chunk
                starts.append(len(steps))
            if ev.is_comm:
                steps.append(Comm(ev.op, ev.value, "", ev.nbytes * share, ev.group, ev.peer,
                                  ev.tag, ev.axis, ev.algorithm, ev.duration * share, ev.links))
            else:
                steps.append(Compute((), ev.duration * share, ev.name))
        programs.append(DeviceProgram(
            r.rank, r.device, r.kind, r.stage, r.replica, r.tp_rank, r.tp, tuple(steps),
            r.inputs, r.outputs, r.memory_bytes, r.weight_bytes or 0, sync_links,
            tuple(starts) if len(starts) > 1 else (),
        ))
    return Programs(
        tuple(programs), timeline.mode, timeline.schedule, timeline.microbatches, timeline.dp,
        timeline.stages, stage_sync_seconds=sync_seconds, stage_sync_bytes=sync_bytes,
    )
