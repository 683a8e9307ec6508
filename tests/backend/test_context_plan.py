"""A context-parallel plan is a plan folder like any other: written, checked and verified.

``shardc compile --pin cp=N`` writes plan.json, one device file per rank of the cp × N
ranks, schedule.json and the trace; ``shardc check-plan`` accepts the folder and
``shardc verify`` runs it against onnxruntime on the unsharded model. The K/V and output
all-gathers are ordinary comm events of schedule.json on the cp group, and their bytes
are what the partitioner charged for them (:func:`cp_collectives`, forward).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from shardc.cli.main import cli
from shardc.partition.context_pricing import cp_collectives
from shardc.passes.lower import chunk_nodes
from shardc.passes.partition import costing_for

ROOT = Path(__file__).resolve().parents[2]
TOPO = str(ROOT / "topologies/localhost.topo")


def _compile(model: Path, out: Path, pins: str, devices: int, *extra: str) -> None:
    r = CliRunner().invoke(cli, ["compile", str(model), "--topology", TOPO, "--set",
                                 f"devices={devices}", "--pin", pins, "-o", str(out),
                                 "--force", *extra])
    assert r.exit_code == 0, r.output


def _verify(out: Path, *extra: str) -> float:
    """``shardc verify`` on ``out``; the worst absolute error over every output."""
    v = CliRunner().invoke(cli, ["verify", str(out), "--json", *extra])
    assert v.exit_code == 0, v.output
    report = json.loads(v.output)
    assert report["ok"] and report["outputs"], report
    return max(o["max_abs"] for o in report["outputs"])


CASES = [("gpt2_path", "cp=2,tp=1,pp=1,dp=1", 2), ("llama_path", "cp=2,tp=2,pp=1,dp=1", 4),
         ("gpt2_path", "cp=2,tp=2,pp=1,dp=1", 4)]


@pytest.mark.parametrize("fixture,pins,devices", CASES)
def test_a_cp_plan_folder_is_written_checked_and_verified(
    fixture: str, pins: str, devices: int, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    model = request.getfixturevalue(fixture)
    out = tmp_path / "plan"
    report = tmp_path / "report.html"
    _compile(model, out, pins, devices, *(("--report", str(report)) if devices == 4 else ()))
    plan = json.loads((out / "plan.json").read_text())
    assert [st.get("cp") for st in plan["partition"]["stages"]] == [2]
    assert len(plan["emission"]["ranks"]) == devices
    assert sorted(p.name for p in out.glob("device_*.onnx")) == [
        f"device_{r}.onnx" for r in range(devices)]
    assert devices != 4 or "+CP2" in report.read_text()
    c = CliRunner().invoke(cli, ["check-plan", str(out)])
    assert c.exit_code == 0, c.output
    worst = _verify(out)
    assert worst < 1e-4
    print(f"{model.stem} {pins}: verify max |error| {worst:.3g}")


def test_an_edited_cp_gather_is_caught_by_verify(gpt2_path: Path, tmp_path: Path) -> None:
    """Negative control: the two copies swap the token chunks they read (same shapes and
    comm order, so the folder still checks; the gathers then put the chunks in the wrong
    place) and verify must report the mismatch: the test above cannot pass on a folder
    whose copies do not each run their own chunk.
    """
    import onnx

    out = tmp_path / "plan"
    _compile(gpt2_path, out, "cp=2,tp=1,pp=1,dp=1", 2)
    for r in (0, 1):
        path = out / f"device_{r}.onnx"
        m = onnx.load(str(path))
        for t in m.graph.initializer:
            if "__cpin" in t.name and t.name.endswith(("_s", "_e")):
                chunk = 16 // 2  # the tiny models' sequence, over cp
                bound = onnx.numpy_helper.to_array(t) + (chunk if r == 0 else -chunk)
                t.CopyFrom(onnx.numpy_helper.from_array(bound, t.name))
        onnx.save(m, str(path))
    v = CliRunner().invoke(cli, ["verify", str(out), "--json"])
    assert v.exit_code != 0, v.output
    report = json.loads(v.output)
    assert not report["ok"] and not any(o["ok"] for o in report["outputs"]), report


@pytest.mark.parametrize("pins,devices", [("cp=2,tp=1,pp=1,dp=1", 2), ("cp=2,tp=2,pp=1,dp=1", 4)])
def test_schedule_bytes_of_cp_gathers_are_what_the_partitioner_charged(
    llama_path: Path, tmp_path: Path, pins: str, devices: int
) -> None:
    """Per rank, the forward comm events of micro-batch 0 on the rank's cp group in
    schedule.json carry exactly the bytes :func:`cp_collectives` charged its stage's nodes
    (forward: one all-gather per K and V, one per chunked output), each priced (seconds)
    on links of the topology; and a copy's TP collectives move its chunk (the partitioner's
    ``nbytes / cp``).
    """
    from shardc.compiler import build_plan, partition_model
    from shardc.partition.options import PartitionOptions, parse_pins
    from shardc.topology import load_topology

    out = tmp_path / "plan"
    _compile(llama_path, out, pins, devices)
    schedule = json.loads((out / "schedule.json").read_text())
    topo = load_topology(ROOT / "topologies/localhost.topo", {"devices": devices})
    options = PartitionOptions(pins=parse_pins([pins]))
    state = partition_model(llama_path, topo, mode="training", partition=options).state
    state = build_plan(state).state
    costing = costing_for(state)
    cmap, nodes = costing.context(2), [tuple(n for chunk in chunks for n in chunk) for chunks in chunk_nodes(state)]
    for dev in schedule["devices"]:
        rank, tp, stage = dev["rank"], dev["tp"], dev["stage"]
        cp_group = sorted({rank % tp + k * tp for k in range(2)})  # one stage, one replica
        got = [e for e in dev["events"] if e["type"] == "comm" and e["phase"] == "forward"
               and e["microbatch"] == 0 and sorted(e["group"]) == cp_group]
        ch, sizes = costing.choice(tp), {"tp": tp}
        charged = cp_collectives(nodes[stage], cmap,
                                 lambda nd, i, ch=ch, sizes=sizes: costing.operand_bytes(
                                     nd, i, ch, sizes),
                                 costing._nbytes, training=False, recompute="none")
        assert got and Counter(("all_gather", e["bytes"]) for e in got) == Counter(charged)
        assert all(e["op"] == "AllGather" and e["duration"] > 0 and e["links"] for e in got)
    if "tp=2" in pins:  # the TP traffic of a copy is its chunk's: the plain plan's over cp
        plain = tmp_path / "plain"
        _compile(llama_path, plain, pins.replace("cp=2,", ""), devices // 2)
        base = json.loads((plain / "schedule.json").read_text())

        def tp_bytes(dev: dict, group: list[int]) -> list[float]:
            return [e["bytes"] for e in dev["events"] if e["type"] == "comm"
                    and e["phase"] == "forward" and e["microbatch"] == 0
                    and e["group"] == group]

        want = tp_bytes(base["devices"][0], [0, 1])
        assert want and tp_bytes(schedule["devices"][2], [2, 3]) == [b / 2 for b in want]


@pytest.mark.slow
def test_a_cp_plan_verifies_over_torch_distributed(gpt2_path: Path, tmp_path: Path) -> None:
    """``shardc verify --procs`` on a cp2 × tp2 folder: four gloo processes (~15 s)."""
    out = tmp_path / "plan"
    _compile(gpt2_path, out, "cp=2,tp=2,pp=1,dp=1", 4)
    assert _verify(out, "--procs") < 1e-4
