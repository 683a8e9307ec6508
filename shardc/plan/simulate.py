"""The timeline's simulation: every rank's steps placed in time, waits included.

Why apart from :mod:`shardc.plan.timeline`: that module says what the timeline *is*
(its typed records and schedule.json); this one how it is computed from the programs, by
the rules in that module's docstring: the event loop that starts each item when its
dependencies allow. :mod:`shardc.plan.schedule` runs it and writes what it placed; the
items each rank issues (1F1B or GPipe order, backward steps reversed, the DP sync) are
:mod:`shardc.plan.issue_order`'s; the checks that make the simulation sound,
:mod:`shardc.plan.program_checks`'.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from shardc.errors import ShardcError
from shardc.plan.issue_order import Item
from shardc.plan.program import P2P_OPS

_P2P = P2P_OPS


# --- the simulation -----------------------------------------------------------------------


class Simulation:
    """Places every rank's items in time; ranks run until they must wait, then are woken.

    Start times follow from the dependencies alone (a rank's previous event, a Send, the
    members of a collective), so the order ranks are visited in changes nothing.

    With ``overlap_p2p`` Sends and Recvs run beside their rank's compute (Megatron-LM's
    ``overlap_p2p_comm``: isend/irecv on their own stream): the rank's next step does not
    wait for a Send, and a Recv, posted ahead, is the transfer as its receiver sees it
    (the Send's interval); the next step waits only until it ends, so only the part of
    a transfer the rank had nothing else to do during is exposed.
    """

    def __init__(self, items: dict[int, list[Item]], overlap_p2p: bool = False) -> None:
        self.items = items
        self.overlap_p2p = overlap_p2p
        self.times: dict[int, list[tuple[float, float]]] = {r: [] for r in items}
        self.free = dict.fromkeys(items, 0.0)
        self.sends: dict[tuple[Any, ...], list[tuple[int, int]]] = {}
        """(sender, receiver, tag, phase, mb) -> (rank, event index) of the Sends issued."""
        self.arrivals: dict[tuple[Any, ...], dict[int, float]] = {}
        """(phase, mb, group, k) -> member -> time it reached the collective."""
        self.waiting: dict[tuple[Any, ...], list[int]] = {}
        self.recv_of: dict[tuple[int, int], tuple[int, int]] = {}
        """(send rank, send index) -> (recv rank, recv index) for every matched pair."""

    def run(self) -> None:
        queue = deque(sorted(self.items))
        queued = dict.fromkeys(queue, True)
        while queue:
            r = queue.popleft()
            queued[r] = False
            for woken in self._advance(r):
                if not queued[woken]:
                    queued[woken] = True
                    queue.append(woken)
        stuck = [r for r in sorted(self.items) if len(self.times[r]) < len(self.items[r])]
        if stuck:
            lines = [f"rank {r} at {self._blocked_on(r)}" for r in stuck]
            raise ShardcError(
                "the schedule deadlocks, no rank can make progress: " + "; ".join(lines),
                where="schedule",
                hint="a rank waits on a Recv whose Send comes after something that rank must "
                "do first, or collective members issue them in different orders",
            )

    def _advance(self, r: int) -> list[int]:
        """Run rank ``r`` as far as it can go; return the ranks its progress may unblock."""
        woken: list[int] = []
        items = self.items[r]
        times = self.times[r]
        while len(times) < len(items):
            item = items[len(times)]
            placed = self._place(r, item, woken)
            if placed is None:
                self.waiting.setdefault(self._wait_key(r, item), []).append(r)
                break
            start, duration = placed
            times.append((start, duration))
            if not self._beside(item):
                self.free[r] = start + duration
            elif item.op == "Recv":  # the data is needed by what follows
                self.free[r] = max(self.free[r], start + duration)
        return woken

    def _beside(self, item: Item) -> bool:
        """Whether ``item`` runs on the rank's transfer stream, beside its compute."""
        return item.op in _P2P and (self.overlap_p2p or item.ring)

    def _place(self, r: int, item: Item, woken: list[int]) -> tuple[float, float] | None:
        free = self.free[r]
        if not item.is_comm:
            return free, item.seconds
        if item.op == "Send":
            self.sends.setdefault(self._p2p_key(r, item), []).append((r, len(self.times[r])))
            woken += self.waiting.pop(self._wait_key(r, item), [])
            return free, item.seconds
        if item.op == "Recv":
            issued = self.sends.get(self._p2p_key(r, item), [])
            if len(issued) <= item.occurrence:
                return None
            sender, index = issued[item.occurrence]
            self.recv_of[(sender, index)] = (r, len(self.times[r]))
            send_start, send_seconds = self.times[sender][index]
            if self._beside(item):
                return send_start, send_seconds
            return max(free, send_start), send_seconds
        key = self._wait_key(r, item)
        arrived = self.arrivals.setdefault(key, {})
        arrived.setdefault(r, free)
        if len(arrived) < len(item.group):
            return None
        woken += self.waiting.pop(key, [])
        return max(arrived[m] for m in item.group), item.seconds

    @staticmethod
    def _p2p_key(r: int, item: Item) -> tuple[Any, ...]:
        assert item.comm is not None
        sender, receiver = (r, item.comm.peer) if item.op == "Send" else (item.comm.peer, r)
        return (sender, receiver, item.comm.tag, item.phase, item.microbatch)

    def _wait_key(self, r: int, item: Item) -> tuple[Any, ...]:
        if item.op in _P2P:
            return ("p2p", *self._p2p_key(r, item))
        return ("group", item.phase, item.microbatch, item.group, item.occurrence)

    def _blocked_on(self, r: int) -> str:
        item = self.items[r][len(self.times[r])]
        text = item.describe()
        if item.op == "Recv":
            return f"{text}, waiting for its Send"
        if item.is_comm:
            arrived = self.arrivals.get(self._wait_key(r, item), {})
            missing = [m for m in item.group if m not in arrived]
            return f"{text}, waiting for ranks {missing}"
        return text  # pragma: no cover - compute never blocks
