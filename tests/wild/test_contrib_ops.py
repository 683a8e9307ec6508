"""onnxruntime's contrib ops split by tensor parallelism and compute what onnxruntime does.

Tiny graphs of one fused op between weight products, the way the transformer optimizer
leaves a layer: fused Attention (its QKV weight cut per head in each third),
MultiHeadAttention and GroupQueryAttention split by heads (``num_heads`` divided on each
rank), MatMulNBits split along N and along whole K blocks (``N``/``K`` divided), a
SkipLayerNormalization after the row-parallel product. Each is compiled with tp=2 on
localhost, run in-process and compared with onnxruntime on the unsplit graph (fp32,
1e-5 of the output's largest magnitude); the FLOP rules are checked in closed form.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from shardc.compiler import build_plan, partition_model
from shardc.cost.ops import node_cost
from shardc.emit.devices import emit
from shardc.frontend import load_model
from shardc.partition.options import PartitionOptions, parse_pins
from shardc.runtime.inprocess import run_inprocess
from shardc.topology import load_topology

ROOT = Path(__file__).resolve().parents[2]
B, S, H, HEADS = 2, 8, 32, 4
F32 = onnx.TensorProto.FLOAT


def _w(rng: np.random.Generator, name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array((0.2 * rng.standard_normal(shape)).astype(np.float32), name)


def _save(path: Path, nodes, inputs, weights, out_shape=(B, S, H)) -> Path:
    graph = helper.make_graph(
        nodes,
        "contrib",
        inputs,
        [helper.make_tensor_value_info("Y", F32, list(out_shape))],
        weights,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
    )
    onnx.save(model, str(path))
    return path


def _attention(path: Path) -> Path:
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node(
            "Attention", ["X", "Wqkv", "Bqkv"], ["A"], domain="com.microsoft", num_heads=HEADS
        ),
        helper.make_node("MatMul", ["A", "Wo"], ["Y"]),
    ]
    weights = [_w(rng, "Wqkv", H, 3 * H), _w(rng, "Bqkv", 3 * H), _w(rng, "Wo", H, H)]
    return _save(path, nodes, [helper.make_tensor_value_info("X", F32, [B, S, H])], weights)


def _mha(path: Path, op: str = "MultiHeadAttention") -> Path:
    rng = np.random.default_rng(1)
    kv = H // 2 if op == "GroupQueryAttention" else H
    attrs = {"num_heads": HEADS}
    extra: list[str] = []
    inputs = [helper.make_tensor_value_info("X", F32, [B, S, H])]
    weights = [_w(rng, "Wq", H, H), _w(rng, "Wk", H, kv), _w(rng, "Wv", H, kv), _w(rng, "Wo", H, H)]
    if op == "GroupQueryAttention":
        attrs["kv_num_heads"] = HEADS // 2
        extra = ["", "", "seqlens_k", "total_len"]
        weights += [
            numpy_helper.from_array(np.full(B, S - 1, dtype=np.int32), "seqlens_k"),
            numpy_helper.from_array(np.array(S, dtype=np.int32), "total_len"),
        ]
    outs = ["A", "present_k", "present_v"] if op == "GroupQueryAttention" else ["A"]
    nodes = [
        helper.make_node("MatMul", ["X", "Wq"], ["Q"]),
        helper.make_node("MatMul", ["X", "Wk"], ["K"]),
        helper.make_node("MatMul", ["X", "Wv"], ["V"]),
        helper.make_node(op, ["Q", "K", "V", *extra], outs, domain="com.microsoft", **attrs),
        helper.make_node("MatMul", ["A", "Wo"], ["Y"]),
    ]
    return _save(path, nodes, inputs, weights)


def _nbits(path: Path) -> Path:
    """Column then row MatMul, quantized to 4 bits, then a skip-add LayerNorm."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    rng = np.random.default_rng(2)
    nodes = [
        helper.make_node("MatMul", ["X", "W1"], ["U"]),
        helper.make_node("Relu", ["U"], ["R"]),
        helper.make_node("MatMul", ["R", "W2"], ["D"]),
        helper.make_node(
            "SkipLayerNormalization", ["D", "X", "g", "b"], ["Y"], domain="com.microsoft"
        ),
    ]
    weights = [_w(rng, "W1", H, 4 * H), _w(rng, "W2", 4 * H, H), _w(rng, "g", H), _w(rng, "b", H)]
    plain = _save(path, nodes, [helper.make_tensor_value_info("X", F32, [B, S, H])], weights)
    quant = MatMulNBitsQuantizer(onnx.load(str(plain)), block_size=32, is_symmetric=True)
    quant.process()
    quant.model.save_model_to_file(str(path), use_external_data_format=False)
    return path


