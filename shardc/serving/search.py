"""The serving search: which instances, how many, on which pools, under the targets.

Formulation (CP-SAT, one small model per pool pairing; only this module imports OR-Tools)::

    choose  y_p ∈ {0,1} per prefill shape p, z_d ∈ {0,1} per decode shape d,
            X_p, X_d ∈ ℕ instances of each
    s.t.    Σ y_p = 1, Σ z_d = 1, X_p ≤ M·y_p, X_d ≤ M·z_d                 [one shape per role]
            Σ_{p on pool k} n_p X_p + Σ_{d on pool k} n_d X_d ≤ |pool k|      [devices]
            T ≤ Σ X_d · out_d                                              [decode capacity]
            T ≤ Σ X_p · req_p · osl                                        [prefill capacity]
            y_p + z_d ≤ 1  for every pair whose TTFT_p + KV_{p→d} > target   [TTFT]
            T ≥ λ · osl (--request-rate)    Σ X_d · inflight_d ≥ N (--concurrency)
    max     T·(D_max+1) − D  (fill the pool), or min D·(T_max+1) − T (a rate to meet)

where T is output tokens/s and D the devices used. Shapes that miss the TPOT target or do
not fit in memory never enter (:mod:`shardc.serving.candidates` prices them); an
aggregated model is the same with one role. The best of all pairings and of aggregated is
the plan. Deterministic: one worker, fixed seed, a deterministic-time limit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ortools.sat.python import cp_model

from shardc.serving.candidates import Candidate
from shardc.serving.fabric import Fabric, Pool, Transfer
from shardc.serving.workload import Workload

KEEP = 24
"""Shapes per role and pool handed to the solver: the best by rate per device, plus the
best for every device count, so the solver can still pack pools exactly."""
SCALE = 1000
"""Rates enter CP-SAT as integers in thousandths of a token (or request) per second."""


@dataclass(frozen=True, slots=True)
class Choice:
    """The solver's answer for one pairing (or aggregated)."""

    mode: str
    prefill: Candidate | None
    prefill_count: int
    decode: Candidate
    decode_count: int
    transfer: Transfer | None
    ttft: float
    output_rate: float
    devices: int
    status: str

    @property
    def tpot(self) -> float:
        """Seconds per output token of one sequence."""
        return self.decode.tpot

    @property
    def per_device(self) -> float:
        """Output tokens/s per device."""
        return self.output_rate / self.devices if self.devices else 0.0


def prune(cands: Sequence[Candidate], keep: int = KEEP) -> list[Candidate]:
    """The best ``keep`` by rate per device, plus the best of each device count."""
    def score(c: Candidate) -> tuple[float, float, str]:
        r = c.output_rate if c.role != "prefill" else c.request_rate
        return (-r / c.devices, c.step.seconds, c.describe())

    ranked = sorted(cands, key=score)
    chosen = {id(c): c for c in ranked[:keep]}
    best_per_n: dict[tuple[str, int], Candidate] = {}
    for c in ranked:
        best_per_n.setdefault((c.pool.kind.name, c.devices), c)
    for c in best_per_n.values():
        chosen.setdefault(id(c), c)
    return sorted(chosen.values(), key=score)


def _transfer_time(fabric: Fabric, p: Candidate, d: Candidate, nbytes: float,
                   cache: dict[tuple[str, str, int, int], Transfer | None]) -> Transfer | None:
    """The KV hand-off of one request from p's first TP group to d's, contention included.

    Links carry a prefill instance's stream of requests: each request holds them for the
    uncontended time t0, so at ``req_p`` requests/s they are busy ρ = req_p·t0 of the
    time and a request waits as in an M/M/1 queue, ``t0/(1−ρ)``; ρ ≥ 1 cannot keep up.
    """
    key = (p.pool.kind.name, d.pool.kind.name, p.par.tp, d.par.tp)
    if key not in cache:
        src = p.pool.devices[:p.par.tp]
        pool = d.pool.devices
        # same pool: decode instances sit after the prefill ones
        start = 0
        if d.pool.kind.name == p.pool.kind.name:
            start = len(pool) // 2
            if d.pool.island <= start:  # keep the decode side on islands of its own
                start -= start % d.pool.island
        dst = pool[start:start + d.par.tp]
        options = fabric.kv_transfers(src, dst, nbytes) if len(dst) == d.par.tp else []
        cache[key] = options[0] if options else None
    t = cache[key]
    if t is None:
        return None
    rho = p.request_rate / max(p.par.dp, 1) * t.seconds
    if rho >= 1.0:
        return None
    return Transfer(t.plane, t.nbytes, t.seconds / (1.0 - rho), t.streams, t.link_kinds)


