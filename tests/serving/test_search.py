"""The serving search: roles, heterogeneous pools, pins, targets, errors and determinism."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path

import pytest
from click.testing import CliRunner

from shardc.cli.main import cli
from shardc.errors import InfeasibleError, OptionError
from shardc.serving import ServingModel, ServingOptions, plan_serving, workload
from shardc.synth import SynthConfig, build, save
from shardc.topology import load_topology
from shardc.topology.loader import find_topology

LLAMA8B = ServingModel("llama8b", layers=32, hidden=4096, heads=32, kv_heads=8, head_dim=128,
                       ffn=14336, vocab=128256)
MOE = ServingModel("moe", layers=16, hidden=2048, heads=16, kv_heads=4, head_dim=128, ffn=8192,
                   vocab=32000, dense_layers=1, experts=64, top_k=4, shared_experts=1,
                   expert_ffn=1024)
QUICK = ServingOptions(time_limit=2.0, pareto=False)


def _topo(name: str, **sets: int):  # type: ignore[no-untyped-def]
    return load_topology(find_topology(Path(name), ()), dict(sets))


def test_role_tags_put_prefill_on_950pr_and_decode_on_950dt() -> None:
    plan = plan_serving(LLAMA8B, _topo("ascend950_pool"), workload(isl=2000, osl=400,
                        tpot="50ms"), QUICK)
    assert plan.mode == "disaggregated"
    kinds = {(i.role, i.kind) for i in plan.instances}
    assert kinds == {("prefill", "ascend950pr"), ("decode", "ascend950dt")}
    assert plan.tpot <= 0.05 and plan.kv_transfer is not None
    assert plan.kv_transfer.plane == "roce"  # the only plane joining the two server kinds
    assert dict(plan.alternative)["status"] == "not allowed on these devices"


def test_heterogeneous_pool_decodes_on_the_memory_rich_h20() -> None:
    plan = plan_serving(LLAMA8B, _topo("h100_h20_mixed", h100_nodes=1, h20_nodes=1),
                        workload(isl=4000, osl=500, tpot="50ms", ttft="2s"), QUICK)
    roles = {i.role: i.kind for i in plan.instances}
    assert plan.mode == "disaggregated" and roles == {"prefill": "h100_sxm", "decode": "h20"}
    assert plan.ttft <= 2.0 and plan.tpot <= 0.05


def test_pins_are_respected_and_targets_met() -> None:
    opts = ServingOptions(time_limit=2.0, pareto=False, pins=(("decode.ep", 16),
                          ("decode.redundant", 0), ("prefill.tp", 1)))
    plan = plan_serving(MOE, _topo("dgx_h100_superpod", nodes=4),
                        workload(isl=2000, osl=500, tpot="30ms"), opts)
    for inst in plan.instances:
        if inst.role == "decode":
            assert inst.ep == 16 and inst.tp * inst.dp == 16 and inst.redundant_experts == 0
        if inst.role == "prefill":
            assert inst.tp == 1
    assert plan.tpot <= 0.03


def test_request_rate_is_met_with_fewest_devices() -> None:
    topo = _topo("dgx_h100_superpod", nodes=4)
    wl = workload(isl=1000, osl=200, tpot="50ms", rate=5.0)
    plan = plan_serving(LLAMA8B, topo, wl, QUICK)
    assert plan.requests_per_s >= 5.0 and plan.devices_used < 32


def test_ep_that_does_not_divide_the_experts_is_refused() -> None:
    opts = ServingOptions(pareto=False, pins=(("ep", 24),))
    with pytest.raises(OptionError, match="ep=24 does not divide the 64 routed experts") as e:
        plan_serving(MOE, _topo("dgx_h100_superpod", nodes=4), workload(isl=100, osl=10), opts)
    assert "redundant=8" in str(e.value.hint)
    with pytest.raises(OptionError, match="the model has no experts"):
        plan_serving(LLAMA8B, _topo("dgx_h100_superpod", nodes=1), workload(isl=100, osl=10),
                     ServingOptions(pins=(("ep", 8),)))


def test_unreachable_tpot_says_which_phase_and_what_would_meet_it() -> None:
    with pytest.raises(InfeasibleError, match=r"decode misses --tpot 0.1ms by .*ms: the fastest "
                       r"step is") as e:
        plan_serving(LLAMA8B, _topo("dgx_h100_superpod", nodes=1),
                     workload(isl=1000, osl=100, tpot="0.1ms"), QUICK)
    assert "would be met" in str(e.value.hint)
    with pytest.raises(InfeasibleError, match=r"prefill misses --ttft 1ms"):
        plan_serving(LLAMA8B, _topo("dgx_h100_superpod", nodes=1),
                     workload(isl=100000, osl=100, ttft="1ms"), QUICK)


def test_kv_cache_that_does_not_fit_is_an_error() -> None:
    with pytest.raises(InfeasibleError, match="the KV cache does not fit"):
        plan_serving(LLAMA8B, _topo("localhost", devices=1), workload(isl=10_000_000, osl=10),
                     QUICK)


def _synth(path: Path, **sizes: int) -> Path:
    save(build("llama", SynthConfig(**sizes)), path)
    return path


def test_compile_serving_plan_json_is_byte_identical_across_runs(tmp_path: Path) -> None:
    model = _synth(tmp_path / "m.onnx", layers=8, hidden=2048, heads=16, kv_heads=4)
    outs = []
    for i in range(2):
        run = CliRunner().invoke(cli, [
            "compile", str(model), "--topology", "h100_h20_mixed", "--set", "h100_nodes=1",
            "--set", "h20_nodes=1", "--mode", "serving", "--isl", "2000", "--osl", "300",
            "--tpot", "40ms", "-o", str(tmp_path / f"out{i}"), "--json", "--time-limit", "2"])
        assert run.exit_code == 0, run.output
        printed = json.loads(run.stdout)
        written = (tmp_path / f"out{i}" / "plan.json").read_bytes()
        assert printed["plan"] == json.loads(written)
        outs.append(written)
    assert outs[0] == outs[1] and b'"pareto"' in outs[0]


def test_compile_serving_bad_input_is_one_line_exit_2(tmp_path: Path) -> None:
    model = _synth(tmp_path / "m.onnx", layers=2, hidden=256, heads=4)
    run = CliRunner().invoke(cli, [
        "compile", str(model), "--topology", "localhost", "--mode", "serving", "--isl", "100",
        "--osl", "10", "--tpot", "fast", "-o", str(tmp_path / "out")])
    assert run.exit_code == 2 and run.stderr.count("\n") <= 2 and "--tpot 'fast'" in run.stderr
    assert not (tmp_path / "out").exists()
    run = CliRunner().invoke(cli, [
        "compile", str(model), "--topology", "localhost", "--isl", "100", "-o",
        str(tmp_path / "out")])
    assert run.exit_code == 2 and "--isl applies to --mode serving only" in run.stderr


def test_concurrency_is_held_and_the_pareto_table_never_loses_throughput() -> None:
    topo = _topo("dgx_h100_superpod", nodes=2)
    plan = plan_serving(LLAMA8B, topo, workload(isl=1000, osl=200, concurrency=256),
                        ServingOptions(time_limit=2.0))
    held = sum(i.batch * i.dp * i.pp for i in plan.instances if i.role != "prefill")
    assert held >= 256
    # filling the pool, a looser TPOT target never gives less
    plan = plan_serving(LLAMA8B, topo, workload(isl=1000, osl=200), ServingOptions(
        time_limit=2.0))
    totals = [r.tokens_per_s_per_device * r.devices for r in plan.pareto]
    assert len(totals) >= 5 and all(b >= a * 0.999 for a, b in pairwise(totals))
    assert all(r.tpot <= r.tpot_target for r in plan.pareto)
