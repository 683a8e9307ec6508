"""trace.json: schedule.json in Chrome's Trace Event Format, for Perfetto or chrome://tracing.

Why a second view of the same timeline: schedule.json is for programs and tests, a trace
viewer is how people spot the bubble, a straggling collective member or a saturated
link. It is a pure function of the schedule dict, so it can never disagree with it.

Layout: one process per rank (``pid`` = rank, named ``rank R: device (kind), stage S``)
with one thread holding a complete event (``"ph": "X"``) per schedule event, and one
more process, ``links`` (``pid`` = number of ranks), with one thread per link, listed
heaviest first as in the schedule's link summary, holding a copy of every comm event
that crosses the link. Times are microseconds (the format's unit); ``displayTimeUnit``
is ``ms``. Events of one link may overlap (both ends of a transfer, every member of a
collective): viewers draw what nests and the ``args`` say which rank each copy is from.
"""

from __future__ import annotations

from typing import Any

_US = 1e6
"""Trace timestamps are microseconds; the schedule's are seconds."""

_PHASE_LETTER = {"forward": "F", "backward": "B"}


def chrome_trace(schedule: dict[str, Any]) -> dict[str, Any]:
    """The Chrome Trace Event Format object for ``schedule`` (a :func:`build_schedule` dict)."""
    devices = sorted(schedule["devices"], key=lambda d: d["rank"])
    links_pid = max((d["rank"] for d in devices), default=-1) + 1
    # Heaviest first, as summarised; a link only the events name (a hand-made schedule) last.
    names = dict.fromkeys(entry["link"] for entry in schedule.get("links", []))
    for dev in devices:
        for ev in dev["events"]:
            names.update(dict.fromkeys(ev.get("links", ())))
    link_names = list(names)
    link_tid = {name: i + 1 for i, name in enumerate(link_names)}

    meta: list[dict[str, Any]] = []
    slices: list[dict[str, Any]] = []
    per_link: dict[str, list[dict[str, Any]]] = {name: [] for name in link_names}
    for dev in devices:
        rank = dev["rank"]
        label = f"rank {rank}: {dev['device']} ({dev['kind']}), stage {dev['stage']}"
        meta += _process(rank, label, rank)
        meta.append(_thread_name(rank, 0, "steps"))
        for ev in dev["events"]:
            args = _args(rank, ev)
            slices.append(_slice(_title(ev), ev, rank, 0, args))
            for link in dict.fromkeys(ev.get("links", ())):
                per_link[link].append(_slice(_link_title(rank, ev), ev, links_pid, 0, dict(args)))
    meta += _process(links_pid, "links", links_pid)
    for name in link_names:
        tid = link_tid[name]
        meta.append(_thread_name(links_pid, tid, name))
        meta.append(
            {
                "name": "thread_sort_index",
                "ph": "M",
                "pid": links_pid,
                "tid": tid,
                "args": {"sort_index": tid},
            }
        )
        for event in per_link[name]:
            event["tid"] = tid
            slices.append(event)
    return {"traceEvents": meta + slices, "displayTimeUnit": "ms"}


def _process(pid: int, name: str, order: int) -> list[dict[str, Any]]:
    return [
        {"name": "process_name", "ph": "M", "pid": pid, "tid": 0, "args": {"name": name}},
        {
            "name": "process_sort_index",
            "ph": "M",
            "pid": pid,
            "tid": 0,
            "args": {"sort_index": order},
        },
    ]


def _thread_name(pid: int, tid: int, name: str) -> dict[str, Any]:
    return {"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": name}}


def _title(ev: dict[str, Any]) -> str:
    """Short slice text: ``F3 block 2``, ``B0 Recv from 1``, ``dp sync + optimizer``."""
    if ev["phase"] == "sync":
        return str(ev["name"])
    prefix = f"{_PHASE_LETTER.get(ev['phase'], ev['phase'])}{ev['microbatch']}"
    if ev["type"] == "compute":
        return f"{prefix} {ev['name'] or 'compute'}"
    if ev["op"] == "Send":
        return f"{prefix} Send to {ev['peer']}"
    if ev["op"] == "Recv":
        return f"{prefix} Recv from {ev['peer']}"
    return f"{prefix} {ev['op']}"


def _link_title(rank: int, ev: dict[str, Any]) -> str:
    """Slice text on a link track says whose transfer it is: ``Send 0->1``, ``AllReduce @2``."""
    if ev["op"] == "Send":
        return f"{ev['op']} {rank}->{ev['peer']}"
    if ev["op"] == "Recv":
        return f"{ev['op']} {ev['peer']}->{rank}"
    return f"{ev['name']} @{rank}"


def _args(rank: int, ev: dict[str, Any]) -> dict[str, Any]:
    args: dict[str, Any] = {
        "rank": rank,
        "type": ev["type"],
        "phase": ev["phase"],
        "microbatch": ev["microbatch"],
        "start_s": ev["start"],
        "duration_s": ev["duration"],
    }
    if ev["type"] == "compute":
        args["label"] = ev["name"]
        return args
    for key in ("op", "value", "bytes", "peer", "tag", "group", "axis", "algorithm", "links"):
        args[key] = ev[key]
    return args


def _slice(
    name: str, ev: dict[str, Any], pid: int, tid: int, args: dict[str, Any]
) -> dict[str, Any]:
    return {
        "name": name,
        "cat": f"{ev['phase']},{ev['type']}",
        "ph": "X",
        "pid": pid,
        "tid": tid,
        "ts": ev["start"] * _US,
        "dur": ev["duration"] * _US,
        "args": args,
    }
