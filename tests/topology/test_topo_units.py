"""Units: exact conversion to SI base units, dimension checks, formatting."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardc.topology import units


@pytest.mark.parametrize(
    ("number", "unit", "dim", "expected"),
    [
        ("312", "TFLOPS", units.COMPUTE, 312e12),
        ("1.5", "PFLOPS", units.COMPUTE, 1.5e15),
        ("624", "TOPS", units.COMPUTE, 624e12),
        ("80", "GB", units.SIZE, 80e9),
        ("64", "GiB", units.SIZE, 64 * 2**30),
        ("1", "TiB", units.SIZE, 2**40),
        ("450", "GB/s", units.BANDWIDTH, 450e9),
        ("3.35", "TB/s", units.BANDWIDTH, 3.35e12),
        ("200", "Gb/s", units.BANDWIDTH, 25e9),  # bits
        ("400", "Gb/s", units.BANDWIDTH, 50e9),
        ("1.6", "TiB/s", units.BANDWIDTH, 1.6 * 2**40),
        ("936.25", "ns", units.TIME, 936.25e-9),
        ("1.5", "us", units.TIME, 1.5e-6),
        ("1.5", "µs", units.TIME, 1.5e-6),
        ("2", "ms", units.TIME, 2e-3),
    ],
)
def test_to_si(number, unit, dim, expected) -> None:
    assert units.to_si(Fraction(number), unit, dim, "x") == pytest.approx(expected, rel=1e-15)


def test_conversion_is_exact_so_spellings_agree() -> None:
    assert units.to_si(Fraction("1.6"), "TB/s", units.BANDWIDTH, "x") == units.to_si(
        Fraction(1600), "GB/s", units.BANDWIDTH, "x")
    assert units.to_si(Fraction(3600), "Gb/s", units.BANDWIDTH, "x") == 450e9


@pytest.mark.parametrize(
    ("unit", "dim", "fragment"),
    [
        ("GB", units.BANDWIDTH, "did you mean 'GB/s'"),
        ("GB/s", units.SIZE, "did you mean 'GB'"),
        ("Gb/s", units.SIZE, "bits per second"),
        ("TFLOPS", units.TIME, "2 us"),
    ],
)
def test_wrong_dimension_hints(unit, dim, fragment) -> None:
    with pytest.raises(units.UnitError) as info:
        units.to_si(Fraction(1), unit, dim, "x")
    assert fragment in info.value.hint


def test_missing_and_misspelt_units() -> None:
    with pytest.raises(units.UnitError, match="needs a unit"):
        units.to_si(Fraction(1), None, units.SIZE, "memory")
    assert "'GB/s' or 'Gb/s'" in units.suggest_unit("gb/s", units.BANDWIDTH)
    assert "'Gb/s'" in units.suggest_unit("Gbps", units.BANDWIDTH)
    assert "'TFLOPS'" in units.suggest_unit("TFLOP", units.COMPUTE)


@given(st.floats(min_value=1e-12, max_value=1e20, allow_nan=False, allow_infinity=False),
       st.sampled_from([units.COMPUTE, units.SIZE, units.BANDWIDTH, units.TIME]))
def test_exact_rendering_round_trips(value: float, dim: str) -> None:
    number, unit = units.exact(value, dim).split(" ")
    assert units.to_si(Fraction(number), unit, dim, "x") == value


def test_human_rendering() -> None:
    assert units.human(312e12, units.COMPUTE) == "312 TFLOPS"
    assert units.human(936.25e-9, units.TIME) == "936.2 ns"
    assert units.human(None, units.SIZE) == "-"
    assert units.exact(450e9, units.BANDWIDTH) == "450 GB/s"
