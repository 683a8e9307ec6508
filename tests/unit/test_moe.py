"""Expert parallelism on real MoE exports: tiny Mixtral and DeepSeek-V3 from transformers
(``batched_mm`` experts, dynamo, opset 18).

Plans pin a tensor-parallel group, over which the experts spread (each rank stores E/d
whole experts and computes the pairs routed to them; see shardc.partition.experts). The
numerical reference is onnxruntime on the unsharded export; tolerance 1e-5 relative to
the output's largest magnitude (fp32).
"""

from __future__ import annotations

import json
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
from shardc.partition.experts import ExpertRule, find_regions
from shardc.partition.options import PartitionOptions, parse_pins
from shardc.passes.partition import costing_for
from shardc.runtime.inprocess import run_inprocess
from shardc.topology import load_topology

ROOT = Path(__file__).resolve().parents[2]
MODELS = {"mixtral_path": 2, "deepseek_v3_path": 1}
"""Fixture -> MoE layers in the tiny export."""
PLANS = [
    ("mixtral_path", 4, "tp=4,pp=1,dp=1"),
    ("mixtral_path", 2, "tp=2,pp=1,dp=1"),
    ("mixtral_path", 4, "tp=2,pp=2,dp=1"),
    ("deepseek_v3_path", 4, "tp=4,pp=1,dp=1"),
    ("deepseek_v3_path", 2, "tp=2,pp=1,dp=1"),
]


def _state(path: Path, devices: int, pins: str):
    topo = load_topology(ROOT / "topologies/localhost.topo", {"devices": devices})
    options = PartitionOptions(pins=parse_pins([pins]))
    return build_plan(
        partition_model(path, topo, mode="inference", partition=options).state
    ).state


def _reference(path: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ids = np.random.default_rng(0).integers(0, 256, size=(2, 16)).astype(np.int64)
    feeds = {sess.get_inputs()[0].name: ids}
    ref = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))
    return feeds, ref


@pytest.mark.parametrize("fixture", sorted(MODELS))
def test_every_moe_layer_is_an_expert_region(request, fixture: str) -> None:
    path = request.getfixturevalue(fixture)
    state = _state(path, 2, "tp=2,pp=1,dp=1")
    regions, reasons = find_regions(state.graph, state.strategies.free)
    assert reasons == () and len(regions) == MODELS[fixture]
    for r in regions:
        assert (r.experts, r.pairs) == (8, 2 * 16 * 2)  # 8 experts, tokens x top-2
        assert len(r.gathers) == 2  # gate_up and down, stacked [E, ...]
        assert state.graph.node(r.exit).op_type == "MatMul"
        assert [state.graph.node(n).op_type for n in r.combine] == ["ReduceSum"]
    rule = ExpertRule(state.graph, state.strategies.free)
    assert rule.choose({"tp": 3}) == {}  # 8 experts do not spread over 3 ranks
    assert {s.name for s in rule.choose({"tp": 4}).values()} == {
        "experts",
        "experts_rows",
        "experts_scatter",
        "experts_combine",
    }


@pytest.mark.parametrize(
    "fixture, devices, pins", PLANS, ids=[f"{f[:-5]}-{p}" for f, _, p in PLANS]
)
def test_expert_parallel_reproduces_the_model(request, fixture: str, devices: int, pins: str):
    path = request.getfixturevalue(fixture)
    state = _state(path, devices, pins)
    emission = emit(state)
    feeds, ref = _reference(path)
    outs = run_inprocess(emission.models, feeds)
    last = [p for p in emission.programs.programs if p.outputs]
    assert last
    for p in last:
        for name in p.outputs:
            scale = float(np.max(np.abs(ref[name])))
            err = float(np.max(np.abs(outs[p.rank][name] - ref[name])))
            assert err <= 1e-5 * scale, (p.rank, name, err, scale)

    # each rank stores its own E/d experts of every stacked weight, and nothing more
    regions, _ = find_regions(state.graph, state.strategies.free)
    stacked = {state.graph.node(g).inputs[0] for r in regions for g in r.gathers}
    weights = state.model.weights
    for prog in emission.programs.programs:
        tp, t = prog.tp, prog.tp_rank
        model = emission.models[prog.rank]
        meta = {p.key: p.value for p in model.metadata_props}
        slices = json.loads(meta["shardc.slices"])
        sizes = {i.name: len(i.raw_data) for i in model.graph.initializer}
        held = {rec["source"]: (local, rec) for local, rec in slices.items()}
        for w in stacked:
            if w not in held:  # another pipeline stage's layer
                continue
            local, rec = held[w]
            whole = weights.array(w)
            per = whole.shape[0] // tp
            assert (rec["dim"], rec["start"], rec["stop"]) == (0, t * per, (t + 1) * per)
            assert sizes[local] == whole.nbytes // tp


