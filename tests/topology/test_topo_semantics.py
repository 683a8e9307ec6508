"""Semantic checks: every mistake the issue lists, located and with a hint."""

from __future__ import annotations

from pathlib import Path

import pytest

from shardc.errors import OptionError, TopologyError
from shardc.topology import load_topology

KIND = "kind a { compute bf16 1 TFLOPS; memory 1 GB; memory_bandwidth 1 GB/s }\n"
SWITCH = "switch s: nvlink { members gpu[*]; bandwidth 1 GB/s; latency 1 us }\n"


def _fails(text: str) -> TopologyError:
    with pytest.raises(TopologyError) as info:
        load_topology(text)
    return info.value


@pytest.mark.parametrize(
    ("text", "line", "column", "fragment", "hint"),
    [
        (KIND + "gpu[0..1]: b\n" + SWITCH, 2, 12, "unknown kind 'b'", "known kinds: a"),
        (KIND + "gpu[0..1]: a\ngpu1: a\n" + SWITCH, 3, 1, "duplicate name 'gpu1'", "own name"),
        (KIND + "gpu[0..3]: a\ngpu[2..5]: a\n" + SWITCH, 3, 1, "range overlaps", "indices"),
        (KIND + "gpu: a\nn { x: a }\ngpu { y: a }\n", 4, 1, "duplicate name 'gpu'", None),
        (KIND.replace("1 GB/s", "1 GB"), 1, 65, "needs a bandwidth but 'GB' is a size",
         "did you mean 'GB/s'"),
        (KIND.replace("memory 1 GB", "memory 1 Gb/s"), 1, 42, "needs a size", "bits"),
        (KIND.replace("1 GB/s", "1 gb/s"), 1, 65, "unknown unit 'gb/s'", "case-sensitive"),
        (KIND.replace("1 GB/s", "1 Gbps"), 1, 65, "unknown unit 'Gbps'", "'Gb/s'"),
        (KIND.replace("1 GB/s", "1"), 1, 63, "needs a unit", "memory_bandwidth 450 GB/s"),
        (KIND.replace("1 TFLOPS", "1 TOPS"), 1, 25, "integer operations", "TFLOPS"),
        (KIND.replace("bf16", "bf61"), 1, 18, "unknown dtype 'bf61'", "'bf16'"),
        (KIND + "gpu[0..1]: a\n", 2, 1, "'gpu0' is connected to nothing", "fabric"),
        (KIND + "gpu[0..1]: a\n" + SWITCH.replace("gpu[*]", "cpu[*]"), 3, 28,
         "'cpu[*]' matches nothing", "'gpu'"),
        (KIND + "n[0..1] { gpu: a }\n" + SWITCH.replace("gpu[*]", "n[*].cpu"), 3, 33,
         "'n[*].cpu' matches nothing", None),
        (KIND + "gpu[0..1]: a\n" + SWITCH.replace("nvlink", "nvlnk"), 3, 11,
         "unknown link kind 'nvlnk'", "'nvlink'"),
        (KIND + "gpu[0..1]: a\n" + SWITCH.replace("bandwidth", "bandwith"), 3, 36,
         "unknown property 'bandwith'", "'bandwidth'"),
        (KIND + "gpu[0..1]: a\n" + SWITCH.replace("; latency 1 us", ""), 3, 8,
         "needs 'latency'", None),
        (KIND + "gpu[0..n]: a\n", 2, 8, "unknown parameter 'n'", "let n"),
        (KIND + "gpu[3..1]: a\n", 2, 5, "empty range", None),
        (KIND + "gpu[*]: a\n", 2, 5, "explicit indices", None),
        ("memory 1 GB\n", 1, 1, "outside a block", None),
        (KIND + "n { let x = 1 }\n", 2, 5, "only allowed at the top level", None),
        (KIND + "x[0..1]: a\nlink x0 <-> x1: pcie { bandwidth 1 GB/s; latency 1 us }\n"
         "link x1 <-> x0: pcie { bandwidth 1 GB/s; latency 1 us }\n", 4, 1, "already linked",
         "another plane"),
        (KIND + "x[0..2]: a\ny[0..1]: a\nlink x[*] <-> y[*]: pcie { bandwidth 1 GB/s; "
         "latency 1 us }\n", 4, 1, "cannot pair 3 endpoints with 2", None),
        ("kind a extends b {}\nkind b extends a {}\n", 1, 6, "extends itself", None),
        ("kind a { compute bf16 1 TFLOPS }\n", 1, 6, "needs memory, memory_bandwidth",
         "role host"),
        (KIND + KIND, 2, 6, "defined twice", None),
        ("let x = 3 GB\n", 1, 11, "plain number", None),
        ("let x = 1/0\n", 1, 9, "division by zero", None),
        (KIND.replace("memory 1 GB;", "memory 1 GB; efficiency compute 1.5;"), 1, 65,
         "fraction in (0, 1]", None),
        (KIND.replace("bf16 1 TFLOPS", "bf16 TFLOPS"), 1, 23, "a unit must follow a number",
         None),
        (KIND.replace("memory 1 GB", "memory GB"), 1, 40, "'GB' needs a number", None),
    ],
)
def test_semantic_errors(text, line, column, fragment, hint) -> None:
    err = _fails(text)
    assert (err.line, err.column) == (line, column), err.render()
    assert fragment in err.message, err.render()
    if hint:
        assert hint in (err.hint or ""), err.render()
    assert err.context and "^" in err.context


