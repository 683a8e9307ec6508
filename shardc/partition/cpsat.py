"""CP-SAT formulation of :class:`PartitionProblem` (the only module importing OR-Tools).

For each stage count S (1..max, or the pinned one) we solve::

    variables   n_j ∈ [1, L]                    blocks of stage j          (j < S)
                x_jc ∈ {0,1}, Σ_c x_jc = 1       stage j runs configuration c
                y_jc = n_j · x_jc                linearised: y ≤ L·x, y ≤ n, y ≥ n − L(1 − x)
    blocks      Σ_j n_j = L
    time        T_j = Σ_c y_jc·t_c + [j=0]·Σ_c x_0c·pro_c + [j=S−1]·Σ_c x_(S−1)c·epi_c
    memory      Σ_c y_jc·(static_c + act_c·min(S−j, M)) + fixed ≤ Σ_c x_jc·cap_c   [memory]
    devices     Σ_j Σ_{c: kind k} dp·tp_c·x_jc ≤ avail_k                           [devices]
    pins        x_j,pinned(j) = 1                                                   [pins]
    objective   throughput: (M + S − 1)·max_j T_j + max_j Σ_c y_jc·sync_c
                latency:    Σ_j T_j                   (+ (S − 1)·p2p, a constant per S)

Times are scaled to integers (microsecond-ish resolution relative to the whole step);
the best S is chosen on the exact, unscaled :func:`score`. Each constraint family hangs
on an assumption literal, so an infeasible S yields a core naming the families at odds.
The search is deterministic: one worker, a fixed seed and a *deterministic* time limit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ortools.sat.python import cp_model

from shardc.errors import InfeasibleError, SolverTimeout
from shardc.partition.problem import PartitionProblem, Solution, StagePlan, score, violations

_RESOLUTION = 1_000_000


@dataclass(frozen=True)
class _Attempt:
    stages: int
    status: str
    solution: Solution | None
    core: tuple[str, ...]


def solve(problem: PartitionProblem, *, time_limit: float = 10.0, seed: int = 0) -> Solution:
    """Best plan over stage counts; raises :class:`InfeasibleError` with the reason."""
    start = time.perf_counter()
    counts = (
        [problem.pinned_stages]
        if problem.pinned_stages
        else list(range(1, min(problem.max_stages, problem.blocks) + 1))
    )
    budget = time_limit / len(counts)
    attempts = [_solve_stages(problem, s, budget, seed) for s in counts]
    found = [a.solution for a in attempts if a.solution is not None]
    if not found:
        if any(a.status == "UNKNOWN" for a in attempts):
            raise SolverTimeout(
                f"no plan found within {time_limit:g} s of solver time",
                hint="raise --time-limit, or pin part of the answer (--pin tp=8)",
            )
        raise InfeasibleError(_why(problem, attempts))
    best = min(found, key=lambda s: (s.seconds, len(s.stages), [st.config for st in s.stages]))
    proven = all(a.status in ("OPTIMAL", "INFEASIBLE") for a in attempts)
    bound = min(
        (a.solution.bound for a in attempts if a.solution and a.solution.bound is not None),
        default=None,
    )
    return Solution(
        best.stages,
        best.seconds,
        "OPTIMAL" if proven else "FEASIBLE",
        best.seconds if proven else bound,
        time.perf_counter() - start,
    )


def _scale(p: PartitionProblem) -> float:
    worst = max(
        p.blocks * c.block_seconds
        + c.prologue_seconds
        + c.epilogue_seconds
        + p.blocks * c.sync_seconds
        for c in p.configs
    )
    return _RESOLUTION / worst if worst > 0 else 1.0


def _solve_stages(p: PartitionProblem, s: int, budget: float, seed: int) -> _Attempt:
    m = cp_model.CpModel()
    L, cs, k = p.blocks, p.configs, _scale(p)
    n = [m.new_int_var(1, L, f"n{j}") for j in range(s)]
    x = [[m.new_bool_var(f"x{j}_{c.name}") for c in cs] for j in range(s)]
    y = [[m.new_int_var(0, L, f"y{j}_{c.name}") for c in cs] for j in range(s)]
    lit = {f: m.new_bool_var(f) for f in ("memory", "devices", "pins")}
    m.add(sum(n) == L)
    for j in range(s):
        m.add_exactly_one(x[j])
        for ci in range(len(cs)):
            m.add(y[j][ci] <= L * x[j][ci])
            m.add(y[j][ci] <= n[j])
            m.add(y[j][ci] >= n[j] - L * (1 - x[j][ci]))
    _add_memory(m, p, s, x, y, lit["memory"])
    _add_devices(m, p, s, x, lit["devices"])
    _add_pins(m, p, s, x, lit["pins"])
    times = [_stage_time(m, p, s, j, x, y, k) for j in range(s)]
    if p.objective == "latency":
        m.minimize(sum(times))
    else:
        t_max = m.new_int_var(0, 10 * _RESOLUTION, "t_max")
        sync = m.new_int_var(0, 10 * _RESOLUTION, "sync")
        m.add_max_equality(t_max, times)
        m.add_max_equality(
            sync,
            [
                sum(round(c.sync_seconds * k) * y[j][ci] for ci, c in enumerate(cs))
                for j in range(s)
            ],
        )
        m.minimize((p.microbatches + s - 1) * t_max + sync)
    m.add_assumptions(list(lit.values()))
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = 1
    solver.parameters.random_seed = seed
    solver.parameters.max_deterministic_time = max(budget, 0.05)
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
        bound = solver.best_objective_bound / k if name == "FEASIBLE" else None
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
    t = m.new_int_var(0, 10 * _RESOLUTION, f"T{j}")
    m.add(t == expr)
    return t


def _add_memory(m: cp_model.CpModel, p: PartitionProblem, s: int, x, y, on) -> None:
    """[memory] every device of a stage holds its blocks, in-flight activations, ends."""
    for j in range(s):
        inflight = min(s - j, p.microbatches)
        used = 0
        for ci, c in enumerate(p.configs):
            per_block = c.block_static_bytes + c.block_activation_bytes * inflight
            used += int(per_block) * y[j][ci]
            fixed = (c.prologue_bytes if j == 0 else 0) + (c.epilogue_bytes if j == s - 1 else 0)
            used += int(fixed - p.capacity[c.kind]) * x[j][ci]
        m.add(used <= 0).only_enforce_if(on)


def _add_devices(m: cp_model.CpModel, p: PartitionProblem, s: int, x, on) -> None:
    """[devices] a kind's stages use at most the devices of that kind."""
    for kind in sorted({c.kind for c in p.configs}):
        use = sum(
            p.dp * c.tp * x[j][ci]
            for j in range(s)
            for ci, c in enumerate(p.configs)
            if c.kind == kind
        )
        m.add(use <= p.devices.get(kind, 0)).only_enforce_if(on)


