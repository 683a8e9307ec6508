"""trace.json: schedule.json in Chrome's Trace Event Format, for Perfetto or chrome://tracing.

Why a second view of the same timeline: schedule.json is for programs and tests, a trace
viewer is how people spot the bubble, a straggling collective member or a saturated
link. It is a pure function of the schedule dict, so it can never disagree with it.

Layout: one process per rank (``pid`` = rank, named ``rank R: device (kind), stage S``)
with one thread holding a complete event (``"ph": "X"``) per schedule event; a rank's
events never overlap, except overlapped Sends and Recvs (``p2p_overlapped``), which run on
their own stream and so get their own threads, ``p2p sends`` and ``p2p recvs``. Under
interleaved 1F1B a slice's title names its chunk: ``F3c1 block 2`` is micro-batch 3's
forward of chunk 1. One more process, ``links`` (``pid`` = number of ranks), shows each
transfer *once* on every link it crosses, counted as schedule.json's link summary counts
them: a Send and its Recv are one transfer (the Send's interval), a collective call is one
transfer (from its first member's start to its last member's end). Trace viewers expect
the slices of a track to nest, and concurrent transfers on a link do not, so each link
gets as many tracks as it has transfers at once: ``nvl0`` then ``nvl0 #2`` ... (the first
track that is free takes the next transfer). Flow arrows (``"ph": "s"`` / ``"f"``) join
every Send to its Recv across the rank processes. Links are listed heaviest first, as in
the link summary. Times are microseconds (the format's unit); ``displayTimeUnit`` is
``ms``.
"""

from __future__ import annotations

from typing import Any

_US = 1e6
"""Trace timestamps are microseconds; the schedule's are seconds."""

_PHASE_LETTER = {"forward": "F", "backward": "B"}
_P2P_TID = {"Send": 1, "Recv": 2}
"""Threads of overlapped Sends and Recvs (``p2p_overlapped``): their own streams."""

Event = dict[str, Any]


def chrome_trace(schedule: dict[str, Any]) -> dict[str, Any]:
    """The Chrome Trace Event Format object for ``schedule`` (a :func:`build_schedule` dict)."""
    devices = sorted(schedule["devices"], key=lambda d: d["rank"])
    overlapped = bool(schedule.get("p2p_overlapped", False))
    chunks = int(schedule.get("interleave", 1))
    links_pid = max((d["rank"] for d in devices), default=-1) + 1
    # Heaviest first, as summarised; a link only the events name (a hand-made schedule) last.
    names = dict.fromkeys(entry["link"] for entry in schedule.get("links", []))
    for dev in devices:
        for ev in dev["events"]:
            names.update(dict.fromkeys(ev.get("links", ())))

    meta: list[Event] = []
    slices: list[Event] = []
    for dev in devices:
        rank = dev["rank"]
        label = f"rank {rank}: {dev['device']} ({dev['kind']}), stage {dev['stage']}"
        meta += _process(rank, label, rank)
        meta.append(_thread_name(rank, 0, "steps"))
        for tid, op in ((1, "Send"), (2, "Recv")):
            if overlapped and any(ev.get("op") == op for ev in dev["events"]):
                meta.append(_thread_name(rank, tid, f"p2p {op.lower()}s"))
        for ev in dev["events"]:
            tid = _P2P_TID.get(ev.get("op", ""), 0) if overlapped else 0
            slices.append(
                _slice(_title(ev, chunks), ev["start"], ev["end"], ev, rank, tid, _args(rank, ev))
            )

    pairs = _send_recv_pairs(devices)
    transfers = _transfers(devices, pairs)
    meta += _process(links_pid, "links", links_pid)
    tid = 0
    for name in names:
        lanes: list[float] = []  # end time of each track's last slice
        placed: list[tuple[int, Event]] = []
        for start, end, title, ev, args in sorted(
            transfers.get(name, []), key=lambda t: (t[0], t[1], t[2])
        ):
            lane = next((i for i, free in enumerate(lanes) if free <= start), len(lanes))
            if lane == len(lanes):
                lanes.append(end)
            lanes[lane] = end
            placed.append((lane, _slice(title, start, end, ev, links_pid, 0, args)))
        for lane in range(max(len(lanes), 1)):
            tid += 1
            track = name if lane == 0 else f"{name} #{lane + 1}"
            meta.append(_thread_name(links_pid, tid, track))
            meta.append(
                {
                    "name": "thread_sort_index",
                    "ph": "M",
                    "pid": links_pid,
                    "tid": tid,
                    "args": {"sort_index": tid},
                }
            )
            for on, event in placed:
                if on == lane:
                    event["tid"] = tid
                    slices.append(event)
    flows = _flows(devices, pairs, overlapped)
    return {"traceEvents": meta + slices + flows, "displayTimeUnit": "ms"}


