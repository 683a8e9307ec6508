"""A Megatron grid priced by the partitioner's own prices: one cost model, not two.

Why: the closed-form grid estimator (:mod:`shardc.cost.grid`) prices a layer from node
costs by shape alone and cannot tell a column-split bias from a replicated residual add;
the partitioner prices from the graph's strategies. Validating the one and optimising the
other let them drift apart (issue 14: 11.24 s against 7.05 s for the same grid). Here a
:class:`~shardc.cost.grid.GridConfig` becomes the very :class:`PartitionProblem` and
stage plan a fully pinned search would build, and its step is :func:`score` of it — so
the benchmark that checks shardc against Narayanan et al. checks the numbers the solver
optimises, and ``price_grid(c, cfg).seconds == search(c, pinned).step_seconds``.
"""

from __future__ import annotations

from shardc.cost import memory as mem
from shardc.cost.compute import pass_multiplier
from shardc.cost.grid import GridConfig, StepEstimate
from shardc.errors import InfeasibleError, OptionError
from shardc.partition.costing import Costing
from shardc.partition.options import MemoryReserve
from shardc.partition.problem import (
    PartitionProblem,
    StagePlan,
    exposed_p2p,
    score,
    stage_bytes,
    stage_seconds,
    stage_sync,
    violations,
)


def even_blocks(blocks: int, pp: int) -> list[int]:
    """Blocks per stage of an even split; the remainder goes to the last stages (they
    hold the fewest micro-batches in flight), as :func:`cpsat.uniform` splits.
    """
    base, extra = divmod(blocks, pp)
    return [base + (j >= pp - extra) for j in range(pp)]


def grid_problem(
    costing: Costing, cfg: GridConfig, reserve: MemoryReserve | None = None
) -> tuple[PartitionProblem, tuple[StagePlan, ...]]:
    """The partition problem and stage plan of ``cfg`` (one configuration on every stage).

    Raises :class:`OptionError` for a ZeRO stage other than the costing's,
    :class:`InfeasibleError` when the grid does not fit the topology.
    """
    if costing.settings.zero != cfg.zero_stage:
        raise OptionError(f"the costing prices ZeRO {costing.settings.zero}, the grid asks for "
                          f"ZeRO {cfg.zero_stage}", hint="build the costing with Settings(zero=)")
    _, _, _, blocks = costing.sections
    if cfg.pp > blocks:
        raise OptionError(f"pp={cfg.pp} exceeds the model's {blocks} blocks")
    kinds = sorted(costing.pool)
    configs = [
        c for c in costing.configs(cfg.dp, {k: [cfg.tp] for k in kinds}, (cfg.recompute,))
        if c.sequence_parallel == (cfg.sequence_parallel and cfg.tp > 1)
    ]
    if not configs:
        raise InfeasibleError(f"no {cfg.dp} groups of tp={cfg.tp} on the topology")
    reserve = reserve or MemoryReserve()
    problem = PartitionProblem(
        blocks=blocks,
        configs=tuple(configs[:1]),
        devices={k: len(v) for k, v in costing.pool.items()},
        capacity={k: reserve.usable(float(costing.kinds[k].memory_bytes or 1e30)) for k in kinds},
        dp=cfg.dp,
        microbatches=cfg.microbatches,
        max_stages=cfg.pp,
        schedule=cfg.schedule,
        pinned_stages=cfg.pp,
        interleave=cfg.interleave,
        overlap_p2p=costing.settings.overlap_p2p and costing.settings.mode == "training",
    )
    stages = tuple(StagePlan(configs[0].name, n) for n in even_blocks(blocks, cfg.pp))
    return problem, stages


def price_grid(
    costing: Costing, cfg: GridConfig, reserve: MemoryReserve | None = None
) -> StepEstimate:
    """One step of ``cfg`` at the partitioner's prices, split as the grid estimator splits.

    Compute, TP traffic and pipeline transfers are those of the slowest stage (it sets
    the 1F1B pace) over M micro-batches; the bubble is S − 1 of its slots; DP sync and the
    optimizer the largest stage's. ``capacity`` is the device's memory less ``reserve``;
    ``notes`` says which stages do not fit.
    """
    problem, stages = grid_problem(costing, cfg, reserve)
    c = problem.config(stages[0].config)
    pro, block, epi, _ = costing.sections
    m, s = problem.microbatches, len(stages)
    times = [stage_seconds(problem, stages, j) for j in range(s)]
    slow = max(range(s), key=lambda j: (times[j], -j))
    b = costing.part(block, c.kind, c.tp, c.recompute, c.sequence_parallel)
    ends = ([costing.part(pro, c.kind, c.tp, "none", c.sequence_parallel)]
            if slow == 0 and pro else [])
    ends += ([costing.part(epi, c.kind, c.tp, "none", c.sequence_parallel)]
             if slow == s - 1 and epi else [])
    n = stages[slow].blocks
    compute = m * (n * b.compute + sum(e.compute for e in ends))
    tp_comm = m * (n * b.comm + sum(e.comm for e in ends))
    pp_comm = exposed_p2p(problem, stages) if problem.overlap_p2p else (
        m * (c.p2p_seconds * cfg.interleave if s > 1 else 0.0))
    sync = max(stage_sync(problem, stages, j) for j in range(s))
    total = score(problem, stages)
    bubble = total - compute - tp_comm - pp_comm - sync
    peak = max(stage_bytes(problem, stages, j) for j in range(s))
    flops = _flops_per_step(costing, cfg)
    notes = tuple(violations(problem, stages))
    return StepEstimate(cfg, compute, tp_comm, pp_comm, bubble, sync, 0.0,
                        mem.MemoryEstimate({"first stage": peak}), flops,
                        problem.capacity[c.kind], notes)


def _flops_per_step(costing: Costing, cfg: GridConfig) -> float:
    """FLOPs all devices execute per step: layers at the recompute multiplier, the rest 3×."""
    pro, block, epi, count = costing.sections
    layer = sum(costing.costs.nodes[n].flops for n in block)
    rest = sum(costing.costs.nodes[n].flops for n in (*pro, *epi))
    mult = pass_multiplier("training", cfg.recompute, attention_share=0.0)
    return (count * mult * layer + 3 * rest) * cfg.global_batch / cfg.micro_batch
