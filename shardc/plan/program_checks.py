"""The checks that make the timeline's simulation sound: ranks 0..n-1, known comm ops,
peers and groups that exist, every Recv with its Send (in training every Send with its
Recv), group members issuing the same collectives in the same order.

Why apart from :mod:`shardc.plan.simulate`: they are the contract a set of programs must
meet (hand-written ones included), each failure a :class:`~shardc.errors.ShardcError`
naming the rank and step; the simulation then assumes them.
"""

from __future__ import annotations

import math

from shardc.errors import OptionError, ShardcError
from shardc.plan.program import COMM_OPS, P2P_OPS, Comm, Compute, DeviceProgram, Programs
from shardc.vocabulary import SCHEDULES

MODES = ("training", "inference")
_P2P = P2P_OPS


def check_programs(programs: Programs) -> dict[int, DeviceProgram]:
    """The programs by rank (ascending), after the checks that make the simulation sound."""
    if programs.mode not in MODES:
        raise OptionError(f"unknown mode {programs.mode!r}", hint=f"use one of {list(MODES)}")
    if programs.schedule not in SCHEDULES:
        raise OptionError(
            f"unknown pipeline schedule {programs.schedule!r}", hint=f"use one of {list(SCHEDULES)}"
        )
    for field_name in ("microbatches", "dp", "stages"):
        value = getattr(programs, field_name)
        if not isinstance(value, int) or value < 1:
            raise OptionError(f"{field_name} must be a positive integer, got {value!r}")
    if not (math.isfinite(programs.backward_factor) and programs.backward_factor >= 0):
        raise OptionError(f"backward_factor must be >= 0, got {programs.backward_factor!r}")

    ranks = sorted(p.rank for p in programs.programs)
    if ranks != list(range(len(ranks))):
        raise ShardcError(
            f"program ranks must be 0..{len(ranks) - 1}, each once; got {ranks}",
            where="schedule",
        )
    by_rank = {p.rank: p for p in sorted(programs.programs, key=lambda p: p.rank)}
    n = len(by_rank)

    for r, prog in by_rank.items():
        if not 0 <= prog.stage < programs.stages:
            raise ShardcError(
                f"stage {prog.stage} is outside 0..{programs.stages - 1}", where=f"rank {r}"
            )
        for i, step in enumerate(prog.steps):
            _check_seconds(step.seconds, f"rank {r}, step {i + 1}")
            if isinstance(step, Compute):
                continue
            if step.op not in COMM_OPS:
                raise ShardcError(
                    f"unknown communication op {step.op!r}", where=f"rank {r}, step {i + 1}"
                )
            if step.op in _P2P:
                if not 0 <= step.peer < n or step.peer == r:
                    raise ShardcError(
                        f"{step.op} of {step.value!r} names peer rank {step.peer}, which is not "
                        f"another rank in 0..{n - 1}",
                        where=f"rank {r}, step {i + 1}",
                    )
            elif not step.group or r not in step.group:
                raise ShardcError(
                    f"{step.op} of {step.value!r} runs over ranks {list(step.group)}, "
                    "which do not include this rank",
                    where=f"rank {r}, step {i + 1}",
                )
            elif len(set(step.group)) != len(step.group) or not all(0 <= m < n for m in step.group):
                raise ShardcError(
                    f"{step.op} of {step.value!r} runs over ranks {list(step.group)}: "
                    f"members must be distinct ranks in 0..{n - 1}",
                    where=f"rank {r}, step {i + 1}",
                )
    for stage, seconds in sorted(programs.stage_sync_seconds.items()):
        _check_seconds(seconds, f"stage {stage} sync")

    _check_pairs(by_rank, training=programs.mode == "training")
    _check_groups(by_rank)
    return by_rank


def _check_seconds(seconds: float, where: str) -> None:
    if not (isinstance(seconds, int | float) and math.isfinite(seconds) and seconds >= 0):
        raise ShardcError(f"duration must be a finite number >= 0, got {seconds!r}", where=where)


def _check_pairs(by_rank: dict[int, DeviceProgram], *, training: bool) -> None:
    """Every Recv has its Send (and in training every Send its Recv: the gradient comes back)."""
    sends: dict[tuple[int, int, int], list[Comm]] = {}
    recvs: dict[tuple[int, int, int], list[Comm]] = {}
    for r, prog in by_rank.items():
        for c in prog.comms:
            if c.op == "Send":
                sends.setdefault((r, c.peer, c.tag), []).append(c)
            elif c.op == "Recv":
                recvs.setdefault((c.peer, r, c.tag), []).append(c)
    for (src, dst, tag), rs in recvs.items():
        have = len(sends.get((src, dst, tag), ()))
        if len(rs) > have:
            c = rs[have]
            raise ShardcError(
                f"Recv of {c.value!r} from rank {src} (tag {tag}) has no matching Send: rank "
                f"{src} sends {have} tensor(s) to rank {dst} with tag {tag}, rank {dst} "
                f"receives {len(rs)}",
                where=f"rank {dst}",
                hint="a Send and its Recv must name each other's rank and carry the same tag",
            )
    if not training:
        return
    for (src, dst, tag), ss in sends.items():
        have = len(recvs.get((src, dst, tag), ()))
        if len(ss) > have:
            c = ss[have]
            raise ShardcError(
                f"Send of {c.value!r} to rank {dst} (tag {tag}) has no matching Recv, so its "
                "gradient could never come back in the backward pass",
                where=f"rank {src}",
                hint="a Send and its Recv must name each other's rank and carry the same tag",
            )


def _check_groups(by_rank: dict[int, DeviceProgram]) -> None:
    """Members of a group issue the same collectives over it, in the same order."""
    ops: dict[int, dict[tuple[int, ...], list[str]]] = {}
    for r, prog in by_rank.items():
        per_group: dict[tuple[int, ...], list[str]] = {}
        for c in prog.comms:
            if c.op not in _P2P:
                per_group.setdefault(c.group, []).append(c.op)
        ops[r] = per_group
    for r, per_group in ops.items():
        for group, mine in per_group.items():
            for m in group:
                theirs = ops[m].get(group, [])
                if theirs != mine:
                    raise ShardcError(
                        f"members of collective group {list(group)} disagree: rank {r} issues "
                        f"{mine} over it per micro-batch, rank {m} issues {theirs}",
                        where=f"rank {r}",
                        hint="every member must issue the group's collectives in the same order",
                    )
