"""``shardc synth`` on the command line: files, JSON, and one-line errors with exit 2."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from shardc.cli.main import cli
from shardc.synth import SynthConfig, parameter_count

SMALL = ["--layers", "2", "--hidden", "32", "--heads", "4", "--vocab", "64"]


def _invoke(*args: str):
    return CliRunner().invoke(cli, ["synth", *args])


def test_json_is_one_object_and_weights_are_not_written(tmp_path) -> None:
    out = tmp_path / "m.onnx"
    result = _invoke("llama", *SMALL, "--kv-heads", "2", "--seq", "16", "-o", str(out), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    cfg = SynthConfig(layers=2, hidden=32, heads=4, kv_heads=2, vocab=64, seq=16)
    assert report["parameters"] == report["parameters_closed_form"] == parameter_count("llama",
                                                                                       cfg)
    assert report["weight_bytes"] == 2 * report["parameters"]  # bf16 by default
    assert report["config"]["kv_heads"] == 2 and report["forward_flops_per_token"] > 0
    assert out.exists() and report["weights_written"] is False
    assert not (tmp_path / "m.weights.bin").exists()


def test_with_weights_file_runs_from_disk(tmp_path) -> None:
    out = tmp_path / "moe.onnx"
    result = _invoke("moe", *SMALL, "--experts", "4", "--top-k", "2", "--shared-experts", "1",
                     "--dtype", "fp32", "--with-weights", "--seed", "5", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert "wrote" in result.stdout and "written" in result.stdout
    assert (tmp_path / "moe.weights.bin").exists()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"input_ids": np.arange(10).reshape(2, 5)})
    assert logits.shape == (2, 5, 64) and np.isfinite(logits).all()


@pytest.mark.parametrize(("args", "message"), [
    (["gpt", "--layers", "2", "--hidden", "30", "--heads", "4"], "not divisible by --heads"),
    (["llama", *SMALL, "--kv-heads", "3"], "not divisible by --kv-heads"),
    (["moe", *SMALL, "--experts", "2", "--top-k", "3"], "larger than --experts"),
    (["gpt", "--layers", "-1", "--hidden", "32", "--heads", "4"], "positive integer"),
    (["gpt", *SMALL, "--top-k", "2"], "applies to moe only"),
    (["llama", "--layers", "64", "--hidden", "8192", "--heads", "64", "--with-weights"],
     "--with-weights would materialise"),
])
def test_user_errors_exit_2_with_one_line(tmp_path, args: list[str], message: str) -> None:
    result = _invoke(*args, "-o", str(tmp_path / "m.onnx"))
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("shardc: error:") and message in lines[0]
    assert not (tmp_path / "m.onnx").exists()


def test_missing_output_directory_exits_2(tmp_path) -> None:
    result = _invoke("gpt", *SMALL, "-o", str(tmp_path / "missing" / "m.onnx"))
    assert result.exit_code == 2
    assert "does not exist" in result.stderr and len(result.stderr.strip().splitlines()) == 1
