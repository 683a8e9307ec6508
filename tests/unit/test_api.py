"""The Python API: shardc.compile and Plan, against the CLI and against itself."""

from __future__ import annotations

import inspect
import json
import re
import warnings
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

import shardc
from shardc.cli.main import cli
from shardc.errors import InfeasibleError, ModelError, OptionError, ShardcWarning, TopologyError

GPT2 = "examples/models/tiny_gpt2.onnx"
LOCAL = "topologies/localhost.topo"


@pytest.fixture(scope="module")
def plan() -> shardc.Plan:
    """Tiny GPT-2 on 4 local devices, tp=2 pinned: two replicas of one TP pair."""
    return shardc.compile(GPT2, LOCAL, devices=4, pins={"tp": 2}, quiet=True)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_save_is_byte_identical_to_the_cli(plan: shardc.Plan, tmp_path: Path) -> None:
    args = ["compile", GPT2, "--topology", LOCAL, "--set", "devices=4", "--pin", "tp=2"]
    r = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "cli"), "-q"])
    assert r.exit_code == 0, r.output
    plan.save(tmp_path / "api")
    assert _files(tmp_path / "api") == _files(tmp_path / "cli")
    assert plan.path == tmp_path / "api"
    with pytest.raises(OptionError, match="--force"):
        plan.save(tmp_path / "api")
    plan.save(tmp_path / "api", force=True)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_plan_answers_from_its_files(plan: shardc.Plan) -> None:
    assert (plan.dp, plan.pp, plan.world_size) == (2, 1, 4)
    (stage,) = plan.stages
    assert stage.tp == 2 and stage.ranks == (0, 1, 2, 3) and stage.groups[1] == ("cpu2", "cpu3")
    assert [(d.rank, d.device, d.replica, d.tp_rank) for d in plan.devices] == [
        (0, "cpu0", 0, 0),
        (1, "cpu1", 0, 1),
        (2, "cpu2", 1, 0),
        (3, "cpu3", 1, 1),
    ]
    assert set(plan.memory) == {"cpu0", "cpu1", "cpu2", "cpu3"}
    assert 0 < plan.memory["cpu0"].memory_fraction < 1
    est = plan.estimate
    assert est.status == "OPTIMAL" and est.step_seconds > 0
    assert est.samples_per_second == pytest.approx(est.samples_per_step / est.step_seconds)
    assert set(est.breakdown) >= {"compute", "tp comm", "pipeline bubble"}
    assert plan.schedule is not None and plan.schedule["format"] == "shardc-schedule/1"
    assert plan.to_json() == json.loads(plan._read("plan.json"))
    assert plan.to_json() is not plan.data
    model = plan.device_model(1)
    onnx.checker.check_model(model)
    assert dict((p.key, p.value) for p in model.metadata_props)["shardc.rank"] == "1"
    with pytest.raises(OptionError, match="no rank 9"):
        plan.device_model(9)
    assert "dp=2" in repr(plan) and "OPTIMAL" in repr(plan)


def test_summary_renders_as_text_and_rich(plan: shardc.Plan) -> None:
    text = str(plan.summary())
    assert "where the time goes" in text and "cpu_share" in text and "\x1b[" not in text
    from rich.console import Console

    console = Console(record=True, width=120)
    console.print(plan)
    assert "stages" in console.export_text()


def test_load_reads_back_the_same_plan(plan: shardc.Plan, tmp_path: Path) -> None:
    plan.save(tmp_path / "p")
    again = shardc.Plan.load(tmp_path / "p")
    assert again.to_json() == plan.to_json()
    assert again.stages == plan.stages and again.devices == plan.devices
    assert str(again.summary()) == str(plan.summary())
    assert again.device_model(2) == plan.device_model(2)
    assert again.explain("node_Gemm_280").comms == plan.explain("node_Gemm_280").comms
    again.save(tmp_path / "copy")
    assert _files(tmp_path / "copy") == _files(tmp_path / "p")
    with pytest.raises(shardc.ShardcError, match=r"no plan\.json"):
        shardc.Plan.load(tmp_path)


