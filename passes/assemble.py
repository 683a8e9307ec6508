"""Pass ``plan``: the frozen, typed :class:`~shardc.plan.model.PlanData` of this compile.

Why last: it gathers what the passes decided (the partition; when lowered, the priced
programs, the timeline and the ranks' device files' contents) into the one object every
writer and reader uses. The record of the inputs and options is added by the build, which
knows how the user named them (:func:`shardc.build.build`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shardc import jsonutil
from shardc.pipeline import Pass
from shardc.plan.model import PlanData, stage_ranks
from shardc.plan.records import Block, Partition, Rank

if TYPE_CHECKING:
    from shardc.pipeline import CompileState


def assemble(state: CompileState) -> PlanData:
    """The Plan of ``state`` (ranks as emitted when lowered, else from the stages)."""
    part, graph = state.partition, state.graph
    assert part is not None
    partition = Partition.from_json(part.to_json())
    programs, lowering = state.programs, state.lowering
    if programs is None or lowering is None:
        return PlanData(partition, stage_ranks(partition), warnings=state.warnings)
    capacity = {st.index: st.capacity_bytes for st in partition.stages}
    ranks = tuple(
        Rank(p.rank, p.device, p.kind, p.stage, p.replica, p.tp_rank, p.tp, p.memory_bytes,
             capacity[p.stage], p.inputs, p.outputs, p.weight_bytes, f"device_{p.rank}.onnx")
        for p in programs.programs
    )
    used = {v for n in graph.nodes for v in n.present_inputs}
    weights = {
        name: int(graph.values[name].nbytes or 0) for name in graph.initializers if name in used
    }
    return PlanData(
        partition,
        ranks,
        programs=programs,
        timeline=state.timeline,
        weights=dict(sorted(weights.items())),
        device_files=not lowering.declared_only,
        blocks=_blocks(state),
        warnings=state.warnings,
    )


def _blocks(state: CompileState) -> tuple[Block, ...]:
    """The model's chain of blocks, each with the nodes of the graph it holds: what
    ``explain`` needs to name a node's block from the plan folder alone.
    """
    if state.blocks is None:
        return ()
    return tuple(Block(b.role, tuple(b.nodes)) for b in state.blocks.blocks)


def run(state: CompileState) -> CompileState:
    """Assemble the Plan."""
    return state.with_(plan=assemble(state))


def dump(state: CompileState) -> str:
    """plan.json's partition and rank table, as the Plan holds them."""
    plan = state.plan
    assert plan is not None and plan.partition is not None
    return jsonutil.dumps({
        "partition": plan.partition.to_json(),
        "ranks": [r.to_json() for r in plan.ranks],
        "step_seconds": plan.timeline.step_seconds if plan.timeline is not None else None,
    })


PASS = Pass(
    name="plan",
    run=run,
    requires=("partition",),
    provides=("plan",),
    description="the frozen, typed Plan: stages, ranks, programs, timeline, estimate",
    dump=dump,
)
