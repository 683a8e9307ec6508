"""The command line: tables, JSON, exit codes, one-line errors, atomic output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from shardc import __version__
from shardc.cli.main import cli


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """The real console entry point, in a subprocess, as users and scripts call it."""
    return subprocess.run(
        [sys.executable, "-m", "shardc", *args], capture_output=True, text=True, timeout=300
    )


def test_version() -> None:
    r = CliRunner().invoke(cli, ["--version"])
    assert r.exit_code == 0 and __version__ in r.output


def test_inspect_prints_tables(gpt2_path: Path) -> None:
    r = CliRunner().invoke(cli, ["inspect", str(gpt2_path)])
    assert r.exit_code == 0, r.output
    for heading in ("parameters", "FLOPs / token", "op counts", "heaviest nodes", "Gemm"):
        assert heading in r.output


def test_inspect_json_is_one_object_and_deterministic(llama_path: Path) -> None:
    a = CliRunner().invoke(cli, ["inspect", str(llama_path), "--json"])
    b = CliRunner().invoke(cli, ["inspect", str(llama_path), "--json"])
    assert a.exit_code == 0 and a.stdout == b.stdout
    data = json.loads(a.stdout)
    assert data["parameters"] > 0 and data["tokens"] == 32
    assert data["flops_per_token"] == pytest.approx(data["flops"] / 32)


def _bad_files(tmp: Path, good: Path) -> dict[str, Path]:
    text = tmp / "notes.onnx"
    text.write_text("hello\n")
    trunc = tmp / "trunc.onnx"
    trunc.write_bytes(good.read_bytes()[:1000])
    evil = onnx.load(str(good))
    t = evil.graph.initializer[0]
    t.ClearField("raw_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    t.external_data.add(key="location", value="../../etc/passwd")
    onnx.save_model(evil, str(tmp / "evil.onnx"))
    broken = onnx.load(str(good))
    broken.graph.node[3].input[0] = "no_such_value"
    onnx.save_model(broken, str(tmp / "broken.onnx"))
    return {
        "missing": tmp / "missing.onnx",
        "text": text,
        "truncated": trunc,
        "traversal": tmp / "evil.onnx",
        "checker": tmp / "broken.onnx",
    }


def test_bad_models_exit_2_with_one_line_naming_the_file(gpt2_path: Path, tmp_path: Path) -> None:
    for case, path in _bad_files(tmp_path, gpt2_path).items():
        r = run("inspect", str(path))
        assert r.returncode == 2, (case, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1, (case, r.stderr)
        assert str(path) in lines[0] and "Traceback" not in r.stderr, case


def test_unbound_dim_and_bad_options_exit_2(tmp_path: Path) -> None:
    from onnx import helper

    x = helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, ["batch", 4])
    w = helper.make_tensor_value_info("W", onnx.TensorProto.FLOAT, [4, 4])
    g = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["Y"], name="mm")], "g", [x, w], [y]
    )
    path = tmp_path / "sym.onnx"
    onnx.save_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    r = run("inspect", str(path))
    assert r.returncode == 2 and "node 'mm'" in r.stderr and "--dim batch=N" in r.stderr
    assert run("inspect", str(path), "--dim", "batch=4").returncode == 0
    for bad in (
        ["--dim", "batch"],
        ["--dim", "batch=x"],
        ["--dim", "seq=4"],
        ["--dim", "batch=-1"],
    ):
        r = run("inspect", str(path), *bad)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, (bad, r.stderr)


def test_compile_writes_atomically_and_refuses_to_overwrite(
    gpt2_path: Path, tmp_path: Path
) -> None:
    topo = tmp_path / "t.topo"
    out = tmp_path / "out"
    pytest.importorskip("shardc.topology")
    topo.write_text(Path("topologies/localhost.topo").read_text())
    r = run("compile", str(gpt2_path), "--topology", str(topo), "-o", str(out), "--json")
    assert r.returncode == 0, r.stderr
    payload = json.loads(r.stdout)
    assert payload["plan"]["partition"]["stages"] and (out / "analysis.json").is_file()
    assert json.loads((out / "plan.json").read_text()) == payload["plan"]
    again = run("compile", str(gpt2_path), "--topology", str(topo), "-o", str(out))
    assert again.returncode == 2 and "--force" in again.stderr
    forced = run("compile", str(gpt2_path), "--topology", str(topo), "-o", str(out), "--force")
    assert forced.returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "t.topo"]  # no temp leftovers


def test_compile_creates_missing_parent_folders(gpt2_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "new" / "deeper" / "plan"
    r = run("compile", str(gpt2_path), "--topology", "topologies/localhost.topo", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert (out / "analysis.json").is_file()


def test_dump_after_prints_the_costed_ir(gpt2_path: Path, tmp_path: Path) -> None:
    pytest.importorskip("shardc.topology")
    r = run(
        "compile",
        str(gpt2_path),
        "--topology",
        "topologies/localhost.topo",
        "-o",
        str(tmp_path / "o"),
        "--dump-after",
        "annotate_costs",
    )
    assert r.returncode == 0, r.stderr
    assert "--- after annotate_costs ---" in r.stderr and "flops=" in r.stderr


def test_internal_errors_exit_1_and_hide_the_traceback(
    monkeypatch: pytest.MonkeyPatch, gpt2_path: Path
) -> None:
    import shardc.cli.analyse as analyse_mod

    def explode(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(analyse_mod, "analyse", explode)
    r = CliRunner().invoke(cli, ["inspect", str(gpt2_path)])
    assert r.exit_code == 1 and "internal error" in r.output and "Traceback" not in r.output
