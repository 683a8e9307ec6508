"""The serving plan as frozen, typed records: plan.json's ``serving`` section.

Why here, beside the pipeline records, and not in :mod:`shardc.serving`: a serving plan
is a Plan like any other. It is written by the one writer (:mod:`shardc.emit.outputs`),
read back by the one reader (:mod:`shardc.plan.folder`) and shown by the report, none of
which may import the deciders; so the records the planner fills and the readers read
live in the plan layer, and the planner (:mod:`shardc.serving.planner`) only builds them.

What a reader needs without re-pricing anything: the instances (role ``prefill``,
``decode`` or ``aggregated``) with their devices, parallelism, batch and KV-cache
capacity; TTFT, TPOT and tokens/s per device and per user; the KV hand-off from prefill
to decode (bytes, plane, the links it crosses, seconds); the expert all-to-all of each
MoE instance (bytes per rank and the links it loads); the workload and targets; the
runner-up of the other mode; and the throughput-vs-TPOT Pareto table.

Floats are rounded to 6 significant digits when written (:func:`rounded`), so plan.json's
bytes do not depend on the last ulp of a float sum; the planner builds its records
through the same rounding (``ServingPlan.from_json(plan.to_json())``), so a plan read back
equals the plan written.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shardc.plan.records import frozen, thaw

ROLES = ("prefill", "decode", "aggregated")


def rounded(x: float, digits: int = 6) -> float:
    """``x`` to ``digits`` significant digits: JSON bytes that do not depend on the last ulp."""
    return float(f"{x:.{digits}g}")


def _rmap(d: Mapping[str, float]) -> dict[str, float]:
    return {k: rounded(float(v)) for k, v in sorted(d.items())}


@dataclass(frozen=True)
class LinkTraffic:
    """What one direction of one topology link carries for the serving plan."""

    plane: str
    a: str
    """The end the bytes leave from (a device or a switch)."""
    b: str
    nbytes: float
    """Bytes per request (KV hand-off) or per step of the instance (all-to-all)."""
    bytes_per_s: float
    """The load at the plan's rate: bytes per request times requests/s, or bytes per step
    over the step time."""

    def to_json(self) -> dict[str, Any]:
        """The entry as plan.json writes it."""
        return {"plane": self.plane, "a": self.a, "b": self.b, "bytes": rounded(self.nbytes),
                "bytes_per_s": rounded(self.bytes_per_s)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> LinkTraffic:
        """An entry of a validated plan.json."""
        return cls(d["plane"], d["a"], d["b"], float(d["bytes"]), float(d["bytes_per_s"]))


def _links(items: Any) -> tuple[LinkTraffic, ...]:
    return tuple(LinkTraffic.from_json(x) for x in items)


@dataclass(frozen=True)
class ServingInstance:
    """One prefill, decode or aggregated copy of the model on its own devices."""

    role: str
    index: int
    """0-based among the instances of its role."""
    kind: str
    devices: tuple[str, ...]
    """Its devices, ``pp`` stages of ``tp·dp`` each, stage by stage."""
    tp: int
    dp: int
    """Attention data parallelism (MoE: EP = tp·dp)."""
    pp: int
    ep: int
    redundant_experts: int
    batch: int
    """Decode/aggregated: sequences per attention-DP rank. Prefill: prompt tokens per
    forward per DP rank (prompts longer than this are chunked)."""
    prefill_chunk: int
    """Aggregated: prompt tokens per step per DP rank riding with the decode batch."""
    step_seconds: float
    memory_per_device_bytes: float
    kv_capacity_tokens: float
    step_breakdown: Mapping[str, float]
    """Where a step's time goes (``ep_alltoall_total`` is the all-to-all before overlap,
    not a part of the sum)."""
    capacity_output_tokens_per_s: float
    """What this instance alone can emit (decode, aggregated; 0 for prefill)."""
    capacity_requests_per_s: float
    """Requests/s this instance alone can complete (prefill: prompts it can process)."""

    @property
    def bound(self) -> str:
        """The largest part of the step (what to make faster)."""
        parts = {k: v for k, v in self.step_breakdown.items() if k != "ep_alltoall_total"}
        return max(sorted(parts), key=lambda k: parts[k]) if parts else ""

    def to_json(self) -> dict[str, Any]:
        """The instance as plan.json writes it."""
        return {
            "role": self.role, "index": self.index, "kind": self.kind,
            "devices": list(self.devices), "tp": self.tp, "dp": self.dp, "pp": self.pp,
            "ep": self.ep, "redundant_experts": self.redundant_experts, "batch": self.batch,
            "prefill_chunk": self.prefill_chunk, "step_seconds": rounded(self.step_seconds),
            "memory_per_device_bytes": rounded(self.memory_per_device_bytes),
            "kv_capacity_tokens": rounded(self.kv_capacity_tokens),
            "step_breakdown_seconds": _rmap(self.step_breakdown),
            "capacity_output_tokens_per_s": rounded(self.capacity_output_tokens_per_s),
            "capacity_requests_per_s": rounded(self.capacity_requests_per_s),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ServingInstance:
        """An instance of a validated plan.json."""
        return cls(
            d["role"], d["index"], d["kind"], tuple(d["devices"]), d["tp"], d["dp"], d["pp"],
            d["ep"], d["redundant_experts"], d["batch"], d["prefill_chunk"],
            float(d["step_seconds"]), float(d["memory_per_device_bytes"]),
            float(d["kv_capacity_tokens"]), frozen(d["step_breakdown_seconds"]),
            float(d["capacity_output_tokens_per_s"]), float(d["capacity_requests_per_s"]),
        )


@dataclass(frozen=True)
class KVHandoff:
    """One request's KV cache moved from a prefill instance to a decode instance."""

    plane: str
    link_kinds: str
    bytes_per_request: float
    seconds: float
    """Per request, contended by the other pairs and stretched by the links' queueing."""
    streams: int
    """Sender/receiver pairs one cache is split over (one per TP rank)."""
    alternatives: Mapping[str, float]
    """Other planes that join the two sides, with their (uncontended) seconds."""
    bytes_per_s: float
    """Hand-off traffic at the plan's request rate, all instances together."""
    links: tuple[LinkTraffic, ...]
    """The links the hand-off crosses, busiest first, requests spread evenly over every
    (prefill instance, decode TP group) pair; ``nbytes`` is one request's average."""

    def to_json(self) -> dict[str, Any]:
        """The section as plan.json writes it."""
        return {
            "plane": self.plane, "link_kinds": self.link_kinds,
            "bytes_per_request": rounded(self.bytes_per_request),
            "seconds": rounded(self.seconds), "streams": self.streams,
            "alternatives": _rmap(self.alternatives),
            "bytes_per_s": rounded(self.bytes_per_s),
            "links": [x.to_json() for x in self.links],
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> KVHandoff:
        """The section of a validated plan.json."""
        return cls(d["plane"], d["link_kinds"], float(d["bytes_per_request"]),
                   float(d["seconds"]), d["streams"], frozen(d["alternatives"]),
                   float(d["bytes_per_s"]), _links(d["links"]))


@dataclass(frozen=True)
class ExpertTraffic:
    """The MoE dispatch + combine of one role's instances, per step of one instance."""

    role: str
    kind: str
    ep: int
    tiers: str
    """The planes the all-to-all runs on (``nvlink+ib``, ``ub``)."""
    bytes_per_rank: float
    """Bytes one EP rank sends per step, dispatch and combine over every MoE layer."""
    outer_bytes_per_rank: float
    """Of those, what crosses the outer (scale-out) tier."""
    seconds: float
    """The all-to-all's time per step before overlap with compute."""
    exposed_seconds: float
    """What compute did not hide."""
    links: tuple[LinkTraffic, ...]
    """Instance 0's all-to-all on the links it crosses (uniform routing), busiest first."""

    def to_json(self) -> dict[str, Any]:
        """The entry as plan.json writes it."""
        return {
            "role": self.role, "kind": self.kind, "ep": self.ep, "tiers": self.tiers,
            "bytes_per_rank": rounded(self.bytes_per_rank),
            "outer_bytes_per_rank": rounded(self.outer_bytes_per_rank),
            "seconds": rounded(self.seconds), "exposed_seconds": rounded(self.exposed_seconds),
            "links": [x.to_json() for x in self.links],
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ExpertTraffic:
        """An entry of a validated plan.json."""
        return cls(d["role"], d["kind"], d["ep"], d["tiers"], float(d["bytes_per_rank"]),
                   float(d["outer_bytes_per_rank"]), float(d["seconds"]),
                   float(d["exposed_seconds"]), _links(d["links"]))


@dataclass(frozen=True)
class ParetoPoint:
    """The best plan at one TPOT target (a row of the throughput-vs-TPOT table)."""

    tpot_target: float
    mode: str
    tpot: float
    ttft: float
    tokens_per_s_per_device: float
    tokens_per_s_per_user: float
    devices: int
    decode: str
    """The decode (or aggregated) instance shape: ``h20 tp2 dp1 pp2 batch 64``."""

    def to_json(self) -> dict[str, Any]:
        """The row as plan.json writes it."""
        return {
            "tpot_target_s": rounded(self.tpot_target), "mode": self.mode,
            "tpot_s": rounded(self.tpot), "ttft_s": rounded(self.ttft),
            "tokens_per_s_per_device": rounded(self.tokens_per_s_per_device),
            "tokens_per_s_per_user": rounded(self.tokens_per_s_per_user),
            "devices": self.devices, "decode": self.decode,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ParetoPoint:
        """A row of a validated plan.json."""
        return cls(float(d["tpot_target_s"]), d["mode"], float(d["tpot_s"]), float(d["ttft_s"]),
                   float(d["tokens_per_s_per_device"]), float(d["tokens_per_s_per_user"]),
                   d["devices"], d["decode"])


@dataclass(frozen=True)
class ServingPlan:
    """A serving plan for one model, topology and workload (plan.json ``serving``)."""

    mode: str
    """``disaggregated`` (prefill and decode instances) or ``aggregated``."""
    model: Mapping[str, Any]
    """The model's shape as priced (layers, hidden, experts, KV bytes per token, ...)."""
    workload: Mapping[str, Any]
    """ISL/OSL, rate or concurrency, prefix-cache hit rate, and the TTFT/TPOT targets."""
    precision: Mapping[str, Any]
    instances: tuple[ServingInstance, ...]
    kv_transfer: KVHandoff | None
    expert_traffic: tuple[ExpertTraffic, ...]
    ttft: float
    tpot: float
    output_tokens_per_s: float
    input_tokens_per_s: float
    requests_per_s: float
    devices_used: int
    devices_total: int
    alternative: Mapping[str, Any]
    """The best plan of the other mode, or why there is none."""
    pareto: tuple[ParetoPoint, ...]
    solver: Mapping[str, Any]

    @property
    def tokens_per_s_per_device(self) -> float:
        """Output tokens/s per device used."""
        return self.output_tokens_per_s / self.devices_used if self.devices_used else 0.0

    @property
    def tokens_per_s_per_user(self) -> float:
        """Output tokens/s one sequence sees while decoding (1/TPOT)."""
        return 1.0 / self.tpot if self.tpot else 0.0

    def role_of(self) -> dict[str, tuple[str, int]]:
        """Device name -> (role, instance index) for every device the plan uses."""
        return {d: (i.role, i.index) for i in self.instances for d in i.devices}

    def groups(self) -> list[tuple[str, str, list[ServingInstance]]]:
        """(role, kind, instances) in plan order: the rows of a summary table."""
        out: dict[tuple[str, str], list[ServingInstance]] = {}
        for inst in self.instances:
            out.setdefault((inst.role, inst.kind), []).append(inst)
        return [(r, k, v) for (r, k), v in out.items()]

    def to_json(self) -> dict[str, Any]:
        """plan.json's ``serving`` section."""
        return {
            "mode": self.mode,
            "model": thaw(self.model),
            "workload": thaw(self.workload),
            "precision": thaw(self.precision),
            "instances": [i.to_json() for i in self.instances],
            "kv_transfer": self.kv_transfer.to_json() if self.kv_transfer else None,
            "expert_traffic": [e.to_json() for e in self.expert_traffic],
            "ttft_s": rounded(self.ttft),
            "tpot_s": rounded(self.tpot),
            "output_tokens_per_s": rounded(self.output_tokens_per_s),
            "input_tokens_per_s": rounded(self.input_tokens_per_s),
            "requests_per_s": rounded(self.requests_per_s),
            "tokens_per_s_per_device": rounded(self.tokens_per_s_per_device),
            "tokens_per_s_per_user": rounded(self.tokens_per_s_per_user),
            "devices_used": self.devices_used,
            "devices_total": self.devices_total,
            "alternative": thaw(self.alternative),
            "pareto": [r.to_json() for r in self.pareto],
            "solver": thaw(self.solver),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ServingPlan:
        """The ``serving`` section of a validated plan.json."""
        kv = d.get("kv_transfer")
        return cls(
            mode=d["mode"],
            model=frozen(d["model"]),
            workload=frozen(d["workload"]),
            precision=frozen(d["precision"]),
            instances=tuple(ServingInstance.from_json(i) for i in d["instances"]),
            kv_transfer=KVHandoff.from_json(kv) if kv else None,
            expert_traffic=tuple(ExpertTraffic.from_json(e) for e in d["expert_traffic"]),
            ttft=float(d["ttft_s"]),
            tpot=float(d["tpot_s"]),
            output_tokens_per_s=float(d["output_tokens_per_s"]),
            input_tokens_per_s=float(d["input_tokens_per_s"]),
            requests_per_s=float(d["requests_per_s"]),
            devices_used=d["devices_used"],
            devices_total=d["devices_total"],
            alternative=frozen(d["alternative"]),
            pareto=tuple(ParetoPoint.from_json(r) for r in d["pareto"]),
            solver=frozen(d["solver"]),
        )


def check_serving(data: Mapping[str, Any]) -> str | None:
    """What a schema cannot say about a ``serving`` section: each instance holds
    ``tp·dp·pp`` devices, no device is in two instances, the roles fit the mode,
    ``devices_used`` is their sum, indices run 0..n-1 per role. The problem, or None.
    """
    seen: set[str] = set()
    count: dict[str, int] = {}
    for j, inst in enumerate(data["instances"]):
        where = f"serving.instances[{j}]"
        if len(inst["devices"]) != inst["tp"] * inst["dp"] * inst["pp"]:
            return f"{where}.devices: {len(inst['devices'])} devices, not tp·dp·pp"
        if seen & set(inst["devices"]) or len(set(inst["devices"])) != len(inst["devices"]):
            return f"{where}.devices: a device is in two instances"
        seen.update(inst["devices"])
        if inst["index"] != count.get(inst["role"], 0):
            return f"{where}.index: not 0..n-1 within role {inst['role']}"
        count[inst["role"]] = inst["index"] + 1
    want = {"aggregated"} if data["mode"] == "aggregated" else {"prefill", "decode"}
    if set(count) != want:
        return f"serving.instances: roles {sorted(count)} do not make a {data['mode']} plan"
    if data["devices_used"] != len(seen):
        return f"serving.devices_used is {data['devices_used']}, the instances hold {len(seen)}"
    return None
