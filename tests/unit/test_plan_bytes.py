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
    "device_0.onnx": "aab723902f9c09dbf4f1d1d2f4dc84face113076713b89b894b076545f1f4277",
    "device_1.onnx": "357d9300026c17169ff5a643f79d131f48e7d302aae40163dbb3e9385bc75bb5",
    "device_2.onnx": "3750d8652f131757675ba9182ed78c5c981629cd2422b499708d5aacdcfbada2",
    "device_3.onnx": "e3e9ab686123ccb9f79490a25ca8c1d5057df4e3078d1b22ccc6864bd766212f",
    "plan.json": "2b2a2f0b2cf21b1dbbda076503108960764f67cd552655cbe0e442fcae795697",
    "schedule.json": "3227cb2220ef116fac97fe221163b88a3b4241e4e32f1f89110e5e4356fbc587",
    "trace.json": "6b7b2d19c6d440fd2117239d1b4d9f5ef55af00478d7bdd9b2cf0966dd2bd146",
}
"""SHA-256 of each file, as shardc 0.1.0 wrote them before the Plan restructuring.

schedule.json and trace.json changed on purpose with issue #14 (items 2, 5): the timeline
now runs pipeline Sends/Recvs beside compute as the partitioner prices them
(``p2p_overlapped``), and records ``interleave``, ``p2p_overlapped`` and each event's
``chunk`` and ``virtual_stage``; the trace puts overlapped Sends and Recvs on threads of
their own. The device programs changed with #14 item 6: with NCCL's base latency priced
(ring 8.4 µs, tree 0), a 2-rank all-reduce is priced as ``tree`` rather than ``direct``,
and each comm node records the algorithm it was priced with. plan.json changed with the
cost model's figures (#14 items 4-6) and ``emission.blocks`` (explain names a node's block
from the folder alone).
"""


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
