"""The split rule (``--pin rule=split``): every op divided over the tensor-parallel group
where its rule allows, batch first; plus the op rules the ONNX node suite corrected.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import parse
from onnx import helper, numpy_helper

from shardc.compiler import build_plan, partition_model
from shardc.emit.devices import emit
from shardc.errors import OptionError
from shardc.frontend import load_model
from shardc.partition.megatron import MegatronRule
from shardc.partition.options import PartitionOptions, parse_pins
from shardc.partition.split import SplitRule, on_tp, tp_rule
from shardc.passes.strategies import build_table
from shardc.runtime.inprocess import run_inprocess
from shardc.sharding import Strategy, TensorSharding
from shardc.topology import load_topology

ROOT = Path(__file__).resolve().parents[2]
HEAD = '<ir_version: 9, opset_import: ["" : 23]>\n'
T = TensorSharding.parse


def _plan(model: onnx.ModelProto, pins: str = "tp=2,pp=1,dp=1,rule=split"):
    topo = load_topology(ROOT / "topologies/localhost.topo", {"devices": 2})
    options = PartitionOptions(pins=parse_pins([pins]))
    return build_plan(
        partition_model(model, topo, mode="inference", partition=options).state
    ).state


def _chosen(state) -> dict[str, str]:
    rule = tp_rule(state.graph, state.strategies, state.options.partition.pins.rule)
    return {n: s.name for n, s in rule.choose({"tp": 2}).items() if not s.is_replicated}


def _check_numerics(model: onnx.ModelProto, state, feeds: dict[str, np.ndarray]) -> None:
    want = ort.InferenceSession(model.SerializeToString()).run(None, feeds)
    outs = run_inprocess(emit(state).models, feeds)
    names = [o.name for o in model.graph.output]
    for rank in outs:
        for name, ref in zip(names, want, strict=True):
            np.testing.assert_allclose(outs[rank][name], ref, rtol=1e-5, atol=1e-6)


def test_rule_pin_parses_round_trips_and_rejects_typos() -> None:
    pins = parse_pins(["tp=2,rule=split"])
    assert pins.rule == "split" and pins.to_json() == {"tp": 2, "rule": "split"}
    with pytest.raises(OptionError, match="rule=splitt: use one of megatron, split"):
        parse_pins(["rule=splitt"])


def test_megatron_stays_the_default_rule() -> None:
    graph, table = _tiny_table()
    assert isinstance(tp_rule(graph, table, None), MegatronRule)
    assert isinstance(tp_rule(graph, table, "split"), SplitRule)


def _tiny_table():
    m = load_model(parse(HEAD + "g (float[4,6] X) => (float[4,6] Y) { Y = Relu(X) }"))
    table, _ = build_table(m.graph, 23)
    return m.graph, table


def test_batch_and_sequence_splits_move_onto_tp_and_mixed_ones_do_not() -> None:
    batch = Strategy("batch", (T("[dp, -]"), T("[-, -]+partial(dp)")), (T("[dp, -]"),))
    moved = Strategy("batch", (T("[tp, -]"), T("[-, -]+partial(tp)")), (T("[tp, -]"),))
    assert on_tp(batch) == moved
    both = Strategy("batch+column", (T("[dp, tp]"),), (T("[dp, tp]"),))
    assert on_tp(both) is None


def test_a_conv_net_splits_every_op_by_batch_and_computes_the_same() -> None:
    """Conv, Relu, pooling and the classifier Gemm each run on half the batch; only the
    logits are gathered.
    """
    rng = np.random.default_rng(0)
    text = (
        HEAD
        + """g (float[4,3,8,8] X) => (float[4,5] Y) {
        C = Conv<pads=[1,1,1,1]>(X, W, B)  R = Relu(C)  P = GlobalAveragePool(R)
        F = Flatten(P)  Y = Gemm<transB=1>(F, Wfc, Bfc) }"""
    )
    model = parse(
        text.replace(
            "float[4,3,8,8] X",
            "float[4,3,8,8] X, float[6,3,3,3] W, float[6] B, float[5,6] Wfc, float[5] Bfc",
        )
    )
    for name, shape in (("W", (6, 3, 3, 3)), ("B", (6,)), ("Wfc", (5, 6)), ("Bfc", (5,))):
        vi = next(i for i in model.graph.input if i.name == name)
        model.graph.input.remove(vi)
        model.graph.initializer.append(
            numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
        )
    state = _plan(model)
    rule = tp_rule(state.graph, state.strategies, "split")
    chosen = rule.choose({"tp": 2})
    assert len(chosen) == 5
    assert all(s.outputs[0].dims[0] == "tp" for s in chosen.values())  # the batch dim
    _check_numerics(model, state, {"X": rng.standard_normal((4, 3, 8, 8)).astype(np.float32)})


def test_a_value_read_as_an_argument_is_left_whole() -> None:
    """The new shape is computed at run time (Shape → Mul) and read by Reshape as an
    argument: splitting the Mul would hand each rank's Reshape half a shape.
    """
    model = parse(
        HEAD
        + """g (float[4,6] X, int64[2] K) => (float[4,6] Y) {
        S = Shape(X)  N = Mul(S, K)  Y = Reshape(X, N) }"""
    )
    state = _plan(model)
    mul = next(n for n in state.graph.nodes if n.op_type == "Mul")
    assert "batch" in {s.name for s in state.strategies.of(mul.name)}  # legal, yet not taken
    assert mul.name not in _chosen(state)
    feeds = {"X": np.arange(24, dtype=np.float32).reshape(4, 6), "K": np.ones(2, np.int64)}
    _check_numerics(model, state, feeds)


def test_graph_outputs_come_back_whole_on_every_rank() -> None:
    model = parse(HEAD + "g (float[4,6] X) => (float[4,6] Y) { Y = Tanh(X) }")
    state = _plan(model)
    assert _chosen(state)
    _check_numerics(model, state, {"X": np.linspace(-2, 2, 24, dtype=np.float32).reshape(4, 6)})


# -- op rules the node suite corrected -------------------------------------------------------
def _strategies(text: str) -> dict[str, set[str]]:
    m = load_model(parse(text))
    table, _ = build_table(m.graph, m.opset() or 18)
    return {n.op_type: {str(s) for s in table.of(n.name)} for n in m.graph.nodes}


def test_argmax_reduces_dim_0_by_default() -> None:
    got = _strategies(HEAD + "g (float[4,6] X) => (int64[1,6] Y) { Y = ArgMax(X) }")["ArgMax"]
    assert all("[dp, -]" not in s and "[tp, -]" not in s for s in got)


def test_training_batchnorm_splits_channels_only() -> None:
    got = _strategies(
        HEAD
        + """g (float[4,6,2] X, float[6] s, float[6] b, float[6] m, float[6] v)
        => (float[4,6,2] Y, float[6] rm, float[6] rv) {
        Y, rm, rv = BatchNormalization<training_mode=1>(X, s, b, m, v) }"""
    )["BatchNormalization"]
    assert {s.split(": ")[1].split(" ->")[0] for s in got} == {
        "([-, -, -], [-], [-], [-], [-])",
        "([-, sp, -], [sp], [sp], [sp], [sp])",  # a 3-d input's dim 1 is labelled sequence
        "([-, tp, -], [tp], [tp], [tp], [tp])",
    }


def test_castlike_reads_its_second_input_as_an_argument() -> None:
    got = _strategies(
        HEAD + "g (float[4,6] X, float16[4,6] L) => (float16[4,6] Y) { Y = CastLike(X, L) }"
    )["CastLike"]
    assert all(", ·)" in s for s in got)


def test_attention_splits_its_mask_and_kv_cache_with_batch_and_heads() -> None:
    graph = helper.make_graph(
        [helper.make_node("Attention", ["Q", "K", "V", "M", "pk", "pv"], ["Y", "k", "v"])],
        "g",
        [
            helper.make_tensor_value_info("Q", 1, [2, 4, 3, 8]),
            helper.make_tensor_value_info("K", 1, [2, 4, 5, 8]),
            helper.make_tensor_value_info("V", 1, [2, 4, 5, 8]),
            helper.make_tensor_value_info("M", 1, [2, 4, 3, 7]),
            helper.make_tensor_value_info("pk", 1, [2, 4, 2, 8]),
            helper.make_tensor_value_info("pv", 1, [2, 4, 2, 8]),
        ],
        [
            helper.make_tensor_value_info(n, 1, s)
            for n, s in (("Y", [2, 4, 3, 8]), ("k", [2, 4, 7, 8]), ("v", [2, 4, 7, 8]))
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    m = load_model(model)
    table, _ = build_table(m.graph, 23)
    by = {s.name: s for s in table.of(m.graph.nodes[0].name)}
    assert [str(x) for x in by["batch"].inputs[3:]] == ["[dp, -, -, -]"] * 3
    assert [str(x) for x in by["heads"].inputs[3:]] == ["[-, tp, -, -]"] * 3
    assert [str(x) for x in by["heads"].outputs] == ["[-, tp, -, -]"] * 3
