"""FLOP and byte counts: hand-worked cases per op family, closed forms for real models."""

from __future__ import annotations

import models
import pytest
from conftest import parse

from shardc.frontend import load_model
from shardc.passes.annotate_costs import graph_costs


def _costs(text: str):
    m = load_model(parse(text))
    c = graph_costs(m.graph, where="m")
    return [c.nodes[n.name] for n in m.graph.nodes], c


HEAD = '<ir_version: 8, opset_import: ["" : 18]>\n'


def test_matmul_batched_and_gemm_with_bias() -> None:
    (mm, gemm), _ = _costs(
        HEAD
        + """g (float[3,4,5] A, float[5,6] B, float[7,8] X, float[9,8] W, float[9] b)
        => (float[3,4,6] Y, float[7,9] Z) { Y = MatMul(A, B)  Z = Gemm<transB=1>(X, W, b) }"""
    )
    assert mm.flops == 2 * 3 * 4 * 6 * 5 and mm.kind == "matmul"
    assert gemm.flops == 2 * 7 * 9 * 8 + 7 * 9
    assert mm.bytes_read == (60 + 30) * 4 and mm.bytes_written == 72 * 4


def test_conv_grouped_with_bias() -> None:
    (conv,), _ = _costs(
        HEAD
        + """g (float[2,8,10,10] X, float[16,4,3,3] W, float[16] b) => (float[2,16,8,8] Y)
        { Y = Conv<group=2>(X, W, b) }"""
    )
    assert conv.flops == 2 * (2 * 16 * 8 * 8) * 4 * 9 + 2 * 16 * 8 * 8


def test_fused_attention_op() -> None:
    (att,), _ = _costs(
        '<ir_version: 10, opset_import: ["" : 23]>\n'
        """g (float[2,4,16,8] Q, float[2,4,16,8] K, float[2,4,16,8] V) => (float[2,4,16,8] O)
                       { O = Attention(Q, K, V) }"""
    )
    scores = 2 * 4 * 16 * 16
    assert att.flops == 2 * scores * 8 * 2 + 5 * scores and att.kind == "attention"


def test_norms_softmax_elementwise_and_movement() -> None:
    nodes, _ = _costs(
        HEAD
        + """g (float[4,32] X, float[32] s, float[32] b) => (float[32,4] Y) {
        n = LayerNormalization(X, s, b)  sm = Softmax(n)  e = Tanh(sm)  a = Add(e, X)  Y = Transpose(a) }"""
    )
    ln, sm, tanh, add, tr = nodes
    assert (ln.flops, ln.kind) == (7 * 128, "norm")
    assert sm.flops == 5 * 128 and tanh.flops == 4 * 128 and add.flops == 128
    assert tr.flops == 0 and tr.kind == "movement" and tr.bytes_total == 2 * 128 * 4


def test_views_move_nothing_and_embedding_gather_reads_rows_only() -> None:
    model = parse(
        HEAD
        + """g (int64[2,3] ids) => (float[6,16] Y) {
        emb = Constant<value=float[100,16] {"""
        + ",".join(["0.0"] * 1600)
        + """}>()
        e = Gather(emb, ids)  sh = Constant<value=int64[2] {6, 16}>()  Y = Reshape(e, sh) }"""
    )
    # promote the constant to an initializer, as exporters do
    from onnx import numpy_helper

    const = model.graph.node[0]
    arr = numpy_helper.to_array(const.attribute[0].t)
    model.graph.initializer.append(numpy_helper.from_array(arr, "emb"))
    del model.graph.node[0]
    m = load_model(model)
    c = graph_costs(m.graph, where="m")
    gather, _, reshape = (c.nodes[n.name] for n in m.graph.nodes)
    assert gather.param_bytes == 100 * 16 * 4
    assert gather.bytes_read == 6 * 8 + 6 * 16 * 4  # ids + the rows, not the table
    assert reshape.bytes_total == 0 and reshape.kind == "view"


@pytest.mark.parametrize(("dtype", "short"), [("bfloat16", "bf16"), ("float16", "fp16")])
def test_flops_are_attributed_to_the_compute_dtype(dtype: str, short: str) -> None:
    _, c = _costs(
        HEAD + f"g ({dtype}[4,8] A, {dtype}[8,2] B) => ({dtype}[4,2] Y) {{ Y = MatMul(A, B) }}"
    )
    assert c.flops_by_dtype() == {short: 2 * 4 * 2 * 8}


@pytest.mark.parametrize(("dtype", "short"), [("int8", "int8"), ("float8e4m3fn", "fp8")])
def test_quantized_matmul_counts_in_its_data_type(dtype: str, short: str) -> None:
    _, c = _costs(
        '<ir_version: 10, opset_import: ["" : 21]>\n'
        + f"""
        g ({dtype}[4,8] A, float sa, {dtype} za, {dtype}[8,2] B, float sb, {dtype} zb, float sy, {dtype} zy)
        => ({dtype}[4,2] Y) {{ Y = QLinearMatMul(A, sa, za, B, sb, zb, sy, zy) }}"""
    )
    assert c.flops_by_dtype() == {short: 2 * 4 * 2 * 8}


