"""Every example in examples/ runs as written, from the repository root, and says so.

Each runs in a subprocess the way a user runs it (``python examples/x.py``, ``bash``,
``torchrun``), so an example that only works inside the test process cannot pass here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def run(*args: str | Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run a command from the repository root with this venv's ``shardc`` on the PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["COLUMNS"] = "120"
    r = subprocess.run(
        [str(a) for a in args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert r.returncode == 0, (
        f"{args} exited {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    )
    return r


def test_every_example_has_a_test() -> None:
    names = {p.name for p in EXAMPLES.iterdir() if p.suffix in (".py", ".sh", ".topo")}
    tested = {
        "make_models.py",  # rebuilds examples/models/; exercised by the bundled model itself
        "hf_compile.py",
        "cli_walkthrough.sh",
        "serving_walkthrough.sh",
        "custom_topology.py",
        "h200_pair.topo",
        "whatif.py",
        "torchrun_plan.py",
        "train_with_plan.py",  # tests/train/test_train_example.py
    }
    assert names == tested, f"untested examples: {sorted(names - tested)}"


def test_hugging_face_model_compiles_saves_and_verifies(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    r = run(sys.executable, EXAMPLES / "hf_compile.py", tmp_path / "plan")
    assert "the sharded plan computes the model's logits" in r.stdout
    assert "sharding: row" in r.stdout and "AllReduce" in r.stdout
    assert (tmp_path / "plan" / "plan.json").is_file()
    assert (tmp_path / "plan" / "device_3.onnx").is_file()


def test_cli_walkthrough_runs_every_command(tmp_path: Path) -> None:
    r = run("bash", EXAMPLES / "cli_walkthrough.sh", tmp_path)
    for step in range(1, 10):
        assert f"== {step}." in r.stdout
    assert "identical" in r.stdout and r.stdout.count("ok: ") == 2
    assert (tmp_path / "plan.html").is_file() and (tmp_path / "llama16" / "plan.json").is_file()


def test_serving_walkthrough_prints_what_docs_serving_md_shows(tmp_path: Path) -> None:
    """The serving walk-through runs as written, and docs/serving.md's sample output is
    what it prints (each sample line, paths aside, is part of a line printed).
    """
    env = {**os.environ, "COLUMNS": "160",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    r = subprocess.run(["bash", str(EXAMPLES / "serving_walkthrough.sh"), str(tmp_path)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for step in range(1, 7):
        assert f"== {step}." in r.stdout
    assert r.stdout.count("\nok\n") == 1 and "decode instance 0 of 4" in r.stdout
    assert "expert all-to-all, decode (ep 16" in r.stdout
    html = (tmp_path / "moe.html").read_text()
    assert "prefill devices" in html and "expert all-to-all links" in html
    printed = r.stdout.replace(f"{tmp_path}/", "").splitlines()
    doc = (ROOT / "docs" / "serving.md").read_text()
    samples = re.findall(r"```text\n(.*?)```", doc, re.S)
    assert len(samples) >= 3
    for block in samples:
        for line in block.splitlines():
            if line.strip() and line.strip() != "…":
                assert any(line in p for p in printed), f"docs/serving.md: {line!r} not printed"


def test_custom_topology_plans_tp_inside_a_node() -> None:
    r = run(sys.executable, EXAMPLES / "custom_topology.py")
    assert "h200_pair: 16 GPUs, planes ib, nvlink" in r.stdout
    assert "node0.gpu0 -> node1.gpu0: ib, 50 GB/s" in r.stdout
    assert "stage 0: tp group" in r.stdout


def test_custom_topology_file_checks() -> None:
    r = run("shardc", "topo", "check", EXAMPLES / "h200_pair.topo", "--set", "nodes=4")
    assert "32 devices" in r.stdout


def test_whatif_compares_three_systems() -> None:
    r = run(sys.executable, EXAMPLES / "whatif.py")
    for system in ("DGX H100 SuperPOD", "GB200 NVL72", "CloudMatrix384"):
        assert system in r.stdout
    assert "dp=" in r.stdout and "GiB" in r.stdout


def test_torchrun_matches_the_unsharded_model() -> None:
    pytest.importorskip("torch")
    r = run(
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        EXAMPLES / "torchrun_plan.py",
    )
    # the two ranks share one stdout, so their lines may interleave: match, don't split
    found = re.findall(r"rank (\d) \(cpu\d\): max error (\S+) relative to the model", r.stdout)
    assert sorted(rank for rank, _ in found) == ["0", "1"], r.stdout
    assert all(float(err) <= 1e-5 for _, err in found)
