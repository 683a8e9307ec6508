"""plan.json's sections as frozen, typed records: the stages, the ranks, the estimate, the
solver, and what was compiled with which options.

Why typed records and not the JSON dict: every reader (the API's :class:`~shardc.plan.Plan`,
the report, ``explain``, the runtime, ``check-plan``) used to index the dict its own way.
Each record has ``to_json`` (exactly the JSON compile writes, so the folder's bytes do not
change) and ``from_json`` (of a plan.json the reader in :mod:`shardc.plan.folder` has
validated). Keys the schema makes optional are None when absent and left out again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeVar

K = TypeVar("K")
V = TypeVar("V")


def frozen(d: Mapping[K, V] | None) -> Mapping[K, V]:
    """A read-only copy of ``d`` (records are frozen all the way down)."""
    return MappingProxyType(dict(d or {}))


def thaw(x: Any) -> Any:
    """Plain JSON data from a record's fields (mappings, tuples) for ``to_json``."""
    if isinstance(x, Mapping):
        return {k: thaw(v) for k, v in x.items()}
    if isinstance(x, tuple | list):
        return [thaw(v) for v in x]
    return x


def _put(out: dict[str, Any], key: str, value: Any) -> None:
    if value is not None:
        out[key] = value


@dataclass(frozen=True)
class Stage:
    """One pipeline stage, as the partitioner chose and priced it."""

    index: int
    """Position in the pipeline; stage 0 takes the model's inputs."""
    kind: str
    """Device kind every rank of the stage is (from the topology)."""
    tp: int
    """Tensor-parallel degree: devices that share each replica's copy of the stage."""
    blocks: tuple[int, int]
    """First and last repeated block held (0-based, inclusive); the model's ends ride on
    the first and last stage."""
    recompute: str
    """Activation recomputation: ``none``, ``selective`` or ``full``."""
    seconds: float
    """One micro-batch through the stage: compute, TP traffic and boundary transfers."""
    memory_bytes: float
    """Estimated peak memory of each rank of the stage."""
    capacity_bytes: float
    """Memory of one device of ``kind`` the plan may use."""
    groups: tuple[tuple[str, ...], ...]
    """Per replica, the devices of the stage's TP group in tp-rank order."""
    tp_domain_bandwidth: float
    """Bandwidth of the narrowest link inside the stage's TP groups (bytes/s)."""
    ranks: tuple[int, ...] = ()
    """Global ranks of the stage, replica by replica (derived, not written)."""
    sequence_parallel: bool | None = None
    compute_seconds: float | None = None
    tp_comm_seconds: float | None = None
    p2p_seconds: float | None = None
    sync_seconds: float | None = None
    in_flight: int | None = None
    chunks: tuple[tuple[int, int], ...] | None = None
    """Interleaved plans (v > 1): the v runs of blocks the stage holds, (first, last) in
    chunk order; chunk c of stage j is the chain's chunk ``c·pp + j``
    (:func:`~shardc.partition.chunks.chunk_blocks`), and ``blocks`` gives only their
    count. None with one chunk: ``blocks`` is the run held."""

    @property
    def held(self) -> str:
        """The blocks held, for people: ``0–3``, or with chunks ``0, 4`` / ``0–1, 4–5``."""
        if self.chunks is None:
            return f"{self.blocks[0]}–{self.blocks[1]}"
        return ", ".join(str(a) if a == b else f"{a}–{b}" for a, b in self.chunks)
    cp: int | None = None
    """Context-parallel degree when above 1 (absent otherwise)."""
    ep: int | None = None
    """Expert parallelism across data-parallel replicas: consecutive replicas of the stage
    sharing one MoE layer's experts, tokens exchanged by all-to-all (absent: 1)."""
    ep_comm_seconds: float | None = None
    """The dispatch + combine all-to-alls of one micro-batch, forward and backward."""

    def to_json(self) -> dict[str, Any]:
        """The stage as plan.json writes it."""
        out = {
            "index": self.index, "kind": self.kind, "tp": self.tp, "blocks": list(self.blocks),
            "recompute": self.recompute, "seconds": self.seconds,
            "memory_bytes": self.memory_bytes, "capacity_bytes": self.capacity_bytes,
            "groups": [list(g) for g in self.groups],
            "tp_domain_bandwidth": self.tp_domain_bandwidth,
        }
        for key in ("sequence_parallel", "compute_seconds", "tp_comm_seconds", "p2p_seconds",
                    "sync_seconds", "in_flight", "cp", "ep", "ep_comm_seconds"):
            _put(out, key, getattr(self, key))
        _put(out, "chunks", None if self.chunks is None else [list(c) for c in self.chunks])
        return out

    @classmethod
    def from_json(cls, st: Mapping[str, Any], ranks: tuple[int, ...] = ()) -> Stage:
        """A stage of a validated plan.json."""
        return cls(
            st["index"], st["kind"], st["tp"], (st["blocks"][0], st["blocks"][1]),
            st["recompute"], st["seconds"], st["memory_bytes"], st["capacity_bytes"],
            tuple(tuple(g) for g in st["groups"]), st["tp_domain_bandwidth"], ranks,
            st.get("sequence_parallel"), st.get("compute_seconds"), st.get("tp_comm_seconds"),
            st.get("p2p_seconds"), st.get("sync_seconds"), st.get("in_flight"),
            None if st.get("chunks") is None else tuple((c[0], c[1]) for c in st["chunks"]),
            st.get("cp"),
            st.get("ep"), st.get("ep_comm_seconds"),
        )