def test_plan_prices_the_collectives_emission_writes(mixtral_path: Path) -> None:
    """The combine is one all-reduce per MoE layer, timed by the cost model; the region's
    work and expert weights are divided over the group.
    """
    state = _state(mixtral_path, 4, "tp=4,pp=1,dp=1")
    costing = costing_for(state)
    priced = sorted(op for ops in costing.choice(4).comm.values() for op, _ in ops)
    program = emit(state).programs.programs[0]
    written = sorted(s.op for s in program.steps if hasattr(s, "group"))
    names = {"all_reduce": "AllReduce", "all_gather": "AllGather"}
    assert written == sorted(names[op] for op in priced)
    assert written.count("AllReduce") == 3 + 2  # vocab + 2 attention + 2 expert combines

    region = find_regions(state.graph, state.strategies.free)[0][0]
    kind = next(iter(costing.kinds))
    whole, spread = (costing.part(region.nodes, kind, tp, "none") for tp in (1, 4))
    assert whole.compute / 4 <= spread.compute < whole.compute / 3  # plus per-op overheads
    stacked = [state.graph.node(g).inputs[0] for g in region.gathers]
    params = sum(state.graph.values[w].type.numel for w in stacked)
    assert spread.params == pytest.approx(whole.params - params * 3 / 4)


def test_check_plan_accepts_an_expert_parallel_folder(deepseek_v3_path: Path, tmp_path: Path):
    state = _state(deepseek_v3_path, 4, "tp=4,pp=1,dp=1")
    files = state_files(state)
    out = write_outdir(tmp_path / "plan", files)
    report = check_outdir(out)
    assert report.problems == [] and report.ranks == 4
    assert report.emitted_bytes[0] == report.weight_bytes + report.replicated_bytes.get(0, 0)
    ops = {n.op_type for n in onnx.load(str(out / "device_0.onnx")).graph.node}
    assert {"NonZero", "ScatterND"} <= ops and "AllToAll" not in ops


def _tiny_moe(leak: bool) -> onnx.ModelProto:
    """Rows ``x [4, 8]`` and expert ids ``[4, 1]``: each row times its expert's [8, 8] matrix;
    ``leak`` also returns the gathered matrices (a region value read outside).
    """
    from onnx import TensorProto, helper, numpy_helper

    w = np.arange(2 * 8 * 8, dtype=np.float32).reshape(2, 8, 8)
    nodes = [
        helper.make_node("GatherND", ["w", "ids"], ["gw"]),
        helper.make_node("Unsqueeze", ["x", "two"], ["xu"]),
        helper.make_node("MatMul", ["gw", "xu"], ["h"]),
        helper.make_node("Squeeze", ["h", "two"], ["y"]),
    ]
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])]
    if leak:
        outs.append(helper.make_tensor_value_info("gw", TensorProto.FLOAT, [4, 8, 8]))
    graph = helper.make_graph(
        nodes,
        "tiny_moe",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8]),
            helper.make_tensor_value_info("ids", TensorProto.INT64, [4, 1]),
        ],
        outs,
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([2]), "two")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_a_region_value_read_outside_keeps_the_experts_whole() -> None:
    from shardc.compiler import analyse
    from shardc.passes import annotate_costs, strategies

    def regions(leak: bool):
        state = analyse(_tiny_moe(leak), passes=[annotate_costs.PASS, strategies.PASS]).state
        return find_regions(state.graph, state.strategies.free)

    found, reasons = regions(False)
    assert [(r.experts, r.pairs, r.entries) for r in found] == [(2, 4, ("xu",))] and not reasons
    found, reasons = regions(True)
    assert found == () and reasons == (
        "experts indexed by 'ids': 'gw' is read outside the expert computation",
    )


@pytest.mark.parametrize(
    "fixture",
    ["mixtral_path", pytest.param("deepseek_v3_path", marks=pytest.mark.slow)],
)
def test_expert_parallel_runs_over_gloo_processes(request, fixture: str, tmp_path: Path) -> None:
    """Four processes, experts spread over the group, a whole training step's forwards."""
    from click.testing import CliRunner

    from shardc.cli.main import cli
    from shardc.runtime.verify import verify

    out = tmp_path / "plan"
    args = ["compile", str(request.getfixturevalue(fixture)), "--topology"]
    args += [str(ROOT / "topologies/localhost.topo"), "--set", "devices=4"]
    args += ["--pin", "tp=4,pp=1,dp=1", "--mode", "inference", "-o", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    report = verify(out, procs=True)
    assert report.ok and report.runner.startswith("4 processes"), report.to_json()
    assert max(o.max_rel for o in report.outputs) <= 1e-5
