"""CP-SAT formulation of :class:`PartitionProblem` (the only module importing OR-Tools).

For each stage count S (1..max, or the pinned one) we solve::

    variables   n_j ∈ [1, L]                    blocks of stage j          (j < S)
                x_jc ∈ {0,1}, Σ_c x_jc = 1       stage j runs configuration c
                y_jc = n_j · x_jc                linearised: y ≤ L·x, y ≤ n, y ≥ n − L(1 − x)
    blocks      Σ_j n_j = L
    time        T_j = Σ_c y_jc·t_c + [j=0]·Σ_c x_0c·pro_c + [j=S−1]·Σ_c x_(S−1)c·epi_c
                      + [S>1]·Σ_c x_jc·p2p_c
    sync        Y_j = Σ_c y_jc·sync_c + [j=0]·Σ_c x_0c·psync_c + [j=S−1]·Σ_c x_(S−1)c·esync_c
    memory      Σ_c y_jc·(static_c + act_c·inflight_j) + fixed ≤ Σ_c x_jc·cap_c    [memory]
    devices     Σ_j Σ_{c: kind k} dp·tp_c·x_jc ≤ avail_k                           [devices]
    pins        x_jc = 0 for configs the user ruled out, n_j = pinned blocks       [pins]
    objective   throughput: (M + S − 1)·max_j T_j + max_j Y_j
                latency:    Σ_j T_j                   (+ (S − 1)·p2p, a constant per S)

Stage counts whose lower bound (every block on its fastest configuration, perfectly
balanced) cannot beat the best plan found so far are skipped, and a plan from an
earlier run (``hint``) is tried first and given to CP-SAT as a solution hint, so a
warm start both finds a good incumbent at once and prunes more.

Times are scaled to integers (microsecond-ish resolution relative to the whole step);
the best S is chosen on the exact, unscaled :func:`score`. Each constraint family hangs
on an assumption literal, so an infeasible S yields a core naming the families at odds.
The search is deterministic: one worker, a fixed seed and a *deterministic* time limit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ortools.sat.python import cp_model

from shardc.errors import InfeasibleError, SolverTimeout
from shardc.partition.bounds import blocks_per_stage, fits_in_total, lower_bound, uniform
from shardc.partition.problem import (
    PartitionProblem,
    Solution,
    StagePlan,
    activation_factor,
    block_sync,
    in_flight,
    interleave_fits,
    score,
    violations,
)

_RESOLUTION = 1_000_000


@dataclass(frozen=True)
class _Attempt:
    stages: int
    status: str
    solution: Solution | None
    core: tuple[str, ...]


def stage_counts(problem: PartitionProblem) -> list[int]:
    """The stage counts :func:`solve` settles, one CP-SAT model each (unless skipped)."""
    first = 2 if problem.interleave > 1 else 1  # v chunks need a ring of stages to walk
    counts = ([problem.pinned_stages] if problem.pinned_stages
              else range(first, min(problem.max_stages, problem.blocks) + 1))
    return [s for s in counts if interleave_fits(problem, s)]


def solve(
    problem: PartitionProblem,
    *,
    time_limit: float = 10.0,
    seed: int = 0,
    hint: tuple[StagePlan, ...] | None = None,
    cutoff: float | None = None,
    on_count: Callable[[int], None] | None = None,
) -> Solution:
    """Best plan over stage counts; raises :class:`InfeasibleError` with the reason.

    ``cutoff`` is the score of a plan the caller already has: stage counts that cannot
    beat it are skipped (and if none can, :class:`InfeasibleError` says so).
    ``on_count(s)`` is called once for each of :func:`stage_counts` as it is settled:
    solved, or skipped (too few devices, pruned by the bound), before any error is raised.
    """
    start = time.perf_counter()
    settled = on_count or (lambda s: None)
    counts = stage_counts(problem)
    if not counts:
        raise InfeasibleError(
            f"interleaving v={problem.interleave} needs the {problem.microbatches} "
            f"micro-batches to be a multiple of the stage count"
            + (f" ({problem.pinned_stages})" if problem.pinned_stages else ""),
            hint="pick a global batch, dp or pp that makes them divide, or v=1",
        )
    if hint is not None and len(hint) in counts:
        counts.remove(len(hint))
        counts.insert(0, len(hint))
    attempts: list[_Attempt] = []
    fewest = problem.dp * min(c.width for c in problem.configs)
    evens: dict[int, Solution | None] = {}
    per_stage = blocks_per_stage(problem)
    for s in counts:
        if s > 1 and s * fewest > sum(problem.devices.values()):
            attempts.append(_Attempt(s, "INFEASIBLE", None, ("devices",)))
        elif not fits_in_total(problem):
            attempts.append(_Attempt(s, "INFEASIBLE", None, ("capacity",)))
        elif s * per_stage < problem.blocks:
            attempts.append(_Attempt(s, "INFEASIBLE", None, ("memory",)))
        else:
            evens[s] = uniform(problem, s)
            continue
        settled(s)
    # Every even grid is an incumbent before CP-SAT runs, so the bound prunes stage
    # counts against the best of them rather than against the first one tried.
    best_seen = min(
        [e.seconds for e in evens.values() if e is not None]
        + ([cutoff] if cutoff is not None else []),
        default=None,
    )
    todo = []
    for s, even in evens.items():
        if best_seen is not None and lower_bound(problem, s) >= best_seen * (1 - 1e-9):
            attempts.append(_Attempt(s, "PRUNED", even, ()))
            settled(s)
        else:
            todo.append(s)
    budget = time_limit / max(len(todo), 1)
    for s in todo:
        even = evens[s]
        start_from = hint if hint and len(hint) == s else (even.stages if even else None)
        a = _solve_stages(problem, s, budget, seed, start_from)
        if even is not None and (a.solution is None or even.seconds < a.solution.seconds):
            a = _Attempt(s, "FEASIBLE" if a.status != "INFEASIBLE" else a.status, even, ())
        attempts.append(a)
        settled(s)
    found = [a.solution for a in attempts if a.solution is not None]
    if not found:
        if any(a.status == "UNKNOWN" for a in attempts):
            raise SolverTimeout(
                f"no plan found within {time_limit:g} s of solver time",
                hint="raise --time-limit, or pin part of the answer (--pin tp=8)",
            )
        if any(a.status == "PRUNED" for a in attempts):
            raise InfeasibleError("no plan beats the one already found (cutoff)")
        raise InfeasibleError(_why(problem, attempts))
    best = min(found, key=lambda s: (s.seconds, len(s.stages), [st.config for st in s.stages]))
    proven = all(a.status in ("OPTIMAL", "INFEASIBLE", "PRUNED") for a in attempts)
    bounds = [best.seconds]
    for a in attempts:
        if a.status == "OPTIMAL" and a.solution is not None:
            bounds.append(a.solution.seconds)
        elif a.status == "PRUNED":
            bounds.append(lower_bound(problem, a.stages))
        elif a.status in ("FEASIBLE", "UNKNOWN"):
            got = a.solution.bound if a.solution is not None else None
            floor = lower_bound(problem, a.stages)
            bounds.append(max(got, floor) if got is not None else floor)
    return Solution(
        best.stages,
        best.seconds,
        "OPTIMAL" if proven else "FEASIBLE",
        best.seconds if proven else min(bounds),
        time.perf_counter() - start,
    )


def _scale(p: PartitionProblem) -> float:
    worst = max(
        p.blocks * c.block_seconds
        + c.prologue_seconds
        + c.epilogue_seconds
        + c.p2p_seconds
        + p.blocks * c.sync_seconds
        + c.prologue_sync
        + c.epilogue_sync
        for c in p.configs
    )
    return _RESOLUTION / worst if worst > 0 else 1.0


def _solve_stages(
    p: PartitionProblem, s: int, budget: float, seed: int, hint: tuple[StagePlan, ...] | None
) -> _Attempt:
    m = cp_model.CpModel()
    L, cs, k = p.blocks, p.configs, _scale(p)
    n = [m.new_int_var(1, L, f"n{j}") for j in range(s)]
    x = [[m.new_bool_var(f"x{j}_{c.name}") for c in cs] for j in range(s)]
    y = [[m.new_int_var(0, L, f"y{j}_{c.name}") for c in cs] for j in range(s)]
    lit = {f: m.new_bool_var(f) for f in ("memory", "devices", "pins")}
    m.add(sum(n) == L)
    if p.interleave > 1:  # each stage's blocks split into v equal chunks
        for j in range(s):
            chunks = m.new_int_var(1, L // p.interleave, f"chunks{j}")
            m.add(n[j] == p.interleave * chunks)
    for j in range(s):
        m.add_exactly_one(x[j])
        for ci in range(len(cs)):
            # y = n·x with enforcement literals: CP-SAT propagates these directly, where
            # the big-M form leaves a weak relaxation (3-4x slower to prove optimal).
            m.add(y[j][ci] == n[j]).only_enforce_if(x[j][ci])
            m.add(y[j][ci] == 0).only_enforce_if(~x[j][ci])
    _add_memory(m, p, s, x, y, lit["memory"])
    _add_devices(m, p, s, x, lit["devices"])
    _add_pins(m, p, s, x, n, lit["pins"])
    times = [_stage_time(m, p, s, j, x, y, k) for j in range(s)]
    if p.objective == "latency":
        m.minimize(sum(times))
    else:
        t_max = m.new_int_var(0, 10 * _RESOLUTION, "t_max")
        sync = m.new_int_var(0, 10 * _RESOLUTION, "sync")
        m.add_max_equality(t_max, times)
        m.add_max_equality(sync, [_stage_sync(p, s, j, x, y, k) for j in range(s)])
        v = p.interleave  # the objective times v: (v·M + S − 1)·t_max + v·sync
        fill: Any = 0
        if p.overlap_p2p and s > 1:  # exposed_p2p: one hand-off per boundary
            fill = sum(
                round(c.p2p_seconds * k) * (v if j < s - 1 else v - 1) * x[j][ci]
                for j in range(s)
                for ci, c in enumerate(cs)
            )
        m.minimize((v * p.microbatches + s - 1) * t_max + v * sync + v * fill)
    if hint is not None:
        names = [c.name for c in cs]
        for j, st in enumerate(hint):
            m.add_hint(n[j], st.blocks)
            for ci, name in enumerate(names):
                m.add_hint(x[j][ci], name == st.config)
                m.add_hint(y[j][ci], st.blocks if name == st.config else 0)
    m.add_assumptions(list(lit.values()))
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = 1
    solver.parameters.random_seed = seed
    solver.parameters.max_deterministic_time = max(budget, 0.05)
    # Presolve computes exact domains of the byte- and time-weighted sums; with a dozen
    # configurations over 80 blocks that alone took 17 s for one stage count. The model
    # is small, so the search goes straight at it.
    solver.parameters.cp_model_presolve = False
    status = solver.solve(m)
    name = solver.status_name(status)
    if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        stages = tuple(
            StagePlan(
                cs[next(ci for ci in range(len(cs)) if solver.value(x[j][ci]))].name,
                solver.value(n[j]),
            )
            for j in range(s)
        )
        assert not violations(p, stages), violations(p, stages)
        bound = solver.best_objective_bound / (k * p.interleave) if name == "FEASIBLE" else None
        sol = Solution(stages, score(p, stages), name, bound)
        return _Attempt(s, name, sol, ())
    core: tuple[str, ...] = ()
    if status == cp_model.INFEASIBLE:
        found = [
            m.proto.variables[i].name for i in solver.sufficient_assumptions_for_infeasibility()
        ]
        core = _minimise_core(m, solver, lit, sorted(found))
    return _Attempt(s, name, None, core)


def _minimise_core(
    m: cp_model.CpModel, solver: cp_model.CpSolver, lit: dict, core: list[str]
) -> tuple[str, ...]:
    """Deletion filter: drop each family whose removal leaves the model infeasible.

    CP-SAT's core is sufficient, not minimal; the message to the user must name only
    the families that really conflict.
    """
    kept = list(core)
    for family in list(core):
        trial = [f for f in kept if f != family]
        m.clear_assumptions()
        m.add_assumptions([lit[f] for f in trial])
        if solver.solve(m) == cp_model.INFEASIBLE:
            kept = trial
    return tuple(kept)


def _stage_time(m: cp_model.CpModel, p: PartitionProblem, s: int, j: int, x, y, k: float):
    expr = sum(round(c.block_seconds * k) * y[j][ci] for ci, c in enumerate(p.configs))
    if j == 0:
        expr += sum(round(c.prologue_seconds * k) * x[0][ci] for ci, c in enumerate(p.configs))
    if j == s - 1:
        expr += sum(round(c.epilogue_seconds * k) * x[j][ci] for ci, c in enumerate(p.configs))
    if s > 1 and not p.overlap_p2p:
        expr += sum(
            round(c.p2p_seconds * p.interleave * k) * x[j][ci] for ci, c in enumerate(p.configs)
        )
    t = m.new_int_var(0, 10 * _RESOLUTION, f"T{j}")
    m.add(t == expr)
    return t


def _stage_sync(p: PartitionProblem, s: int, j: int, x, y, k: float):
    cs = p.configs
    expr = sum(round(block_sync(p, c, s) * k) * y[j][ci] for ci, c in enumerate(cs))
    if j == 0:
        expr += sum(round(c.prologue_sync * k) * x[0][ci] for ci, c in enumerate(cs))
    if j == s - 1:
        expr += sum(round(c.epilogue_sync * k) * x[j][ci] for ci, c in enumerate(cs))
    if s == 1:
        expr -= sum(round(c.tied_sync * k) * x[0][ci] for ci, c in enumerate(cs))
    return expr


def _add_memory(m: cp_model.CpModel, p: PartitionProblem, s: int, x, y, on) -> None:
    """[memory] every device of a stage holds its blocks, in-flight activations, ends."""
    for j in range(s):
        inflight = in_flight(p, s, j) * activation_factor(p, s)
        used = 0
        for ci, c in enumerate(p.configs):
            per_block = c.block_static_bytes + c.block_activation_bytes * inflight
            used += int(per_block) * y[j][ci]
            fixed = (c.prologue_bytes if j == 0 else 0) + (c.epilogue_bytes if j == s - 1 else 0)
            fixed += c.workspace_bytes - (c.tied_bytes if s == 1 else 0)
            used += int(fixed - p.capacity[c.kind]) * x[j][ci]
        m.add(used <= 0).only_enforce_if(on)


def _add_devices(m: cp_model.CpModel, p: PartitionProblem, s: int, x, on) -> None:
    """[devices] a kind's stages use at most the devices of that kind."""
    for kind in sorted({c.kind for c in p.configs}):
        use = sum(
            p.dp * c.width * x[j][ci]
            for j in range(s)
            for ci, c in enumerate(p.configs)
            if c.kind == kind
        )
        m.add(use <= p.devices.get(kind, 0)).only_enforce_if(on)