@dataclass(frozen=True)
class Candidate:
    """One data-parallel width the search tried, and how it came out."""

    dp: int
    outcome: str
    step_seconds: float | None


@dataclass(frozen=True)
class Solver:
    """How the plan was found: the solver's status, bound and gap, the widths tried."""

    status: str
    bound_seconds: float | None
    gap: float | None
    candidates: tuple[Candidate, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        """The ``partition.solver`` section."""
        out: dict[str, Any] = {"status": self.status, "bound_seconds": self.bound_seconds,
                               "gap": self.gap}
        if self.candidates is not None:
            out["candidates"] = [
                {"dp": c.dp, "outcome": c.outcome, "step_seconds": c.step_seconds}
                for c in self.candidates
            ]
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Solver:
        """``partition.solver`` of a validated plan.json."""
        cands = d.get("candidates")
        return cls(
            d["status"], d["bound_seconds"], d["gap"],
            None if cands is None else tuple(
                Candidate(c["dp"], c["outcome"], c["step_seconds"]) for c in cands
            ),
        )


@dataclass(frozen=True)
class Partition:
    """The partitioner's answer: the shape of the plan, its stages and its estimate."""

    mode: str
    objective: str
    schedule: str
    dp: int
    pp: int
    microbatches: int
    samples_per_step: int
    step_seconds: float
    """The objective's time: a training step, or one request's latency."""
    breakdown: Mapping[str, float]
    """Where the step's time goes (compute, tp comm, pp send/recv, bubble, dp sync)."""
    devices_used: int
    solver: Solver
    pins: Mapping[str, Any]
    stages: tuple[Stage, ...]
    strategies: Mapping[str, str] | None = None
    """The sharding each split node got, by node name."""
    blocks: int | None = None
    interleave: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The ``partition`` section."""
        out: dict[str, Any] = {
            "mode": self.mode, "objective": self.objective, "schedule": self.schedule,
            "dp": self.dp, "pp": self.pp, "microbatches": self.microbatches,
            "samples_per_step": self.samples_per_step, "step_seconds": self.step_seconds,
            "breakdown": dict(self.breakdown), "devices_used": self.devices_used,
            "solver": self.solver.to_json(), "pins": thaw(self.pins),
            "stages": [s.to_json() for s in self.stages],
        }
        _put(out, "strategies", None if self.strategies is None else dict(self.strategies))
        _put(out, "blocks", self.blocks)
        _put(out, "interleave", self.interleave)
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Partition:
        """``partition`` of a validated plan.json (stage ranks numbered as emitted)."""
        stages, offset = [], 0
        for st in d["stages"]:
            n = d["dp"] * st["tp"] * st.get("cp", 1)
            stages.append(Stage.from_json(st, tuple(range(offset, offset + n))))
            offset += n
        strategies = d.get("strategies")
        return cls(
            d["mode"], d["objective"], d["schedule"], d["dp"], d["pp"], d["microbatches"],
            d["samples_per_step"], d["step_seconds"], frozen(d["breakdown"]),
            d["devices_used"], Solver.from_json(d["solver"]), frozen(d["pins"]),
            tuple(stages), None if strategies is None else frozen(strategies),
            d.get("blocks"), d.get("interleave"),
        )


@dataclass(frozen=True)
class Rank:
    """What one rank is: where it runs, which part of the plan it holds, its device file."""

    rank: int
    """Global rank: the ``N`` of ``device_N.onnx`` and of torch.distributed."""
    device: str
    """Physical device name from the topology (``node3.gpu5``)."""
    kind: str
    """Device kind (from the topology)."""
    stage: int
    """Pipeline stage the rank belongs to."""
    replica: int
    """Data-parallel replica (0 .. dp-1)."""
    tp_rank: int
    """Position in its tensor-parallel group (0 .. tp-1)."""
    tp: int
    """Size of its tensor-parallel group."""
    memory_bytes: float
    """Estimated peak memory of the rank (weights, gradients, optimizer, activations)."""
    capacity_bytes: float
    """Memory of the device the plan may use."""
    inputs: tuple[str, ...] = ()
    """Graph inputs this rank is fed (empty when no device files were written)."""
    outputs: tuple[str, ...] = ()
    weight_bytes: int | None = None
    """Bytes of its weight shards (None when no device files were written)."""
    file: str | None = None
    """Its device file (None when none was written)."""

    @property
    def memory_fraction(self) -> float:
        """Peak memory over the device's usable capacity."""
        return self.memory_bytes / self.capacity_bytes if self.capacity_bytes else 0.0

    def to_json(self) -> dict[str, Any]:
        """The rank as plan.json's ``emission.ranks`` writes it."""
        return {
            "rank": self.rank, "file": self.file, "device": self.device, "kind": self.kind,
            "stage": self.stage, "replica": self.replica, "tp_rank": self.tp_rank,
            "tp": self.tp, "inputs": list(self.inputs), "outputs": list(self.outputs),
            "weight_bytes": self.weight_bytes, "memory_bytes": self.memory_bytes,
        }


Device = Rank
"""The name the API used for a rank before the Plan was typed."""


@dataclass(frozen=True)
class InputRecord:
    """How plan.json names one input: its path as given (or ``<ModelProto>``) and hash."""

    path: str
    sha256: str | None = None
    set: Mapping[str, Any] | None = None
    """The topology's ``--set`` overrides (topology only)."""

    def to_json(self) -> dict[str, Any]:
        """The record as plan.json writes it."""
        out: dict[str, Any] = {"path": self.path}
        _put(out, "sha256", self.sha256)
        _put(out, "set", None if self.set is None else dict(self.set))
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> InputRecord:
        """A record of a validated plan.json."""
        s = d.get("set")
        return cls(d["path"], d.get("sha256"), None if s is None else frozen(s))


@dataclass(frozen=True)
class Inputs:
    """What was compiled: the model, the topology, the bound dims."""

    model: InputRecord
    topology: InputRecord
    dims: Mapping[str, int] | None = None

    def to_json(self) -> dict[str, Any]:
        """The ``inputs`` section."""
        out = {"model": self.model.to_json(), "topology": self.topology.to_json()}
        _put(out, "dims", None if self.dims is None else dict(self.dims))
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Inputs:
        """``inputs`` of a validated plan.json."""
        dims = d.get("dims")
        return cls(InputRecord.from_json(d["model"]), InputRecord.from_json(d["topology"]),
                   None if dims is None else frozen(dims))


@dataclass(frozen=True)
class Options:
    """The options compile was given, as plan.json records them (``shardc compile --help``
    says what each means). Read-only: the record of a request, not a way to make one.
    """

    values: Mapping[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def get(self, key: str, default: Any = None) -> Any:
        """The option ``key``, or ``default`` where the plan predates it."""
        return self.values.get(key, default)

    @property
    def mode(self) -> str:
        """``training`` or ``inference``."""
        return str(self.values.get("mode", "training"))

    @property
    def dtype(self) -> str | None:
        """The precision the plan was priced in (None: the model's own)."""
        return self.values.get("dtype")

    def to_json(self) -> dict[str, Any]:
        """The ``options`` section."""
        return dict(thaw(self.values))

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Options:
        """``options`` of a validated plan.json."""
        return cls(frozen({k: frozen(v) if isinstance(v, Mapping) else v for k, v in d.items()}))


@dataclass(frozen=True)
class Block:
    """One block of the model's chain as the partitioner folded it: its role and its
    nodes. Recorded (in plan.json's ``emission.blocks``) so that ``explain`` names a
    node's block from the plan folder alone, not from the compiler's state.
    """

    role: str
    """``repeated`` for the blocks the stages split; otherwise the model's start, end or
    another part the partitioner keeps whole."""
    nodes: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """The block as plan.json writes it."""
        return {"role": self.role, "nodes": list(self.nodes)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Block:
        """A block of a validated plan.json."""
        return cls(d["role"], tuple(d["nodes"]))
