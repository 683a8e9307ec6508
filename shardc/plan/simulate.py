"""The timeline's simulation: every rank's steps placed in time, waits included.

Why apart from :mod:`shardc.plan.timeline`: that module says what the timeline *is*
(its typed records and schedule.json); this one how it is computed from the programs, by
the rules in that module's docstring: the checks that make the simulation sound, the
items each rank issues (1F1B or GPipe order, backward steps reversed, the DP sync), and
the event loop that starts each item when its dependencies allow.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from shardc.errors import ShardcError
from shardc.plan.lowered import is_ring_comm
from shardc.plan.program import P2P_OPS, Comm, Compute, DeviceProgram, Link, Programs

SYNC_NAME = "dp sync + optimizer"
"""Name of the per-rank sync event that closes a training step."""

_P2P = P2P_OPS
_SWAP = {"Send": "Recv", "Recv": "Send"}


@dataclass(frozen=True)
class _Item:
    """One event a rank will issue, before it is placed in time."""

    phase: str
    microbatch: int
    index: int
    """Position in its phase, for error messages."""
    length: int
    """Events in its phase."""
    name: str
    seconds: float
    op: str = ""
    """Effective op ('' for compute): a backward Send/Recv is the forward one swapped."""
    comm: Comm | None = None
    """The forward step a comm event comes from (None for compute and sync)."""
    group: tuple[int, ...] = ()
    occurrence: int = 0
    """How many earlier events of this phase and micro-batch share its matching key."""
    nbytes: float = 0.0
    """Bytes of a comm event with no forward step (the sync); else the step's."""
    links: tuple[Link, ...] = ()
    """Links of a comm event with no forward step (the sync); else the step's."""
    chunk: int = 0
    """The model chunk (virtual stage ``chunk·stages + stage``) it belongs to."""
    share: float = 1.0
    """Fraction of the step's bytes it carries: a chunk's collectives are ``1/v`` of the
    stage's (its share of the blocks), a hand-off between chunks is a whole one."""

    @property
    def is_comm(self) -> bool:
        return bool(self.op)

    @property
    def ring(self) -> bool:
        """A ring attention's K/V transfer: always beside compute (its block overlaps it)."""
        return self.comm is not None and self.op in _P2P and is_ring_comm(self.comm.value)

    def describe(self) -> str:
        where = (
            "the sync phase"
            if self.phase == "sync"
            else f"{self.phase} of micro-batch {self.microbatch}"
        )
        head = f"{where}, step {self.index + 1} of {self.length}"
        if self.comm is not None and self.op in _P2P:
            direction = "to" if self.op == "Send" else "from"
            return (
                f"{head} ({self.op} of {self.comm.value!r} {direction} rank {self.comm.peer}, "
                f"tag {self.comm.tag})"
            )
        if self.op:
            return f"{head} ({self.name} over ranks {list(self.group)})"
        return f"{head} (compute {self.name!r})"


# --- what each rank issues ----------------------------------------------------------------


def sync_group(by_rank: dict[int, DeviceProgram], prog: DeviceProgram) -> tuple[int, ...]:
    """The data-parallel peers of ``prog``: same stage and TP rank, every replica."""
    peers = [p for p in by_rank.values() if p.stage == prog.stage and p.tp_rank == prog.tp_rank]
    return tuple(p.rank for p in sorted(peers, key=lambda p: (p.replica, p.rank)))


def _pass_order(schedule: str, stages: int, stage: int, m: int) -> list[tuple[str, int]]:
    """(phase, micro-batch) in the order ``stage`` runs them in a training step."""
    if schedule == "gpipe":
        return [("forward", i) for i in range(m)] + [("backward", i) for i in range(m)]
    warmup = min(stages - stage - 1, m)
    order = [("forward", i) for i in range(warmup)]
    for i in range(m - warmup):
        order += [("forward", warmup + i), ("backward", i)]
    order += [("backward", i) for i in range(m - warmup, m)]
    return order