def _rotary(path: Path) -> Path:
    """Q projection, rotary embedding of each head by position, output projection."""
    rng = np.random.default_rng(4)
    d = H // HEADS
    angles = np.arange(S)[:, None] / 10000 ** (np.arange(d // 2)[None, :] / (d // 2))
    nodes = [
        helper.make_node("MatMul", ["X", "Wq"], ["Q"]),
        helper.make_node(
            "RotaryEmbedding",
            ["Q", "pos", "cos", "sin"],
            ["R"],
            domain="com.microsoft",
            num_heads=HEADS,
        ),
        helper.make_node("MatMul", ["R", "Wo"], ["Y"]),
    ]
    weights = [
        _w(rng, "Wq", H, H),
        _w(rng, "Wo", H, H),
        numpy_helper.from_array(np.tile(np.arange(S), (B, 1)).astype(np.int64), "pos"),
        numpy_helper.from_array(np.cos(angles).astype(np.float32), "cos"),
        numpy_helper.from_array(np.sin(angles).astype(np.float32), "sin"),
    ]
    return _save(path, nodes, [helper.make_tensor_value_info("X", F32, [B, S, H])], weights)


CASES = {
    "RotaryEmbedding": _rotary,
    "Attention": _attention,
    "MultiHeadAttention": _mha,
    "GroupQueryAttention": lambda p: _mha(p, "GroupQueryAttention"),
    "MatMulNBits": _nbits,
}


@pytest.mark.parametrize("op", sorted(CASES))
def test_contrib_op_splits_by_tp_and_matches(tmp_path: Path, op: str) -> None:
    path = CASES[op](tmp_path / f"{op}.onnx")
    topo = load_topology(ROOT / "topologies/localhost.topo", {"devices": 2})
    options = PartitionOptions(pins=parse_pins(["tp=2,pp=1,dp=1"]))
    state = build_plan(
        partition_model(path, topo, mode="inference", partition=options).state
    ).state
    emission = emit(state)

    fused = [n for n in emission.models[0].graph.node if n.op_type == op]
    assert fused, f"no {op} on rank 0"
    attrs = {a.name: helper.get_attribute_value(a) for a in fused[0].attribute}
    if op == "MatMulNBits":  # the first splits N, the second whole K blocks
        kn = {(a["K"], a["N"]) for a in ({x.name: x.i for x in n.attribute} for n in fused)}
        assert kn == {(H, 2 * H), (2 * H, H)}, kn
    else:
        assert attrs["num_heads"] == HEADS // 2
        if op == "GroupQueryAttention":
            assert attrs["kv_num_heads"] == HEADS // 4

    x = np.random.default_rng(3).standard_normal((B, S, H)).astype(np.float32)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["Y"], {"X": x})
    outs = run_inprocess(emission.models, {"X": x})
    scale = float(np.max(np.abs(want[0])))
    for rank in (0, 1):
        assert float(np.max(np.abs(outs[rank]["Y"] - want[0]))) <= 1e-5 * scale


def test_flop_rules_in_closed_form(tmp_path: Path) -> None:
    """MatMulNBits: 2·M·N·K plus one multiply per dequantized weight; fused Attention:
    the QKV projection plus QKᵀ and PV (2·2·B·N·S·S·d) and the softmax (5·B·N·S·S);
    SkipLayerNormalization 8 per element.
    """
    graph = load_model(_nbits(tmp_path / "n.onnx")).graph
    costs = {n.op_type + str(i): node_cost(n, graph, where="t") for i, n in enumerate(graph.nodes)}
    nbits = [c for k, c in costs.items() if k.startswith("MatMulNBits")]
    m = B * S
    assert sorted(c.flops for c in nbits) == sorted(
        [2 * m * 4 * H * H + 4 * H * H, 2 * m * H * 4 * H + 4 * H * H]
    )
    assert all(c.kind == "matmul" and c.exact for c in nbits)
    skip = next(c for k, c in costs.items() if k.startswith("SkipLayer"))
    assert skip.flops == 8 * B * S * H

    graph = load_model(_attention(tmp_path / "a.onnx")).graph
    att = node_cost(graph.nodes[0], graph, where="t")
    d = H // HEADS
    scores = B * HEADS * S * S
    assert att.flops == 2 * m * H * 3 * H + m * 3 * H + 4 * scores * d + 5 * scores


def test_int8_products_are_priced_at_the_int8_rate(tmp_path: Path) -> None:
    """A dynamic-int8 MatMulInteger runs in its data's type: on an H100 that is the int8
    tensor-core peak (1,979 TOPS dense, NVIDIA's datasheet), twice the bf16 one.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from shardc.cost.compute import peak_for

    plain = _save(
        tmp_path / "p.onnx",
        [helper.make_node("MatMul", ["X", "W"], ["Y"])],
        [helper.make_tensor_value_info("X", F32, [B, S, H])],
        [_w(np.random.default_rng(5), "W", H, H)],
    )
    quantize_dynamic(str(plain), str(tmp_path / "q.onnx"), weight_type=QuantType.QInt8)
    graph = load_model(tmp_path / "q.onnx").graph
    node = next(n for n in graph.nodes if n.op_type == "MatMulInteger")
    cost = node_cost(node, graph, where="t")
    assert cost.flops == 2 * B * S * H * H and cost.dtype.compute_class == "int8"
    kind = load_topology(ROOT / "topologies/dgx_h100.topo").compute_devices[0].kind
    assert peak_for(kind, cost.dtype) == (1979e12, "int8")
