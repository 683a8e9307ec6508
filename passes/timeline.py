"""Pass ``timeline``: the priced programs laid out in time for one step.

Why a pass: the step time a pipeline really has is set by who waits for whom (the bubble,
a Recv waiting on a late Send, a collective waiting on its slowest member). The rules and
the simulation are the Plan's (:mod:`shardc.plan.timeline`, :mod:`shardc.plan.schedule`),
so a plan read back from its folder has the very same timeline; this pass runs them once,
at compile time.

The layout follows the partitioner's decisions: ``partition.interleave`` model chunks per
rank (interleaved 1F1B, :mod:`shardc.plan.issue_order`'s pass order) and pipeline transfers
overlapped with compute when it priced them so (``partition.p2p_overlapped``). The
hand-offs interleaving adds (last stage to first) are lowered Sends of the chunked
programs, priced with the rest (passes/price.py); ``route`` prices them only for programs
that hold a stage as one pass (then the timeline adds them, on the topology's route).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shardc.cost.network import point_to_point
from shardc.pipeline import Pass
from shardc.plan.program import Link, route_links
from shardc.plan.schedule import build_timeline

if TYPE_CHECKING:
    from shardc.pipeline import CompileState


def run(state: CompileState) -> CompileState:
    """Lay the priced programs out in time."""
    programs, part, topo = state.programs, state.partition, state.topology
    assert programs is not None
    if part is None or topo is None:
        return state.with_(timeline=build_timeline(programs))
    device = {p.rank: p.device for p in programs.programs}

    def route(sender: int, receiver: int, nbytes: float) -> tuple[float, tuple[Link, ...]]:
        a, b = device[sender], device[receiver]
        links = route_links(topo.route(a, b).nodes)
        return point_to_point(topo, a, b, nbytes).seconds, links

    timeline = build_timeline(programs, part.interleave, part.p2p_overlapped, route)
    return state.with_(timeline=timeline)


def dump(state: CompileState) -> str:
    """Step time, each rank's busy time, and the busiest links."""
    t = state.timeline
    assert t is not None
    lines = [f"step {t.step_seconds * 1e3:.4f} ms ({t.mode}, {t.schedule}, "
             f"{t.microbatches} micro-batches, dp={t.dp}, {t.stages} stages, "
             f"v={t.interleave}, p2p {'overlapped' if t.p2p_overlapped else 'blocking'})"]
    for d in t.devices:
        lines.append(f"rank {d.rank} ({d.device}): {len(d.events)} events, "
                     f"busy {d.busy_seconds * 1e3:.4f} ms")
    for x in t.links[:10]:
        lines.append(f"link {x.link}: {x.nbytes:.0f} B in {x.transfers} transfers, "
                     f"busy {x.busy_seconds * 1e3:.4f} ms")
    return "\n".join(lines) + "\n"


PASS = Pass(
    name="timeline",
    run=run,
    requires=("programs",),
    provides=("timeline",),
    description="the priced programs laid out in time: events, link loads, step time",
    dump=dump,
)