def _add_pins(m: cp_model.CpModel, p: PartitionProblem, s: int, x, n, on) -> None:
    """[pins] stages the user fixed to a configuration."""
    for j in range(s):
        for ci, c in enumerate(p.configs):
            if not p.allowed(j, c.name):
                m.add(x[j][ci] == 0).only_enforce_if(on)
        if j in p.pinned_blocks:
            m.add(n[j] == p.pinned_blocks[j]).only_enforce_if(on)


def _why(p: PartitionProblem, attempts: list[_Attempt]) -> str:
    """A user-level reason: what the cores say, with the figures behind it."""
    families = sorted({f for a in attempts for f in a.core})
    if "capacity" in families and "memory" not in families:
        c = min(
            p.configs,
            key=lambda c: p.dp * c.width * (c.block_static_bytes + c.block_activation_bytes),
        )
        need = p.blocks * p.dp * c.width * (c.block_static_bytes + c.block_activation_bytes)
        total = sum(p.capacity.get(k, 0.0) * n for k, n in p.devices.items())
        return (
            f"the model does not fit in the whole pool: its {p.blocks} blocks need "
            f"{need / 1e9:.4g} GB across devices even as {c.name} with dp={p.dp}, and the "
            f"{sum(p.devices.values())} devices hold {total / 1e9:.4g} GB usable; more "
            "devices, fp8 weights, a smaller optimizer state or --memory-reserve would help"
        )
    if "memory" in families:
        best = min(
            p.configs,
            key=lambda c: (c.block_static_bytes + c.block_activation_bytes) / p.capacity[c.kind],
        )
        need = best.block_static_bytes + best.block_activation_bytes
        cap = p.capacity[best.kind]
        if need + best.workspace_bytes <= cap:
            # the block alone fits: what does not is a stage around it (the model's ends,
            # the micro-batches 1F1B keeps in flight), so name those rather than the block
            ends = f"{best.prologue_bytes / 1e9:.3g} / {best.epilogue_bytes / 1e9:.3g} GB"
            return (
                f"no stage split fits in memory: one block fits ({need / 1e9:.3g} GB per "
                f"device as {best.name}; {best.kind} holds {cap / 1e9:.3g} GB), but no stage "
                f"can take its share of the {p.blocks} blocks with the model's first or last "
                f"layers ({ends}) and the activations of the micro-batches in flight; more "
                "stages or devices, or recomputation would help"
            )
        return (
            f"no stage split fits in memory: one block needs {need / 1e9:.3g} GB per device "
            f"even as {best.name} ({best.kind} holds {cap / 1e9:.3g} GB); "
            "more tensor parallelism, more stages, fp8 weights or recomputation would help"
        )
    if "devices" in families:
        return (
            f"not enough devices: dp={p.dp} times the stages' tensor-parallel degrees "
            f"exceeds {dict(sorted(p.devices.items()))}"
        )
    return f"the constraints {', '.join(families) or 'given'} cannot all hold"
