"""The outer search: data-parallel width, micro-batches and pins around the CP-SAT core.

Why an outer loop: ``dp`` changes every price (gradient traffic, ZeRO-sharded state, how
many devices a stage may take), so each candidate width is its own
:class:`PartitionProblem`; CP-SAT then picks stage counts, layer splits, device kinds,
tensor-parallel degrees and recomputation for it. Candidates are compared per sample
(``score / (dp · M)``) for throughput, on the score itself for latency. The best plan so
far prunes the rest (:func:`shardc.partition.cpsat.solve`'s cutoff), and a warm start
puts an earlier plan's width first and hands its stages to CP-SAT as a hint.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shardc.errors import InfeasibleError, OptionError, SolverTimeout
from shardc.partition.costing import config_name
from shardc.partition.cpsat import lower_bound, solve, stage_counts, uniform
from shardc.partition.options import PartitionOptions
from shardc.partition.place import Placement, StageDemand, place
from shardc.partition.problem import (
    PartitionProblem,
    Solution,
    StagePlan,
    in_flight,
    stage_bytes,
    stage_seconds,
    stage_sync,
)
from shardc.progress import Progress
from shardc.vocabulary import RECOMPUTES

if TYPE_CHECKING:
    from shardc.partition.costing import Costing

DEFAULT_MICROBATCHES = 8
_UNLIMITED = 1e30


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
    sync_bytes: float = 0.0
    """Gradient bytes one device of the stage syncs per step, as ``sync_seconds`` priced
    them (:meth:`~shardc.partition.costing.Costing.sync_bytes`): the schedule's sync events
    carry them, so link accounting sees the data-parallel traffic."""

    def to_json(self) -> dict[str, Any]:
        """Plain data for plan.json."""
        return {
            "index": self.index,
            "kind": self.kind,
            "tp": self.tp,
            "recompute": self.recompute,
            "sequence_parallel": self.sequence_parallel,
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
        }


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
        return sum(self.dp * s.tp for s in self.stages)

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


def _batch(costing: Costing) -> int:
    """The micro-batch size b: the leading dim of the first activation input."""
    for name in costing.graph.inputs:
        t = costing.graph.values[name].type
        if t is not None and t.shape and isinstance(t.shape[0], int):
            return t.shape[0]
    return 1


def _widths(n: int, options: PartitionOptions, b: int) -> list[int]:
    """Data-parallel widths to try: divisors of the device count and powers of two."""
    if options.pins.dp:
        return [options.pins.dp]
    if options.objective == "latency":
        return [1]
    ws = sorted({d for d in range(1, n + 1) if n % d == 0} | {2**i for i in range(n.bit_length())})
    if options.global_batch:
        # every width the batch divides into, even one that leaves devices idle
        # (1536 samples on 256 GPUs: dp = 96 or 192)
        ws = sorted(set(ws) | {d for d in range(1, n + 1) if options.global_batch % (d * b) == 0})
        ws = [d for d in ws if options.global_batch % (d * b) == 0]
        if not ws:
            raise OptionError(
                f"--global-batch {options.global_batch} is not a multiple of the micro-batch "
                f"size {b}"
            )
    return [d for d in ws if d <= n]


def _microbatches(options: PartitionOptions, dp: int, b: int) -> int:
    if options.global_batch:
        return options.global_batch // (dp * b)
    if options.microbatches:
        return options.microbatches
    return 1 if options.objective == "latency" else DEFAULT_MICROBATCHES


def _tp_degrees(costing: Costing, options: PartitionOptions) -> dict[str, list[int]]:
    pins = options.pins
    kinds = sorted(costing.pool)
    if pins.kind:
        if pins.kind not in costing.pool:
            raise OptionError(
                f"--pin kind={pins.kind}: the topology has no compute devices of that kind",
                hint=f"kinds: {', '.join(kinds)}",
            )
        stage_kinds = {str(v["kind"]) for v in pins.stages.values() if "kind" in v}
        kinds = sorted({pins.kind} | stage_kinds)
    out: dict[str, list[int]] = {}
    stage_tps = {int(v["tp"]) for v in pins.stages.values() if "tp" in v}
    for t in sorted(({pins.tp} if pins.tp else set()) | stage_tps):
        _refuse_idle_tp(costing, t)
    for k in kinds:
        if pins.tp or stage_tps:
            want = ({pins.tp} if pins.tp else set()) | stage_tps
            out[k] = sorted(t for t in want if costing.groups(k, t, 1) is not None)
        else:
            out[k] = costing.tp_degrees(k)
    for j, v in pins.stages.items():
        if "kind" in v and v["kind"] not in costing.pool:
            raise OptionError(f"--pin stage{j}.kind={v['kind']}: no such device kind")
    return out


def _refuse_idle_tp(costing: Costing, tp: int) -> None:
    """A pinned tensor-parallel degree that splits no weight would be priced as if it did.

    Not under ``rule=split``, which asks for every op that can split and runs the rest
    whole on every rank (how single-op graphs are tested on two devices).
    """
    if tp <= 1 or costing.settings.tp_rule == "split" or costing.splits(tp):
        return
    fits = [t for t in range(2, 2 * tp + 1) if t != tp and costing.splits(t)][:3]
    raise OptionError(
        f"--pin tp={tp} splits nothing in this model: no attention heads, MLP width or "
        f"vocabulary divides {tp} ways",
        hint=(f"try {' or '.join(f'tp={t}' for t in fits)}" if fits else "drop the tp pin"),
    )


def _stage_pins(options: PartitionOptions, configs: Sequence[Any]) -> dict[int, tuple[str, ...]]:
    pins = options.pins
    out: dict[int, tuple[str, ...]] = {}
    count = pins.pp or options.max_stages
    for j in range(count):
        want = pins.stages.get(j, {})
        kind = want.get("kind", pins.kind)
        tp = want.get("tp", pins.tp)
        rc = want.get("recompute")
        sp = want.get("sp", pins.sp)
        if kind is None and tp is None and rc is None and sp is None:
            continue
        out[j] = tuple(
            c.name
            for c in configs
            if (kind is None or c.kind == kind)
            and (tp is None or c.tp == tp)
            and (rc is None or c.recompute == rc)
            and (sp is None or c.sequence_parallel == bool(sp) or c.tp == 1)
        )
    return out


def _hint(
    warm: Mapping[str, Any] | None, dp: int, configs: Sequence[Any]
) -> tuple[StagePlan, ...] | None:
    """An earlier plan's stages as a hint, if its width and configurations still exist."""
    if not warm or warm.get("dp") != dp:
        return None
    names = {c.name for c in configs}
    try:
        plan = tuple(
            StagePlan(
                config_name(
                    s["kind"],
                    s["tp"],
                    s["recompute"] if warm.get("mode") == "training" else None,
                    bool(s.get("sequence_parallel")),
                ),
                int(s["blocks"][1]) - int(s["blocks"][0]) + 1,
            )
            for s in warm.get("stages", ())
        )
    except (KeyError, TypeError, ValueError, IndexError):
        return None
    return plan if plan and all(p.config in names for p in plan) else None


