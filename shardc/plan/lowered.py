"""What the ``lower`` pass hands the device-file writer: per (stage, TP rank) node lists.

Why a template per (stage, TP rank) and not per rank: every replica of a stage runs the
same nodes on the same weight shards; only the peers of its Send/Recv and the group of its
collectives differ, and those are in the Plan's programs (:mod:`shardc.plan.program`).
The writer (:mod:`shardc.emit.devices`) copies a template per rank and fills each comm
node from the rank's priced :class:`~shardc.plan.program.Comm`, in order.

The node lists are the device files' own nodes (ONNX ``NodeProto`` and ``TensorProto``
objects, typed ``Any`` here so the Plan's types import no protobuf), and the weight
shards are already cut: lowering is where a slice of each weight is taken.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shardc.plan.program import Programs


@dataclass(frozen=True)
class SliceRecord:
    """Where a local initializer came from: ``source[start:stop]`` along ``dim`` (dim -1:
    the whole tensor).
    """

    source: str
    dim: int
    start: int
    stop: int
    pieces: int = 1
    """The dim holds this many equal parts; the slice is taken from each."""
    size: int = 0
    """The source's length along ``dim`` (0 for a whole tensor)."""

    def to_json(self) -> dict[str, Any]:
        """Plain data for the model metadata."""
        return {
            "source": self.source,
            "dim": self.dim,
            "start": self.start,
            "stop": self.stop,
            "pieces": self.pieces,
            "size": self.size,
        }


@dataclass(frozen=True)
class PendingComm:
    """A comm step in a template; peers named by (stage, tp rank) until a replica is chosen."""

    op: str
    value: str
    output: str
    nbytes: float
    peer: tuple[int, int] | None = None
    tag: int = 0
    axis: int = -1
    concat_axis: int = -1
    """AllToAll only: the dim the received pieces are joined along (the one split before)."""


@dataclass
class Template:
    """One (stage, tp rank) program before replicas give it ranks (built by the walk)."""

    stage: int
    tp_rank: int
    tp: int
    nodes: list[Any] = field(default_factory=list)
    """``onnx.NodeProto``s in issue order; comm nodes have placeholder peers and groups."""
    initializers: dict[str, Any] = field(default_factory=dict)
    """``onnx.TensorProto``s by local name: the shards cut for this TP rank."""
    slices: dict[str, SliceRecord] = field(default_factory=dict)
    steps: list[tuple[str, Any]] = field(default_factory=list)
    """``("node", graph node name)`` or ``("comm", (index into nodes, PendingComm))``."""
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    weight_bytes: int = 0
    chunk_starts: list[int] = field(default_factory=list)
    """Index into ``steps`` where each model chunk begins (interleaved plans; empty with
    one chunk)."""
    local_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """Inputs/outputs this rank holds a shard of (the KV cache), by their local shape."""

    @property
    def comm_nodes(self) -> list[tuple[int, PendingComm]]:
        """(node index, pending comm) of each comm step, in issue order."""
        return [item for what, item in self.steps if what == "comm"]


@dataclass(frozen=True)
class Lowering:
    """The ``lower`` pass's result: templates and the unpriced programs of every rank."""

    templates: Mapping[tuple[int, int], Template]
    """By (stage, TP rank)."""
    programs: Programs
    """Every rank's program, comms and compute segments not yet priced (seconds 0)."""
    declared_only: bool = False
    """The model's weights were declared only (a ``shardc synth`` what-if): the templates
    hold each shard's type and dims, no bytes, so no device file can be written."""
    resolutions: tuple[Any, ...] = ()
    """Per stage, the strategy resolution lowering followed (what pricing prices)."""
    context: Any = None
    """Context parallelism (cp > 1): ``(ContextMap, cp)``, where the sequence lives and the
    degree; the programs are then ``cp`` copies of every rank (``passes.lower_context``)."""


CP_WHOLE = "__cpwhole"
"""Suffix of a K/V value gathered whole over the cp group (the lowering and the device
files name it alike, so a program's CP gathers are known by name)."""
CP_LOCAL = "__cplocal"
"""Suffix of a rank's chunk of a graph output, gathered into the output."""


CP_RING = "__cpring"
"""Infix of a ring attention's K/V chunk passed to the next rank of the cp group
(``<attention>__cpring<step>``): the timeline runs these Sends beside compute."""


def is_context_comm(output: str, value: str) -> bool:
    """Whether a comm step (its ``output`` and ``value``) is a CP gather or ring transfer
    the lowering added.
    """
    return CP_WHOLE in output or value.endswith(CP_LOCAL) or is_ring_comm(value)


def is_ring_comm(value: str) -> bool:
    """Whether a Send/Recv of ``value`` is a ring attention's K/V transfer."""
    return CP_RING in value
