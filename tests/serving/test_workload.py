"""Serving workload options: durations, fractions, length distributions, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shardc.errors import OptionError
from shardc.serving import parse_duration, workload


@pytest.mark.parametrize(("text", "seconds"), [("50ms", 0.05), ("1.5s", 1.5), ("200us", 2e-4),
                                               ("20", 0.02), (" 3e1 ms ", 0.03)])
def test_durations_take_units_and_default_to_milliseconds(text: str, seconds: float) -> None:
    assert parse_duration(text, "--tpot") == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["fast", "50 min", "-3ms", "0ms", ""])
def test_bad_durations_name_the_flag(text: str) -> None:
    with pytest.raises(OptionError, match=r"^--tpot "):
        parse_duration(text, "--tpot")


def test_fixed_lengths_and_derived_means() -> None:
    wl = workload(isl=4000, osl=500, prefix_hit="50%", tpot="50ms", ttft="2s", rate=3.0)
    assert (wl.isl, wl.osl, wl.new_prompt_tokens) == (4000, 500, 2000)
    assert wl.max_context == 4500 and wl.mean_decode_context == 4250
    assert (wl.tpot, wl.ttft, wl.rate) == (0.05, 2.0, 3.0)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"isl": 10}, "serving needs --isl and --osl"),
    ({"isl": 10, "osl": 0}, "--osl: must be a positive integer"),
    ({"isl": 10, "osl": 5, "rate": 1.0, "concurrency": 4}, "not both"),
    ({"isl": 10, "osl": 5, "rate": -1.0}, "--request-rate -1.0"),
    ({"isl": 10, "osl": 5, "prefix_hit": "1.5"}, "--prefix-hit '1.5'"),
    ({"isl": 10, "osl": 5, "prefix_hit": "lots"}, "expected a fraction"),
])
def test_bad_workloads_are_one_line_option_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(OptionError, match=message) as err:
        workload(**kwargs)
    assert "\n" not in str(err.value)


def test_distribution_files_weight_the_means(tmp_path: Path) -> None:
    csv = tmp_path / "lengths.csv"
    csv.write_text("isl,osl,weight\n1000,100,3\n5000,500,1\n")
    wl = workload(lengths=csv)
    assert wl.isl == pytest.approx(2000) and wl.osl == pytest.approx(200)
    assert wl.max_context == 5500
    js = tmp_path / "lengths.json"
    js.write_text(json.dumps([{"isl": 1000, "osl": 100, "weight": 3},
                              {"isl": 5000, "osl": 500}]))
    assert workload(lengths=js).isl == pytest.approx(2000)


def test_bad_distribution_rows_say_where(tmp_path: Path) -> None:
    csv = tmp_path / "bad.csv"
    csv.write_text("isl,osl\n1000,100\n1000,x\n")
    with pytest.raises(OptionError, match=r"bad.csv:3: 'x' is not an integer"):
        workload(lengths=csv)
    with pytest.raises(OptionError, match="replaces --isl/--osl"):
        workload(lengths=csv, isl=5)