def test_explain_node_value_and_weight(plan: shardc.Plan) -> None:
    row = plan.explain("node_Gemm_280")
    assert row.what == "node" and row.strategy == "row" and row.ranks == (0, 1, 2, 3)
    assert [c.op for c in row.comms] == ["AllReduce"]
    assert row.comms[0].groups == ((0, 1), (2, 3)) and row.comms[0].seconds > 0
    assert any("row-parallel" in r for r in row.reasons)
    assert any("repeated block 0" in r for r in row.reasons)  # the state names the block
    assert plan.explain("node_layer_norm").strategy == "replicated"
    weight = plan.explain("inner.transformer.h.0.attn.c_attn.weight")
    assert weight.what == "weight" and weight.strategy == "split" and len(weight.shards) == 2
    value = plan.explain("linear")
    assert value.what == "value" and [c.op for c in value.comms] == ["AllGather"]
    assert "AllGather" in str(value) and json.dumps(value.to_json())
    with pytest.raises(OptionError, match="did you mean 'node_layer_norm'"):
        plan.explain("node_layer_nrom")


def test_pipeline_plan_explains_its_boundary() -> None:
    plan = shardc.compile(GPT2, LOCAL, devices=2, pins="pp=2,tp=1", quiet=True)
    assert [s.index for s in plan.stages] == [0, 1]
    sends = [
        e["value"]
        for d in plan.schedule["devices"]
        for e in d["events"]
        if e["type"] == "comm" and e["op"] == "Send" and e["microbatch"] == 0
    ]
    value = plan.explain(sends[0])
    assert value.stages == (0, 1) and {c.op for c in value.comms} == {"Send", "Recv"}
    assert any("stage boundary" in r for r in value.reasons)