def _send_recv_pairs(devices: list[Event]) -> list[tuple[int, Event, int, Event]]:
    """(sender, Send, receiver, Recv) by schedule.json's rule: the k-th Recv of a
    (sender, receiver, tag, phase, micro-batch) matches the k-th such Send.
    """
    sends: dict[tuple[Any, ...], list[Event]] = {}
    for dev in devices:
        for ev in dev["events"]:
            if ev["type"] == "comm" and ev["op"] == "Send":
                key = (dev["rank"], ev["peer"], ev["tag"], ev["phase"], ev["microbatch"])
                sends.setdefault(key, []).append(ev)
    taken: dict[tuple[Any, ...], int] = {}
    out = []
    for dev in devices:
        for ev in dev["events"]:
            if ev["type"] == "comm" and ev["op"] == "Recv":
                key = (ev["peer"], dev["rank"], ev["tag"], ev["phase"], ev["microbatch"])
                k = taken.get(key, 0)
                taken[key] = k + 1
                if k < len(sends.get(key, ())):
                    out.append((ev["peer"], sends[key][k], dev["rank"], ev))
    return out


def _transfers(
    devices: list[Event], pairs: list[tuple[int, Event, int, Event]]
) -> dict[str, list[tuple[float, float, str, Event, dict[str, Any]]]]:
    """Per link: (start, end, title, event, args) of each transfer crossing it, once."""
    out: dict[str, list[tuple[float, float, str, Event, dict[str, Any]]]] = {}
    recv_links = {id(send): recv.get("links", ()) for _, send, _, recv in pairs}
    calls: dict[tuple[Any, ...], list[tuple[int, Event]]] = {}
    for dev in devices:
        rank = dev["rank"]
        count: dict[tuple[Any, ...], int] = {}
        for ev in dev["events"]:
            if ev["type"] != "comm" or ev["op"] == "Recv":
                continue
            if ev["op"] == "Send":
                links = [*ev.get("links", ()), *recv_links.get(id(ev), ())]
                args = _args(rank, ev)
                title = f"Send {rank}->{ev['peer']}"
                for link in dict.fromkeys(links):
                    out.setdefault(link, []).append((ev["start"], ev["end"], title, ev, args))
                continue
            key = (ev["op"], tuple(ev["group"]), ev["tag"], ev["phase"], ev["microbatch"])
            count[key] = count.get(key, -1) + 1
            calls.setdefault((*key, count[key]), []).append((rank, ev))
    for key in sorted(calls, key=repr):
        members = calls[key]
        first = members[0][1]
        start = min(ev["start"] for _, ev in members)
        end = max(ev["end"] for _, ev in members)
        args = _args(members[0][0], first)
        del args["rank"]
        args["ranks"] = [rank for rank, _ in members]
        title = f"{first['op']} {list(first['group'])}"
        for link in dict.fromkeys(link for _, ev in members for link in ev.get("links", ())):
            out.setdefault(link, []).append((start, end, title, first, args))
    return out


def _flows(
    devices: list[Event], pairs: list[tuple[int, Event, int, Event]], overlapped: bool
) -> list[Event]:
    """An arrow from each Send's slice to its Recv's slice (flow start, flow end)."""
    out: list[Event] = []
    send_tid, recv_tid = (1, 2) if overlapped else (0, 0)
    for n, (sender, send, receiver, recv) in enumerate(pairs, start=1):
        common = {"name": "transfer", "cat": "send-recv", "id": n}
        out.append(
            {**common, "tid": send_tid, "ph": "s", "pid": sender, "ts": send["start"] * _US}
        )
        out.append({**common, "tid": recv_tid, "ph": "f", "bp": "e", "pid": receiver,
                    "ts": recv["start"] * _US})
    return out


def _process(pid: int, name: str, order: int) -> list[Event]:
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


def _thread_name(pid: int, tid: int, name: str) -> Event:
    return {"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": name}}


def _title(ev: Event, chunks: int = 1) -> str:
    """Short slice text: ``F3 block 2``, ``B0 Recv from 1``, ``dp sync + optimizer``;
    ``F3c1 ...`` for chunk 1 when the rank runs several chunks.
    """
    if ev["phase"] == "sync":
        return str(ev["name"])
    prefix = f"{_PHASE_LETTER.get(ev['phase'], ev['phase'])}{ev['microbatch']}"
    if chunks > 1:
        prefix += f"c{ev.get('chunk', 0)}"
    if ev["type"] == "compute":
        return f"{prefix} {ev['name'] or 'compute'}"
    if ev["op"] == "Send":
        return f"{prefix} Send to {ev['peer']}"
    if ev["op"] == "Recv":
        return f"{prefix} Recv from {ev['peer']}"
    return f"{prefix} {ev['op']}"


def _args(rank: int, ev: Event) -> dict[str, Any]:
    args: dict[str, Any] = {
        "rank": rank,
        "type": ev["type"],
        "phase": ev["phase"],
        "microbatch": ev["microbatch"],
        "start_s": ev["start"],
        "duration_s": ev["duration"],
    }
    if "chunk" in ev:
        args["chunk"] = ev["chunk"]
        args["virtual_stage"] = ev["virtual_stage"]
    if ev["type"] == "compute":
        args["label"] = ev["name"]
        return args
    for key in ("op", "value", "bytes", "peer", "tag", "group", "axis", "algorithm", "links"):
        args[key] = ev[key]
    return args


def _slice(
    name: str, start: float, end: float, ev: Event, pid: int, tid: int, args: dict[str, Any]
) -> Event:
    return {
        "name": name,
        "cat": f"{ev['phase']},{ev['type']}",
        "ph": "X",
        "pid": pid,
        "tid": tid,
        "ts": start * _US,
        "dur": (end - start) * _US,
        "args": args,
    }
