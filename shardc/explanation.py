"""What ``shardc explain`` answers: where a node or value went, which comm steps touch
it with what they cost, and why (the strategy's meaning in words).

Why apart from :mod:`shardc.explain`: these are the answer's types and their text, JSON
and rich forms; that module is how the answer is found in a plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

STRATEGY_WHY = {
    "column": "its weight is split along the output features (column-parallel): each TP "
    "rank computes a slice of the output, and nothing moves until a row-parallel consumer",
    "row": "its weight is split along the input features (row-parallel): each TP rank "
    "holds a partial sum of the whole output, summed by an AllReduce",
    "heads": "the attention heads are split across the TP group: each rank runs its own "
    "heads, with no communication inside the attention core",
    "vocab": "the vocabulary is split across the TP group: embedding rows (lookups masked "
    "and summed by an AllReduce) or LM-head columns (logits gathered by an AllGather)",
    "channels": "the channels are split across the TP group",
    "experts": "the experts are split across the group (expert parallelism, AllToAll)",
    "batch": "the batch is split across the group",
    "seq": "the sequence is split across the group",
}
"""What each strategy name in plan.json's ``strategies`` means, in words."""


@dataclass(frozen=True)
class CommStep:
    """A communication op that reads or writes the explained value, on some ranks."""

    op: str
    """``AllReduce``, ``AllGather``, ``ReduceScatter``, ``AllToAll``, ``Send`` or ``Recv``."""
    node: str
    """The ``shardc``-domain node's name in the device models."""
    value: str
    """The tensor it sends (for ``Recv``: the tensor it receives)."""
    where: str
    """``before`` (it produces an input of the node) or ``after`` (it reads an output)."""
    ranks: tuple[int, ...]
    """Ranks that issue it."""
    groups: tuple[tuple[int, ...], ...] = ()
    """The collective's groups, one per TP group or replica that runs it."""
    peers: tuple[int, ...] = ()
    """For ``Send``/``Recv``: the other side's ranks."""
    bytes: float = 0.0
    """Bytes each rank sends, from schedule.json."""
    seconds: float = 0.0
    """Its estimated duration in schedule.json (first micro-batch)."""
    algorithm: str = ""
    """The collective algorithm the cost model priced (``ring``, ``direct``...)."""
    links: tuple[str, ...] = ()
    """Links it crosses (``a<->b``)."""

    def describe(self) -> str:
        """One line: ``AllReduce of 'add_1' on ranks [0, 1] (8.00 KiB, 22 µs, direct)``."""
        from shardc.report.summary import human

        if self.groups:
            who = "group" + ("s " if len(self.groups) > 1 else " ")
            who += ", ".join(str(list(g)) for g in self.groups)
        else:
            who = f"peers {sorted(set(self.peers))}"
        cost = f"{human(self.bytes, 'B')}, {self.seconds * 1e6:.3g} µs"
        if self.algorithm:
            cost += f", {self.algorithm}"
        return f"{self.op} of {self.value!r} on {who} ({cost})"


@dataclass(frozen=True)
class Explanation:
    """Where ``name`` went: ranks, stage, sharding, communication, and the reasons."""

    name: str
    """The node or value asked about."""
    what: str
    """``node``, ``value`` (an activation) or ``weight``."""
    op: str | None
    """The node's op in the device programs (None for values and weights)."""
    ranks: tuple[int, ...]
    """Ranks that hold it."""
    devices: tuple[str, ...]
    """Their devices, in the same order."""
    stages: tuple[int, ...]
    """Pipeline stages it appears in (a value crossing a boundary: two)."""
    strategy: str | None
    """For a node: the chosen strategy (``column``, ``row``, ``heads``...), ``replicated``
    when its stage is tensor-parallel but the node is not split, None at tp=1. For a
    weight: ``split`` or ``whole``. None for an activation."""
    shards: tuple[str, ...] = ()
    """For a weight: the slice each rank holds."""
    comms: tuple[CommStep, ...] = ()
    """Communication around it, from the device programs and schedule.json."""
    reasons: tuple[str, ...] = field(default=())
    """Why, in words: the stage split, the replicas, the sharding, the traffic."""

    def __str__(self) -> str:
        head = f"{self.what} {self.name!r}" + (f" ({self.op})" if self.op else "")
        lines = [
            head,
            f"  stage {', '.join(map(str, self.stages))}; ranks {list(self.ranks)} "
            f"on {', '.join(self.devices)}",
        ]
        if self.strategy:
            lines.append(f"  sharding: {self.strategy}")
        lines += [f"  slice: {s}" for s in self.shards]
        lines += [f"  {c.where}: {c.describe()}" for c in self.comms]
        lines += [f"  why: {r}" for r in self.reasons]
        return "\n".join(lines)

    def __rich__(self) -> str:
        from shardc.report.text import markup_safe

        return "\n".join(markup_safe(line) for line in str(self).split("\n"))

    def to_json(self) -> dict[str, Any]:
        """Plain data (``shardc explain --json``)."""
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "comms"}
        out["comms"] = [c.__dict__ for c in self.comms]
        return out


