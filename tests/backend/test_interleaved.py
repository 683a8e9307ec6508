"""Interleaved 1F1B plans are real per-device programs that reproduce the original.

With v model chunks per stage (Narayanan et al. 2021 §2.2.2) the model is cut into
``v·pp`` chunks and stage ``j`` holds chunks ``j, j + pp, …``, so a micro-batch goes
round the ring of stages v times. These tests hold the whole path to that: a tiny GPT-2
and a tiny Llama exported from ``transformers`` (8 layers, random weights) are compiled
for training with ``v`` pinned, and

1. plan.json records each stage's chunks in Megatron's order;
2. every device program holds its v chunks, and the first stage's later chunks receive
   from the last stage (the wrap-around hand-off);
3. the timeline's point-to-point traffic is exactly what the programs send: every Send
   of every chunk, per micro-batch, with the same bytes;
4. ``shardc check-plan`` and ``shardc verify`` pass: the programs, run in-process (and
   as processes over torch.distributed, ``--procs``), reproduce onnxruntime's outputs
   on the unsharded model within verify's float32 tolerance (rtol 1e-5, the runner's
   default for float32 outputs).

2 and 4 devices run by default (GPT-2 and Llama, v = 2 and 4); process runs and the
8-device shapes (TP, DP and interleaving together) are ``slow``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import models
import onnx
import pytest
from click.testing import CliRunner

import shardc.api as api
from shardc.cli.main import cli
from shardc.partition.chunks import chunk_blocks
from shardc.plan.program import Comm

ROOT = Path(__file__).resolve().parents[2]
TOPO = str(ROOT / "topologies/localhost.topo")
LAYERS = 8


@pytest.fixture(scope="module")
def gpt2_8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny GPT-2 with 8 layers: v = 2 chunks split it at pp = 2 and pp = 4."""
    return models.export(models.gpt2(layers=LAYERS), tmp_path_factory.mktemp("g8") / "g.onnx")


@pytest.fixture(scope="module")
def llama_8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny Llama with 8 layers (RoPE, RMSNorm, SwiGLU, grouped KV heads)."""
    return models.export(models.llama(layers=LAYERS), tmp_path_factory.mktemp("l8") / "l.onnx")


def _compile(model: Path, devices: int, pins: str, out: Path) -> Any:
    plan = api.compile(
        str(model), TOPO, devices=devices, mode="training", pins=pins, microbatches=4,
        quiet=True, emit=True,
    )
    plan.save(out)
    return plan


def _verify(out: Path, *extra: str) -> dict[str, Any]:
    runner = CliRunner()
    r = runner.invoke(cli, ["check-plan", str(out)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["verify", str(out), "--json", *extra])
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert report["ok"], report
    return report


def check_interleaved(model: Path, devices: int, pins: str, tmp: Path, *extra: str) -> None:
    """Every check of the module docstring for one model and pin set."""
    out = tmp / "plan"
    plan = _compile(model, devices, pins, out)
    part = plan.state.partition
    pp, v = part.pp, part.interleave
    assert v > 1 and part.devices_used == devices

    # 1. the chunks, as recorded and as read back
    want = chunk_blocks([s.blocks[1] - s.blocks[0] + 1 for s in part.stages], v)
    assert tuple(s.chunks for s in part.stages) == want
    recorded = json.loads((out / "plan.json").read_text())["partition"]["stages"]
    assert [[tuple(c) for c in s["chunks"]] for s in recorded] == [list(w) for w in want]
    assert want[0][1][0] == sum(len(range(a, b + 1)) for a, b in (w[0] for w in want))

    # 2. each program holds its v chunks; stage 0's later chunks hear from the last stage
    programs = plan.state.programs
    last = {p.rank for p in programs.programs if p.stage == pp - 1}
    for p in programs.programs:
        assert len(p.chunks) == v, (p.rank, p.chunk_starts)
        if p.stage == 0:
            for chunk in p.chunks[1:]:
                assert any(isinstance(s, Comm) and s.op == "Recv" and s.peer in last
                           for s in chunk), f"rank {p.rank}: no wrap-around Recv"
        sends = sum(1 for n in onnx.load(str(out / f"device_{p.rank}.onnx"),
                                         load_external_data=False).graph.node
                    if n.op_type == "Send")
        assert sends == sum(1 for s in p.steps if isinstance(s, Comm) and s.op == "Send")

    # 3. the timeline's hand-offs are the programs' Sends, every micro-batch
    timeline = plan.timeline
    assert timeline.chunked_programs and timeline.interleave == v
    for p, dev in zip(programs.programs, timeline.devices, strict=True):
        program = [(s.value, s.peer, s.tag, s.nbytes) for s in p.steps
                   if isinstance(s, Comm) and s.op == "Send"]
        for m in range(part.microbatches):
            sent = [(e.value, e.peer, e.tag, e.nbytes) for e in dev.events
                    if e.phase == "forward" and e.microbatch == m and e.op == "Send"]
            assert sent == program, (p.rank, m)

    # 4. the folder checks and reproduces onnxruntime
    report = _verify(out, *extra)
    for o in report["outputs"]:
        print(f"{model.stem} {pins} ({report['runner']}): {o['name']} max abs "
              f"{o['max_abs']:.3g}, max rel {o['max_rel']:.3g} (rtol {o['rtol']:g}) over "
              f"{o['compared']} micro-batch slots")


@pytest.mark.parametrize("devices, pins", [(2, "pp=2,tp=1,dp=1,v=2"), (4, "pp=4,tp=1,dp=1,v=2")])
def test_gpt2_interleaved_verifies(gpt2_8: Path, tmp_path: Path, devices: int, pins: str) -> None:
    check_interleaved(gpt2_8, devices, pins, tmp_path)


@pytest.mark.parametrize("devices, pins", [(2, "pp=2,tp=1,dp=1,v=2"), (4, "pp=4,tp=1,dp=1,v=2")])
def test_llama_interleaved_verifies(llama_8: Path, tmp_path: Path, devices: int, pins: str) -> None:
    check_interleaved(llama_8, devices, pins, tmp_path)


def test_four_chunks_per_stage_verify(gpt2_8: Path, tmp_path: Path) -> None:
    """Four chunks per stage (v = 4) at pp = 2, each a single block."""
    check_interleaved(gpt2_8, 2, "pp=2,tp=1,dp=1,v=4", tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("fixture, devices, pins", [
    ("gpt2_8", 2, "pp=2,tp=1,dp=1,v=4"),  # as two processes over torch.distributed
    ("llama_8", 4, "pp=2,tp=2,dp=1,v=2"),
])
def test_interleaved_verifies_as_processes(request: pytest.FixtureRequest, tmp_path: Path,
                                           fixture: str, devices: int, pins: str) -> None:
    check_interleaved(request.getfixturevalue(fixture), devices, pins, tmp_path, "--procs")


@pytest.mark.slow
@pytest.mark.parametrize("fixture, pins", [
    ("gpt2_8", "pp=4,tp=2,dp=1,v=2"),
    ("llama_8", "pp=4,tp=1,dp=2,v=2"),
    ("llama_8", "pp=4,tp=2,dp=1,v=2"),
    ("llama_8", "pp=2,tp=4,dp=1,v=4"),
])
def test_eight_devices_verify(request: pytest.FixtureRequest, tmp_path: Path, fixture: str,
                              pins: str) -> None:
    check_interleaved(request.getfixturevalue(fixture), 8, pins, tmp_path)
