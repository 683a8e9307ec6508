"""The serving plan as a Plan: plan.json (format shardc-plan/2) written by the one writer and
read back by the one reader, ``shardc.Plan.serving``, the terminal summary, the HTML report
and its map, check-plan, explain, and the links the KV hand-off and all-to-all load.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import shardc
from shardc import jsonutil
from shardc.cli.main import cli
from shardc.emit.outputs import plan_files
from shardc.errors import ShardcError
from shardc.plan.folder import read_plan
from shardc.plan.model import SERVING_FORMAT, PlanData
from shardc.plan.serving import ServingPlan
from shardc.report.html import render_html
from shardc.report.html.serving import TRAFFIC_COLOURS
from shardc.serving import ServingModel, ServingOptions, plan_serving, workload
from shardc.serving.fabric import Fabric
from shardc.serving.traffic import _route_group
from shardc.synth import SynthConfig, build, save
from shardc.topology import load_topology
from shardc.topology.loader import find_topology

MOE = ServingModel("moe", layers=16, hidden=2048, heads=16, kv_heads=4, head_dim=128, ffn=8192,
                   vocab=32000, dense_layers=1, experts=64, top_k=4, shared_experts=1,
                   expert_ffn=1024)
ARGS = ["--topology", "h100_h20_mixed", "--set", "h100_nodes=1", "--set", "h20_nodes=1",
        "--mode", "serving", "--isl", "2000", "--osl", "300", "--tpot", "40ms",
        "--time-limit", "2"]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One serving plan folder (and its report) on the stock mixed H100/H20 pool."""
    root = tmp_path_factory.mktemp("serving")
    save(build("llama", SynthConfig(layers=8, hidden=2048, heads=16, kv_heads=4)),
         root / "m.onnx")
    run = CliRunner().invoke(cli, ["compile", str(root / "m.onnx"), *ARGS, "-o",
                                   str(root / "plan"), "--report", str(root / "r.html")])
    assert run.exit_code == 0, run.output
    return root


def test_plan_json_reads_back_as_the_same_plan(compiled: Path, tmp_path: Path) -> None:
    data = json.loads((compiled / "plan" / "plan.json").read_bytes())
    assert data["format"] == SERVING_FORMAT and "partition" not in data
    typed = read_plan(compiled / "plan")
    assert typed.serving is not None and typed.partition is None
    # the one writer writes back exactly the bytes the reader read
    again = plan_files(typed)["plan.json"]
    assert again == (compiled / "plan" / "plan.json").read_bytes()
    assert ServingPlan.from_json(typed.serving.to_json()) == typed.serving
    plan = shardc.Plan.load(compiled / "plan")
    s = plan.serving
    assert s is not None and s == typed.serving
    assert {i.role for i in s.instances} == {"prefill", "decode"}
    assert {i.kind for i in s.instances if i.role == "decode"} == {"h20"}
    assert plan.world_size == s.devices_used == sum(len(i.devices) for i in s.instances)
    assert s.kv_transfer is not None and s.kv_transfer.links
    assert s.kv_transfer.links[0].a.startswith(("node0", "ib")), s.kv_transfer.links[0]
    assert s.tokens_per_s_per_user == pytest.approx(1 / s.tpot)
    assert "serving disaggregated" in repr(plan)
    assert shardc.Plan.load(plan.save(tmp_path / "copy")).serving == s
    with pytest.raises(ShardcError, match="serving plan has no pipeline partition"):
        plan.dp  # noqa: B018


def test_the_summary_and_the_report_show_both_phases_and_the_links(compiled: Path) -> None:
    text = str(shardc.Plan.load(compiled / "plan").summary())
    assert "prefill" in text and "decode" in text and "KV hand-off prefill -> decode" in text
    page = (compiled / "r.html").read_text()
    for part in ("Instances: prefill and decode", "KV hand-off", "Throughput vs TPOT",
                 "prefill devices", "decode devices"):
        assert part in page, part
    assert "<title>prefill: 1, not used: 7</title>" in page or "prefill: " in page
    assert page.count(f'stroke="{TRAFFIC_COLOURS["kv"]}"') >= 1  # the hand-off's edges
    # the page is a function of the plan read back, byte for byte
    topo = load_topology(find_topology(Path("h100_h20_mixed"), ()),
                         {"h100_nodes": 1, "h20_nodes": 1})
    assert render_html(read_plan(compiled / "plan"), topo, model="m.onnx") == page


