"""Issue #16's bad serving input through the CLI: one line naming what and why, exit 2,
nothing written. The planner's messages themselves are checked in test_search.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from shardc.cli.main import cli
from shardc.synth import SynthConfig, build, save


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small Llama and a small DeepSeek-shaped MoE (6 routed experts), weights unwritten."""
    root = tmp_path_factory.mktemp("models")
    out = {"llama": root / "llama.onnx", "moe": root / "moe.onnx"}
    save(build("llama", SynthConfig(layers=4, hidden=1024, heads=8, kv_heads=2)), out["llama"])
    save(build("deepseek", SynthConfig(layers=3, hidden=256, heads=4, ffn=128, experts=6,
                                       top_k=2, dense_layers=1)), out["moe"])
    return out


CASES = {
    # what the user asked, what the one line must say
    "unreachable TPOT": ("llama", ["--isl", "1000", "--osl", "100", "--tpot", "0.01ms"],
                         ["decode misses --tpot 0.01ms by", "would be met"]),
    "unreachable TTFT": ("llama", ["--isl", "200000", "--osl", "10", "--ttft", "1ms"],
                         ["prefill misses --ttft 1ms by", "would be met"]),
    "KV cache too big": ("llama", ["--isl", "100000000", "--osl", "10"],
                         ["the KV cache does not fit"]),
    "EP not dividing experts": ("moe", ["--isl", "100", "--osl", "10", "--pin", "ep=4"],
                                ["ep=4 does not divide the 6 routed experts", "redundant=2"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_serving_input_is_one_line_exit_2(case: str, models: dict[str, Path],
                                              tmp_path: Path) -> None:
    model, args, says = CASES[case]
    run = CliRunner().invoke(cli, [
        "compile", str(models[model]), "--topology", "dgx_h100", "--mode", "serving", *args,
        "--time-limit", "2", "-o", str(tmp_path / "out")])
    assert run.exit_code == 2, run.output
    assert "Traceback" not in run.output and run.stderr.strip().count("\n") <= 1, run.stderr
    for text in says:
        assert text in run.stderr, run.stderr
    assert not (tmp_path / "out").exists()
