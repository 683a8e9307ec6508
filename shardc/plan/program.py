"""What one rank runs, as the Plan records it: compute segments and communications.

Why here and not in emit: the device files, schedule.json, trace.json, the report,
``explain`` and ``check-plan`` all describe the same programs, so the programs are part of
the Plan (made by the ``lower`` and ``price`` passes) and every writer or reader is a
function of them.

Ranks are numbered the way Megatron numbers them and :mod:`shardc.partition.place`
allocates devices: stage outermost, then replica, then tensor-parallel rank, so
``rank = (stage_offset + replica * tp_j + tp_rank)`` where ``stage_offset`` counts the
devices of the earlier stages. Under context parallelism the copy sits between replica and
TP rank: ``stage_offset + (replica * cp + copy) * tp_j + tp_rank``.

A program is the *forward* pass of one micro-batch: compute segments (runs of graph
nodes) and communication steps (:class:`Comm`) in the order the device issues them.
The training step's backward pass and optimizer are laid out by the timeline from the
same steps (:mod:`shardc.plan.timeline`), not written as programs.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

COMM_OPS = ("AllReduce", "AllGather", "ReduceScatter", "AllToAll", "Send", "Recv")
"""Every communication primitive a program may issue (the ``shardc`` ONNX domain's ops)."""

P2P_OPS = ("Send", "Recv")

DOMAIN = "shardc"
"""The ONNX domain device files put the comm ops in (one node type per op of COMM_OPS)."""
DOMAIN_VERSION = 1


@dataclass(frozen=True, order=True)
class Link:
    """One hop of a route: the two topology nodes it joins, in the route's direction.

    Written ``a<->b`` in schedule.json and trace.json; the order is the route's, so the
    same cable walked the other way is a different key there (kept, for identical files).
    A link known by one name only (hand-written programs) has ``b == ""`` and is written
    as that name.
    """

    a: str
    b: str

    @classmethod
    def parse(cls, text: str) -> Link:
        """``"a<->b"`` -> ``Link("a", "b")`` (the one place that reads the written form)."""
        a, _, b = text.partition("<->")
        return cls(a, b)

    def __str__(self) -> str:
        return f"{self.a}<->{self.b}" if self.b else self.a


def links_of(items: Any) -> tuple[Link, ...]:
    """Links from :class:`Link` objects or their ``a<->b`` names."""
    return tuple(x if isinstance(x, Link) else Link.parse(x) for x in items)


@functools.lru_cache(maxsize=1 << 14)
def parse_links(names: tuple[str, ...]) -> tuple[Link, ...]:
    """Links from their ``a<->b`` names, remembered: a timeline's events repeat the same
    few routes for every micro-batch (a million events of a long pipeline, some with
    dozens of hops), and parsing each anew cost more than laying the step out.
    """
    return tuple(Link.parse(x) for x in names)


def route_links(nodes: Any) -> tuple[Link, ...]:
    """The hops of a route given as its node names in order."""
    return tuple(Link(u, v) for u, v in itertools.pairwise(nodes))


@dataclass(frozen=True)
class Comm:
    """One communication op on one device.

    ``group`` lists the global ranks taking part (in group-rank order) for collectives;
    ``peer`` is the other rank of a Send/Recv. ``tag`` is unique per (sender, receiver,
    value), so a Send and its Recv carry the same tag. ``axis`` is the tensor dim a
    gather/scatter works along (-1 when none).
    """

    op: str
    """One of :data:`COMM_OPS`."""
    value: str
    """Tensor the op reads (Send, collectives) or writes (Recv)."""
    output: str
    """Tensor the op produces on this device ('' for Send; '' when read from a folder)."""
    nbytes: float
    """Bytes this device sends (collectives: the full tensor size at this device)."""
    group: tuple[int, ...] = ()
    peer: int = -1
    tag: int = 0
    axis: int = -1
    algorithm: str = ""
    """How the cost model runs it (``ring``, ``tree``, ``p2p``...)."""
    seconds: float = 0.0
    """Estimated duration from the cost model."""
    links: tuple[Link, ...] = ()
    """Links the transfer crosses, for the link tracks and link load."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "group", tuple(self.group))
        object.__setattr__(self, "links", links_of(self.links))

    def to_json(self) -> dict[str, Any]:
        """Plain data (links by name)."""
        return {
            "op": self.op,
            "value": self.value,
            "output": self.output,
            "bytes": self.nbytes,
            "group": list(self.group),
            "peer": self.peer,
            "tag": self.tag,
            "axis": self.axis,
            "algorithm": self.algorithm,
            "seconds": self.seconds,
            "links": [str(x) for x in self.links],
        }


@dataclass(frozen=True)
class Compute:
    """A run of graph nodes executed back to back on one device."""

    nodes: tuple[str, ...]
    """The graph nodes, in order (empty when read from a folder: the device file has them)."""
    seconds: float
    """Estimated forward time of the run on this device (its shard of each node)."""
    label: str = ""
    """What the run is, for people: ``prologue``, ``block 3``, ``epilogue``."""
    share: float = 1.0
    """Fraction of its nodes' work the run does: a ring attention block runs its nodes on
    one of ``cp`` K/V chunks (``1/cp``). Priced into :attr:`seconds`, not written."""

    def to_json(self) -> dict[str, Any]:
        """Plain data."""
        return {"nodes": len(self.nodes), "seconds": self.seconds, "label": self.label}


Step = Compute | Comm


@dataclass(frozen=True)
class DeviceProgram:
    """Everything one rank runs for one micro-batch's forward pass."""

    rank: int
    device: str
    """Physical device name from the topology."""
    kind: str
    stage: int
    replica: int
    tp_rank: int
    tp: int
    steps: tuple[Step, ...]
    inputs: tuple[str, ...]
    """Graph inputs this rank is fed: every first-stage rank of a replica reads that
    replica's micro-batch, whole."""
    outputs: tuple[str, ...]
    """Graph outputs this rank produces, whole (sharded outputs are gathered first)."""
    memory_bytes: float = 0.0
    weight_bytes: int = 0
    """Bytes of the weight shards in this rank's device file."""
    sync_links: tuple[Link, ...] = ()
    """Links the data-parallel gradient sync of this rank crosses: the ring over its
    stage's devices of the same TP rank in every replica (training, dp > 1)."""
    chunk_starts: tuple[int, ...] = ()
    """Interleaved plans: the index in ``steps`` where each of the rank's model chunks
    begins (chunk c of stage j is virtual stage ``c·stages + j``); empty when the
    program is one chunk."""
    copy: int = 0
    """Context parallelism: which of the ``cp`` sequence chunks this rank runs (0 without)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "sync_links", links_of(self.sync_links))
        object.__setattr__(self, "chunk_starts", tuple(self.chunk_starts))

    @property
    def chunks(self) -> tuple[tuple[Step, ...], ...]:
        """The steps of each model chunk, in order (all of them as one without chunks)."""
        if not self.chunk_starts:
            return (self.steps,)
        ends = (*self.chunk_starts[1:], len(self.steps))
        return tuple(self.steps[a:b] for a, b in zip(self.chunk_starts, ends, strict=True))

    @property
    def comms(self) -> tuple[Comm, ...]:
        """The communication steps, in issue order."""
        return tuple(s for s in self.steps if isinstance(s, Comm))

    @property
    def segments(self) -> tuple[Compute, ...]:
        """The compute segments, in order."""
        return tuple(s for s in self.steps if isinstance(s, Compute))


RankProgram = DeviceProgram


@dataclass(frozen=True)
class Sync:
    """The data-parallel gradient sync and optimizer update of one stage (training)."""

    stage: int
    seconds: float
    """What the partitioner priced it at: the exposed reduction plus the update."""
    nbytes: float
    """Gradient bytes one device hands to the sync's collectives."""


@dataclass(frozen=True)
class Programs:
    """Every rank's program plus what the timeline needs to lay them out in time."""

    programs: tuple[DeviceProgram, ...]
    mode: str
    schedule: str
    """``1f1b`` or ``gpipe``."""
    microbatches: int
    dp: int
    stages: int
    backward_factor: float = 2.0
    """Backward time over forward time per segment (training)."""
    stage_sync_seconds: Mapping[int, float] = field(default_factory=dict)
    """Per stage: the data-parallel gradient sync and optimizer update after the last
    micro-batch (training)."""
    stage_sync_bytes: Mapping[int, float] = field(default_factory=dict)
    """Per stage: gradient bytes one device hands to the sync's collectives, as the
    partitioner priced ``stage_sync_seconds`` (so link accounting sees them)."""

    def rank(self, r: int) -> DeviceProgram:
        """The program of rank ``r``."""
        return self.programs[r]

    @property
    def syncs(self) -> tuple[Sync, ...]:
        """The per-stage sync records, by stage."""
        return tuple(
            Sync(j, float(s), float(self.stage_sync_bytes.get(j, 0.0)))
            for j, s in sorted(self.stage_sync_seconds.items())
        )