def test_two_compiles_are_byte_identical(compiled: Path) -> None:
    run = CliRunner().invoke(cli, ["compile", str(compiled / "m.onnx"), *ARGS, "-o",
                                   str(compiled / "again"), "--report",
                                   str(compiled / "again.html"), "--json"])
    assert run.exit_code == 0, run.output
    written = (compiled / "again" / "plan.json").read_bytes()
    assert written == (compiled / "plan" / "plan.json").read_bytes()
    assert (compiled / "again.html").read_bytes() == (compiled / "r.html").read_bytes()
    assert json.loads(run.stdout)["plan"] == json.loads(written)


def test_check_plan_and_explain_read_a_serving_folder(compiled: Path, tmp_path: Path) -> None:
    run = CliRunner().invoke(cli, ["check-plan", str(compiled / "plan")])
    assert run.exit_code == 0 and run.stdout.endswith("ok\n"), run.output
    assert "serving plan, disaggregated" in run.stdout and "decode instance(s)" in run.stdout
    s = read_plan(compiled / "plan").serving
    assert s is not None
    device = next(i for i in s.instances if i.role == "decode").devices[0]
    run = CliRunner().invoke(cli, ["explain", str(compiled / "plan"), device])
    assert run.exit_code == 0, run.output
    assert "decode instance 0 of" in run.stdout and "KV hand-off" in run.stdout
    run = CliRunner().invoke(cli, ["explain", str(compiled / "plan"), "node9.gpu0"])
    assert run.exit_code == 2 and "not a device of this serving plan" in run.stderr
    assert run.stderr.count("\n") == 1
    run = CliRunner().invoke(cli, ["verify", str(compiled / "plan")])
    assert run.exit_code == 2 and "serving plan" in run.stderr
    # a tampered folder: a device the topology lacks, then a device in two instances
    data = json.loads((compiled / "plan" / "plan.json").read_text())
    first = data["serving"]["instances"][0]
    first["devices"][0] = "node0.gpu99"
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "plan.json").write_text(jsonutil.dumps(data).replace(
        '"path": "../m.onnx"', f'"path": "{compiled / "m.onnx"}"'))
    run = CliRunner().invoke(cli, ["check-plan", str(bad)])
    assert run.exit_code == 2 and "no device 'node0.gpu99'" in run.stderr, run.output
    first["devices"][0] = data["serving"]["instances"][1]["devices"][0]
    (bad / "plan.json").write_text(jsonutil.dumps(data))
    with pytest.raises(ShardcError, match="a device is in two instances"):
        shardc.Plan.load(bad)


def test_a_pipeline_plan_with_the_serving_format_is_refused(tmp_path: Path) -> None:
    plan = shardc.compile("examples/models/tiny_gpt2.onnx", "topologies/localhost.topo",
                          devices=2, pins="tp=2")
    data = plan.to_json()
    data["format"] = SERVING_FORMAT
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "plan.json").write_text(jsonutil.dumps(data))
    with pytest.raises(ShardcError, match="format: 'shardc-plan/2' is not a pipeline plan"):
        shardc.Plan.load(tmp_path / "p")


def test_moe_all_to_all_is_on_the_plan_and_its_links_conserve_bytes() -> None:
    topo = load_topology(find_topology(Path("dgx_h100_superpod"), ()), {"nodes": 4})
    opts = ServingOptions(time_limit=2.0, pareto=False, mode="disaggregated",
                          pins=(("decode.ep", 16), ("decode.redundant", 0)))
    s = plan_serving(MOE, topo, workload(isl=2000, osl=500, tpot="30ms"), opts)
    a2a = {e.role: e for e in s.expert_traffic}
    dec = a2a["decode"]
    assert dec.ep == 16 and dec.bytes_per_rank > dec.outer_bytes_per_rank > 0
    planes = {x.plane for x in dec.links}
    assert len(planes) == 2, planes  # inside the node and across nodes
    # every rank sends exactly its bytes, spread over its peers on the links it reaches
    group = next(i for i in s.instances if i.role == "decode").devices[:16]
    load: dict[tuple[str, str, str], float] = {}
    inner = dec.bytes_per_rank - dec.outer_bytes_per_rank
    _route_group(Fabric(topo), group, inner, dec.outer_bytes_per_rank, load)
    for d in group:
        sent = sum(v for (_, a, _), v in load.items() if a == d)
        assert sent == pytest.approx(dec.bytes_per_rank, rel=1e-9)
    # the typed plan round-trips through plan.json with its traffic
    assert ServingPlan.from_json(s.to_json()) == s
    page_plan = PlanData(partition=None, ranks=(), serving=s)
    assert page_plan.stages == ()