def interleaved_order(stages: int, stage: int, m: int, v: int) -> list[tuple[str, int, int]]:
    """(phase, micro-batch, chunk) in Megatron-LM's interleaved 1F1B order (Narayanan et
    al. 2021 §2.2.2; ``forward_backward_pipelining_with_interleaving`` and its schedule
    table in megatron/core/pipeline_parallel/schedules.py, micro-batch group size ``p``).

    Micro-batches go in groups of ``stages``: a group's forwards run chunk 0 for every
    micro-batch of the group, then chunk 1, ...; its backwards the chunks in reverse. A
    rank warms up with ``(stages − stage − 1)·2 + (v − 1)·stages`` forwards (all of them
    when there are fewer), then alternates one forward / one backward, then drains.
    """
    groups = [range(g, min(g + stages, m)) for g in range(0, m, stages)]
    fwd = [(mb, c) for grp in groups for c in range(v) for mb in grp]
    bwd = [(mb, v - 1 - c) for grp in groups for c in range(v) for mb in grp]
    total = m * v
    warmup = min((stages - stage - 1) * 2 + (v - 1) * stages, total)
    order = [("forward", *fwd[i]) for i in range(warmup)]
    for i in range(total - warmup):
        order += [("forward", *fwd[warmup + i]), ("backward", *bwd[i])]
    order += [("backward", *bwd[i]) for i in range(total - warmup, total)]
    return order


Route = Callable[[int, int, float], tuple[float, tuple[Link, ...]]]
"""(sender rank, receiver rank, bytes) -> (seconds, links) of a point-to-point transfer."""


def wrap_steps(
    by_rank: dict[int, DeviceProgram], stages: int, route: Route | None
) -> dict[int, tuple[tuple[Comm, ...], tuple[Comm, ...]]]:
    """Per rank, the hand-offs interleaving adds: (Recvs before a chunk, Sends after it).

    With v chunks, the last stage's chunk c hands its output to the first stage's chunk
    c + 1, a transfer plain 1F1B never makes. It carries what the last stage receives from
    the stage before it (the values that cross a block boundary); rank ``(S−1, replica,
    t)`` sends to ``(0, replica, t)``. Priced by ``route`` when given, else at the copied
    Recv's time and links.
    """
    out: dict[int, tuple[list[Comm], list[Comm]]] = {r: ([], []) for r in by_rank}
    first = {(p.replica, p.tp_rank): p.rank for p in by_rank.values() if p.stage == 0}
    for prog in by_rank.values():
        head = first.get((prog.replica, prog.tp_rank))
        if prog.stage != stages - 1 or head is None:
            continue
        for step in prog.steps:
            if not (isinstance(step, Comm) and step.op == "Recv"
                    and by_rank[step.peer].stage == stages - 2):
                continue
            seconds, links = route(prog.rank, head, step.nbytes) if route else (
                step.seconds, step.links)
            comm = replace(step, seconds=seconds, links=links)
            out[prog.rank][1].append(replace(comm, op="Send", output="", peer=head))
            out[head][0].append(replace(comm, peer=prog.rank))
    return {r: (tuple(a), tuple(b)) for r, (a, b) in out.items()}


