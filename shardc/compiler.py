"""The top-level recipe: model in, analysed and partitioned state out.

The pass order is declared here in one place; the CLI and the Python API both call
:func:`analyse` or :func:`partition`, so a plan made from the shell and one made in a
script are the same.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from shardc.frontend import ModelLike, load_model
from shardc.partition.options import PartitionOptions
from shardc.passes import (
    annotate_costs,
    assemble,
    coarsen,
    lower,
    partition,
    precision,
    price,
    strategies,
    timeline,
)
from shardc.pipeline import CompileOptions, CompileState, Pass, Pipeline, PipelineResult


def analysis_passes() -> list[Pass]:
    """The passes ``shardc inspect`` runs: costs only."""
    return [annotate_costs.PASS]


def partition_passes() -> list[Pass]:
    """The passes that decide the plan, in order (precision first: every price after it
    is in the plan's ``--dtype``).
    """
    return [precision.PASS, annotate_costs.PASS, coarsen.PASS, strategies.PASS, partition.PASS]


def plan_passes(*, lowered: bool = True) -> list[Pass]:
    """The passes after ``partition`` that build the Plan: ``lower`` (every rank's program
    and device-file nodes), ``price`` (each step by the cost model), ``timeline`` (the step
    in time) and ``plan`` (the frozen Plan). ``lowered=False``: the Plan of the partition
    alone (no programs, no timeline), for a what-if too large to lay out.
    """
    if not lowered:
        return [assemble.PASS]
    return [lower.PASS, price.PASS, timeline.PASS, assemble.PASS]


def default_passes() -> list[Pass]:
    """The passes ``shardc compile`` runs, in order: deciding, then building the Plan."""
    return [*partition_passes(), *plan_passes()]


def analyse(
    model: ModelLike,
    *,
    dims: Mapping[str, int] | None = None,
    custom_flops: Mapping[str, float] | None = None,
    topology: Any = None,
    example_inputs: Any = None,
    dump_after: Sequence[str] = (),
    verify: bool = False,
    on_pass: Callable[[str, int, int], None] | None = None,
    on_step: Callable[[str, str, int, int], None] | None = None,
    mode: str = "training",
    partition: PartitionOptions | None = None,
    passes: Sequence[Pass] | None = None,
    dtype: str | None = None,
) -> PipelineResult:
    """Load ``model`` and run ``passes`` (the analysis passes unless given) over it.

    ``dtype`` is the precision prices are in (see :mod:`shardc.cost.precision`); it takes
    effect where ``passes`` hold the precision pass. ``on_pass(name, index, total)`` is
    called as each pass starts, ``on_step(name, step, done, total)`` as a pass that
    reports its own progress (partition: per solve) advances.
    """
    options = CompileOptions(
        mode=mode,
        dtype=dtype,
        dims=dict(dims or {}),
        custom_flops=dict(custom_flops or {}),
        partition=partition or PartitionOptions(),
    )
    loaded = load_model(model, dims=options.dims, example_inputs=example_inputs)
    state = CompileState(model=loaded, graph=loaded.graph, options=options, topology=topology)
    return Pipeline(list(passes) if passes is not None else analysis_passes()).run(
        state, verify=verify, dump_after=dump_after, on_pass=on_pass, on_step=on_step
    )


def partition_model(model: ModelLike, topology: Any, **kwargs: Any) -> PipelineResult:
    """Load ``model`` and partition it onto ``topology`` (``state.partition``); no Plan.

    Why it stops there: deciding is what a script exploring configurations asks for, and
    lowering a 70 B model onto 32 devices (every rank's program) costs minutes and
    gigabytes it did not ask for; :func:`build_plan` carries a state on to the Plan.
    """
    return analyse(model, topology=topology, passes=partition_passes(), **kwargs)


def build_plan(state: CompileState, *, lowered: bool = True) -> PipelineResult:
    """Carry a partitioned state on through the passes that build the Plan."""
    from shardc.pipeline import filled

    return Pipeline(plan_passes(lowered=lowered), given=filled(state)).run(state)
