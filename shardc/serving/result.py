"""The serving plan: a frozen, typed result with canonical JSON.

What a reader (the CLI, plan.json, a script) needs without re-pricing anything: the
instances with their devices, parallelism, batch and KV-cache capacity; the KV transfer
from prefill to decode (plane, bytes, seconds); TTFT, TPOT and tokens/s per device and per
user; the runner-up of the other mode (aggregated vs disaggregated) and why it lost; and a
throughput-vs-TPOT Pareto table over the targets the user could have asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shardc import jsonutil


def _r(x: float, digits: int = 6) -> float:
    """Round for JSON so the bytes do not depend on the last ulp of a float sum."""
    return float(f"{x:.{digits}g}")


@dataclass(frozen=True, slots=True)
class Instance:
    """One prefill, decode or aggregated copy of the model."""

    role: str
    index: int
    kind: str
    devices: tuple[str, ...]
    tp: int
    dp: int
    pp: int
    ep: int
    redundant_experts: int
    batch: int
    """Decode/aggregated: sequences per attention-DP rank. Prefill: prompt tokens per
    forward per DP rank (prompts longer than this are chunked)."""
    prefill_chunk: int
    step_seconds: float
    memory_per_device: float
    kv_capacity_tokens: float
    breakdown: tuple[tuple[str, float], ...]
    output_tokens_per_s: float
    """What this instance alone can emit (decode, aggregated; 0 for prefill)."""
    requests_per_s: float
    """Requests/s this instance alone can complete (prefill: prompts it can process)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return {
            "role": self.role, "index": self.index, "kind": self.kind,
            "devices": list(self.devices), "tp": self.tp, "dp": self.dp, "pp": self.pp,
            "ep": self.ep, "redundant_experts": self.redundant_experts, "batch": self.batch,
            "prefill_chunk": self.prefill_chunk, "step_seconds": _r(self.step_seconds),
            "memory_per_device_bytes": _r(self.memory_per_device),
            "kv_capacity_tokens": _r(self.kv_capacity_tokens),
            "step_breakdown_seconds": {k: _r(v) for k, v in self.breakdown},
            "capacity_output_tokens_per_s": _r(self.output_tokens_per_s),
            "capacity_requests_per_s": _r(self.requests_per_s),
        }


@dataclass(frozen=True, slots=True)
class KVTransferPlan:
    """The prefill -> decode hand-off of one request's KV cache."""

    plane: str
    link_kinds: str
    bytes_per_request: float
    seconds: float
    streams: int
    alternatives: tuple[tuple[str, float], ...]
    """Other planes that join the two sides, with their (uncontended) seconds."""

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return {
            "plane": self.plane, "link_kinds": self.link_kinds,
            "bytes_per_request": _r(self.bytes_per_request), "seconds": _r(self.seconds),
            "streams": self.streams,
            "alternatives": {p: _r(s) for p, s in self.alternatives},
        }


@dataclass(frozen=True, slots=True)
class ParetoRow:
    """The best plan at one TPOT target."""

    tpot_target: float
    mode: str
    tpot: float
    ttft: float
    tokens_per_s_per_device: float
    tokens_per_s_per_user: float
    devices: int
    decode: str

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return {
            "tpot_target_s": _r(self.tpot_target), "mode": self.mode, "tpot_s": _r(self.tpot),
            "ttft_s": _r(self.ttft), "tokens_per_s_per_device": _r(self.tokens_per_s_per_device),
            "tokens_per_s_per_user": _r(self.tokens_per_s_per_user), "devices": self.devices,
            "decode": self.decode,
        }


@dataclass(frozen=True, slots=True)
class ServingPlan:
    """A serving plan for one model, topology and workload."""

    mode: str
    model: tuple[tuple[str, Any], ...]
    workload: tuple[tuple[str, Any], ...]
    quant: tuple[tuple[str, Any], ...]
    instances: tuple[Instance, ...]
    kv_transfer: KVTransferPlan | None
    ttft: float
    tpot: float
    output_tokens_per_s: float
    input_tokens_per_s: float
    devices_used: int
    devices_total: int
    requests_per_s: float
    alternative: tuple[tuple[str, Any], ...]
    pareto: tuple[ParetoRow, ...]
    solver: tuple[tuple[str, Any], ...]

    @property
    def tokens_per_s_per_device(self) -> float:
        """Output tokens/s per device used."""
        return self.output_tokens_per_s / self.devices_used if self.devices_used else 0.0

    @property
    def tokens_per_s_per_user(self) -> float:
        """Output tokens/s one sequence sees while decoding (1/TPOT)."""
        return 1.0 / self.tpot if self.tpot else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain data: the ``serving`` section of a plan."""
        return {
            "mode": self.mode,
            "model": dict(self.model),
            "workload": dict(self.workload),
            "precision": dict(self.quant),
            "instances": [i.to_dict() for i in self.instances],
            "kv_transfer": self.kv_transfer.to_dict() if self.kv_transfer else None,
            "ttft_s": _r(self.ttft),
            "tpot_s": _r(self.tpot),
            "output_tokens_per_s": _r(self.output_tokens_per_s),
            "input_tokens_per_s": _r(self.input_tokens_per_s),
            "requests_per_s": _r(self.requests_per_s),
            "tokens_per_s_per_device": _r(self.tokens_per_s_per_device),
            "tokens_per_s_per_user": _r(self.tokens_per_s_per_user),
            "devices_used": self.devices_used,
            "devices_total": self.devices_total,
            "alternative": dict(self.alternative),
            "pareto": [r.to_dict() for r in self.pareto],
            "solver": dict(self.solver),
        }

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, fixed float rounding): byte-identical across runs."""
        return jsonutil.dumps(self.to_dict())