def _closed_form(
    layers: int, h: int, ffn: int, kv: int, heads: int, vocab: int, b: int, s: int
) -> int:
    """2·tokens·(matmul params) + the two attention matmuls (4·b·s²·h per layer)."""
    head_dim = h // heads
    per_layer = 2 * h * h + 2 * h * kv * head_dim + 2 * h * ffn  # q, o, k, v, up/down
    return 2 * b * s * (layers * per_layer + h * vocab) + layers * 4 * b * s * s * h


def test_gpt2_and_llama_matmul_flops_equal_the_closed_form(gpt2_path, llama_path) -> None:
    b, s = models.BATCH, models.SEQ
    gpt = graph_costs(load_model(gpt2_path).graph, where="gpt2")
    assert gpt.flops_by_kind()["matmul"] == _closed_form(2, 64, 4 * 64, 4, 4, 256, b, s)
    llama = graph_costs(load_model(llama_path).graph, where="llama")
    # SwiGLU has three ffn matrices: gate, up and down
    want = _closed_form(2, 64, 128, 2, 4, 256, b, s) + 2 * b * s * 2 * 64 * 128
    assert llama.flops_by_kind()["matmul"] == want


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_total_flops_of_wider_models_within_one_percent(arch: str, tmp_path) -> None:
    """Non-matmul work shrinks as 1/hidden; at 512 it is under 1 %, as in real models."""
    b, s, h = models.BATCH, models.SEQ, 512
    if arch == "gpt2":
        module, want = models.gpt2(hidden=h), _closed_form(2, h, 4 * h, 4, 4, 256, b, s)
    else:
        module = models.llama(hidden=h, ffn=1024)
        want = _closed_form(2, h, 1024, 2, 4, 256, b, s) + 2 * b * s * 2 * h * 1024
    got = graph_costs(
        load_model(models.export(module, tmp_path / "m.onnx")).graph, where=arch
    ).flops
    assert abs(got - want) / want < 0.01, (got, want)


def test_fused_norms_cost_what_their_exported_patterns_cost() -> None:
    """Exporters emit LayerNorm fused and RMSNorm unfused; both must count alike."""
    rows, h = 64, 512
    _, pattern = _costs(HEAD + f"""g (float[{rows},{h}] X, float[{h}] w, float[{h}] b) => (float[{rows},{h}] Y, float[{rows},{h}] R) {{
        two = Constant<value=float {{2.0}}>()  eps = Constant<value=float {{1e-5}}>()  ax = Constant<value=int64[1] {{-1}}>()
        m = ReduceMean(X, ax)  d = Sub(X, m)  sq = Pow(d, two)  v = ReduceMean(sq, ax)  ve = Add(v, eps)
        s = Sqrt(ve)  n = Div(d, s)  nw = Mul(n, w)  Y = Add(nw, b)
        sq2 = Pow(X, two)  ms = ReduceMean(sq2, ax)  mse = Add(ms, eps)  rs = Sqrt(mse)  inv = Reciprocal(rs)
        xn = Mul(X, inv)  R = Mul(xn, w) }}""")
    _, fused_ln = _costs(HEAD + f"g (float[{rows},{h}] X, float[{h}] w, float[{h}] b) => (float[{rows},{h}] Y) {{ Y = LayerNormalization(X, w, b) }}")
    _, fused_rms = _costs('<ir_version: 10, opset_import: ["" : 23]>\n' + f"g (float[{rows},{h}] X, float[{h}] w) => (float[{rows},{h}] Y) {{ Y = RMSNormalization(X, w) }}")
    per_row = 5  # the per-row scalar ops (add eps, sqrt, reciprocal) of both patterns
    assert pattern.flops == pytest.approx(fused_ln.flops + fused_rms.flops, rel=per_row / h)


def test_data_dependent_sizes_are_estimated_not_refused() -> None:
    """NonZero's count is known only at run time: no --dim can bind it, so what reads it
    is costed with the count as 1 and marked estimated; the input's dims stay exact.
    """
    (nz, _, relu), c = _costs(
        HEAD
        + """g (float[4,8] X) => (float[2,?] Z) {
            N = NonZero(X)  F = Cast<to=1>(N)  Z = Relu(F) }"""
    )
    assert nz.bytes_read == 4 * 8 * 4 and nz.bytes_written == 2 * 1 * 8
    assert relu.flops == 2 and relu.exact
    assert c.estimated == ("NonZero_0", "Cast_1", "Relu_2")