def _add_pins(m: cp_model.CpModel, p: PartitionProblem, s: int, x, on) -> None:
    """[pins] stages the user fixed to a configuration."""
    names = [c.name for c in p.configs]
    for j, name in sorted(p.pinned.items()):
        if j < s:
            m.add(x[j][names.index(name)] == 1).only_enforce_if(on)


def _why(p: PartitionProblem, attempts: list[_Attempt]) -> str:
    """A user-level reason: what the cores say, with the figures behind it."""
    families = sorted({f for a in attempts for f in a.core})
    if "memory" in families:
        best = min(
            p.configs,
            key=lambda c: (c.block_static_bytes + c.block_activation_bytes) / p.capacity[c.kind],
        )
        need = best.block_static_bytes + best.block_activation_bytes
        return (
            f"no stage split fits in memory: one block needs {need / 1e9:.3g} GB per device "
            f"even as {best.name} ({best.kind} holds {p.capacity[best.kind] / 1e9:.3g} GB); "
            "more tensor parallelism, more stages, fp8 weights or recomputation would help"
        )
    if "devices" in families:
        return (
            f"not enough devices: dp={p.dp} times the stages' tensor-parallel degrees "
            f"exceeds {dict(sorted(p.devices.items()))}"
        )
    return f"the constraints {', '.join(families) or 'given'} cannot all hold"
