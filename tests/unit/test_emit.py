"""Emission: per-device ONNX that passes the checker, tiles the weights, pairs every
Send with its Recv, and computes what the original model computes.

Plans run on ``topologies/localhost.topo`` (this CPU as N equal shares) with the shape
pinned, so pipeline, tensor and data parallel and their mixes are all exercised. The
numerical reference is onnxruntime on the unsharded export; tolerance 1e-5 relative to
the output's largest magnitude (fp32).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from shardc.compiler import build_plan, partition_model
from shardc.emit.check import check_outdir
from shardc.emit.devices import emit
from shardc.emit.outdir import write_outdir
from shardc.emit.outputs import state_files
from shardc.partition.options import PartitionOptions, parse_pins
from shardc.runtime.inprocess import run_inprocess
from shardc.topology import load_topology

ROOT = Path(__file__).resolve().parents[2]
PLANS = [
    (2, "tp=1,pp=2,dp=1"),
    (2, "tp=2,pp=1,dp=1"),
    (4, "tp=2,pp=2,dp=1"),
    (4, "tp=4,pp=1,dp=1"),
    (4, "tp=1,pp=2,dp=2"),
    (8, "tp=2,pp=2,dp=2"),
]


def _state(path: Path, devices: int, pins: str):
    topo = load_topology(ROOT / "topologies/localhost.topo", {"devices": devices})
    options = PartitionOptions(pins=parse_pins([pins]))
    return build_plan(
        partition_model(path, topo, mode="inference", partition=options).state
    ).state


def _feeds(path: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {}
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in i.shape]
        feeds[i.name] = rng.integers(0, 64, size=shape).astype(np.int64)
    ref = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))
    return feeds, ref


@pytest.mark.parametrize("devices, pins", PLANS, ids=[p for _, p in PLANS])
@pytest.mark.parametrize("fixture", ["gpt2_path", "llama_path"])
def test_device_programs_reproduce_the_model(request, fixture: str, devices: int, pins: str):
    path = request.getfixturevalue(fixture)
    state = _state(path, devices, pins)
    emission = emit(state)
    assert sorted(emission.models) == list(range(devices))
    for model in emission.models.values():
        onnx.checker.check_model(model)
        assert any(o.domain == "shardc" for o in model.opset_import)
    feeds, ref = _feeds(path)
    outs = run_inprocess(emission.models, feeds)
    last = [p for p in emission.programs.programs if p.outputs]
    assert last and all(p.stage == state.partition.pp - 1 for p in last)
    for p in last:
        for name in p.outputs:
            scale = float(np.max(np.abs(ref[name])))
            err = float(np.max(np.abs(outs[p.rank][name] - ref[name])))
            assert err <= 1e-5 * scale, (p.rank, name, err, scale)


@pytest.mark.parametrize("devices, pins", PLANS[1:4:2], ids=[p for _, p in PLANS[1:4:2]])
def test_check_plan_accepts_emitted_folders_and_catches_tampering(
    gpt2_path: Path, tmp_path: Path, devices: int, pins: str
) -> None:
    state = _state(gpt2_path, devices, pins)
    files = state_files(state)
    out = write_outdir(tmp_path / "plan", files)
    report = check_outdir(out)
    assert report.problems == [] and report.ranks == devices
    assert report.emitted_bytes[0] == report.weight_bytes + report.replicated_bytes.get(0, 0)

    def tamper(rank: int, edit) -> list[str]:
        f = out / f"device_{rank}.onnx"
        saved = f.read_bytes()
        model = onnx.load(str(f))
        edit(model)
        onnx.save(model, str(f))
        try:
            return check_outdir(out).problems
        finally:
            f.write_bytes(saved)

    def drop_comm(model: onnx.ModelProto) -> None:
        comm = [n for n in model.graph.node if n.domain == "shardc"]
        model.graph.node.remove(comm[-1])

    assert tamper(devices - 1, drop_comm)

    def widen_slice(model: onnx.ModelProto) -> None:
        for p in model.metadata_props:
            if p.key == "shardc.slices":
                recs = json.loads(p.value)
                cut = next(r for r in recs.values() if r["dim"] >= 0)
                cut["stop"] += 1
                p.value = json.dumps(recs)

    assert any("gap or overlap" in p or "cover" in p for p in tamper(0, widen_slice))


def test_compile_writes_identical_device_files_and_a_valid_schedule(
    llama_path: Path, tmp_path: Path
) -> None:
    def compile_(out: str) -> Path:
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "shardc",
                "compile",
                str(llama_path),
                "--topology",
                str(ROOT / "topologies/localhost.topo"),
                "--set",
                "devices=4",
                "--pin",
                "tp=2,pp=2,dp=1",
                "-o",
                str(tmp_path / out),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr
        return tmp_path / out

    a, b = compile_("a"), compile_("b")
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    assert {f"device_{r}.onnx" for r in range(4)} <= set(names)
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    r = subprocess.run(
        [sys.executable, "-m", "shardc", "check-plan", str(a)], capture_output=True, text=True
    )
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr
    trace = json.loads((a / "trace.json").read_text())
    pids = {e["pid"] for e in trace["traceEvents"] if e.get("ph") == "X"}
    assert set(range(4)) <= pids
    schedule = json.loads((a / "schedule.json").read_text())
    jsonschema = pytest.importorskip("jsonschema")
    from shardc.plan.timeline import schedule_schema

    jsonschema.validate(schedule, schedule_schema())
    assert [d["rank"] for d in schedule["devices"]] == list(range(4))


def test_reloading_a_plan_re_emits_identical_files(gpt2_path: Path, tmp_path: Path) -> None:
    def shardc(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "shardc", *args], capture_output=True, text=True, timeout=300
        )

    topo = str(ROOT / "topologies/localhost.topo")
    first = shardc(
        "compile",
        str(gpt2_path),
        "--topology",
        topo,
        "--set",
        "devices=4",
        "--pin",
        "tp=2",
        "-o",
        str(tmp_path / "a"),
    )
    assert first.returncode == 0, first.stderr
    again = shardc(
        "compile",
        str(gpt2_path),
        "--topology",
        topo,
        "--plan",
        str(tmp_path / "a/plan.json"),
        "-o",
        str(tmp_path / "b"),
    )
    assert again.returncode == 0, again.stderr
    for f in sorted((tmp_path / "a").iterdir()):
        assert f.read_bytes() == (tmp_path / "b" / f.name).read_bytes(), f.name
    other = shardc(
        "compile",
        str(ROOT / "examples/models/tiny_gpt2.onnx"),
        "--topology",
        topo,
        "--plan",
        str(tmp_path / "a/plan.json"),
        "-o",
        str(tmp_path / "c"),
    )
    assert other.returncode == 2 and "another model" in other.stderr


def test_large_device_weights_go_to_a_side_file(llama_path: Path, tmp_path: Path) -> None:
    state = _state(llama_path, 4, "tp=2,pp=2,dp=1")
    files = state_files(state, external_threshold=0)
    assert {f"device_{r}.weights" for r in range(4)} <= set(files)
    out = write_outdir(tmp_path / "ext", files)
    models = {r: onnx.load(str(out / f"device_{r}.onnx")) for r in range(4)}
    for r in range(4):
        onnx.checker.check_model(str(out / f"device_{r}.onnx"))
    feeds, ref = _feeds(llama_path)
    outs = run_inprocess(models, feeds)
    for got in outs.values():
        for name, value in got.items():
            assert np.allclose(value, ref[name], rtol=0, atol=1e-5 * np.abs(ref[name]).max())
    assert check_outdir(out).problems == []
