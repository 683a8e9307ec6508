"""Hostile topology input (issue 18): every mistake a located error, never a crash or a hang.

Each case here was, before the fix, an OverflowError, RecursionError, lark VisitError,
MemoryError, ValueError, a quadratic blow-up, or a file that passed ``topo check`` and
then crashed ``compile``. The limits themselves live in :mod:`shardc.topology.limits`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from shardc.cli.main import cli
from shardc.errors import OptionError, TopologyError
from shardc.topology import limits, load_topology
from shardc.topology.syntax import Pos
from shardc.topology.values import Env

KIND = "kind a { compute bf16 1 TFLOPS; memory 1 GB; memory_bandwidth 1 GB/s }\n"
SWITCH = "switch s: nvlink { members gpu[*]; bandwidth 1 GB/s; latency 1 us }\n"
BASE = "let n = 3\n" + KIND + "gpu[0..n]: a\n" + SWITCH


def _fails(text: str, overrides: dict | None = None) -> TopologyError:
    with pytest.raises(TopologyError) as info:
        load_topology(text, overrides)
    return info.value


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        (KIND.replace("memory 1 GB", "memory 1e308 GB") + "gpu: a\n", 1, "out of range"),
        (KIND.replace("}", "; efficiency compute 1e309 }") + "gpu: a\n", 1, "out of range"),
        ("let x = 1e999999999\n" + KIND + "gpu: a\n", 1, "out of range"),
        ("let x = " + "9" * 4301 + "\n" + KIND + "gpu: a\n", 1, "number literal of 4301"),
        ("let x = 1e20\nlet y = x * x\n" + KIND + "gpu: a\n", 2, "out of range"),
    ],
    ids=["memory", "efficiency", "exponent", "digits", "product"],
)
def test_numbers_beyond_the_limits_are_located_errors(text: str, line: int, fragment: str) -> None:
    err = _fails(text)
    assert fragment in str(err) and err.line == line and err.column is not None


def test_deep_expressions_and_nesting_are_refused_before_they_recurse() -> None:
    sums = _fails("let x = " + "+".join(["1"] * 500) + "\n" + BASE)
    assert "expression nested more than" in str(sums) and sums.line == 1
    opens = "".join(f"g{i} {{\n" for i in range(250))
    nested = _fails(KIND + opens + "x: a\n" + "}\n" * 250)
    assert "blocks nested more than 32 deep" in str(nested) and nested.line == 2 + 32
    # within the limits both load
    load_topology("let x = " + "+".join(["1"] * 90) + "\n" + BASE)
    load_topology(KIND + "".join(f"g{i} {{\n" for i in range(20)) + "x: a\n" + "}\n" * 20)


def test_include_chains_deeper_than_the_limit_are_refused(tmp_path: Path) -> None:
    depth = limits.MAX_INCLUDE_DEPTH + 8
    for i in range(depth):
        (tmp_path / f"f{i}.topo").write_text(f'include "f{i + 1}.topo"\n')
    (tmp_path / f"f{depth}.topo").write_text(BASE)
    err = _fails(str(tmp_path / "f0.topo"))
    assert f"includes nested more than {limits.MAX_INCLUDE_DEPTH} deep" in str(err)
    (tmp_path / "f10.topo").write_text(BASE)  # a chain of ten is fine
    assert len(load_topology(tmp_path / "f0.topo").devices) == 4


BAD_OVERRIDES = [float("inf"), float("nan"), None, [4], 10**5000, "1e30", 10**30,
                 "1e99999999", "inf", "nan"]


@pytest.mark.parametrize("value", BAD_OVERRIDES, ids=[f"o{i}" for i in range(len(BAD_OVERRIDES))])
def test_bad_overrides_through_the_api_are_option_errors(value: object) -> None:
    with pytest.raises(OptionError):
        load_topology(BASE, {"n": value})  # type: ignore[dict-item]


def test_range_ends_beyond_the_device_limit_are_refused_before_allocating() -> None:
    start = time.perf_counter()
    for text, overrides in ((BASE.replace("0..n", "0..1e9"), None), (BASE, {"n": 2**63}),
                            (BASE, {"n": "1e29"})):
        err = _fails(text, overrides)
        assert "more than 1,000,000 indices" in str(err) and err.line == 3
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize(
    ("limit", "value", "text", "fragment"),
    [
        ("MAX_DEVICES", 50, KIND + "n[0..9] { gpu[0..7]: a }\n" + SWITCH.replace("gpu", "n"),
         "more than 50 devices"),
        ("MAX_GROUP_INSTANCES", 100, KIND + "a[0..99] { b[0..99] { } }\ngpu: a\n",
         "more than 100 group instances"),
        ("MAX_LINKS", 3, BASE, "more than 3 links"),
        ("MAX_SWITCHES", 1, BASE + SWITCH.replace("s:", "t:"), "more than 1 switches"),
        ("MAX_SELECTED", 6, BASE + SWITCH.replace("s:", "t:"), "pattern matches"),
    ],
)
def test_running_totals_are_limited_across_groups(
    monkeypatch: pytest.MonkeyPatch, limit: str, value: int, text: str, fragment: str
) -> None:
    """Nested groups multiply: the running totals are checked, not each range alone."""
    monkeypatch.setattr(limits, limit, value)
    err = _fails(text)
    assert fragment in str(err) and err.line is not None


@pytest.mark.parametrize(
    ("old", "new", "what"),
    [
        ("bandwidth 1 GB/s", "bandwidth 0 GB/s", "bandwidth must be greater than zero"),
        ("bandwidth 1 GB/s", "bandwidth 0 - 1 GB/s", "bandwidth must be greater than zero"),
        ("latency 1 us", "latency 0 - 1 us", "latency must be at least zero"),
        ("compute bf16 1 TFLOPS", "compute bf16 0 TFLOPS", "compute must be greater than zero"),
        ("memory 1 GB", "memory 0 GB", "memory must be greater than zero"),
        ("memory_bandwidth 1 GB/s", "memory_bandwidth 0 GB/s", "memory_bandwidth must be"),
        ("members gpu[*]", "members gpu[*] 0 Gb/s", "members must be greater than zero"),
    ],
)
def test_zero_and_negative_rates_are_refused_at_check_time(old: str, new: str, what: str) -> None:
    err = _fails(BASE.replace(old, new))
    assert what in str(err) and err.line in (2, 4) and err.column is not None


def test_zero_latency_is_fine() -> None:
    load_topology(BASE.replace("latency 1 us", "latency 0 us"))


def test_kinds_extending_one_another_build_linearly_without_recursion() -> None:
    """5,000 kinds in one ``extends`` chain: was a RecursionError (and quadratic)."""
    chain = "".join(f"kind k{i} extends k{i - 1} {{ }}\n" for i in range(1, 5000))
    topo = load_topology(KIND.replace("kind a", "kind k0") + chain + "gpu: k4999\n")
    assert topo.devices[0].kind.peak_flops == {"bf16": 1e12}
    err = _fails(KIND + "kind b extends c { }\nkind c extends b { }\ngpu: a\n")
    assert "kind 'b' extends itself (via b -> c)" in str(err)


def test_source_lines_are_split_once_per_file() -> None:
    """Quoting a value used to split the whole file each time: 20,000 kinds were minutes."""

    class Counting(str):
        splits = 0

        def split(self, *args, **kwargs):  # type: ignore[override]
            Counting.splits += 1
            return super().split(*args, **kwargs)

    env = Env({}, {"f": Counting("a b\nc d\n")})
    for column in (1, 3):
        env.text(Pos("f", 1, column, 1, column + 1))
    assert env.text(Pos("f", 2, 1, 2, 2)) == "c" and Counting.splits == 1


def _topo(*args: str):
    return CliRunner().invoke(cli, ["topo", "check", *args])


def test_cli_refuses_special_files_and_bad_sets_with_one_line(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.topo"
    os.mkfifo(fifo)
    (tmp_path / "ok.topo").write_text(BASE)
    for args in ([str(fifo)], ["/dev/zero"], [str(tmp_path / "ok.topo"), "--set", "n=1e30"],
                 [str(tmp_path / "ok.topo"), "--set", "n=1e99999999"]):
        result = _topo(*args)
        assert result.exit_code == 2, result.output
        assert result.output.startswith("shardc: error: ") and "Traceback" not in result.output


def test_oversized_sources_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_SOURCE_BYTES", 100)
    assert "more than the limit of 100" in str(_fails(BASE + "#" * 100 + "\n"))
