"""What the user asks of the partitioner, and the pins that fix part of the answer.

Why its own module: the pipeline's options, the CLI and the Python API all build these,
and none of them should import the solver to do so.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shardc.errors import OptionError
from shardc.vocabulary import RECOMPUTES, TP_RULES, check_options, default

_STAGE_KEYS = ("kind", "tp", "blocks", "recompute", "sp")
_BOOLS = {"on": True, "true": True, "1": True, "yes": True,
          "off": False, "false": False, "0": False, "no": False}


@dataclass(frozen=True)
class Pins:
    """Parts of the answer the user fixed; the solver optimises the rest.

    ``tp``/``kind`` apply to every stage unless a stage pin says otherwise; ``stages``
    maps a stage index to its own ``kind``, ``tp`` or ``blocks``.
    """

    tp: int | None = None
    pp: int | None = None
    dp: int | None = None
    kind: str | None = None
    recompute: str | None = None
    rule: str | None = None
    """The tensor-parallel rule (:data:`TP_RULES`); None is Megatron's."""
    sp: bool | None = None
    """Sequence parallelism on every TP stage (True), on none (False), or chosen (None)."""
    v: int | None = None
    """Virtual stages per device (interleaved 1F1B); None lets the solver choose."""
    cp: int | None = None
    """Context-parallel degree of every stage (:mod:`shardc.partition.context`); None lets
    the solver choose (it offers cp > 1 for long sequences only)."""
    ep: int | None = None
    """Expert parallelism across data-parallel replicas (training): ``ep`` consecutive
    replicas share each MoE layer's experts, tokens dispatched and combined by all-to-all."""
    stages: Mapping[int, Mapping[str, str | int | bool]] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Whether nothing is left to choose (compile then evaluates the given config)."""
        return None not in (self.tp, self.pp, self.dp) and all(
            "blocks" in self.stages.get(j, {}) for j in range(self.pp or 0)
        )

    def to_json(self) -> dict[str, Any]:
        """The pins as given, for plan.json."""
        out: dict[str, Any] = {
            k: getattr(self, k)
            for k in ("tp", "pp", "dp", "kind", "recompute", "rule", "sp", "v", "cp", "ep")
            if getattr(self, k) is not None
        }
        if self.stages:
            out["stages"] = {str(j): dict(v) for j, v in sorted(self.stages.items())}
        return out


def _positive(key: str, value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise OptionError(f"--pin {key}={value}: not an integer") from None
    if n < 1:
        raise OptionError(f"--pin {key}={value}: must be at least 1")
    return n


def _flag(key: str, value: str) -> bool:
    if value.lower() not in _BOOLS:
        raise OptionError(f"--pin {key}={value}: use on or off")
    return _BOOLS[value.lower()]


def parse_pins(items: Iterable[str]) -> Pins:
    """``--pin tp=8,pp=4 --pin stage0.kind=H20 --pin stage0.blocks=30`` -> :class:`Pins`.

    ``rule=split`` makes tensor-parallel stages split every op they can (batch first),
    not only Megatron's weight products: for graphs that are not transformers.
    """
    values: dict[str, Any] = {}
    stages: dict[int, dict[str, str | int | bool]] = {}
    for item in items:
        for part in item.split(","):
            key, sep, value = part.partition("=")
            key, value = key.strip(), value.strip()
            if not sep or not key or not value:
                raise OptionError(f"--pin {part!r}: expected NAME=VALUE (e.g. tp=8,pp=4)")
            if key.startswith("stage") and "." in key:
                idx, _, sub = key[5:].partition(".")
                if not idx.isdigit() or sub not in _STAGE_KEYS:
                    raise OptionError(
                        f"--pin {key}: expected stageN.kind, stageN.tp, stageN.blocks, "
                        "stageN.recompute or stageN.sp"
                    )
                if sub == "recompute" and value not in RECOMPUTES:
                    raise OptionError(f"--pin {key}={value}: use one of {', '.join(RECOMPUTES)}")
                stages.setdefault(int(idx), {})[sub] = (
                    value
                    if sub in ("kind", "recompute")
                    else _flag(key, value)
                    if sub == "sp"
                    else _positive(key, value)
                )
            elif key in ("tp", "pp", "dp", "v", "cp", "ep"):
                values[key] = _positive(key, value)
            elif key == "kind":
                values[key] = value
            elif key == "sp":
                values[key] = _flag(key, value)
            elif key == "recompute":
                if value not in RECOMPUTES:
                    raise OptionError(
                        f"--pin recompute={value}: use one of {', '.join(RECOMPUTES)}"
                    )
                values[key] = value
            elif key == "rule":
                if value not in TP_RULES:
                    raise OptionError(f"--pin rule={value}: use one of {', '.join(TP_RULES)}")
                values[key] = value
            else:
                raise OptionError(
                    f"--pin {key}: unknown; pin tp, pp, dp, v, cp, ep, kind, recompute, rule, sp"
                    " or stageN.(kind|tp|blocks|recompute|sp)"
                )
    if values.get("pp") is not None:
        for j in stages:
            if j >= values["pp"]:
                raise OptionError(f"--pin stage{j}.*: there are only pp={values['pp']} stages")
    return Pins(stages={j: dict(v) for j, v in sorted(stages.items())}, **values)


DEFAULT_RESERVE: str = default("memory_reserve")
"""Memory held back per device by the CLI and the API unless told otherwise: the CUDA
context and cuBLAS/cuDNN workspaces (~0.5-1 GB), NCCL's channel buffers (~0.5-2 GB,
more with NVLS), and the caching allocator's fragmentation (a few % of what it holds);
5 % of an 80 GB device is 4 GB."""


@dataclass(frozen=True)
class MemoryReserve:
    """Memory per device no plan may use: a fraction of capacity plus fixed bytes."""

    fraction: float = 0.0
    nbytes: float = 0.0
    text: str = "0"
    """As the user wrote it (plan.json records it)."""

    def usable(self, capacity: float) -> float:
        """What is left of ``capacity`` bytes for weights, state and activations."""
        return capacity * (1.0 - self.fraction) - self.nbytes


def parse_reserve(text: str) -> MemoryReserve:
    """``--memory-reserve``: ``0.05`` or ``5%`` (a fraction of each device's memory),
    ``4GB`` / ``4GiB`` (bytes per device), or both joined by ``+`` (``2%+1GB``).
    """
    fraction, nbytes = 0.0, 0.0
    for part in str(text).replace(" ", "").split("+"):
        low = part.lower()
        try:
            if low.endswith("%"):
                fraction += float(low[:-1]) / 100
            elif low.endswith("gib"):
                nbytes += float(low[:-3]) * 2**30
            elif low.endswith("gb"):
                nbytes += float(low[:-2]) * 1e9
            else:
                value = float(low)
                if not 0 <= value < 1:
                    raise ValueError
                fraction += value
        except ValueError:
            raise OptionError(
                f"--memory-reserve {text}: expected a fraction below 1 (0.05), a percentage "
                "(5%) or bytes (4GB, 4GiB)"
            ) from None
    if fraction < 0 or nbytes < 0 or fraction >= 1:
        raise OptionError(f"--memory-reserve {text}: must leave some memory and not be negative")
    return MemoryReserve(fraction, nbytes, str(text))


@dataclass(frozen=True)
class PartitionOptions:
    """How to search: objective, batch, schedule, pins and solver limits."""

    objective: str = default("objective")
    microbatches: int | None = None
    """Micro-batches per pipeline per step (default 8 for training and throughput)."""
    global_batch: int | None = None
    """Samples per step; fixes micro-batches per replica to ``B / (dp · b)``."""
    schedule: str = default("schedule")
    zero: int = default("zero")
    """ZeRO stage of the data-parallel optimizer state (Megatron's distributed optimizer is 1)."""
    pins: Pins = field(default_factory=Pins)
    max_stages: int = default("max_stages")
    time_limit: float = default("time_limit")
    """Deterministic solver time for the whole search (CP-SAT's own clock, ~seconds)."""
    seed: int = default("seed")
    warm_start: Mapping[str, Any] | None = None
    """The ``partition`` section of an earlier plan.json: its plan seeds the search."""
    memory_reserve: MemoryReserve = field(default_factory=MemoryReserve)
    """Memory per device held back from the plan (:data:`DEFAULT_RESERVE` from the CLI
    and the API; none here, so the solver's own tests see exact capacities)."""
    cp_comm: str = default("cp_comm")
    """How context parallelism moves K and V: ``allgather`` or ``ring``
    (:mod:`shardc.partition.ring`)."""

    def __post_init__(self) -> None:
        # defaults and checks are the option table's (shardc.vocabulary.OPTIONS)
        check_options(self, ("objective", "schedule", "microbatches", "global_batch"))
        if self.microbatches and self.global_batch:
            raise OptionError("give --microbatches or --global-batch, not both")
        check_options(self, ("zero", "time_limit", "max_stages", "cp_comm"))