def test_model_as_proto_and_torch_module(tmp_path: Path) -> None:
    proto = onnx.load(GPT2)
    from_proto = shardc.compile(proto, LOCAL, devices=2, quiet=True)
    assert from_proto.inputs["model"]["path"] == "<ModelProto>"
    from_path = shardc.compile(GPT2, LOCAL, devices=2, quiet=True)
    assert from_proto.data["partition"] == from_path.data["partition"]
    assert from_proto.source is proto

    torch = pytest.importorskip("torch")

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Linear(16, 32)
            self.b = torch.nn.Linear(32, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(torch.relu(self.a(x)))

    torch.manual_seed(0)
    plan = shardc.compile(Tiny(), LOCAL, example_inputs=(torch.randn(4, 16),), quiet=True)
    assert plan.inputs["model"]["path"] == "<Tiny>" and plan.world_size >= 1
    assert plan.source is not None and plan.verify().ok
    with pytest.raises(ModelError, match="example_inputs") as err:
        shardc.compile(Tiny(), LOCAL, quiet=True)
    assert err.value.hint
    with pytest.raises(ModelError, match=r"torch\.onnx\.export failed") as err:
        shardc.compile(Tiny(), LOCAL, example_inputs=(torch.randn(4, 5),), quiet=True)
    assert "example_inputs match forward()" in err.value.hint
    with pytest.raises(OptionError, match="example_inputs"):
        shardc.compile(GPT2, LOCAL, example_inputs=(1,), quiet=True)


def test_topology_as_text_object_and_devices() -> None:
    text = Path(LOCAL).read_text()
    plan = shardc.compile(GPT2, text, devices=2, quiet=True)
    assert plan.inputs["topology"]["path"] == "<text>"
    assert plan.inputs["topology"]["set"] == {"devices": 2}
    topo = shardc.load_topology(LOCAL, {"devices": 2})
    built = shardc.compile(GPT2, topo, quiet=True)
    assert built.inputs["topology"]["path"] == "<Topology localhost>"
    assert built.data["partition"] == plan.data["partition"]
    with pytest.raises(OptionError, match="already built"):
        shardc.compile(GPT2, topo, devices=4, quiet=True)
    with pytest.raises(OptionError, match=r"has none .*nodes") as err:
        shardc.compile(GPT2, "topologies/dgx_h100_superpod.topo", devices=8, quiet=True)
    assert "params" in err.value.hint
    with pytest.raises(OptionError, match="disagree"):
        shardc.compile(GPT2, LOCAL, devices=2, params={"devices": 4}, quiet=True)
    with pytest.raises(TopologyError) as bad:
        shardc.compile(GPT2, "kind x {\n  memory 80 GB/s\n}\n", quiet=True)
    assert bad.value.line == 2 and bad.value.column is not None


def test_infeasible_carries_its_reason() -> None:
    tiny = (
        "kind small { compute fp32 1 TFLOPS; memory 1 KiB; memory_bandwidth 1 GB/s }\n"
        "d[0..1]: small\n"
        "switch sw: pcie { members d[*]; bandwidth 1 GB/s; latency 1 us }\n"
    )
    with pytest.raises(InfeasibleError) as err:
        shardc.compile(GPT2, tiny, quiet=True)
    assert err.value.reason and err.value.reason in str(err.value)


def test_progress_callback_and_warnings(tmp_path: Path) -> None:
    calls: list[tuple[str, int, int]] = []
    shardc.compile(GPT2, LOCAL, progress=lambda *a: calls.append(a), quiet=True)
    steps = list(dict.fromkeys(c[0] for c in calls))
    assert steps == [
        "load model",
        "precision",
        "annotate_costs",
        "coarsen",
        "strategies",
        "partition",
        "partition dp=2",  # the search, per width (see test_progress for its counts)
        "partition dp=1",
        "lower",
        "price",
        "timeline",
        "plan",
        "emit",
        "done",
    ]
    done = [c[1] for c in calls]
    assert done == sorted(done) and calls[-1] == ("done", calls[-1][2], calls[-1][2])

    from shardc.synth import SynthConfig, build, save  # a graph whose weights are declared only

    path = tmp_path / "g.onnx"
    save(
        build(
            "gpt",
            SynthConfig(layers=2, hidden=64, heads=4, vocab=128, seq=16, batch=2, dtype="fp32"),
        ),
        path,
    )
    with pytest.warns(ShardcWarning, match="weights are not readable"):
        synthetic = shardc.compile(path, LOCAL)
    assert synthetic.schedule is not None  # the schedule needs shapes only, not weights
    assert "weights are not readable" in synthetic.warnings[0]
    with pytest.raises(shardc.ShardcError, match="no device files"):
        synthetic.device_model(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        shardc.compile(path, LOCAL, quiet=True)


def test_pins_in_every_form_mean_the_same() -> None:
    a = shardc.compile(GPT2, LOCAL, devices=4, pins="tp=2,dp=2", quiet=True)
    b = shardc.compile(GPT2, LOCAL, devices=4, pins=["tp=2", "dp=2"], quiet=True)
    c = shardc.compile(GPT2, LOCAL, devices=4, pins={"tp": 2, "dp": 2}, quiet=True)
    assert a.data == b.data == c.data
    with pytest.raises(OptionError, match="unknown"):
        shardc.compile(GPT2, LOCAL, pins={"tq": 2}, quiet=True)


def test_warm_start_from_a_saved_plan(plan: shardc.Plan, tmp_path: Path) -> None:
    with pytest.raises(OptionError, match="no folder"):
        shardc.compile(GPT2, LOCAL, devices=4, warm_start=shardc.Plan(dict(plan._files or {})))
    plan.save(tmp_path / "old")
    again = shardc.compile(GPT2, LOCAL, devices=4, warm_start=plan, pins={"tp": 2}, quiet=True)
    assert again.options["warm_start"] == str(tmp_path / "old" / "plan.json")
    assert again.data["partition"]["stages"] == plan.data["partition"]["stages"]


def test_help_of_compile_is_complete() -> None:
    doc = inspect.getdoc(shardc.compile) or ""
    for name in inspect.signature(shardc.compile).parameters:
        assert re.search(rf"^\s+{name}: ", doc, re.M), f"{name} is not documented"
    for section in ("Args:", "Returns:", "Raises:", "Example:"):
        assert section in doc
    for err in ("ModelError", "TopologyError", "OptionError", "InfeasibleError", "SolverTimeout"):
        assert err in doc


def test_explain_command_reads_a_plan_folder(plan: shardc.Plan, tmp_path: Path) -> None:
    folder = plan.save(tmp_path / "p")
    r = CliRunner().invoke(cli, ["explain", str(folder), "node_Gemm_280"])
    assert r.exit_code == 0 and "sharding: row" in r.output and "AllReduce" in r.output
    j = CliRunner().invoke(cli, ["explain", str(folder), "node_Gemm_280", "--json"])
    assert json.loads(j.output)["strategy"] == "row"
    whole = CliRunner().invoke(cli, ["explain", str(folder)])
    assert whole.exit_code == 0 and "where the time goes" in whole.output
    bad = CliRunner().invoke(cli, ["explain", str(folder), "nope"])
    assert bad.exit_code == 2 and "no node or value named 'nope'" in bad.output