SOLUTION_LIMIT = 2000
"""Improving solutions one search may find (see :func:`_solve`)."""


class _SolutionLimit(cp_model.CpSolverSolutionCallback):
    """Stops the search after ``limit`` improving solutions."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit, self.seen = limit, 0

    def on_solution_callback(self) -> None:
        self.seen += 1
        if self.seen >= self.limit:
            self.stop_search()


def _solve(prefill: Sequence[Candidate], decode: Sequence[Candidate], wl: Workload,
           pools: Sequence[Pool], transfers: dict[tuple[int, int], Transfer],
           time_limit: float, seed: int) -> tuple[dict[int, int], dict[int, int], str] | None:
    """CP-SAT over shape choice and counts; returns (prefill counts, decode counts, status)."""
    model = cp_model.CpModel()
    size = {p.kind.name: len(p.devices) for p in pools}
    y = [model.new_bool_var(f"y_prefill_{i}") for i in range(len(prefill))]
    z = [model.new_bool_var(f"z_decode_{i}") for i in range(len(decode))]
    xp = [model.new_int_var(0, size[c.pool.kind.name] // c.devices, f"x_prefill_{i}")
          for i, c in enumerate(prefill)]
    xd = [model.new_int_var(0, size[c.pool.kind.name] // c.devices, f"x_decode_{i}")
          for i, c in enumerate(decode)]
    if prefill:
        model.add_exactly_one(y).with_name("one_prefill_shape")
        for i, c in enumerate(prefill):
            model.add(xp[i] <= (size[c.pool.kind.name] // c.devices) * y[i]).with_name(
                f"prefill_count_{i}")
            model.add(xp[i] >= y[i]).with_name(f"prefill_at_least_one_{i}")
    model.add_exactly_one(z).with_name("one_decode_shape")
    for i, c in enumerate(decode):
        model.add(xd[i] <= (size[c.pool.kind.name] // c.devices) * z[i]).with_name(
            f"decode_count_{i}")
        model.add(xd[i] >= z[i]).with_name(f"decode_at_least_one_{i}")
    used = {k: 0 for k in size}
    for i, c in enumerate(prefill):
        used[c.pool.kind.name] += c.devices * xp[i]  # type: ignore[assignment]
    for i, c in enumerate(decode):
        used[c.pool.kind.name] += c.devices * xd[i]  # type: ignore[assignment]
    for k, expr in sorted(used.items()):
        model.add(expr <= size[k]).with_name(f"devices_{k}")
    t_max = sum(size.values()) * max(
        [c.output_rate / c.devices for c in decode] + [1.0]) * SCALE
    t_max = int(min(t_max, 2**40))
    t = model.new_int_var(0, t_max, "output_tokens_per_s")
    model.add(t <= sum(int(c.output_rate * SCALE) * xd[i] for i, c in enumerate(decode)))
    if prefill:
        model.add(t <= sum(int(c.request_rate * wl.osl * SCALE) * xp[i]
                           for i, c in enumerate(prefill))).with_name("prefill_capacity")
        for i in range(len(prefill)):
            for j in range(len(decode)):
                if (i, j) not in transfers:
                    model.add_bool_or([y[i].Not(), z[j].Not()]).with_name(f"ttft_{i}_{j}")
    devices = sum(used.values())
    d_max = sum(size.values())
    if wl.rate is not None:
        model.add(t >= math.ceil(wl.rate * wl.osl * SCALE)).with_name("request_rate")
    if wl.concurrency is not None:
        model.add(sum(c.in_flight * xd[i] for i, c in enumerate(decode)) >= wl.concurrency
                  ).with_name("concurrency")
    if wl.rate is not None or wl.concurrency is not None:
        model.minimize(devices * (t_max + 1) - t)
    else:
        model.maximize(t * (d_max + 1) - devices)
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = 1
    solver.parameters.random_seed = seed
    solver.parameters.max_deterministic_time = time_limit
    # On some candidate sets (Llama-8B, 2 H100 nodes, --concurrency 256 with the fitted
    # kinds) the single worker improves the objective one unit of t at a time: tens of
    # thousands of solutions that cost almost no deterministic time, so that limit never
    # ends the search. A solution count does, and is as deterministic as the search (one
    # worker, fixed seed); the wall clock is only a backstop that such a count makes moot.
    solver.parameters.max_time_in_seconds = max(10.0, 5.0 * time_limit)
    status = solver.solve(model, _SolutionLimit(SOLUTION_LIMIT))
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return None
    counts_p = {i: solver.value(v) for i, v in enumerate(xp) if solver.value(v)}
    counts_d = {i: solver.value(v) for i, v in enumerate(xd) if solver.value(v)}
    return counts_p, counts_d, solver.status_name(status).lower()


def search(prefill: dict[str, list[Candidate]], decode: dict[str, list[Candidate]],
           aggregated: dict[str, list[Candidate]], wl: Workload, fabric: Fabric,
           kv_bytes_per_request: float, *, tpot: float | None, ttft: float | None,
           time_limit: float, seed: int) -> list[Choice]:
    """Every feasible plan, best first (disaggregated pairings and aggregated per pool)."""
    pools = fabric.pools
    ok_d = {k: prune([c for c in v if tpot is None or c.tpot <= tpot]) for k, v in decode.items()}
    ok_p = {k: prune([c for c in v if ttft is None or c.ttft_part <= ttft])
            for k, v in prefill.items()}
    ok_a = {k: prune([c for c in v if (tpot is None or c.tpot <= tpot)
                      and (ttft is None or c.ttft_part <= ttft)]) for k, v in aggregated.items()}
    choices: list[Choice] = []
    cache: dict[tuple[str, str, int, int], Transfer | None] = {}
    budget = time_limit / max(1, len(ok_p) * len(ok_d) + len(ok_a))
    for kp in sorted(ok_p):
        for kd in sorted(ok_d):
            ps, ds = ok_p[kp], ok_d[kd]
            if not ps or not ds:
                continue
            transfers: dict[tuple[int, int], Transfer] = {}
            for i, p in enumerate(ps):
                for j, d in enumerate(ds):
                    tr = _transfer_time(fabric, p, d, kv_bytes_per_request, cache)
                    if tr is not None and (ttft is None or p.ttft_part + tr.seconds <= ttft):
                        transfers[(i, j)] = tr
            used_pools = [p for p in pools if p.kind.name in (kp, kd)]
            got = _solve(ps, ds, wl, used_pools, transfers, budget, 0 if seed is None else seed)
            if got is None:
                continue
            cp, cd, status = got
            (i, n_p), = cp.items()
            (j, n_d), = cd.items()
            p, d = ps[i], ds[j]
            rate = min(n_d * d.output_rate, n_p * p.request_rate * wl.osl)
            tr = transfers[(i, j)]
            choices.append(Choice("disaggregated", p, n_p, d, n_d, tr,
                                  p.ttft_part + tr.seconds, rate,
                                  n_p * p.devices + n_d * d.devices, status))
    for ka in sorted(ok_a):
        if not ok_a[ka]:
            continue
        pool = [p for p in pools if p.kind.name == ka]
        got = _solve([], ok_a[ka], wl, pool, {}, budget, seed)
        if got is None:
            continue
        _, cd, status = got
        (j, n), = cd.items()
        a = ok_a[ka][j]
        choices.append(Choice("aggregated", None, 0, a, n, None, a.ttft_part, n * a.output_rate,
                              n * a.devices, status))
    constrained = wl.rate is not None or wl.concurrency is not None
    return sorted(choices, key=lambda c: (
        (c.devices, -c.output_rate) if constrained else (-c.output_rate, c.devices),
        c.mode, c.decode.describe()))
