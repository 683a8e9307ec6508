"""schedule.json's ``links``: what every link carries in one step.

Why apart from :mod:`shardc.plan.timeline`: that module says what the timeline is and
defines the link loads in its docstring (each transfer once, a Send with its Recv's
links, a collective once per ring link, busy time as the union of intervals); this one
is that arithmetic over the placed events, so neither module outgrows a screenful.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class _LinkLoad:
    nbytes: float = 0.0
    transfers: int = 0
    spans: list[tuple[float, float]] = field(default_factory=list)


def link_summary(
    devices: list[dict[str, Any]], recv_of: dict[tuple[int, int], tuple[int, int]]
) -> list[dict[str, Any]]:
    """Per link: bytes sent over it, transfers, and the time any transfer used it."""
    by_rank = {dev["rank"]: dev["events"] for dev in devices}
    acc: dict[str, _LinkLoad] = {}
    calls: dict[tuple[Any, ...], int] = {}  # k-th call of a collective on each member
    seen: set[tuple[Any, ...]] = set()  # (call, link) already credited
    for dev in devices:
        for i, ev in enumerate(dev["events"]):
            if ev["type"] != "comm" or ev["op"] == "Recv":
                continue  # a Recv is credited at its Send
            links = list(ev["links"])
            call: tuple[Any, ...] = ("p2p", dev["rank"], i)
            if ev["op"] == "Send" and (dev["rank"], i) in recv_of:
                rr, ri = recv_of[(dev["rank"], i)]
                links += by_rank[rr][ri]["links"]
            elif ev["op"] != "Send":
                key = (dev["rank"], ev["op"], tuple(ev["group"]), ev["tag"], ev["phase"],
                       ev["microbatch"])
                calls[key] = calls.get(key, -1) + 1
                call = (*key[1:], calls[key])
            for link in dict.fromkeys(links):
                load = acc.setdefault(link, _LinkLoad())
                load.spans.append((ev["start"], ev["end"]))
                if (call, link) not in seen:
                    seen.add((call, link))
                    load.nbytes += ev["bytes"]
                    load.transfers += 1
    ordered = sorted(acc.items(), key=lambda item: (-item[1].nbytes, item[0]))
    return [
        {
            "link": link,
            "bytes": load.nbytes,
            "busy_seconds": _union_length(load.spans),
            "transfers": load.transfers,
        }
        for link, load in ordered
    ]


def _union_length(spans: list[tuple[float, float]]) -> float:
    """Length of the union of ``spans``: time covered by at least one of them."""
    busy = 0.0
    ordered = sorted(spans)
    if not ordered:
        return busy
    cur_start, cur_end = ordered[0]
    for start, end in ordered[1:]:
        if start > cur_end:
            busy += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    return busy + (cur_end - cur_start)
