"""What each rank issues in one step, in order, before any of it is placed in time.

Why apart from :mod:`shardc.plan.simulate`: the simulation places items by their
dependencies alone and never asks where they came from; this module is the pipeline
schedule itself (1F1B, GPipe or Megatron-LM's interleaved order, backward steps reversed
with Send and Recv swapped, a chunk's share of a stage's work, the wrap-around hand-offs
and the DP sync), which changes whenever a schedule is added or a pass is cut differently.
"""

from __future__ import annotations

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
class Item:
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
) -> list[Item]:
    """What ``prog`` issues in one step, in order; with ``interleave`` v > 1 each pass is
    v chunk passes: the program's own chunks when it has them (interleaved lowering,
    :attr:`~shardc.plan.program.DeviceProgram.chunk_starts`), else the whole program at
    ``1/v`` of its compute and collectives with ``wrap`` added (programs lowered as one
    pass per stage).
    """
    m = programs.microbatches
    items: list[Item] = []
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
            Item(
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
) -> list[Item]:
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
                Item(phase, mb, i, len(ordered), step.label, seconds * share, chunk=chunk)
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
            Item(
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
