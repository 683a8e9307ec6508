"""Issue #16: ``moe_comm`` picks how a MoE layer's tokens reach their experts: DeepEP's
all-to-all (the default) or TensorRT-LLM's all-gather + reduce-scatter over the EP group.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from shardc.cli.main import cli
from shardc.cost.comm import Tier, collective_time
from shardc.cost.expert_comm import (
    ROUTING_BYTES_PER_PICK,
    distinct_targets,
    expert_allgather,
    expert_alltoall,
    moe_exchange,
)
from shardc.errors import OptionError
from shardc.serving import ServingModel, ServingOptions, plan_serving, workload
from shardc.serving.shapes import Parallel, Quant, StepContext, StepShape
from shardc.serving.step import step_time
from shardc.synth import SynthConfig, build, save
from shardc.topology import load_topology
from shardc.topology.loader import find_topology

NVLINK = Tier(8, 450e9, 2e-6, "nvlink", switched=True)
IB = Tier(2, 50e9, 5e-6, "ib")


def test_allgather_is_the_collectives_all_gather_plus_reduce_scatter() -> None:
    # 16 ranks on two 8-GPU islands, 1024 tokens each, hidden 7168, top-8, fp8 dispatch
    views = [[NVLINK, IB]]
    t, h, k = 1024, 7168, 8
    est = expert_allgather(views, tokens_per_rank=t, hidden=h, top_k=k, dispatch_bytes=1.0,
                           combine_bytes=2.0)
    gather = 16 * t * (h * 1.0 + ROUTING_BYTES_PER_PICK * k)
    ag = collective_time("all_gather", gather, views[0]).seconds
    rs = collective_time("reduce_scatter", 16 * t * h * 2.0, views[0]).seconds
    assert est.dispatch_seconds == ag and est.combine_seconds == rs
    assert est.seconds == ag + rs
    # what leaves the island: the other island's half of the array
    assert est.outer_bytes == pytest.approx(gather * 8 / 16)
    assert est.inner_bytes == pytest.approx(gather * 7 / 16)
    assert moe_exchange("allgather", views, tokens_per_rank=t, hidden=h, top_k=k,
                        dispatch_bytes=1.0, combine_bytes=2.0) == est


def test_allgather_moves_more_than_alltoall_when_ep_is_large_and_top_k_small() -> None:
    # one NVLink island of 8 ranks, top-1: the all-to-all sends T·K_eff·(E-1)/E per rank,
    # the all-gather brings in (E-1)·T: E/K_eff = 8 times the bytes, and the time shows it
    one = [[NVLINK]]
    kw = dict(tokens_per_rank=4096.0, hidden=4096, dispatch_bytes=2.0, combine_bytes=2.0)
    a2a = expert_alltoall(one, top_k=1, **kw)  # type: ignore[arg-type]
    ag = expert_allgather(one, top_k=1, **kw)  # type: ignore[arg-type]
    assert ag.inner_bytes / a2a.inner_bytes == pytest.approx(8.0 / distinct_targets(8, 1),
                                                             rel=2e-3)  # the routing ids and weights ride along
    assert ag.seconds > 5 * a2a.seconds
    # two ranks and top-8: nearly every token goes to both ranks either way, so the
    # bytes are within 2% (0.4% deduplication, 0.8% routing) and the all-gather is no
    # dearer than 1.1x
    two = [[Tier(2, 450e9, 2e-6, "nvlink", switched=True)]]
    a2a2 = expert_alltoall(two, top_k=8, **kw)  # type: ignore[arg-type]
    ag2 = expert_allgather(two, top_k=8, **kw)  # type: ignore[arg-type]
    assert ag2.inner_bytes == pytest.approx(a2a2.inner_bytes, rel=0.02)
    assert ag2.seconds < 1.1 * a2a2.seconds


MOE = ServingModel("moe", layers=8, hidden=2048, heads=16, kv_heads=4, head_dim=128, ffn=8192,
                   vocab=32000, dense_layers=1, experts=64, top_k=4, shared_experts=1,
                   expert_ffn=1024)


def test_a_step_differs_only_in_the_exchange() -> None:
    from tests.serving.test_pricing import Kind

    kind = Kind()
    par = Parallel(tp=1, dp=16)
    shape = StepShape(prefill_tokens=16 * 4096, prefill_context=2048)
    ctx = StepContext(ep_tiers=((NVLINK, IB),), overlap=False)
    base = step_time(MOE, kind, par, Quant(), shape, ctx)
    ag = step_time(MOE, kind, par, Quant(), shape,
                   StepContext(ep_tiers=((NVLINK, IB),), overlap=False, moe_comm="allgather"))
    same = [k for k in base.parts if k not in ("ep_alltoall_total", "ep_alltoall_exposed")]
    assert all(base.parts[k] == ag.parts[k] for k in same)
    assert ag.parts["ep_alltoall_total"] > base.parts["ep_alltoall_total"] > 0
    assert ag.seconds - base.seconds == pytest.approx(
        ag.parts["ep_alltoall_total"] - base.parts["ep_alltoall_total"], rel=1e-9)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("moe") / "moe.onnx"
    save(build("deepseek", SynthConfig(layers=3, hidden=256, heads=4, ffn=128, experts=8,
                                       top_k=2, dense_layers=1)), path)
    return path


def _compile(model: Path, out: Path, *extra: str) -> object:
    return CliRunner().invoke(cli, [
        "compile", str(model), "--topology", "dgx_h100", "--mode", "serving", "--isl", "1000",
        "--osl", "100", "--time-limit", "2", "--json", "-o", str(out), *extra])


def test_the_option_round_trips_through_plan_json(model: Path, tmp_path: Path) -> None:
    default = _compile(model, tmp_path / "a")
    chosen = _compile(model, tmp_path / "b", "--moe-comm", "allgather")
    assert default.exit_code == 0 and chosen.exit_code == 0, (default.output, chosen.output)
    a = json.loads((tmp_path / "a" / "plan.json").read_text())
    b = json.loads((tmp_path / "b" / "plan.json").read_text())
    # the default leaves no trace, so plans made before the option read the same
    assert "moe_comm" not in a["serving"]["precision"] and "moe_comm" not in a["options"]
    assert b["serving"]["precision"]["moe_comm"] == "allgather"
    assert b["options"]["moe_comm"] == "allgather"
    explicit = _compile(model, tmp_path / "c", "--moe-comm", "alltoall")
    assert (tmp_path / "c" / "plan.json").read_bytes() == (tmp_path / "a" / "plan.json"
                                                           ).read_bytes(), explicit.output
    # the reports name the exchange the plan was priced with
    from shardc.handle import Plan
    from shardc.report.serving import expert_lines

    for folder, name in (("a", "expert all-to-all"), ("b", "expert all-gather/reduce-scatter")):
        serving = Plan.load(tmp_path / folder).serving
        assert serving is not None
        lines = expert_lines(serving)
        assert lines and all(line.startswith(name + ",") for line in lines), lines


def test_a_bad_value_is_one_line_exit_2(model: Path, tmp_path: Path) -> None:
    run = _compile(model, tmp_path / "out", "--moe-comm", "ring")
    assert run.exit_code == 2, run.output
    assert "Traceback" not in run.output and run.stderr.strip().count("\n") <= 1, run.stderr
    assert "--moe-comm" in run.stderr and not (tmp_path / "out").exists()


def test_the_api_refuses_a_bad_value() -> None:
    topo = load_topology(find_topology(Path("dgx_h100"), ()), {})
    with pytest.raises(OptionError, match="moe_comm 'ring'"):
        plan_serving(MOE, topo, workload(isl=100, osl=10),
                     ServingOptions(moe_comm="ring", time_limit=1.0, pareto=False))
