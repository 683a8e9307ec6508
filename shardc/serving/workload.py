"""What a serving plan is solved for: the requests, their arrival, the latency targets.

One frozen :class:`Workload`, validated once; every bad value is an
:class:`~shardc.errors.OptionError` naming the flag (one line, exit 2). Lengths are a
fixed ``--isl``/``--osl`` pair or a distribution file of weighted ``isl,osl`` rows (CSV
with a header, or JSON ``[{"isl":…, "osl":…, "weight":…}]``); the plan is priced at the
weighted means of the prompt and output lengths and of the context a decode step sees,
which is what throughput depends on to first order.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shardc.errors import OptionError

_TIME = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(us|µs|ms|s)?\s*$")
_SCALE = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0}


def parse_duration(text: str, flag: str) -> float:
    """``50ms`` / ``0.05s`` / ``200us`` -> seconds; a bare number is milliseconds."""
    m = _TIME.match(text)
    if not m:
        raise OptionError(f"{flag} {text!r}: expected a duration such as 50ms, 1.5s or 200us")
    value = float(m.group(1)) * _SCALE[m.group(2) or "ms"]
    if not (value > 0 and math.isfinite(value)):
        raise OptionError(f"{flag} {text!r}: must be positive")
    return value


def parse_fraction(text: str | float, flag: str) -> float:
    """``0.56`` or ``56%`` -> 0.56, within [0, 1)."""
    raw = str(text).strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise OptionError(f"{flag} {text!r}: expected a fraction such as 0.5 or 50%") from None
    if not 0.0 <= value < 1.0:
        raise OptionError(f"{flag} {text!r}: must be at least 0 and below 1")
    return value


@dataclass(frozen=True, slots=True)
class LengthBin:
    """One row of a length distribution."""

    isl: int
    osl: int
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class Workload:
    """Requests and targets; ``rate`` or ``concurrency`` (or neither: fill the pool)."""

    lengths: tuple[LengthBin, ...]
    rate: float | None = None
    """Requests per second the plan must sustain."""
    concurrency: int | None = None
    """Requests in flight the plan must hold."""
    prefix_hit: float = 0.0
    """Fraction of prompt tokens found in the prefix cache (not recomputed)."""
    ttft: float | None = None
    tpot: float | None = None
    source: str = "--isl/--osl"
    extra: tuple[tuple[str, Any], ...] = field(default=())

    @property
    def _w(self) -> float:
        return sum(b.weight for b in self.lengths)

    @property
    def isl(self) -> float:
        """Mean prompt length (tokens)."""
        return sum(b.isl * b.weight for b in self.lengths) / self._w

    @property
    def osl(self) -> float:
        """Mean output length (tokens)."""
        return sum(b.osl * b.weight for b in self.lengths) / self._w

    @property
    def new_prompt_tokens(self) -> float:
        """Prompt tokens prefill computes per request (the cache hits are read, not computed)."""
        return self.isl * (1.0 - self.prefix_hit)

    @property
    def max_context(self) -> int:
        """Longest prompt + output: what one sequence's KV cache must hold."""
        return max(b.isl + b.osl for b in self.lengths)

    @property
    def mean_decode_context(self) -> float:
        """Mean KV length a decode step attends over, weighted by output tokens."""
        num = sum(b.weight * b.osl * (b.isl + b.osl / 2) for b in self.lengths)
        return num / sum(b.weight * b.osl for b in self.lengths)

    def as_dict(self) -> dict[str, Any]:
        """Plain data for plan JSON."""
        return {
            "source": self.source, "isl": round(self.isl, 3), "osl": round(self.osl, 3),
            "bins": len(self.lengths), "rate": self.rate, "concurrency": self.concurrency,
            "prefix_hit": self.prefix_hit, "ttft_target_s": self.ttft,
            "tpot_target_s": self.tpot, "max_context": self.max_context,
            "mean_decode_context": round(self.mean_decode_context, 3),
        }


def _positive_int(value: Any, where: str) -> int:
    try:
        n = int(str(value).replace("_", ""))
    except ValueError:
        raise OptionError(f"{where}: {value!r} is not an integer") from None
    if n <= 0:
        raise OptionError(f"{where}: must be a positive integer, got {n}")
    return n


def read_distribution(path: Path) -> tuple[LengthBin, ...]:
    """Weighted ``isl,osl[,weight]`` rows from a CSV (with header) or JSON list."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise OptionError(f"--lengths {path}: cannot read ({exc.strerror})") from None
    rows: list[dict[str, Any]]
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise OptionError(f"--lengths {path}:{exc.lineno}:{exc.colno}: {exc.msg}") from None
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise OptionError(f"--lengths {path}: expected a JSON list of objects with isl, osl")
        rows = data
    else:
        rows = list(csv.DictReader(text.splitlines()))
    bins = []
    for i, row in enumerate(rows, start=2 if path.suffix != ".json" else 0):
        where = f"--lengths {path}:{i}" if path.suffix != ".json" else f"--lengths {path}[{i}]"
        if "isl" not in row or "osl" not in row:
            raise OptionError(f"{where}: needs isl and osl columns")
        weight = float(row.get("weight") or 1.0)
        if not (weight > 0 and math.isfinite(weight)):
            raise OptionError(f"{where}: weight must be positive")
        bins.append(LengthBin(_positive_int(row["isl"], where), _positive_int(row["osl"], where),
                              weight))
    if not bins:
        raise OptionError(f"--lengths {path}: no rows")
    return tuple(bins)


def workload(
    *,
    isl: int | None = None,
    osl: int | None = None,
    lengths: Path | None = None,
    rate: float | None = None,
    concurrency: int | None = None,
    prefix_hit: str | float = 0.0,
    ttft: str | None = None,
    tpot: str | None = None,
) -> Workload:
    """Validate the serving options into a :class:`Workload`."""
    if lengths is not None:
        if isl is not None or osl is not None:
            raise OptionError("--lengths replaces --isl/--osl: give one or the other")
        bins = read_distribution(lengths)
        source = str(lengths)
    else:
        if isl is None or osl is None:
            raise OptionError("serving needs --isl and --osl (or --lengths FILE)",
                              hint="e.g. --isl 4000 --osl 500")
        bins = (LengthBin(_positive_int(isl, "--isl"), _positive_int(osl, "--osl")),)
        source = "--isl/--osl"
    if rate is not None and concurrency is not None:
        raise OptionError("give --request-rate or --concurrency, not both")
    if rate is not None and not (rate > 0 and math.isfinite(rate)):
        raise OptionError(f"--request-rate {rate}: must be a positive number of requests/s")
    if concurrency is not None:
        concurrency = _positive_int(concurrency, "--concurrency")
    return Workload(
        lengths=bins, rate=rate, concurrency=concurrency,
        prefix_hit=parse_fraction(prefix_hit, "--prefix-hit"),
        ttft=parse_duration(ttft, "--ttft") if ttft is not None else None,
        tpot=parse_duration(tpot, "--tpot") if tpot is not None else None,
        source=source,
    )
