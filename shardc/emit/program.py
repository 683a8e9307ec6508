"""What one device runs: the plan turned into per-rank programs, before any file is written.

Why a data model between the plan and the files: ``device_<rank>.onnx``, schedule.json,
trace.json, the HTML report and ``shardc check-plan`` all describe the same programs.
Building them once here keeps them from disagreeing, and lets each writer be a pure
function of a :class:`Programs`.

Ranks are numbered the way Megatron numbers them and :mod:`shardc.partition.place`
allocates devices: stage outermost, then replica, then tensor-parallel rank, so
``rank = (stage_offset + replica * tp_j + tp_rank)`` where ``stage_offset`` counts the
devices of the earlier stages.

A program is the *forward* pass of one micro-batch: compute segments (runs of graph
nodes) and communication steps (:class:`Comm`) in the order the device issues them.
The training step's backward pass and optimizer are timed in schedule.json from the
cost model, but are not ONNX programs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

COMM_OPS = ("AllReduce", "AllGather", "ReduceScatter", "AllToAll", "Send", "Recv")
"""The ``shardc`` ONNX domain: one node type per communication primitive."""

DOMAIN = "shardc"
DOMAIN_VERSION = 1

ORT_DISABLED_OPTIMIZERS = ("MatMulAddFusion",)
"""onnxruntime graph rewrites every session that runs a plan or its model turns off.

Why: onnxruntime's MatMulAddFusion rewrites a 3-D MatMul+Add into Reshape, Gemm, Reshape
and names its new shape constants ``gemm_input_shape``/``gemm_output_shape`` (plus a
``_token_N`` suffix) without looking at the names already in the graph. A file that
onnxruntime's own transformer optimizer wrote (opt_level 1) already holds those names, so
a second session either refuses the file ("Attempt to replace the existing tensor") or,
where the constants arrive as graph inputs as they do in a device program's run, silently
uses its own shape for the file's ("cannot reshape {128,256} to {4,32,1024}"). The fusion
only changes speed, so turning it off keeps every session on the numbers the file means.
"""


def cpu_session(model: Any, *, log_level: int) -> Any:
    """An onnxruntime CPU session on ``model`` with :data:`ORT_DISABLED_OPTIMIZERS` off: the
    reference run of the original and the load check of a device program must see the
    same graph rewrites the runtime does. Raises what onnxruntime raises.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = log_level
    return ort.InferenceSession(
        model.SerializeToString(),
        options,
        providers=["CPUExecutionProvider"],
        disabled_optimizers=list(ORT_DISABLED_OPTIMIZERS),
    )


def node_attr(node: Any, name: str, default: Any = None) -> Any:
    """An ONNX node attribute's Python value (strings decoded), or ``default``: how the
    checker, the runtime and ``explain`` read comm nodes' ``group``/``peer``/``tag``/``axis``.
    """
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            value = helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


@dataclass(frozen=True)
class Comm:
    """One communication op on one device.

    ``group`` lists the global ranks taking part (in group-rank order) for collectives;
    ``peer`` is the other rank of a Send/Recv. ``tag`` is unique per (sender, receiver,
    value), so a Send and its Recv carry the same tag. ``axis`` is the tensor dim a
    gather/scatter works along (-1 when none).
    """

    op: str
    value: str
    """Tensor the op reads (Send, collectives) or writes (Recv)."""
    output: str
    """Tensor the op produces on this device ('' for Send)."""
    nbytes: float
    """Bytes this device sends (collectives: the full tensor size at this device)."""
    group: tuple[int, ...] = ()
    peer: int = -1
    tag: int = 0
    axis: int = -1
    algorithm: str = ""
    seconds: float = 0.0
    """Estimated duration from the cost model."""
    links: tuple[str, ...] = ()
    """Links the transfer crosses (``a<->b`` names), for the link tracks and link load."""

    def to_json(self) -> dict[str, Any]:
        """Plain data for schedule.json."""
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
            "links": list(self.links),
        }


@dataclass(frozen=True)
class Compute:
    """A run of graph nodes executed back to back on one device."""

    nodes: tuple[str, ...]
    seconds: float
    """Estimated forward time of the run on this device (its shard of each node)."""
    label: str = ""
    """What the run is, for people: ``prologue``, ``block 3``, ``epilogue``."""

    def to_json(self) -> dict[str, Any]:
        """Plain data for schedule.json."""
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
    """Bytes of the weight shards in this rank's ONNX file."""
    sync_links: tuple[str, ...] = ()
    """Links the data-parallel gradient sync of this rank crosses: the ring over its
    stage's devices of the same TP rank in every replica (training, dp > 1)."""

    @property
    def comms(self) -> tuple[Comm, ...]:
        """The communication steps, in issue order."""
        return tuple(s for s in self.steps if isinstance(s, Comm))


@dataclass(frozen=True)
class Programs:
    """Every rank's program plus what the schedule needs to lay them out in time."""

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
