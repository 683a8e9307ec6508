"""Pass ``strategies``: legal shardings per op on exported GPT-2/Llama, a synthesized MoE
and small ONNX-text graphs, and what a choice of them costs in collectives.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import parse
from onnx import numpy_helper

from shardc.frontend import load_model
from shardc.ir import Graph, Model, Node
from shardc.partition.megatron import megatron_choice, weighted_products
from shardc.passes.annotate_costs import graph_costs
from shardc.passes.strategies import PASS, StrategyTable, build_table
from shardc.pipeline import CompileState, Pipeline
from shardc.sharding import Strategy, TensorSharding, legal_for, shard_scale
from shardc.synth import SynthConfig, build

T = TensorSharding.parse
HEAD = '<ir_version: 8, opset_import: ["" : 18, "custom" : 1]>\n'


def _load(text: str, weights: tuple[str, ...] = ()) -> Model:
    """An ONNX-text model with the named inputs turned into (zero) initializers."""
    model = parse(text)
    for name in weights:
        vi = next(i for i in model.graph.input if i.name == name)
        shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        model.graph.initializer.append(numpy_helper.from_array(np.zeros(shape, dtype), name))
        model.graph.input.remove(vi)
    return load_model(model)


def _table(model: Model) -> tuple[Graph, StrategyTable, list[str]]:
    table, warnings = build_table(model.graph, model.opset() or 18)
    return model.graph, table, warnings


def _names(table: StrategyTable, node: str) -> set[str]:
    return {s.name for s in table.of(node)}


def _only(graph: Graph, op: str) -> Node:
    (node,) = [n for n in graph.nodes if n.op_type == op]
    return node


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def exported(request: pytest.FixtureRequest) -> tuple[str, Graph, StrategyTable, list[str]]:
    path: Path = request.getfixturevalue(f"{request.param}_path")
    return (request.param, *_table(load_model(path)))


# -- exported GPT-2 and Llama ------------------------------------------------------------------
def test_every_node_has_replicate_first_and_no_warnings(exported) -> None:
    _, graph, table, warnings = exported
    assert warnings == [] and table.unknown_ops == ()
    for node in graph.nodes:
        assert table.of(node.name)[0].name == "replicate", node.name
        assert table.of(node.name)[0].is_replicated


def test_weighted_products_offer_column_and_row(exported) -> None:
    _, graph, table, _ = exported
    products = list(weighted_products(graph, table))
    assert len(products) >= 9
    for node in products:
        names = _names(table, node.name)
        assert {"row"} <= names and ({"column"} <= names or {"vocab"} <= names), node.name
        row = table.named(node.name, "row")
        assert row.outputs[0] is not None and row.outputs[0].partial == "tp"


def test_attention_products_split_by_heads(exported) -> None:
    _, graph, table, _ = exported
    cores = [n for n in graph.nodes if n.op_type == "MatMul" and n.inputs[1] not in table.free]
    assert len(cores) == 4  # scores and context, two layers
    for node in cores:
        heads = table.named(node.name, "heads")
        assert heads.outputs[0] == T("[-, tp, -, -]") and heads.inputs[0] == T("[-, tp, -, -]")
    for node in graph.nodes:  # the softmax between them follows the heads along
        if node.op_type == "Softmax":
            assert table.named(node.name, "heads").inputs[0] == T("[-, tp, -, -]")


def test_embedding_and_lm_head_are_vocab_parallel(exported) -> None:
    _, graph, table, _ = exported
    (embed,) = [n for n in graph.nodes if n.op_type == "Gather" and n.inputs[0] in table.free]
    vocab = table.named(embed.name, "vocab")
    assert vocab.inputs[0] == T("[tp, -]") and vocab.outputs[0] == T("[-, -, -]+partial(tp)")
    assert any("mask" in note for note in vocab.notes)
    head = graph.producer(graph.outputs[0])
    assert head is not None and head.op_type == "MatMul"
    lm = table.named(head.name, "vocab")
    assert lm.inputs[1] == T("[-, tp]") and lm.outputs[0] == T("[-, -, tp]")


@pytest.mark.parametrize("tp", [2, 4])
def test_megatron_pairs_cost_one_all_reduce_each(exported, tp: int) -> None:
    name, graph, table, _ = exported
    sizes = {"tp": tp}
    chosen = megatron_choice(graph, table, sizes)
    rows = [n for n, s in chosen.items() if s.name == "row"]
    assert len(rows) == 4  # attention out-projection and MLP down-projection, two layers
    vocab = [n for n, s in chosen.items() if s.name == "vocab"]
    assert [graph.node(n).op_type for n in vocab] == ["Gather", "MatMul"]  # embedding, LM head
    done = table.resolve(graph, chosen, sizes)
    ops = [(c.step.op, c.step.axis) for c in done.collectives]
    # one per row-parallel output, one for the vocab-parallel embedding's partial sums
    assert ops == [("all_reduce", "tp")] * (len(rows) + 1), done.collectives
    for c in done.collectives:  # each reduces a row or embedding output (maybe via a view)
        producer = graph.producer(c.value)
        assert producer is not None
        sources = {producer.name} | {
            p.name for i in producer.present_inputs if (p := graph.producer(i)) is not None
        }
        assert sources & (set(rows) | set(vocab[:1])), c
    if name == "llama" and tp == 4:  # 2 KV heads: K and V projections stay whole
        kv = [
            n
            for n in weighted_products(graph, table)
            if n.name not in chosen and "column" in _names(table, n.name)
        ]
        assert len(kv) == 4
        assert not any(legal_for(table.named(n.name, "column"), n, graph, sizes) for n in kv)


def test_a_value_is_resharded_once_for_all_its_consumers(llama_path: Path) -> None:
    """The vocab-parallel embedding feeds the first norm and the residual: one all-reduce
    serves both, and the norm's linear tail reads the reduced copy instead of reducing
    again before the projections.
    """
    graph, table, _ = _table(load_model(llama_path))
    embed = _only(graph, "Gather")
    assert len(graph.consumers(embed.outputs[0])) >= 2
    done = table.resolve(graph, {embed.name: table.named(embed.name, "vocab")}, {"tp": 2})
    assert [(c.value, c.step.op) for c in done.collectives] == [(embed.outputs[0], "all_reduce")]


def test_megatron_sequence_parallel_swaps_the_all_reduce(llama_path: Path) -> None:
    """Norms and the residual Adds after each row split on the sequence over tp (pinning
    those followers): each row output is reduce-scattered, each column input gathered.
    """
    graph, table, _ = _table(load_model(llama_path))
    megatron = megatron_choice(graph, table, {"tp": 2})
    chosen = {n: s for n, s in megatron.items() if s.name != "vocab"}  # blocks only
    rows = {n for n, s in chosen.items() if s.name == "row"}
    for node in graph.nodes:
        after_row = node.op_type == "Add" and any(
            (p := graph.producer(i)) is not None and p.name in rows for i in node.inputs
        )
        if node.op_type == "ReduceMean" or after_row:
            chosen[node.name] = table.named(node.name, "seq_tp")
    ops = [c.step.op for c in table.resolve(graph, chosen, {"tp": 2}).collectives]
    assert ops.count("reduce_scatter") == len(rows) == 4
    # one gather per norm output (Q/K/V and gate/up share theirs), plus the final norm's
    assert ops.count("all_gather") == 5 and set(ops) == {"reduce_scatter", "all_gather"}


def _divides(graph: Graph, value: str, layout: TensorSharding | None, k: int) -> bool:
    t = graph.values[value].type if value else None
    if layout is None or t is None or t.shape is None:
        return True
    return all(
        isinstance(t.shape[d], int) and t.shape[d] % k == 0  # type: ignore[operator]
        for d, a in enumerate(layout.dims)
        if a
    )


def test_strategies_are_consistent_with_the_tensors(exported) -> None:
    """Every sharding has its tensor's rank; at degree 1 all are legal; at degree 2 the
    ones that survive split only dims that divide, and replicate always survives.
    """
    _, graph, table, _ = exported
    costs = graph_costs(graph, where="test").nodes
    sizes = {"dp": 2, "tp": 2, "sp": 2, "ep": 2}
    for node in graph.nodes:
        for s in table.of(node.name):
            assert legal_for(s, node, graph, {}), (node.name, s)
            scale = shard_scale(s, costs[node.name], sizes)
            assert 0 < scale.flops <= 1 and all(0 < f <= 1 for f in scale.inputs)
        assert table.legal(node, graph, sizes)[0].name == "replicate"
        for s in table.legal(node, graph, sizes):
            pairs = [
                *zip(node.inputs, s.inputs, strict=True),
                *zip(node.outputs, s.outputs, strict=True),
            ]
            assert all(_divides(graph, v, layout, 2) for v, layout in pairs), (node.name, s)


def test_followers_need_no_variable(exported) -> None:
    _, graph, table, _ = exported
    ops = {n.op_type for n in graph.nodes if n.name in table.follows}
    assert ops >= {"Add", "Mul", "Reshape", "Transpose"} and not ops & {"MatMul", "Softmax"}
    assert set(table.variables).isdisjoint(table.follows)


# -- synthesized MoE ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def moe() -> tuple[Graph, StrategyTable, list[str]]:
    cfg = SynthConfig(
        layers=1,
        hidden=64,
        heads=4,
        kv_heads=2,
        ffn=32,
        experts=4,
        top_k=2,
        vocab=128,
        seq=16,
        batch=2,
        dtype="fp32",
    )
    return _table(load_model(build("moe", cfg)))


def test_moe_expert_weights_split_over_the_tp_group(moe) -> None:
    """Stacked expert weights split along the experts dim over the tensor-parallel group:
    expert parallelism with EP = TP, as the serving programs run it.
    """
    graph, table, warnings = moe
    assert warnings == []
    experts = [
        n
        for n in graph.nodes
        if n.op_type == "MatMul" and (graph.values[n.inputs[1]].type.rank or 0) == 3
    ]  # type: ignore[union-attr]
    assert len(experts) == 3
    for node in experts:
        s = table.named(node.name, "experts")
        assert s.inputs[1] is not None and s.inputs[1].dims[0] == "tp"
        assert s.inputs[0].dims[0] == "tp" and s.outputs[0].dims[0] == "tp"  # type: ignore[union-attr]
        assert legal_for(s, node, graph, {"tp": 4})


def test_moe_dispatch_and_combine_are_all_to_all(moe) -> None:
    graph, table, _ = moe
    combine = next(n for n in graph.nodes if n.op_type == "Gather" and "combine" in n.name)
    s = table.named(combine.name, "expert_combine")
    assert [(r.op, r.axis) for r in s.comm] == [("all_to_all", "ep")]
    assert s.inputs[0] == T("[ep, -]") and s.outputs[0] == T("[-, ep, -, -]")  # tokens home
    assert legal_for(s, combine, graph, {"ep": 2})
    dispatch = _only(graph, "ScatterND")
    d = table.named(dispatch.name, "expert_dispatch")
    assert [(r.op, r.axis) for r in d.comm] == [("all_to_all", "ep")]
    # the synth buffer keeps one overflow row ([1 + E·C, H]), which no even split divides
    assert not legal_for(d, dispatch, graph, {"ep": 2})


# -- small graphs written as ONNX text ----------------------------------------------------------
def test_conv_by_batch_output_channels_or_input_channels() -> None:
    graph, table, _ = _table(
        _load(
            HEAD
            + """g (float[4,8,10,10] X, float[16,8,3,3] W, float[16] b, float[16,1,3,3] D)
        => (float[4,16,8,8] Y, float[4,16,6,6] Z) { Y = Conv(X, W, b)  Z = Conv<group=16>(Y, D) }""",
            weights=("W", "b", "D"),
        )
    )
    conv, dw = graph.nodes
    assert table.named(conv.name, "batch").inputs[0] == T("[dp, -, -, -]")
    ch = table.named(conv.name, "channels")
    assert (ch.inputs[1], ch.inputs[2], ch.outputs[0]) == (
        T("[tp, -, -, -]"),
        T("[tp]"),
        T("[-, tp, -, -]"),
    )
    cin = table.named(conv.name, "in_channels")
    assert cin.outputs[0].partial == "tp" and cin.inputs[2] == T("[-]+partial(tp)")  # type: ignore[union-attr]
    grouped = table.named(dw.name, "channels")  # depthwise: both channel dims together
    assert grouped.inputs[0] == T("[-, tp, -, -]") and grouped.inputs[1] == T("[tp, -, -, -]")
    assert not any(s.outputs[0].dims[2] for s in table.of(conv.name))  # type: ignore[union-attr]


def test_softmax_and_norms_never_split_the_axis_they_normalise() -> None:
    graph, table, _ = _table(
        _load(
            HEAD
            + """g (float[2,16,64] X, float[64] s, float[64] b) => (float[2,16,64] Y) {
        n = LayerNormalization(X, s, b)  Y = Softmax<axis=-1>(n) }""",
            weights=("s", "b"),
        )
    )
    norm, soft = graph.nodes
    for node in (norm, soft):
        assert all(s.inputs[0].dims[-1] is None for s in table.of(node.name))  # type: ignore[union-attr]
    assert {"batch", "seq", "seq_tp"} <= _names(table, norm.name)
    # softmax over the sequence: the sequence split is not offered, the batch split is
    graph1, table1, _ = _table(
        _load(HEAD + "g (float[2,16,64] X) => (float[2,16,64] Y) { Y = Softmax<axis=1>(X) }")
    )
    names = _names(table1, graph1.nodes[0].name)
    assert "batch" in names and not names & {"seq", "seq_tp"}
    # a producer split along the softmax axis is gathered first
    chosen = {norm.name: Strategy("x", (T("[-, -, tp]"), None, None), (T("[-, -, tp]"),))}
    (step,) = table.resolve(graph, chosen).collectives
    assert (step.consumer, step.step.op, step.step.src_dim) == (soft.name, "all_gather", 2)


def test_reductions_sum_to_partial_but_mean_does_not_split_its_axis() -> None:
    graph, table, _ = _table(
        _load(
            HEAD
            + """g (float[2,16,64] X) => (float[2,16,1] S, float[2,16,1] M) {
        ax = Constant<value=int64[1] {-1}>()  S = ReduceSum(X, ax)  M = ReduceMean(X, ax) }"""
        )
    )
    _, rsum, rmean = graph.nodes
    (summed,) = [s for s in table.of(rsum.name) if s.name == "d2"]
    assert summed.inputs[0] == T("[-, -, tp]") and summed.outputs[0] == T("[-, -, -]+partial(tp)")
    assert all(s.inputs[0].dims[-1] is None for s in table.of(rmean.name))  # type: ignore[union-attr]
    assert {"batch", "seq", "seq_tp"} <= _names(table, rmean.name)


@pytest.mark.parametrize(
    ("src", "dst", "split", "want"),
    [
        ("[2,16,64]", "[2,16,4,16]", "[-, -, tp]", "[-, -, tp, -]"),  # H·D → H: kept on H
        ("[2,16,4,16]", "[2,16,64]", "[-, -, tp, -]", "[-, -, tp]"),  # H → H·D: kept
        ("[2,16,4,16]", "[2,16,64]", "[-, -, -, tp]", None),  # D does not lead H·D: lost
        ("[2,16,64]", "[32,64]", "[dp, -, -]", "[dp, -]"),  # batch leads B·S: kept
        ("[2,16,64]", "[32,64]", "[-, sp, -]", None),  # the sequence does not: lost
        ("[2,16,64]", "[2,16,1,64]", "[-, -, tp]", "[-, -, -, tp]"),  # size-1 dims skipped
    ],
)
def test_reshape_keeps_a_split_only_on_a_leading_dim(
    src: str, dst: str, split: str, want: str | None
) -> None:
    graph, table, _ = _table(
        _load(
            HEAD
            + f"""g (float{src} X) => (float{dst} Y) {{
        sh = Constant<value=int64[{dst.count(",") + 1}] {{{dst[1:-1]}}}>()  Y = Reshape(X, sh) }}"""
        )
    )
    reshape = graph.nodes[-1]
    assert reshape.name in table.follows
    s = table.derive(reshape, [T(split), None], graph)
    if want is None:  # the input is gathered first, and the output is whole
        assert s.inputs[0].is_replicated and s.outputs[0].is_replicated  # type: ignore[union-attr]
    else:
        assert (s.inputs[0], s.outputs[0]) == (T(split), T(want))


def test_reshape_drops_a_split_that_would_cut_heads() -> None:
    """[B, S, 2·16] viewed as 2 KV heads: tp=4 would cut a head, so the split is dropped."""
    graph, table, _ = _table(
        _load(
            HEAD
            + """g (float[2,16,32] X) => (float[2,16,2,16] Y) {
        sh = Constant<value=int64[4] {2, 16, 2, 16}>()  Y = Reshape(X, sh) }"""
        )
    )
    reshape = graph.nodes[-1]
    keep = table.derive(reshape, [T("[-, -, tp]"), None], graph, {"tp": 2})
    drop = table.derive(reshape, [T("[-, -, tp]"), None], graph, {"tp": 4})
    assert keep.outputs[0] == T("[-, -, tp, -]") and drop.outputs[0] == T("[-, -, -, -]")


def test_movement_ops_map_dims() -> None:
    graph, table, _ = _table(
        _load(
            HEAD
            + """g (float[2,16,64] X, float[2,16,64] Z) => (float[2,64,16] T, float[2,16,128] C,
                                                       float[2,16,32] A, float[2,16,8] S) {
        T = Transpose<perm=[0,2,1]>(X)  C = Concat<axis=-1>(X, Z)  A, B = Split<axis=2, num_outputs=2>(X)
        st = Constant<value=int64[1] {0}>()  en = Constant<value=int64[1] {8}>()
        ax = Constant<value=int64[1] {2}>()  S = Slice(X, st, en, ax) }"""
        )
    )
    by_op = {n.op_type: n for n in graph.nodes}
    derive = lambda op, ins: table.derive(by_op[op], ins, graph)  # noqa: E731
    assert derive("Transpose", [T("[-, -, tp]")]).outputs[0] == T("[-, tp, -]")
    assert derive("Concat", [T("[dp, -, -]"), T("[dp, -, -]")]).outputs[0] == T("[dp, -, -]")
    assert derive("Concat", [T("[-, -, tp]"), None]).outputs[0] == T("[-, -, -]")  # concat axis
    assert derive("Split", [T("[-, -, tp]")]).outputs[0] == T("[-, -, -]")  # not a projection
    assert derive("Slice", [T("[-, sp, -]"), None, None, None]).outputs[0] == T("[-, sp, -]")
    assert derive("Slice", [T("[-, -, tp]"), None, None, None]).outputs[0] == T("[-, -, -]")


def test_elementwise_follows_and_carries_partial_sums_only_where_linear() -> None:
    graph, table, _ = _table(
        _load(
            HEAD
            + """g (float[4,8] X, float[4,8] R, float[8] g) => (float[4,8] Y, float[4,8] Z) {
        a = Add(X, R)  m = Mul(a, g)  Y = Tanh(m)  Z = Add(X, X) }""",
            weights=("g",),
        )
    )
    add, mul, tanh, double = graph.nodes
    p = T("[-, -]+partial(tp)")
    assert table.derive(add, [p, T("[-, -]")], graph).outputs[0] == T("[-, -]")  # reduce first
    assert table.derive(add, [p, T("[tp, -]")], graph).inputs[0] == T("[tp, -]")  # scatter
    assert table.derive(double, [p, p], graph).outputs[0] == p
    assert table.derive(mul, [p, None], graph).outputs[0] == p  # a partial times a weight
    assert table.derive(tanh, [p], graph).outputs[0] == T("[-, -]")
    assert table.derive(mul, [T("[dp, -]"), None], graph).inputs[1] == T("[-]")


def test_gemm_row_split_adds_the_bias_once() -> None:
    graph, table, _ = _table(
        _load(
            HEAD
            + """g (float[8,64] X, float[32,64] W, float[32] b) => (float[8,32] Y) {
        Y = Gemm<transB=1>(X, W, b) }""",
            weights=("W", "b"),
        )
    )
    (gemm,) = graph.nodes
    row = table.named(gemm.name, "row")
    assert row.inputs == (T("[-, tp]"), T("[-, tp]"), T("[-]+partial(tp)"))
    col = table.named(gemm.name, "vocab")  # the product's output is the graph's: an LM head
    assert col.inputs[1:] == (T("[tp, -]"), T("[tp]")) and col.outputs[0] == T("[-, tp]")


def test_fused_attention_splits_kv_heads_only_when_tp_divides_them() -> None:
    graph, table, _ = _table(
        _load(
            '<ir_version: 10, opset_import: ["" : 23]>\n'
            """g (float[2,8,16,32] Q, float[2,2,16,32] K, float[2,2,16,32] V) => (float[2,8,16,32] Y) {
        Y = Attention(Q, K, V) }"""
        )
    )
    (att,) = graph.nodes
    heads, whole = table.named(att.name, "heads"), table.named(att.name, "heads_kv_whole")
    assert heads.inputs[1] == T("[-, tp, -, -]") and whole.inputs[1] == T("[-, -, -, -]")
    assert {s.name for s in table.legal(att, graph, {"tp": 2})} >= {"heads", "heads_kv_whole"}
    legal4 = {s.name for s in table.legal(att, graph, {"tp": 4})}
    assert "heads" not in legal4 and "heads_kv_whole" in legal4


def test_unknown_op_replicates_with_a_warning_naming_it() -> None:
    model = _load(
        HEAD + """g (float[2,16,64] X) => (float[2,16,64] Y) { h = custom.Frob(X)  Y = Relu(h) }"""
    )
    state = Pipeline([PASS]).run(CompileState(model, model.graph)).state
    assert state.strategies is not None and state.strategies.unknown_ops == ("custom::Frob",)
    frob = model.graph.nodes[0]
    assert [s.name for s in state.strategies.of(frob.name)] == ["replicate"]
    assert any("custom::Frob" in w and frob.name in w for w in state.warnings)


def test_dump_lists_strategies(gpt2_path: Path) -> None:
    model = load_model(gpt2_path)
    result = Pipeline([PASS]).run(CompileState(model, model.graph), dump_after=["strategies"])
    text = result.dumps["strategies"]
    assert "follows its inputs" in text and "column: (" in text and "+partial(tp)" in text
