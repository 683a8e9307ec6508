"""All ranks of a plan in one process: compute in onnxruntime, collectives on arrays.

Why: the per-device ONNX files are only trustworthy if running them gives the original
model's answer. This runner gives them exactly the meaning the distributed runner gives
them over torch.distributed (both drive :class:`~shardc.runtime.program.RankProgram`),
without processes, so tests can check numerics on every plan shape quickly.

Ranks advance in turn until they block on a communication op; a collective fires once
every member of its group has reached it (members issue collectives in the same order),
a Recv once its Send (same sender, receiver and tag) has been posted. When no rank can
move, the run is a deadlock and the error names where each rank waits.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from typing import Any

import numpy as np
import onnx

from shardc.errors import ExecutionError
from shardc.runtime.collectives import combine
from shardc.runtime.program import CommRequest, RankProgram, attr


class _Driver:
    """Pairs the comm requests of every rank's generator and answers them."""

    def __init__(self, gens: Mapping[int, Generator[CommRequest, Any, dict]]):
        self.gens = dict(gens)
        self.pending: dict[int, CommRequest] = {}
        self.results: dict[int, dict[str, np.ndarray]] = {}
        self.collectives: dict[int, int] = dict.fromkeys(gens, 0)
        self.waiting: dict[tuple[int, ...], dict[int, CommRequest]] = {}
        self.mailbox: dict[tuple[int, int, int], list[np.ndarray]] = {}

    def advance(self, rank: int, answer: np.ndarray | None = None, first: bool = False) -> None:
        """Step ``rank`` until it blocks or finishes, feeding it ``answer`` first."""
        gen = self.gens[rank]
        try:
            request = next(gen) if first else gen.send(answer)
            while True:
                if request.op == "Send":
                    key = (rank, request.peer, request.tag)
                    self.mailbox.setdefault(key, []).append(request.value)  # type: ignore[arg-type]
                    request = gen.send(None)
                    continue
                self.pending[rank] = request
                return
        except StopIteration as done:
            self.results[rank] = done.value
            self.pending.pop(rank, None)

    def try_fire(self, rank: int) -> bool:
        """Answer ``rank``'s pending request if its partners are there."""
        request = self.pending[rank]
        if request.op == "Recv":
            box = self.mailbox.get((request.peer, rank, request.tag))
            if not box:
                return False
            del self.pending[rank]
            self.advance(rank, box.pop(0))
            return True
        group = request.group
        key = (*group, self.collectives[rank])
        arrived = self.waiting.setdefault(key, {})
        arrived[rank] = request
        if len(arrived) < len(group):
            return False
        del self.waiting[key]
        answers = _collective(group, arrived)
        for member in group:
            self.collectives[member] += 1
            del self.pending[member]
        for member, value in zip(group, answers, strict=True):
            self.advance(member, value)
        return True

    def run(self) -> dict[int, dict[str, np.ndarray]]:
        for rank in sorted(self.gens):
            self.advance(rank, first=True)
        while self.pending:
            fired = False
            for rank in sorted(self.pending):
                if rank in self.pending and self._not_queued(rank) and self.try_fire(rank):
                    fired = True
            if not fired:
                stuck = {r: p.describe() for r, p in sorted(self.pending.items())}
                raise ExecutionError(f"deadlock: ranks blocked at {stuck}")
        return self.results

    def _not_queued(self, rank: int) -> bool:
        """A rank already counted at a collective waits for the others, not again."""
        request = self.pending[rank]
        if request.op == "Recv":
            return True
        key = (*request.group, self.collectives[rank])
        return rank not in self.waiting.get(key, {})


def _collective(group: Sequence[int], arrived: Mapping[int, CommRequest]) -> list[np.ndarray]:
    ops = {arrived[m].op for m in group}
    first = arrived[group[0]]
    if len(ops) != 1:
        calls = {m: arrived[m].describe() for m in group}
        raise ExecutionError(f"group {list(group)} disagrees on the collective: {calls}")
    shapes = {m: list(arrived[m].value.shape) for m in group}  # type: ignore[union-attr]
    if len({tuple(s) for s in shapes.values()}) != 1:
        raise ExecutionError(f"{first.describe()}: members disagree on the shape: {shapes}")
    axis = int(attr(first.node, "axis", -1))
    concat = attr(first.node, "concat_axis")
    return combine(
        first.op,
        [arrived[m].value for m in group],  # type: ignore[misc]
        axis,
        None if concat is None else int(concat),
    )


def run_programs(
    programs: Mapping[int, RankProgram],
    feeds: Mapping[int, Mapping[str, np.ndarray]],
    microbatch: int = 0,
) -> dict[int, dict[str, np.ndarray]]:
    """One micro-batch on every rank, each with its own feeds."""
    gens = {r: p.forward(feeds[r], microbatch) for r, p in sorted(programs.items())}
    return _Driver(gens).run()


def run_inprocess(
    models: Mapping[int, onnx.ModelProto],
    feeds: Mapping[str, np.ndarray],
    *,
    keep_all: bool = False,
) -> dict[int, dict[str, np.ndarray]]:
    """Run every rank on the same feeds; return each rank's graph outputs by name (every
    value it holds, weights included, with ``keep_all``: for tracing where two runs part
    ways).
    """
    programs = {r: RankProgram(m, r, keep_all=keep_all) for r, m in sorted(models.items())}
    return run_programs(programs, dict.fromkeys(programs, feeds))
