"""``--dtype``: the plan priced and sized in another precision, the programs untouched.

Figures: the kind ``mixed`` below lists distinct fp32 / bf16 / fp8 peaks (H100 SXM's
989.4 TFLOPS bf16 and 1,978.9 fp8, REFERENCE.md §1.1, and a made-up 60 TFLOPS fp32 so
the three differ); ``h100_sxm`` in topologies/kinds/nvidia.topo lists bf16 and fp8 only
(fp32 then falls back to the bf16 peak, see ``peak_for``).
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import onnx.parser
import pytest
from click.testing import CliRunner

import shardc
from shardc.cli.main import cli
from shardc.compiler import analyse, partition_passes
from shardc.cost.compute import node_time
from shardc.cost.precision import policy, price
from shardc.errors import OptionError
from shardc.ir import DType
from shardc.passes.partition import costing_for
from shardc.synth import SynthConfig, build
from shardc.topology import load_topology

GPT2 = "examples/models/tiny_gpt2.onnx"
LOCAL = "topologies/localhost.topo"
MIXED = """
kind mixed {
    compute fp32 60 TFLOPS
    compute bf16 989.4 TFLOPS
    compute fp8 1978.9 TFLOPS
    memory 80 GB
    memory_bandwidth 3.35 TB/s
}
gpu[0..1]: mixed
switch sw: nvlink { members gpu[*]; bandwidth 450 GB/s; latency 1 us }
"""


@pytest.fixture(scope="module")
def gpt() -> object:
    """An fp32 GPT whose GEMMs are compute-bound (hidden 1024, 512 tokens)."""
    cfg = SynthConfig(layers=2, hidden=1024, heads=16, vocab=8192, seq=512, batch=1, dtype="fp32")
    return build("gpt", cfg)


def _state(model: object, dtype: str | None, topo_text: str = MIXED):
    passes = partition_passes()[:-1]  # up to strategies: what the partition pass prices
    return analyse(model, topology=load_topology(topo_text), passes=passes, dtype=dtype).state


def _gemms(state) -> list[str]:
    return [n.name for n in state.graph.nodes if n.op_type in ("MatMul", "Gemm")]


def _reads_weight(graph, node) -> bool:
    """A factor is a weight, or a Transpose/Cast of one."""
    for v in node.inputs[:2]:
        p = graph.producer(v)
        if graph.values[v].is_weight or (
            p is not None and all(graph.values[i].is_weight for i in p.present_inputs)
        ):
            return True
    return False


def test_bf16_halves_weights_and_prices_gemms_at_the_bf16_peak(gpt: object) -> None:
    fp32, bf16 = _state(gpt, None), _state(gpt, "bf16")
    assert bf16.costs.param_bytes * 2 == fp32.costs.param_bytes
    assert bf16.costs.param_count == fp32.costs.param_count
    kind = load_topology(MIXED).compute_devices[0].kind
    weighted = [n for n in _gemms(fp32) if fp32.costs.nodes[n].param_bytes]
    assert weighted
    for n in weighted:
        a, b = fp32.costs.nodes[n], bf16.costs.nodes[n]
        assert (a.dtype, b.dtype) == (DType.FLOAT, DType.BFLOAT16)
        assert a.flops == b.flops and b.bytes_total * 2 == a.bytes_total
        assert node_time(a, kind).peak_flops == 60e12
        assert node_time(b, kind).peak_flops == 989.4e12
    # per device, as the partitioner prices a block: weights and activations halve
    _, block, _, _ = costing_for(fp32).sections
    p32 = costing_for(fp32).part(block, "mixed", 1, "none")
    p16 = costing_for(bf16).part(block, "mixed", 1, "none")
    assert p16.static * 2 == p32.static
    # activations halve, but for the dropout masks, one byte per element in any precision
    assert p16.activation < p32.activation < 2 * p16.activation
    assert p16.params == p32.params and p16.compute < p32.compute / 4
    # the programs' graph keeps the model's types; only the priced one changed
    assert bf16.graph is bf16.model.graph and bf16.precision.graph is not bf16.graph
    w = bf16.graph.weights[0].name
    assert bf16.graph.values[w].type.dtype == DType.FLOAT
    assert bf16.precision.graph.values[w].type.dtype == DType.BFLOAT16


def test_fp8_narrows_weight_gemms_only(gpt: object) -> None:
    bf16, fp8 = _state(gpt, "bf16"), _state(gpt, "fp8")
    kind = load_topology(MIXED).compute_devices[0].kind
    priced = fp8.precision.graph
    for n in _gemms(fp8):
        node = fp8.graph.node(n)
        cost = fp8.costs.nodes[n]
        if _reads_weight(fp8.graph, node):  # a linear layer (the tied head too): fp8
            assert cost.dtype == DType.FLOAT8E4M3FN and n in fp8.precision.compute
            assert node_time(cost, kind).peak_flops == 1978.9e12
            if cost.param_bytes:  # an untied weight is held in fp8
                w = next(i for i in node.inputs[:2] if priced.values[i].is_weight)
                assert priced.values[w].type.dtype == DType.FLOAT8E4M3FN
        else:  # the attention core multiplies activations: bf16
            assert cost.dtype == DType.BFLOAT16 and n not in fp8.precision.compute
        for out in node.outputs:  # what GEMMs write (and what crosses devices) is bf16
            assert priced.values[out].type.dtype == DType.BFLOAT16
    assert fp8.costs.param_bytes < bf16.costs.param_bytes
    for v in priced.weights:  # norms' scales, biases, embeddings stay bf16
        if v.type.dtype != DType.FLOAT8E4M3FN and v.type.dtype.is_float:
            assert v.type.dtype == DType.BFLOAT16


def test_tied_weights_and_biases_stay_wide() -> None:
    """GPT-2 ties its embedding to the LM head: the table is read by a Gather too, so it
    stays bf16 while the head's GEMM still runs in fp8; a Gemm's bias is not a factor.
    """
    text = """
        <ir_version: 8, opset_import: ["" : 18]>
        g (int64[2, 4] ids) => (float[2, 4, 8] logits, float[8, 4] h) <
            float[8, 4] table = {1.,2.,3.,4.,5.,6.,7.,8.,1.,2.,3.,4.,5.,6.,7.,8.,
                                 1.,2.,3.,4.,5.,6.,7.,8.,1.,2.,3.,4.,5.,6.,7.,8.},
            float[4, 4] w = {1.,0.,0.,0.,0.,1.,0.,0.,0.,0.,1.,0.,0.,0.,0.,1.},
            float[4] b = {1.,1.,1.,1.},
            int64[2] shape = {8, 4}
        > {
            x = Gather(table, ids)
            t = Transpose(table)
            logits = MatMul(x, t)
            flat = Reshape(x, shape)
            h = Gemm(flat, w, b)
        }
    """
    state = analyse(onnx.parser.parse_model(text), passes=partition_passes()[:2], dtype="fp8").state
    types = {n: v.type.dtype for n, v in state.precision.graph.values.items()}
    assert types["table"] == DType.BFLOAT16  # tied: the Gather reads it too
    assert types["t"] == DType.FLOAT8E4M3FN  # the head's operand, cast on the fly
    assert types["w"] == DType.FLOAT8E4M3FN and types["b"] == DType.BFLOAT16
    assert types["shape"] == DType.INT64
    assert set(state.precision.compute) == {
        state.graph.producer("logits").name,
        state.graph.producer("h").name,
    }


def test_fp8_on_a_superpod_kind_differs_from_bf16(gpt: object) -> None:
    """h100_sxm lists fp8, so the fp8 plan computes faster than the bf16 one. (It lists
    no fp32 peak: fp32 GEMMs are priced at the bf16 one, so there bf16 gains on bytes
    only; the ``mixed`` kind above is where fp32 and bf16 peaks differ.)
    """
    plans = {
        d: shardc.compile(
            gpt,
            "topologies/dgx_h100_superpod.topo",
            params={"nodes": 1},
            pins="tp=1,pp=1,dp=1",
            mode="inference",
            dtype=d,
            quiet=True,
        )
        for d in (None, "bf16", "fp8")
    }
    stage = {d: p.to_json()["partition"]["stages"][0] for d, p in plans.items()}
    assert stage["fp8"]["compute_seconds"] < stage["bf16"]["compute_seconds"]
    assert stage["bf16"]["memory_bytes"] < stage[None]["memory_bytes"]
    assert stage["fp8"]["memory_bytes"] < stage["bf16"]["memory_bytes"]
    assert [p.to_json()["options"]["dtype"] for p in plans.values()] == [None, "bf16", "fp8"]
    floats = {k for k, v in plans["bf16"].analysis["flops_by_dtype"].items() if v and "f" in k}
    assert floats == {"bf16"}


def test_same_type_is_the_same_graph(gpt: object) -> None:
    graph = _state(gpt, None).graph
    assert price(graph, policy("fp32")).graph is graph


def test_bf16_plan_of_an_export_still_verifies(tmp_path: Path) -> None:
    from shardc.runtime.verify import verify

    out = tmp_path / "bf16"
    args = ["compile", GPT2, "--topology", LOCAL, "--pin", "pp=2", "--dtype", "bf16"]
    r = CliRunner().invoke(cli, [*args, "-o", str(out), "-q"])
    assert r.exit_code == 0, r.output
    plan = json.loads((out / "plan.json").read_text())
    assert plan["options"]["dtype"] == "bf16"
    report = verify(out)
    assert report.ok, report.to_json()
    # the programs speak the model's types: fp32 inputs, outputs and received tensors
    recvs = []
    for rank in plan["emission"]["ranks"]:
        model = onnx.load(out / rank["file"])
        for vi in (*model.graph.input, *model.graph.output):
            if vi.type.tensor_type.elem_type not in (onnx.TensorProto.INT64,):
                assert vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        recvs += [n for n in model.graph.node if n.op_type == "Recv"]
    assert recvs and all(
        a.i == onnx.TensorProto.FLOAT for n in recvs for a in n.attribute if a.name == "dtype"
    )
    # the plan replays (--plan keeps its dtype) byte for byte
    again = tmp_path / "again"
    replay = ["compile", GPT2, "--topology", LOCAL, "--plan", str(out / "plan.json")]
    r = CliRunner().invoke(cli, [*replay, "-o", str(again), "-q"])
    assert r.exit_code == 0, r.output
    assert (again / "plan.json").read_bytes() == (out / "plan.json").read_bytes()
    r = CliRunner().invoke(cli, [*replay, "--dtype", "fp8", "-o", str(tmp_path / "x")])
    assert r.exit_code == 2 and "--dtype" in r.output


def test_unknown_dtype_is_a_one_line_option_error(tmp_path: Path) -> None:
    args = ["compile", GPT2, "--topology", LOCAL, "-o", str(tmp_path / "o"), "--dtype", "fp64"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 2
    assert r.output.strip().count("\n") == 0 and "unknown dtype 'fp64'" in r.output
    assert "bf16" in r.output
    with pytest.raises(OptionError, match="unknown dtype"):
        shardc.compile(GPT2, LOCAL, dtype="float32", quiet=True)
