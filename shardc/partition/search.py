"""The outer search: data-parallel width, micro-batches and pins around the CP-SAT core.

Why an outer loop: ``dp`` changes every price (gradient traffic, ZeRO-sharded state, how
many devices a stage may take), so each candidate width is its own
:class:`PartitionProblem`; CP-SAT then picks stage counts, layer splits, device kinds,
tensor-parallel degrees and recomputation for it. Candidates are compared per sample
(``score / (dp · M)``) for throughput, on the score itself for latency. The best plan so
far prunes the rest (:func:`shardc.partition.cpsat.solve`'s cutoff), and a warm start
puts an earlier plan's width first and hands its stages to CP-SAT as a hint. What is
tried lives in :mod:`shardc.partition.candidates`, the answer's records in
:mod:`shardc.partition.result`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import TYPE_CHECKING

from shardc.errors import InfeasibleError, OptionError, ShardcError, SolverTimeout
from shardc.partition.bounds import uniform
from shardc.partition.candidates import (
    Ticks,
    batch_size,
    candidate_widths,
    capacities,
    fits_hint,
    floor_of,
    interleaves,
    microbatches,
    stage_pins,
    tp_degrees,
    warm_hint,
    why,
)
from shardc.partition.context_pricing import cp_degrees
from shardc.partition.cpsat import solve, stage_counts
from shardc.partition.expert_ep import check_ep, ep_choices, fits
from shardc.partition.options import PartitionOptions
from shardc.partition.problem import PartitionProblem, Solution
from shardc.partition.result import PartitionResult, StageResult, build_result
from shardc.progress import Progress
from shardc.vocabulary import RECOMPUTES

if TYPE_CHECKING:
    from shardc.partition.costing import Costing

__all__ = ["PartitionResult", "StageResult", "search"]


def search(
    costing: Costing, options: PartitionOptions, progress: Progress | None = None
) -> PartitionResult:
    """The best plan for ``costing``'s graph on its topology under ``options``.

    ``progress(step, done, total)`` advances once per (data-parallel width, stage count)
    pair settled, ``step`` naming the width (``dp=4``); it never changes the answer.

    Expert parallelism across replicas is a decision when ``ep`` is not pinned
    (:func:`~shardc.partition.expert_ep.ep_choices`): each width is searched as if pinned,
    on its share of the solver budget, and the fastest per sample wins (the smaller ep on
    a tie). Why an outer loop and not a CP-SAT variable: ep changes every block's price
    (all-to-all, expert memory, gradient sync), as dp does, and stages share it.
    """
    pool = sum(len(v) for v in costing.pool.values())
    eps = ep_choices(costing, options.pins.ep, pool)
    if len(eps) == 1:
        return _search(costing, options, progress)
    start = time.perf_counter()
    share = dataclasses.replace(options, time_limit=options.time_limit / len(eps))
    found: list[tuple[int, PartitionResult]] = []
    failed: list[ShardcError] = []
    for ep in eps:
        priced = costing.with_ep(ep)
        pins = dataclasses.replace(options.pins, ep=ep if ep > 1 else None)
        try:
            found.append((ep, _search(priced, dataclasses.replace(share, pins=pins), progress)))
        except (InfeasibleError, SolverTimeout) as exc:
            failed.append(exc)
        except OptionError:
            if ep == 1:  # the user's own pins are wrong: say so
                raise
            # an ep the pins rule out (dp or tp pinned to what it does not divide)
    if not found:
        raise failed[0]
    _, best = min(found, key=lambda t: (t[1].step_seconds / t[1].samples_per_step, t[0]))
    per = best.step_seconds / best.samples_per_step
    # a lower bound per sample over every ep tried; an ep whose search ran out of time
    # bounds nothing, so then the gap is unknown
    floors = [r.bound / r.samples_per_step if r.bound is not None else 0.0 for _, r in found]
    timed_out = any(isinstance(e, SolverTimeout) for e in failed)
    floor = min([per, *floors])
    proven = not timed_out and floor >= per * (1 - 1e-9)
    return dataclasses.replace(
        best,
        status="OPTIMAL" if proven else "FEASIBLE",
        bound=None if timed_out else floor * best.samples_per_step,
        solver_seconds=time.perf_counter() - start,
        candidates=tuple(c for _, r in found for c in r.candidates),
        pins=options.pins.to_json(),
    )


def _search(
    costing: Costing, options: PartitionOptions, progress: Progress | None = None
) -> PartitionResult:
    """:func:`search` at one expert-parallel width (``costing.settings.ep``)."""
    start = time.perf_counter()
    mode = costing.settings.mode
    if mode == "training" and options.objective == "latency":
        raise OptionError("--objective latency is for inference; training maximises throughput")
    b = batch_size(costing)
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
    _refuse_unsplit_sequence(costing, options, mode)
    tps = tp_degrees(costing, options)
    ep = options.pins.ep or 1
    if ep > 1:
        stage_tps = [int(v["tp"]) for v in options.pins.stages.values() if "tp" in v]
        check_ep(costing, ep, [options.pins.tp or 1, *stage_tps], options.pins.dp)
        tps = {k: [t for t in v if fits(costing, ep, t)] for k, v in tps.items()}
    recomputes = (options.pins.recompute,) if options.pins.recompute else RECOMPUTES
    widths = [w for w in candidate_widths(n, options, b) if w % ep == 0]
    warm = options.warm_start
    capacity = capacities(costing, options)
    best: tuple[float, int, int, Solution, PartitionProblem] | None = None
    tried: list[tuple[int, str, float | None]] = []
    reasons: list[str] = []
    timed_out = False
    if options.pins.pp and options.pins.pp > blocks:
        raise OptionError(f"--pin pp={options.pins.pp}: the model has only {blocks} blocks")
    if (options.pins.v or 1) > 1 and n < 2:
        raise OptionError(
            f"--pin v={options.pins.v}: interleaving needs at least two pipeline stages, "
            "and the topology has one device",
            hint="pin v=1, or compile for two or more devices",
        )
    problems: list[tuple[PartitionProblem, float]] = []
    for dp, cp in [(w, c) for w in widths for c in cp_degrees(costing, options, n // w)]:
        m = microbatches(options, dp, b)
        configs = costing.configs(dp, tps, recomputes, cp)
        if not configs:
            tried.append((dp, "no configuration", None))
            continue
        max_stages = min(options.max_stages, blocks, max(1, n // dp))
        for v in interleaves(options, blocks, mode == "training"):
            if v > 1 and max(max_stages, options.pins.pp or 1) < 2:
                # one stage: no ring for the chunks to walk
                reasons.append(f"dp={dp}: v={v} needs two pipeline stages; {n} devices "
                               f"over dp={dp} replicas leave one")
                continue
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
                pinned=stage_pins(options, configs),
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
        _width(problem): min(
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
            grids[_width(t[0])],
            t[0].dp,
            t[0].interleave,
        )
    )
    incumbent = min(grids.values(), default=math.inf)
    # Budgets are CP-SAT deterministic time, never wall clock: the same input must
    # give the same plan on a loaded laptop and on an idle CI runner. Half goes to a first
    # pass over every width; the other half to the widths it left open (see below).
    budget = options.time_limit / 2 / max(len(problems), 1)
    floors: list[float] = []  # per-sample lower bounds of the widths not proven worse
    open_widths: list[tuple[int, PartitionProblem, float, Solution]] = []
    ticks = Ticks(progress, sum(len(stage_counts(p)) for p, _ in problems))
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
                hint=warm_hint(warm, dp, configs),
                cutoff=cutoff,
                on_count=ticks.count,
            )
        except SolverTimeout:
            timed_out = True
            floors.append(floor_of(problem) / per)
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
        if sol.status != "OPTIMAL":
            open_widths.append((len(floors), problem, per, sol))
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
        raise InfeasibleError(why(reasons, costing, tps), hint=fits_hint(costing, tps))
    best = _second_pass(options, open_widths, floors, best)
    per_sample, dp, _, sol, problem = best
    # Proven optimal only if no width's lower bound leaves room below the chosen plan
    # (a width whose own search stopped early may still hide a better plan).
    floor = min([per_sample, *floors])
    proven = not timed_out and floor >= per_sample * (1 - 1e-9)
    status = "OPTIMAL" if proven else "FEASIBLE"
    bound = floor * (sol.seconds / per_sample if per_sample else 1.0)
    wall = time.perf_counter() - start
    return build_result(costing, options, problem, sol, status, bound, tried, wall, b)


Best = tuple[float, int, int, Solution, PartitionProblem]


def _second_pass(
    options: PartitionOptions,
    open_widths: list[tuple[int, PartitionProblem, float, Solution]],
    floors: list[float],
    best: Best,
) -> Best:
    """Spend the second half of the budget on the widths whose bound still leaves room
    below the best plan, each starting from its own first-pass plan.

    Why: the first pass splits its half over every width and interleaving (dozens on a
    4,096-GPU pool), most of which the bounds settle at once; the few that could still
    hide a better plan stop with gaps of 5-10 % on a fraction of a second each. Solved
    again with the rest, they close or improve; ``floors`` is updated in place.
    """
    todo = [w for w in open_widths if floors[w[0]] < best[0] * (1 - 1e-9)]
    if not todo:
        return best
    budget = options.time_limit / 2 / len(todo)
    for i, problem, per, first in todo:
        try:
            sol = solve(problem, time_limit=budget, seed=options.seed, hint=first.stages,
                        cutoff=best[0] * per)
        except InfeasibleError:  # every stage count proven no better than the best
            floors[i] = max(floors[i], best[0])
            continue
        except SolverTimeout:
            continue
        floor_s = sol.seconds if sol.status == "OPTIMAL" or sol.bound is None else sol.bound
        floors[i] = max(floors[i], floor_s / per)
        key = (sol.seconds / per, problem.dp, len(sol.stages))
        if key < best[:3]:
            best = (*key, sol, problem)
    return best


def _width(problem: PartitionProblem) -> tuple[int, int, int]:
    """A problem's (dp, v, cp): the grids' key (every config of a problem has one cp)."""
    return problem.dp, problem.interleave, problem.configs[0].cp if problem.configs else 1


def _refuse_unsplit_sequence(costing: Costing, options: PartitionOptions, mode: str) -> None:
    """``sp=on`` where no stage could run it: one line, before any search (else the pin
    would be dropped and the plan would quietly run plain tensor parallelism).
    """
    pins = options.pins
    for j, want in [(None, {"sp": pins.sp, "tp": pins.tp}), *pins.stages.items()]:
        if not want.get("sp", pins.sp):
            continue
        where = "--pin sp=on" if j is None else f"--pin stage{j}.sp=on"
        if mode != "training":
            raise OptionError(f"{where}: sequence parallelism is for training (--mode training)")
        tp = want.get("tp", pins.tp)
        if isinstance(tp, int) and tp > 1 and not costing.sequence_splits(tp):
            raise OptionError(
                f"{where}: the sequence (length {costing.sequence_length}) does not split "
                f"over tp={tp}",
                hint="pick a tp that divides the sequence length, or drop sp=on",
            )