def rank_items(
    programs: Programs,
    prog: DeviceProgram,
    sync_group: tuple[int, ...],
    interleave: int = 1,
    wrap: tuple[tuple[Comm, ...], tuple[Comm, ...]] = ((), ()),
) -> list[_Item]:
    """What ``prog`` issues in one step, in order; with ``interleave`` v > 1 each pass is
    v chunk passes: the program's own chunks when it has them (interleaved lowering,
    :attr:`~shardc.plan.program.DeviceProgram.chunk_starts`), else the whole program at
    ``1/v`` of its compute and collectives with ``wrap`` added (programs lowered as one
    pass per stage).
    """
    m = programs.microbatches
    items: list[_Item] = []
    seen: dict[tuple[str, int], dict[tuple[Any, ...], int]] = {}
    chunks = prog.chunks
    if len(chunks) > 1 and len(chunks) != interleave:
        raise ShardcError(
            f"rank {prog.rank}'s program holds {len(chunks)} model chunks but the schedule "
            f"interleaves {interleave}", where="schedule",
        )
    if interleave > 1 and programs.mode == "training" and programs.schedule == "1f1b":
        for phase, mb, c in interleaved_order(programs.stages, prog.stage, m, interleave):
            seen_mb = seen.setdefault((phase, mb), {})
            if len(chunks) > 1:
                items += _phase_items(chunks[c], phase, mb, programs.backward_factor,
                                      seen_mb, c)
                continue
            steps = [*(wrap[0] if c > 0 else ()), *prog.steps,
                     *(wrap[1] if c < interleave - 1 else ())]
            items += _phase_items(steps, phase, mb, programs.backward_factor,
                                  seen_mb, c, interleave)
    else:
        if programs.mode == "inference":
            order = [("forward", i) for i in range(m)]
        else:
            order = _pass_order(programs.schedule, programs.stages, prog.stage, m)
        for phase, mb in order:
            items += _phase_items(prog.steps, phase, mb, programs.backward_factor, {})
    if programs.mode == "training":
        seconds = float(programs.stage_sync_seconds.get(prog.stage, 0.0))
        nbytes = float(programs.stage_sync_bytes.get(prog.stage, 0.0))
        # bytes as priced (0 with one replica: nothing crosses a link), on the ring's links
        links = prog.sync_links if nbytes > 0 else ()
        items.append(
            _Item(
                "sync",
                -1,
                0,
                1,
                SYNC_NAME,
                seconds,
                op="AllReduce",
                group=sync_group,
                nbytes=nbytes,
                links=links,
            )
        )
    return items


def _phase_items(
    steps: Sequence[Compute | Comm],
    phase: str,
    mb: int,
    backward_factor: float,
    seen: dict[tuple[Any, ...], int],
    chunk: int = 0,
    chunks: int = 1,
) -> list[_Item]:
    """One pass of one chunk; ``seen`` counts matching keys over the micro-batch's
    chunks, so the k-th Send of a key pairs with the k-th Recv whatever chunk issues it.
    """
    backward = phase == "backward"
    ordered = list(reversed(steps)) if backward else list(steps)
    share = 1.0 / chunks
    items = []
    for i, step in enumerate(ordered):
        if isinstance(step, Compute):
            seconds = step.seconds * backward_factor if backward else step.seconds
            items.append(
                _Item(phase, mb, i, len(ordered), step.label, seconds * share, chunk=chunk)
            )
            continue
        op = _SWAP.get(step.op, step.op) if backward else step.op
        key: tuple[Any, ...] = (op, step.peer, step.tag) if op in _P2P else (step.group,)
        k = seen.get(key, 0)
        seen[key] = k + 1
        # a ring attention's backward step moves K/V and their gradients: two transfers
        # (shardc.partition.ring.ring_comm_seconds prices it so)
        p2p = 2.0 if backward and is_ring_comm(step.value) else 1.0
        items.append(
            _Item(
                phase,
                mb,
                i,
                len(ordered),
                op,
                step.seconds * p2p if op in _P2P else step.seconds * share,
                op=op,
                comm=step,
                group=step.group,
                occurrence=k,
                chunk=chunk,
                share=p2p if op in _P2P else share,
            )
        )
    return items


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

    def __init__(self, items: dict[int, list[_Item]], overlap_p2p: bool = False) -> None:
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

    def _beside(self, item: _Item) -> bool:
        """Whether ``item`` runs on the rank's transfer stream, beside its compute."""
        return item.op in _P2P and (self.overlap_p2p or item.ring)

    def _place(self, r: int, item: _Item, woken: list[int]) -> tuple[float, float] | None:
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
    def _p2p_key(r: int, item: _Item) -> tuple[Any, ...]:
        assert item.comm is not None
        sender, receiver = (r, item.comm.peer) if item.op == "Send" else (item.comm.peer, r)
        return (sender, receiver, item.comm.tag, item.phase, item.microbatch)

    def _wait_key(self, r: int, item: _Item) -> tuple[Any, ...]:
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


def event_json(
    item: _Item, start: float, duration: float, stage: int, stages: int
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

