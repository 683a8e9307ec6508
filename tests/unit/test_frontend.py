"""Frontend: loading without weights, dims, shape propagation, opaque bodies, bad input."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import parse
from onnx import helper, numpy_helper

from shardc.errors import ModelError, OptionError
from shardc.frontend import load_model
from shardc.passes.annotate_costs import graph_costs


def test_loads_path_and_modelproto_alike(gpt2_path: Path) -> None:
    from_path = load_model(gpt2_path)
    from_proto = load_model(onnx.load(str(gpt2_path)))
    assert [n.op_type for n in from_path.graph] == [n.op_type for n in from_proto.graph]
    assert from_proto.source == "<ModelProto>"


def test_every_value_of_exports_has_a_static_shape(gpt2_path: Path, llama_path: Path) -> None:
    for path in (gpt2_path, llama_path):
        g = load_model(path).graph
        unknown = [v.name for v in g.values.values() if v.type is None or not v.type.is_static]
        assert unknown == []


def test_external_data_is_never_read(gpt2_path: Path, tmp_path: Path) -> None:
    """Save with external data, delete the weights, and plan anyway."""
    model = onnx.load(str(gpt2_path))
    out = tmp_path / "ext.onnx"
    onnx.save_model(
        model,
        str(out),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="ext.weights",
        size_threshold=0,
    )
    (tmp_path / "ext.weights").unlink()
    loaded = load_model(out)
    costs = graph_costs(loaded.graph, where=str(out))
    reference = graph_costs(load_model(gpt2_path).graph, where="ref")
    assert costs.flops == reference.flops and costs.param_bytes == reference.param_bytes
    assert any(v.weight and v.weight.location == "ext.weights" for v in loaded.graph.weights)
    with pytest.raises(ModelError, match="missing"):
        loaded.weights.array(loaded.graph.initializers[0])


def _big_external_model(elements: int) -> onnx.ModelProto:
    """A MatMul whose weight is declared external (never written): 2·elements·4 bytes."""
    w = onnx.TensorProto(name="W", data_type=onnx.TensorProto.FLOAT, dims=[elements // 4096, 4096])
    w.data_location = onnx.TensorProto.EXTERNAL
    for k, v in (("location", "big.bin"), ("offset", "0"), ("length", str(elements * 4))):
        w.external_data.add(key=k, value=v)
    x = helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, ["batch", elements // 4096])
    y = helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, ["batch", 4096])
    g = helper.make_graph([helper.make_node("MatMul", ["X", "W"], ["Y"])], "big", [x], [y], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def test_model_over_2gb_is_planned_from_shapes(tmp_path: Path) -> None:
    elements = 800 * 1024 * 1024  # 3.2 GB of fp32 weight
    path = tmp_path / "big.onnx"
    onnx.save_model(_big_external_model(elements), str(path))
    assert path.stat().st_size < 10_000
    m = load_model(path, dims={"batch": 4})
    costs = graph_costs(m.graph, where=str(path))
    assert costs.param_bytes == elements * 4 > 2**31
    assert costs.flops == 2 * 4 * elements


def test_dims_are_bound_and_unknown_dims_refused() -> None:
    m = _big_external_model(4096 * 8)
    assert load_model(m, dims={"batch": 3}).graph.values["Y"].type.shape == (3, 4096)
    with pytest.raises(OptionError, match="no symbolic dim named 'seq'") as err:
        load_model(m, dims={"seq": 3})
    assert "batch" in str(err.value)


def test_unbound_dim_blocks_costing_with_a_hint() -> None:
    m = load_model(_big_external_model(4096 * 8))
    with pytest.raises(ModelError, match="node 'MatMul_0'") as err:
        graph_costs(m.graph, where="<ModelProto>")
    assert "--dim batch=N" in str(err.value)


def test_own_rules_fill_shapes_after_an_op_onnx_cannot_infer() -> None:
    """ONNX has no schema for com.microsoft::Gelu, so everything after it is ours."""
    model = parse("""
    <ir_version: 8, opset_import: ["" : 18, "com.microsoft" : 1]>
    g (float[4,16] X, float[16,32] W) => (float[8] Z) {
        Y = com.microsoft.Gelu(X)
        P = MatMul(Y, W)
        T = Transpose<perm=[1,0]>(P)
        S = Constant<value=int64[2] {8, -1}>()
        R = Reshape(T, S)
        Ax = Constant<value=int64[1] {1}>()
        Z1 = ReduceSum<keepdims=0>(R, Ax)
        St = Constant<value=int64[1] {0}>()
        En = Constant<value=int64[1] {8}>()
        Z = Slice(Z1, St, En)
    }""")
    values = load_model(model).graph.values
    assert str(values["Y"].type) == "fp32[4,16]"
    assert str(values["P"].type) == "fp32[4,32]"
    assert str(values["T"].type) == "fp32[32,4]"
    assert str(values["R"].type) == "fp32[8,16]"
    assert str(values["Z1"].type) == "fp32[8]"


def test_function_call_is_one_node_with_its_body_cost() -> None:
    model = parse("""
    <ir_version: 8, opset_import: ["" : 18, "local" : 1]>
    g (float[2,8] X, float[8,8] W) => (float[2,8] Y) {
        Y = local.Block(X, W)
    }
    <domain: "local", opset_import: ["" : 18]>
    Block (x, w) => (y) {
        h = MatMul(x, w)
        y = Relu(h)
    }""")
    m = load_model(model)
    (node,) = m.graph.nodes
    assert [n.op_type for n in node.subgraphs[0].nodes] == ["MatMul", "Relu"]
    assert graph_costs(m.graph, where="m").nodes[node.name].flops == 2 * 2 * 8 * 8 + 2 * 8


def test_control_flow_bodies_are_summed() -> None:
    model = parse("""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[4,4] X, bool c) => (float[4,4] Y, float[4,4] L) {
        Y = If(c) <then_branch = t () => (float[4,4] a) { a = MatMul(X, X) },
                   else_branch = e () => (float[4,4] b) { b = Add(X, X) }>
        n = Constant<value=int64 {3}>()
        cond = Constant<value=bool {1}>()
        L = Loop(n, cond, X) <body = body (int64 i, bool ci, float[4,4] s) => (bool co, float[4,4] so) {
            co = Identity(ci)
            so = MatMul(s, X)
        }>
    }""")
    m = load_model(model)
    costs = graph_costs(m.graph, where="m")
    if_node, _, _, loop_node = m.graph.nodes
    assert costs.nodes[if_node.name].flops == 2 * 4 * 4 * 4  # the dearer branch
    assert costs.nodes[loop_node.name].flops == 3 * 2 * 4 * 4 * 4  # trip count x body
    assert costs.nodes[loop_node.name].kind == "control"


def test_custom_op_is_kept_and_reported_then_costed_when_told() -> None:
    model = parse("""
    <ir_version: 8, opset_import: ["" : 18, "com.acme" : 1]>
    g (float[2,8] X) => (float[2,8] Z) <float[2,8] Y> {
        Y = com.acme.Fused(X)
        Z = Relu(Y)
    }""")
    m = load_model(model)
    assert [n.qualified_op for n in m.graph] == ["com.acme::Fused", "Relu"]
    costs = graph_costs(m.graph, where="m")
    (fused, _) = m.graph.nodes
    assert costs.bytes_only_ops == ("com.acme::Fused",)
    assert costs.nodes[fused.name].flops == 0 and costs.nodes[fused.name].bytes_total == 128
    told = graph_costs(m.graph, where="m", custom_flops={"com.acme::Fused": 3.0})
    assert told.bytes_only_ops == () and told.nodes[fused.name].flops == 3 * 16


def test_custom_op_with_unknown_output_blocks_costing_naming_the_node() -> None:
    model = parse("""
    <ir_version: 8, opset_import: ["" : 18, "com.acme" : 1]>
    g (float[2,8] X) => (float[2,8] Z) {
        Y = com.acme.Fused(X)
        Z = MatMul(Y, Y)
    }""")
    with pytest.raises(ModelError, match=r"node 'MatMul_1'.*'Y' has unknown type"):
        graph_costs(load_model(model).graph, where="m")


@pytest.mark.parametrize(
    ("location", "message"),
    [
        ("../secret.bin", "outside the model's folder"),
        ("/etc/passwd", "outside the model's folder"),
    ],
)
def test_external_data_path_traversal_is_refused(
    tmp_path: Path, location: str, message: str
) -> None:
    model = _big_external_model(4096 * 8)
    model.graph.initializer[0].external_data[0].value = location
    path = tmp_path / "evil.onnx"
    onnx.save_model(model, str(path))
    with pytest.raises(ModelError, match=message):
        load_model(path)


def test_symlink_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "w.bin").write_bytes(b"\0" * 16)
    inner = tmp_path / "model"
    inner.mkdir()
    (inner / "w.bin").symlink_to(outside / "w.bin")
    model = _big_external_model(4096 * 8)
    model.graph.initializer[0].external_data[0].value = "w.bin"
    onnx.save_model(model, str(inner / "m.onnx"))
    with pytest.raises(ModelError, match="symlink"):
        load_model(inner / "m.onnx")


def test_bad_files_give_model_errors(tmp_path: Path, gpt2_path: Path) -> None:
    with pytest.raises(ModelError, match="no such file"):
        load_model(tmp_path / "nope.onnx")
    text = tmp_path / "text.onnx"
    text.write_text("this is not a model\n" * 10)
    with pytest.raises(ModelError, match="not"):
        load_model(text)
    truncated = tmp_path / "trunc.onnx"
    truncated.write_bytes(gpt2_path.read_bytes()[: gpt2_path.stat().st_size // 3])
    with pytest.raises(ModelError):
        load_model(truncated)


def test_checker_failure_is_a_model_error() -> None:
    x = helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, [2])
    g = helper.make_graph([helper.make_node("Relu", ["missing"], ["Y"])], "bad", [x], [y])
    with pytest.raises(ModelError, match="checker"):
        load_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]))


def _one_op_model(op: str) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, [2, 8])
    y = helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, [None, None])
    scale = numpy_helper.from_array(np.ones(8, np.float32), "scale")
    node = helper.make_node(op, ["X", "scale"], ["Y"], axis=-1, epsilon=1e-6)
    g = helper.make_graph([node], "norm", [x], [y], initializer=[scale])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_onnxruntime_default_domain_op_is_accepted_and_kept() -> None:
    """SimplifiedLayerNormalization as onnxruntime's optimizer writes it, in the ONNX
    domain: onnxruntime runs it there, so it loads, gets a shape, and keeps its domain.
    """
    m = load_model(_one_op_model("SimplifiedLayerNormalization"))
    (node,) = m.graph.nodes
    assert (node.domain, node.op_type) == ("", "SimplifiedLayerNormalization")
    assert m.graph.values["Y"].type is not None
    assert m.graph.values["Y"].type.shape == (2, 8)
    costs = graph_costs(m.graph, where="<ModelProto>")
    assert not costs.bytes_only_ops and costs.flops == 4 * 2 * 8  # RMSNorm's 4 per element


def test_onnxruntime_op_list_falls_back_without_onnxruntime(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from shardc.frontend import read

    monkeypatch.setitem(sys.modules, "onnxruntime.capi.onnxruntime_pybind11_state", None)
    assert read.ort_default_domain_ops.__wrapped__() == read.ORT_DEFAULT_DOMAIN_OPS
    assert "SimplifiedLayerNormalization" in read.ort_default_domain_ops()


def test_unknown_default_domain_op_is_still_refused() -> None:
    """A typo is not an onnxruntime op: the checker's one-line error stays."""
    with pytest.raises(ModelError, match=r"checker.*No Op registered") as info:
        load_model(_one_op_model("SimplifedLayerNormalization"))
    assert "\n" not in str(info.value)


def test_weights_are_read_on_demand(gpt2_path: Path) -> None:
    m = load_model(gpt2_path)
    name = m.graph.initializers[0]
    reference = {
        t.name: numpy_helper.to_array(t) for t in onnx.load(str(gpt2_path)).graph.initializer
    }
    np.testing.assert_array_equal(m.weights.array(name), reference[name])
