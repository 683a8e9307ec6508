"""Pass ``timeline``: the priced programs laid out in time for one step.

Why a pass: the step time a pipeline really has is set by who waits for whom (the bubble,
a Recv waiting on a late Send, a collective waiting on its slowest member). The rules and
the simulation are the Plan's (:mod:`shardc.plan.timeline`), so a plan read back from its
folder has the very same timeline; this pass runs them once, at compile time.

The order of passes within a rank's step is 1F1B or GPipe today; interleaved schedules
(virtual stages) belong in :mod:`shardc.plan.simulate`'s pass order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shardc.pipeline import Pass
from shardc.plan.timeline import build_timeline

if TYPE_CHECKING:
    from shardc.pipeline import CompileState


def run(state: CompileState) -> CompileState:
    """Lay the priced programs out in time."""
    assert state.programs is not None
    return state.with_(timeline=build_timeline(state.programs))


def dump(state: CompileState) -> str:
    """Step time, each rank's busy time, and the busiest links."""
    t = state.timeline
    assert t is not None
    lines = [f"step {t.step_seconds * 1e3:.4f} ms ({t.mode}, {t.schedule}, "
             f"{t.microbatches} micro-batches, dp={t.dp}, {t.stages} stages)"]
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
