"""schedule.json computed: the programs checked, simulated, and their placed items
written as events, busy times and link loads.

Why apart from :mod:`shardc.plan.timeline`: that module is the format (its rules in the
module docstring, the schema, the typed records every reader of a plan folder loads); this
one computes it from :class:`~shardc.plan.program.Programs`, so it alone pulls in the
checks, the issue order and the simulation, and it is what changes when the way a
timeline is computed does, while the records stay put.
"""

from __future__ import annotations

from typing import Any

from shardc.plan.issue_order import Item, Route, rank_items, sync_group, wrap_steps
from shardc.plan.linkload import link_summary
from shardc.plan.lowered import is_ring_comm
from shardc.plan.program import Programs
from shardc.plan.program_checks import check_programs
from shardc.plan.simulate import Simulation
from shardc.plan.timeline import FORMAT, Timeline


def build_timeline(
    programs: Programs,
    interleave: int = 1,
    overlap_p2p: bool = False,
    route: Route | None = None,
) -> Timeline:
    """``programs`` laid out in time (see the module docstring)."""
    return Timeline.from_json(build_schedule(programs, interleave, overlap_p2p, route))


def build_schedule(
    programs: Programs,
    interleave: int = 1,
    overlap_p2p: bool = False,
    route: Route | None = None,
) -> dict[str, Any]:
    """Lay ``programs`` out in time as the schedule.json object (see the module docstring).

    ``interleave`` is v, the model chunks per rank; ``overlap_p2p`` runs pipeline Sends
    beside compute; ``route`` prices the hand-offs interleaving adds (the last stage to
    the first), which the programs do not hold.
    """
    if interleave < 1:
        raise ValueError(f"interleave must be at least 1, got {interleave}")
    by_rank = check_programs(programs)
    chunked = any(p.chunk_starts for p in by_rank.values())
    wraps = wrap_steps(by_rank, programs.stages, route) if interleave > 1 and not chunked else {}
    items = {
        r: rank_items(programs, prog, sync_group(by_rank, prog), interleave,
                      wraps.get(r, ((), ())))
        for r, prog in by_rank.items()
    }
    timeline = Simulation(items, overlap_p2p)
    timeline.run()

    devices: list[dict[str, Any]] = []
    step = 0.0
    for r, prog in by_rank.items():
        events = [
            event_json(item, start, duration, prog.stage, programs.stages)
            for item, (start, duration) in zip(items[r], timeline.times[r], strict=True)
        ]
        busy = 0.0
        for ev in events:
            beside = ev.get("op") in ("Send", "Recv") and (
                overlap_p2p or is_ring_comm(str(ev.get("value", ""))))
            if not beside:
                busy += ev["duration"]
            step = max(step, ev["end"])
        devices.append(
            {
                "rank": prog.rank,
                "device": prog.device,
                "kind": prog.kind,
                "stage": prog.stage,
                "replica": prog.replica,
                "tp_rank": prog.tp_rank,
                "tp": prog.tp,
                "busy_seconds": busy,
                "events": events,
            }
        )
    return {
        "format": FORMAT,
        "mode": programs.mode,
        "schedule": programs.schedule,
        "microbatches": programs.microbatches,
        "dp": programs.dp,
        "stages": programs.stages,
        "interleave": interleave,
        "p2p_overlapped": overlap_p2p,
        **({"chunked_programs": True} if chunked else {}),
        "step_seconds": step,
        "devices": devices,
        "links": link_summary(devices, timeline.recv_of),
    }


def event_json(
    item: Item, start: float, duration: float, stage: int, stages: int
) -> dict[str, Any]:
    """The item placed at ``start`` as schedule.json writes it."""
    event: dict[str, Any] = {
        "type": "comm" if item.is_comm else "compute",
        "phase": item.phase,
        "microbatch": item.microbatch,
        "name": item.name,
        "start": start,
        "duration": duration,
        "end": start + duration,
    }
    if item.phase != "sync":
        event["chunk"] = item.chunk
        event["virtual_stage"] = item.chunk * stages + stage
    if not item.is_comm:
        return event
    c = item.comm
    event.update(
        {
            "op": item.op,
            "value": c.value if c else "",
            "bytes": float(c.nbytes) * item.share if c else item.nbytes,
            "group": list(item.group),
            "peer": c.peer if c else -1,
            "tag": c.tag if c else 0,
            "axis": c.axis if c else -1,
            "algorithm": c.algorithm if c else "",
            "links": [str(x) for x in (c.links if c else item.links)],
        }
    )
    return event