class _Ticks:
    """The search's progress: one tick per (width, stage count) settled, out of all the
    pairs listed before the first solve (so the total is known up front).
    """

    def __init__(self, report: Progress | None, total: int) -> None:
        self.report = report or (lambda step, done, total: None)
        self.total, self.done, self.step = total, 0, ""

    def width(self, dp: int) -> None:
        """The search moves on to data-parallel width ``dp``."""
        self.step = f"dp={dp}"
        self.report(self.step, self.done, self.total)

    def count(self, stages: int) -> None:
        """One stage count of the current width is settled (solved or skipped)."""
        self.done += 1
        self.report(self.step, self.done, self.total)


def search(
    costing: Costing, options: PartitionOptions, progress: Progress | None = None
) -> PartitionResult:
    """The best plan for ``costing``'s graph on its topology under ``options``.

    ``progress(step, done, total)`` advances once per (data-parallel width, stage count)
    pair settled, ``step`` naming the width (``dp=4``); it never changes the answer.
    """
    start = time.perf_counter()
    mode = costing.settings.mode
    if mode == "training" and options.objective == "latency":
        raise OptionError("--objective latency is for inference; training maximises throughput")
    b = _batch(costing)
    pool = {k: len(v) for k, v in costing.pool.items()}
    n = sum(pool.values())
    if not n:
        raise InfeasibleError("the topology has no compute devices")
    _, _, _, blocks = costing.sections
    wants_sp = options.pins.sp or any(v.get("sp") for v in options.pins.stages.values())
    if wants_sp and not costing.has_sequence:
        raise OptionError(
            "--pin sp=on: the model's blocks pass no [batch, sequence, ...] activation, so "
            "there is no sequence to split",
            hint="drop sp=on (sequence parallelism needs a sequence dim of length > 1)",
        )
    tps = _tp_degrees(costing, options)
    recomputes = (options.pins.recompute,) if options.pins.recompute else RECOMPUTES
    widths = _widths(n, options, b)
    warm = options.warm_start
    capacity = _capacities(costing, options)
    best: tuple[float, int, int, Solution, PartitionProblem] | None = None
    tried: list[tuple[int, str, float | None]] = []
    reasons: list[str] = []
    timed_out = False
    if options.pins.pp and options.pins.pp > blocks:
        raise OptionError(f"--pin pp={options.pins.pp}: the model has only {blocks} blocks")
    problems: list[tuple[PartitionProblem, float]] = []
    for dp in widths:
        m = _microbatches(options, dp, b)
        configs = costing.configs(dp, tps, recomputes)
        if not configs:
            tried.append((dp, "no configuration", None))
            continue
        max_stages = min(options.max_stages, blocks, max(1, n // dp))
        for v in _interleaves(options, blocks, mode == "training"):
            problem = PartitionProblem(
                blocks=blocks,
                configs=configs,
                devices=pool,
                capacity=capacity,
                dp=dp,
                microbatches=m,
                max_stages=max(max_stages, options.pins.pp or 1),
                objective=options.objective,
                schedule=options.schedule,
                pinned_stages=options.pins.pp,
                pinned=_stage_pins(options, configs),
                pinned_blocks={
                    j: int(pin["blocks"])
                    for j, pin in options.pins.stages.items()
                    if "blocks" in pin
                },
                interleave=v,
                overlap_p2p=costing.settings.overlap_p2p
                and mode == "training"
                and options.objective != "latency",
            )
            per = 1.0 if options.objective == "latency" else float(dp * m)
            problems.append((problem, per))
    # The even grids of every width are incumbents before any CP-SAT run: the best of
    # them is the cutoff every width must beat, and widths are tried best grid first.
    grids = {
        (problem.dp, problem.interleave): min(
            (
                u.seconds / per
                for s in range(1, problem.max_stages + 1)
                if (u := uniform(problem, s)) is not None
            ),
            default=math.inf,
        )
        for problem, per in problems
    }
    warm_dp = warm.get("dp") if warm else None
    problems.sort(
        key=lambda t: (
            t[0].dp != warm_dp,
            grids[(t[0].dp, t[0].interleave)],
            t[0].dp,
            t[0].interleave,
        )
    )
    incumbent = min(grids.values(), default=math.inf)
    # Budgets are CP-SAT deterministic time, never wall clock: the same input must
    # give the same plan on a loaded laptop and on an idle CI runner.
    budget = options.time_limit / max(len(problems), 1)
    floors: list[float] = []  # per-sample lower bounds of the widths not proven worse
    ticks = _Ticks(progress, sum(len(stage_counts(p)) for p, _ in problems))
    for problem, per in problems:
        dp, configs = problem.dp, problem.configs
        ticks.width(dp)
        bar = min(incumbent, best[0] if best else math.inf)
        cutoff = bar * per if bar < math.inf else None
        try:
            sol = solve(
                problem,
                time_limit=budget,
                seed=options.seed,
                hint=_hint(warm, dp, configs),
                cutoff=cutoff,
                on_count=ticks.count,
            )
        except SolverTimeout:
            timed_out = True
            floors.append(_floor(problem) / per)
            tried.append((dp, "timeout", None))
            continue
        except InfeasibleError as exc:
            pruned = "cutoff" in exc.message
            tried.append((dp, "pruned" if pruned else "infeasible", None))
            if not pruned:
                reasons.append(f"dp={dp}: {exc.message}")
            continue
        # the solver's bound, unless the width was solved to optimality (or has no bound)
        floor_s = sol.seconds if sol.status == "OPTIMAL" or sol.bound is None else sol.bound
        floors.append(floor_s / per)
        beaten = sol.seconds / per > bar * (1 + 1e-9)
        tried.append((dp, "no better" if beaten else sol.status, sol.seconds))
        key = (sol.seconds / per, dp, len(sol.stages))
        if best is None or key < best[:3]:
            best = (*key, sol, problem)
    if best is None:
        if timed_out:
            raise SolverTimeout(
                f"no plan found within {options.time_limit:g} s of solver time",
                hint="raise --time-limit, or pin part of the answer (--pin tp=8)",
            )
        raise InfeasibleError(_why(reasons, costing, tps), hint=_fits_hint(costing, tps))
    per_sample, dp, _, sol, problem = best
    # Proven optimal only if no width's lower bound leaves room below the chosen plan
    # (a width whose own search stopped early may still hide a better plan).
    floor = min([per_sample, *floors])
    proven = not timed_out and floor >= per_sample * (1 - 1e-9)
    status = "OPTIMAL" if proven else "FEASIBLE"
    bound = floor * (sol.seconds / per_sample if per_sample else 1.0)
    wall = time.perf_counter() - start
    return _result(costing, options, problem, sol, status, bound, tried, wall, b)


def _interleaves(options: PartitionOptions, blocks: int, training: bool) -> list[int]:
    """Virtual stages per device to try: the pinned ``v``, else 1, 2 and 4 (training
    throughput only; a latency plan runs one micro-batch, where chunks only add hops).
    """
    v = options.pins.v
    if v is not None:
        if v > 1 and (options.schedule != "1f1b" or not training):
            raise OptionError(f"--pin v={v}: interleaving needs training with the 1f1b schedule")
        if blocks % v:
            raise OptionError(
                f"--pin v={v}: the model's {blocks} blocks do not split into {v} interleaved "
                "chunks per stage",
                hint=f"use a v that divides {blocks}",
            )
        if options.pins.pp and blocks % (options.pins.pp * v):
            raise OptionError(
                f"--pin v={v},pp={options.pins.pp}: {blocks} blocks do not split into "
                f"pp × v = {options.pins.pp * v} equal chunks"
            )
        return [v]
    if options.objective == "latency" or options.schedule != "1f1b" or not training:
        return [1]
    return [1] + [v for v in (2, 4) if blocks % v == 0 and blocks >= 2 * v]


def _capacities(costing: Costing, options: PartitionOptions) -> dict[str, float]:
    """Usable bytes per device of each kind: its memory less ``--memory-reserve``."""
    out = {}
    reserve = options.memory_reserve
    for k in sorted(costing.pool):
        raw = costing.kinds[k].memory_bytes
        if not raw:
            out[k] = _UNLIMITED
            continue
        usable = reserve.usable(float(raw))
        if usable <= 0:
            raise OptionError(
                f"--memory-reserve {reserve.text} leaves nothing of {k}'s "
                f"{raw / 1e9:.4g} GB per device",
                hint="reserve a smaller fraction or fewer GB",
            )
        out[k] = usable
    return out


def _floor(problem: PartitionProblem) -> float:
    """The smallest score any stage count of ``problem`` could reach."""
    return min(lower_bound(problem, s) for s in range(1, problem.max_stages + 1))


def _why(reasons: list[str], costing: Costing, tps: Mapping[str, Sequence[int]]) -> str:
    mem = [r for r in reasons if "whole pool" in r] or [r for r in reasons if "memory" in r]
    return (mem or reasons or ["no width and configuration fits"])[0].split(": ", 1)[-1]


def _fits_hint(costing: Costing, tps: Mapping[str, Sequence[int]]) -> str:
    """What would fit: the smallest TP degree (with full recomputation) whose block fits."""
    _, block, _, blocks = costing.sections
    tips = []
    for kind in sorted(tps):
        cap = costing.kinds[kind].memory_bytes or _UNLIMITED
        t = 1
        while t <= len(costing.pool[kind]):
            part = costing.part(block, kind, t, "full")
            need = part.static + costing._state(part, 1) + part.activation + part.workspace
            stages = math.ceil(blocks * need / cap)
            if need <= cap and stages * t > len(costing.pool[kind]):
                tips.append(
                    f"{kind}: even at tp={t} with full recomputation the {blocks} blocks need "
                    f"{stages * t} devices of {cap / 1e9:.3g} GB, the pool has "
                    f"{len(costing.pool[kind])}"
                )
                break
            if need <= cap:
                tips.append(
                    f"{kind}: one block needs {need / 1e9:.3g} GB at tp={t} with full "
                    f"recomputation, so {stages}+ stages of tp={t}"
                )
                break
            t *= 2
        else:
            tips.append(f"{kind}: even tp={t // 2} cannot hold one block; use fp8 weights")
    return "; ".join(tips) or "more devices, fp8 weights or recomputation"


def _result(
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
        [StageDemand(problem.config(s.config).kind, problem.config(s.config).tp) for s in stages],
        problem.dp,
    )
    pro, block, epi, _ = costing.sections
    out: list[StageResult] = []
    first = 0
    strategies: dict[str, str] = {}
    for j, st in enumerate(stages):
        c = problem.config(st.config)
        sp = c.sequence_parallel
        b_part = costing.part(block, c.kind, c.tp, c.recompute, sp)
        ends = []
        if j == 0 and pro:
            ends.append(costing.part(pro, c.kind, c.tp, "none", sp))
        if j == len(stages) - 1 and epi:
            ends.append(costing.part(epi, c.kind, c.tp, "none", sp))
        compute = st.blocks * b_part.compute + sum(e.compute for e in ends)
        comm = st.blocks * b_part.comm + sum(e.comm for e in ends)
        synced = st.blocks * costing.sync_bytes(b_part, problem.dp)
        if len(ends) == 2 and costing.tied:  # a tied embedding / head is synced once
            ends_part = costing.part(pro + epi, c.kind, c.tp, "none", sp)
            synced += costing.sync_bytes(ends_part, problem.dp)
        else:
            synced += sum(costing.sync_bytes(e, problem.dp) for e in ends)
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
                sync_bytes=synced,
            )
        )
        first += st.blocks
        if c.tp > 1:
            names = _stage_nodes(costing, j, len(stages), out[-1].blocks)
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
