"""What the user asked of the compiler, as plan.json's ``options`` records it.

The options themselves (name, default, help, allowed values) are declared once, in
:data:`shardc.vocabulary.OPTIONS`; :class:`PlanOptions` is that table as a frozen record,
checked on construction, and the CLI (``shardc compile``'s flags) and the API
(:func:`shardc.compile`'s keywords) both build one. It turns into the partitioner's
:class:`~shardc.partition.options.PartitionOptions` (pins parsed, the reserve and the
warm start read) and into plan.json's ``options``, and back from a saved plan
(:meth:`PlanOptions.replaying`).

Why not in :mod:`shardc.build`: the CLI and the API read the options before they build,
and the record is the options' business, not the build's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from shardc.errors import OptionError
from shardc.partition.options import PartitionOptions, parse_pins, parse_reserve
from shardc.vocabulary import OPTIONS, check_options, default


def read_json(path: Path, flag: str) -> Any:
    """A JSON file named by ``flag``, or a one-line error saying what is wrong with it."""
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise OptionError(f"{flag} {path}: {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise OptionError(f"{flag} {path}: not JSON ({exc})") from None


def warm_start_section(path: Path | None) -> dict[str, Any] | None:
    """The ``partition`` section of an earlier plan.json (or of a bare partition dump)."""
    if path is None:
        return None
    data = read_json(path, "--warm-start")
    section = data.get("partition", data) if isinstance(data, dict) else None
    if not isinstance(section, dict) or "stages" not in section or "dp" not in section:
        raise OptionError(
            f"--warm-start {path}: no plan in it", hint="pass a plan.json written by compile"
        )
    return section


def complete_pins(part: Mapping[str, Any]) -> list[str]:
    """Pins that leave the solver nothing to choose: the plan itself."""
    out = [f"pp={part['pp']},dp={part['dp']}"]
    if part.get("interleave", 1) > 1:
        out.append(f"v={part['interleave']}")
    if part.get("pins", {}).get("rule"):
        out.append(f"rule={part['pins']['rule']}")
    for st in part["stages"]:
        j = st["index"]
        out += [
            f"stage{j}.kind={st['kind']}",
            f"stage{j}.tp={st['tp']}",
            f"stage{j}.blocks={st['blocks'][1] - st['blocks'][0] + 1}",
            f"stage{j}.recompute={st['recompute']}",
        ]
        if st.get("sequence_parallel"):
            out.append(f"stage{j}.sp=on")
    return out


@dataclass(frozen=True)
class PlanOptions:
    """What the user asked of the compiler: one field per :data:`OPTIONS` entry, same
    name, same default; checked against the table when made.
    """

    mode: str = default("mode")
    objective: str = default("objective")
    microbatches: int | None = default("microbatches")
    global_batch: int | None = default("global_batch")
    schedule: str = default("schedule")
    zero: int = default("zero")
    pins: tuple[str, ...] = default("pins")
    """``KEY=VALUE[,...]`` items as ``--pin`` takes them."""
    recompute: str | None = default("recompute")
    dtype: str | None = default("dtype")
    """The precision the plan is priced in (``fp32``, ``bf16``, ``fp16``, ``fp8``), or None
    for the model's own types (:mod:`shardc.cost.precision`)."""
    time_limit: float = default("time_limit")
    seed: int = default("seed")
    max_stages: int = default("max_stages")
    memory_reserve: str = default("memory_reserve")
    """Memory per device held back from the plan (``--memory-reserve``)."""
    warm_start: str | None = default("warm_start")
    """Path of an earlier plan.json that seeds the solver."""
    cp_comm: str = default("cp_comm")
    """How context parallelism moves K and V (``allgather`` or ``ring``)."""

    def __post_init__(self) -> None:
        check_options(self, OPTIONS)

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> PlanOptions:
        """From ``{name: value}`` holding every option (the CLI's parsed flags)."""
        return cls(**{name: values[name] for name in OPTIONS})

    def partition_options(self) -> PartitionOptions:
        """The partitioner's options (validates every value)."""
        items = list(self.pins) + ([f"recompute={self.recompute}"] if self.recompute else [])
        return PartitionOptions(
            objective=self.objective,
            microbatches=self.microbatches,
            global_batch=self.global_batch,
            schedule=self.schedule,
            zero=self.zero,
            pins=parse_pins(items),
            max_stages=self.max_stages,
            time_limit=self.time_limit,
            seed=self.seed,
            warm_start=warm_start_section(Path(self.warm_start) if self.warm_start else None),
            memory_reserve=parse_reserve(self.memory_reserve),
            cp_comm=self.cp_comm,
        )

    def to_json(self, partition: PartitionOptions) -> dict[str, Any]:
        """plan.json's ``options``: every recorded option (pins as parsed, so equal pins
        read equal).
        """
        out = {name: getattr(self, name) for name, o in OPTIONS.items()
               if o.recorded and not (o.sparse and getattr(self, name) == o.default)}
        out["pins"] = partition.pins.to_json()
        return out

    @classmethod
    def replaying(cls, plan: Mapping[str, Any]) -> PlanOptions:
        """Options that make the solver re-find ``plan`` exactly (every choice pinned).

        Options a plan does not record take the value that plan was made with: plans
        from before ``--dtype`` priced the model's own types, and those from before
        ``--memory-reserve`` reserved none.
        """
        saved = {**RECORDED_BEFORE, **plan["options"]}
        kept = {f.name for f in fields(cls)} - {"pins", "recompute", "warm_start"}
        return cls(
            pins=tuple(complete_pins(plan["partition"])),
            **{name: saved[name] for name in sorted(kept)},
        )


RECORDED_BEFORE: Mapping[str, Any] = {"dtype": None, "memory_reserve": "0",
                                      "cp_comm": default("cp_comm")}
"""What a plan that predates an option was made with (see :meth:`PlanOptions.replaying`)."""
