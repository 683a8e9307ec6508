"""The plan folder of the tiny GPT-2 at tp=2 x pp=2 is pinned byte for byte.

Why: the back half (lowering, pricing, timeline, the typed Plan, the writers) was
restructured with the promise that the same inputs still give the same files. This test
holds every later change to that promise: a change to any file's bytes fails it, and
whoever changes the output on purpose updates the hashes here and says why in the commit.
The model and topology are copied next to the output so the relative paths plan.json
records are the same wherever the test runs; the shardc version is masked so a release
does not count as a change.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from shardc import __version__
from shardc.cli.main import cli

ROOT = Path(__file__).resolve().parents[2]

GOLDEN = {
    "analysis.json": "a80b051642863cc9befaa3427d512c675054abbc4463175f9a39027940a700f4",
    "device_0.onnx": "011fcaaf75ebf0d6ad7ee7d5a2273693880db87b4daf3d52291f2085f8450c2a",
    "device_1.onnx": "e01674f95c3c07aa85b3702d36eed7bacd6d41fe8fb82a14ee7ef3b08f2ced91",
    "device_2.onnx": "89ccc568114df6806ae9f67ce9f8068d7da82bd66eb6f2b18f30cd9f73f251a4",
    "device_3.onnx": "1efdfcfcfe40c7ff512fafe4f5a898a792ef6d4463f015555eb707db90380666",
    # emission.blocks added (explain names a node's block from the folder alone)
    "plan.json": "2b2a2f0b2cf21b1dbbda076503108960764f67cd552655cbe0e442fcae795697",
    "schedule.json": "cbcc48ee68b8c26579f64b9cfac3aed22305e7ebb244d4c33b251df2f295b7b3",
    "trace.json": "5036ba57a05d29567aac815af5c529db4bb78ae0fbd42f37617c46c826d37dc9",
}
"""SHA-256 of each file, as shardc 0.1.0 wrote them before the Plan restructuring."""


def _digest(name: str, data: bytes) -> str:
    if name == "plan.json":
        data = data.replace(f'"shardc": "{__version__}"'.encode(), b'"shardc": "0.1.0"')
    return hashlib.sha256(data).hexdigest()


def test_tiny_gpt2_plan_folder_is_byte_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # analysis.json names the model as given
    shutil.copy(ROOT / "examples/models/tiny_gpt2.onnx", tmp_path / "model.onnx")
    shutil.copy(ROOT / "topologies/localhost.topo", tmp_path / "cluster.topo")
    out = tmp_path / "out"
    r = CliRunner().invoke(
        cli,
        [
            "compile", "model.onnx", "--topology", "cluster.topo",
            "--set", "devices=4", "--pin", "tp=2,pp=2", "-o", "out",
        ],
    )
    assert r.exit_code == 0, r.output
    got = {p.name: _digest(p.name, p.read_bytes()) for p in sorted(out.iterdir())}
    changed = sorted(n for n in GOLDEN.keys() | got.keys() if GOLDEN.get(n) != got.get(n))
    assert not changed, f"plan folder files changed: {changed}"