def test_kinds_may_be_used_before_they_are_defined_and_extended() -> None:
    topo = load_topology(
        "gpu[0..1]: b\n" + SWITCH
        + "kind b extends a { compute fp8 2 TFLOPS; tag role decode }\n" + KIND
    )
    kind = topo.device("gpu0").kind
    assert dict(kind.peak_flops) == {"bf16": 1e12, "fp8": 2e12}
    assert kind.role == "decode" and kind.memory_bytes == 1e9
    assert set(topo.kinds) == {"b"}  # only the kinds in use


def test_host_kinds_may_omit_compute_and_are_not_compute_devices() -> None:
    topo = load_topology(KIND + "kind cpu { tag role host }\ngpu[0..1]: a\ncpu0: cpu\n"
                         "switch s: pcie { members gpu[*], cpu0; bandwidth 1 GB/s; "
                         "latency 1 us }\n")
    assert [d.name for d in topo.compute_devices] == ["gpu0", "gpu1"]
    assert topo.device("cpu0").kind.is_host and topo.device("cpu0").rank == 2


def test_parameters_expressions_and_overrides() -> None:
    text = "let n = 2\nlet m = n * 3 // 2 + 1\n" + KIND + "gpu[0..m-1]: a\n" + SWITCH
    assert len(load_topology(text).devices) == 4
    assert len(load_topology(text, {"n": 4}).devices) == 7
    assert len(load_topology(text, {"m": "6"}).devices) == 6
    assert load_topology(text, {"n": 4}).params == {"n": 4, "m": 7}
    with pytest.raises(OptionError, match=r"unknown parameter 'nn'.*n, m") as info:
        load_topology(text, {"nn": 3})
    assert "did you mean 'n'" in info.value.hint
    with pytest.raises(OptionError, match="is a number"):
        load_topology(text, {"n": "lots"})
    with pytest.raises(TopologyError) as err:
        load_topology(text, {"m": 0})
    assert "--set m=0" in err.value.hint


def test_string_parameters_and_tags() -> None:
    topo = load_topology('let who = "me"\nkind a { tag role host; tag owner "x y" }\n'
                         "c[0..1]: a\nswitch s: tcp { members c[*]; bandwidth 1 GB/s; "
                         "latency 1 ms }\n", {"who": "you"})
    assert topo.params["who"] == "you"
    assert dict(topo.device("c0").kind.tags) == {"role": "host", "owner": "x y"}


def test_text_versus_path_rule(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match="no such file") as info:
        load_topology("missing")  # no newline: a path, never parsed as text
    assert "newline" in info.value.hint
    path = tmp_path / "one.topo"
    path.write_text(KIND + "gpu[0..1]: a\n" + SWITCH)
    assert load_topology(path).name == "one" and load_topology(str(path)).source == str(path)


def test_includes_resolve_relative_and_stay_in_the_search_path(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "kinds.topo").write_text(KIND)
    (tmp_path / "lib" / "both.topo").write_text('include "kinds.topo"\n')
    main = tmp_path / "main.topo"
    main.write_text('include "lib/kinds.topo"\ninclude "lib/both.topo"\n'
                    "gpu[0..1]: a\n" + SWITCH)
    assert len(load_topology(main).devices) == 2  # the diamond is included once
    outside = tmp_path / "sub" / "main.topo"
    outside.parent.mkdir()
    outside.write_text('include "../lib/kinds.topo"\ngpu[0..1]: a\n' + SWITCH)
    with pytest.raises(TopologyError, match="outside the topology search path") as info:
        load_topology(outside)
    assert (info.value.line, info.value.column) == (1, 9)
    assert len(load_topology(outside, include_path=[tmp_path]).devices) == 2


def test_include_cycles_and_errors_in_included_files(tmp_path: Path) -> None:
    (tmp_path / "a.topo").write_text('include "b.topo"\n')
    (tmp_path / "b.topo").write_text('include "a.topo"\n')
    with pytest.raises(TopologyError, match="include cycle"):
        load_topology(tmp_path / "a.topo")
    (tmp_path / "bad.topo").write_text("kind a { memory 1 GB/s }\n")
    (tmp_path / "c.topo").write_text('include "bad.topo"\n')
    with pytest.raises(TopologyError) as info:
        load_topology(tmp_path / "c.topo")
    assert info.value.file.endswith("bad.topo") and info.value.line == 1
    assert "memory 1 GB/s" in info.value.context
