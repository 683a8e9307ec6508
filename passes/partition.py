"""Pass ``partition``: stages, device groups, shardings and placement, by CP-SAT.

Why a thin pass: the work lives in :mod:`shardc.partition` (prices in ``costing``, the
outer search over data-parallel widths in ``search``, the CP-SAT model in ``cpsat``,
device binding in ``place``), so the same pieces serve the CLI, the Python API and the
baselines benchmark, which evaluates hand-made grids with the very same prices.
"""

from __future__ import annotations

from shardc.errors import OptionError
from shardc.partition.costing import Costing, Settings
from shardc.partition.search import search
from shardc.passes.precision import priced_graph
from shardc.pipeline import CompileState, Pass
from shardc.progress import Progress


def costing_for(state: CompileState) -> Costing:
    """The price table of ``state``'s graph on its topology."""
    assert state.costs and state.blocks and state.strategies
    if state.topology is None:
        raise OptionError("partitioning needs a topology (--topology FILE)")
    opts = state.options
    return Costing(
        priced_graph(state),  # every price in the plan's --dtype
        state.costs,
        state.blocks,
        state.strategies,
        state.topology,
        Settings(mode=opts.mode, zero=opts.partition.zero, tp_rule=opts.partition.pins.rule,
                 ep=opts.partition.pins.ep or 1, cp_comm=opts.partition.cp_comm),
    )


def run(state: CompileState, progress: Progress | None = None) -> CompileState:
    """Fill ``state.partition`` with the best plan under the user's options and pins;
    ``progress`` advances per (data-parallel width, stage count) the search settles.
    """
    result = search(costing_for(state), state.options.partition, progress)
    out = state.with_(partition=result)
    if result.status != "OPTIMAL":
        gap = f"{result.gap:.1%}" if result.gap is not None else "unknown"
        out = out.warn(
            f"solver stopped at its time limit: the plan is feasible, not proven optimal "
            f"(gap {gap}); raise --time-limit to search longer"
        )
    return out


def dump(state: CompileState) -> str:
    """The plan: stages, their groups and the step estimate."""
    from shardc import jsonutil

    assert state.partition is not None
    return jsonutil.dumps(state.partition.to_json())


PASS = Pass(
    name="partition",
    run=run,
    requires=("graph", "costs", "blocks", "strategies", "topology"),
    provides=("partition",),
    description="pipeline stages, tensor/data parallel degrees, recomputation and device "
    "placement chosen by CP-SAT under each device's memory",
    dump=dump,
    reports_progress=True,
)
