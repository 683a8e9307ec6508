"""Units of the topology language and their conversion to SI base units.

Every number a topology file gives for hardware carries a unit, and the unit must fit the
property: a bandwidth in ``GB`` (not ``GB/s``) is a mistake worth an error, because a
silent factor between bytes and bytes/second, or bits and bytes, would poison every cost
estimate downstream. Internally everything is SI base units: bytes, bytes/s, FLOP/s and
seconds. Conversion is exact (:class:`~fractions.Fraction`), so ``1.6 TB/s`` and
``1600 GB/s`` give the same float bit for bit and canonical forms compare equal.
"""

from __future__ import annotations

from fractions import Fraction

COMPUTE = "compute"  # operations per second (FLOP/s or integer OP/s)
SIZE = "size"  # bytes
BANDWIDTH = "bandwidth"  # bytes per second, per direction
TIME = "time"  # seconds

_DEC = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
_BIN = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def _table() -> dict[str, tuple[str, Fraction]]:
    units: dict[str, tuple[str, Fraction]] = {}
    for prefix, factor in {**_DEC, **_BIN}.items():
        units[f"{prefix}B"] = (SIZE, Fraction(factor))
        units[f"{prefix}B/s"] = (BANDWIDTH, Fraction(factor))
    for prefix in ("", "K", "M", "G", "T", "P"):
        units[f"{prefix}b/s"] = (BANDWIDTH, Fraction(_DEC[prefix], 8))  # bits, not bytes
    for prefix in ("", "G", "T", "P", "E"):
        units[f"{prefix}FLOPS"] = (COMPUTE, Fraction(_DEC[prefix]))
    for prefix in ("G", "T", "P"):
        units[f"{prefix}OPS"] = (COMPUTE, Fraction(_DEC[prefix]))
    units.update(
        {
            "s": (TIME, Fraction(1)),
            "ms": (TIME, Fraction(1, 10**3)),
            "us": (TIME, Fraction(1, 10**6)),
            "µs": (TIME, Fraction(1, 10**6)),
            "ns": (TIME, Fraction(1, 10**9)),
        }
    )
    units.pop("b/s")  # bare bits per second is never what anyone means
    return units


#: unit spelling -> (dimension, factor to the SI base unit)
UNITS: dict[str, tuple[str, Fraction]] = _table()

#: integer-operation units, accepted only for integer dtypes
OPS_UNITS = frozenset(u for u in UNITS if u.endswith("OPS") and not u.endswith("FLOPS"))

EXAMPLES = {
    COMPUTE: "312 TFLOPS",
    SIZE: "80 GB",
    BANDWIDTH: "450 GB/s",
    TIME: "2 us",
}


class UnitError(Exception):
    """A unit problem; the caller turns it into a located TopologyError."""

    def __init__(self, message: str, hint: str | None = None, *, at_unit: bool = True):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.at_unit = at_unit


def dimension_of(unit: str) -> str | None:
    """The dimension a unit measures, or ``None`` if it is not a unit."""
    entry = UNITS.get(unit)
    return entry[0] if entry else None


def to_si(number: Fraction, unit: str | None, dim: str, what: str) -> float:
    """``number unit`` in SI base units, checking that ``unit`` measures ``dim``.

    ``what`` names the property for messages (``"memory_bandwidth"``).
    """
    if unit is None:
        raise UnitError(
            f"{what} needs a unit", f"write e.g. '{what} {EXAMPLES[dim]}'", at_unit=False
        )
    got = UNITS.get(unit)
    if got is None:
        raise UnitError(f"unknown unit '{unit}'", suggest_unit(unit, dim))
    if got[0] != dim:
        raise UnitError(
            f"{what} needs a {dim} but '{unit}' is a {got[0]}", _wrong_dim_hint(unit, dim)
        )
    return float(number * got[1])


def _wrong_dim_hint(unit: str, dim: str) -> str:
    if dim == BANDWIDTH and unit.endswith("B"):
        return f"did you mean '{unit}/s'? a bandwidth is per second"
    if dim == SIZE and unit.endswith("B/s"):
        return f"did you mean '{unit[:-2]}'? a size has no '/s'"
    if dim == SIZE and unit.endswith("b/s"):
        return f"'{unit}' is bits per second; sizes are in bytes (GB, GiB)"
    return f"write e.g. {EXAMPLES[dim]}"


def suggest_unit(word: str, dim: str | None = None) -> str:
    """A hint for a misspelt unit: case mistakes, 'ps' suffixes, near misses."""
    candidates = [u for u, (d, _) in UNITS.items() if dim is None or d == dim]
    lowered = [u for u in candidates if u.lower() == word.lower()]
    if word.endswith("ps") and word[:-2] + "/s" in UNITS:
        lowered.append(word[:-2] + "/s")
    if lowered:
        hint = "did you mean " + " or ".join(repr(u) for u in sorted(set(lowered))) + "?"
        return hint + " units are case-sensitive: 'GB/s' is bytes, 'Gb/s' is bits"
    import difflib

    close = difflib.get_close_matches(word, candidates, n=3, cutoff=0.5)
    if close:
        return "did you mean " + " or ".join(repr(u) for u in close) + "?"
    return "units: " + ", ".join(u for u in sorted(candidates) if u != "µs")


# ---------------------------------------------------------------- formatting
_HUMAN = {
    COMPUTE: [("EFLOPS", 1e18), ("PFLOPS", 1e15), ("TFLOPS", 1e12), ("GFLOPS", 1e9), ("FLOPS", 1)],
    SIZE: [("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3), ("B", 1)],
    BANDWIDTH: [("PB/s", 1e15), ("TB/s", 1e12), ("GB/s", 1e9), ("MB/s", 1e6), ("B/s", 1)],
    TIME: [("s", 1), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9)],
}


def human(value: float | None, dim: str, digits: int = 4) -> str:
    """A readable rendering (``'312 TFLOPS'``, ``'936.2 ns'``) for tables, not for parsing."""
    if value is None:
        return "-"
    if value == float("inf"):
        return "inf"
    for unit, factor in _HUMAN[dim]:
        if abs(value) >= factor or factor == _HUMAN[dim][-1][1]:
            return f"{value / factor:.{digits}g} {unit}"
    return f"{value:g}"  # pragma: no cover


_EXACT_ORDER = {
    COMPUTE: ["TFLOPS", "PFLOPS", "GFLOPS", "FLOPS"],
    SIZE: ["GB", "GiB", "TB", "MB", "MiB", "B"],
    BANDWIDTH: ["GB/s", "TB/s", "Gb/s", "MB/s", "GiB/s", "TiB/s", "B/s"],
    TIME: ["us", "ns", "ms", "s"],
}


def exact(value: float, dim: str) -> str:
    """``value`` as ``'<number> <unit>'`` that parses back to exactly the same float.

    Used by the canonical text form; prefers the unit a person would write.
    """
    for unit in _EXACT_ORDER[dim]:
        factor = UNITS[unit][1]
        text = repr(value / float(factor))
        if "inf" in text or "nan" in text:
            continue
        if float(Fraction(text) * factor) == value and len(text.lstrip("-")) <= 18:
            return f"{_trim(text)} {unit}"
    return f"{value!r} {_EXACT_ORDER[dim][-1]}"  # pragma: no cover - base unit always fits


def _trim(text: str) -> str:
    return text[:-2] if text.endswith(".0") else text
