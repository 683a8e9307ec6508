"""``shardc topo check|show|export``: output, exit codes, and errors without tracebacks."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from shardc.cli.main import cli
from shardc.cli.topo import parse_sets
from shardc.errors import OptionError

ROOT = Path(__file__).resolve().parents[2] / "topologies"


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_check_cloudmatrix384() -> None:
    result = run("topo", "check", str(ROOT / "cloudmatrix384.topo"))
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "576 devices (384 compute)" in out
    assert "1 × (384 ascend910c): 392 GB/s/device" in out  # one UB domain
    assert "+ 192 host devices" in out and "kunpeng920" in out
    assert "Traceback" not in result.output


def test_check_superpod_islands_and_overrides() -> None:
    result = run("topo", "check", str(ROOT / "dgx_h100_superpod.topo"))
    assert "32 × (8 h100_sxm)" in result.stdout and "1 × (256 h100_sxm)" in result.stdout
    small = run("topo", "check", str(ROOT / "dgx_h100_superpod.topo"), "--set", "nodes=2")
    assert "2 × (8 h100_sxm)" in small.stdout and "nodes=2" in small.stdout


def test_check_json_is_one_object() -> None:
    result = run("topo", "check", str(ROOT / "localhost.topo"), "--set", "devices=8", "--json")
    data = json.loads(result.stdout)
    assert data["devices"] == 8 and data["params"]["devices"] == 8
    (plane,) = data["planes"]
    assert plane["plane"] == "loopback" and plane["domains"][0]["size"] == 8


def test_errors_exit_2_with_location_and_caret(tmp_path: Path) -> None:
    bad = tmp_path / "bad.topo"
    bad.write_text("kind a {\n    memory_bandwidth 2 GB\n}\n")
    result = run("topo", "check", str(bad))
    assert result.exit_code == 2
    assert f"{bad}:2:24: memory_bandwidth needs a bandwidth" in result.stderr
    assert "did you mean 'GB/s'" in result.stderr
    assert "    2 |     memory_bandwidth 2 GB\n" in result.stderr
    assert result.stderr.rstrip().endswith("^^")
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--set", "device=3"], "unknown parameter 'device'"),
        (["--set", "devices"], "NAME=VALUE"),
        (["--set", "devices=x"], "is a number"),
        (["--set", "devices=1", "--set", "devices=2"], "given twice"),
    ],
)
def test_bad_set_values(args, fragment) -> None:
    result = run("topo", "check", str(ROOT / "localhost.topo"), *args)
    assert result.exit_code == 2 and fragment in result.stderr


def test_missing_file() -> None:
    result = run("topo", "check", "no/such.topo")
    assert result.exit_code == 2 and "no such file" in result.stderr


def test_show_table_and_svg(tmp_path: Path) -> None:
    out = tmp_path / "cm.svg"
    result = run("topo", "show", str(ROOT / "cloudmatrix384.topo"), "--svg", str(out))
    assert result.exit_code == 0, result.output
    assert "node[0..47]" in result.stdout and "npu[0..7]" in result.stdout
    svg = out.read_text()
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg")
    assert "node[0..47]  ×48" in svg and "392 GB/s ×384" in svg
    assert len(svg) < 40_000  # folded: a screenful, not 1,000 boxes


def test_export_is_byte_identical_and_dsl_round_trips(tmp_path: Path) -> None:
    path = str(ROOT / "ascend910b.topo")
    first, second = run("topo", "export", path, "--json"), run("topo", "export", path)
    assert first.exit_code == 0 and first.stdout == second.stdout
    assert json.loads(first.stdout)["format"] == "shardc.topology/1"
    dsl = run("topo", "export", path, "--dsl").stdout
    (tmp_path / "c.topo").write_text(dsl)
    again = run("topo", "export", str(tmp_path / "c.topo"), "--json")
    assert again.stdout == first.stdout


def test_parse_sets() -> None:
    assert parse_sets(("a=1", " b = x ")) == {"a": "1", "b": "x"}
    with pytest.raises(OptionError):
        parse_sets(("=1",))
