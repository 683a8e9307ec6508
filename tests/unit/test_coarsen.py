"""Pass ``coarsen``: repeated structure found from the graph alone, never from names.

Real GPT-2 / Llama exports (whose weights the exporter renames ``val_N``) and synth
models must fold into ``prologue · L identical blocks · epilogue``, with the FLOPs of each
block equal to the closed form of one layer; non-chain graphs must still give a valid
chain. Every chain is checked against the same invariants (:func:`check_chain`).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import coarsen_cases as cases
import models
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardc.frontend import load_model
from shardc.ir import Graph
from shardc.passes import annotate_costs, coarsen
from shardc.passes.annotate_costs import graph_costs
from shardc.passes.coarsen import BlockChain
from shardc.pipeline import CompileState, Pipeline
from shardc.synth import SynthConfig, build, forward_flops
from shardc.synth.config import resolve

ROLES = {"prologue", "repeated", "epilogue", "single"}


def check_chain(graph: Graph, chain: BlockChain) -> None:
    """The invariants every chain keeps, whatever the graph looks like."""
    assert [n for b in chain.blocks for n in b.nodes] == [n.name for n in graph.nodes]
    available = set(graph.inputs)
    for i, b in enumerate(chain.blocks):
        assert b.index == i and b.role in ROLES
        assert all(chain.block_of(n) == i for n in b.nodes)
        assert set(b.inputs) <= available, f"block {i} reads {set(b.inputs) - available}"
        assert set(b.weights) <= set(graph.initializers)
        made = {o for n in b.nodes for o in graph.node(n).outputs}
        assert set(b.outputs) <= made
        available |= set(b.outputs)
        assert i in chain.classes[b.signature]
    assert sorted(i for ix in chain.classes.values() for i in ix) == list(range(len(chain.blocks)))
    assert set(graph.outputs) <= available | set(graph.initializers)
    roles = [b.role for b in chain.blocks]
    if len(roles) == 1:
        assert roles == ["single"]
    elif roles:
        body = [r for r in roles if r not in ("prologue", "epilogue")]
        assert body == ["repeated"] * len(body) and len(body) >= 2
        assert roles[0] in ("prologue", "repeated") and roles[-1] in ("epilogue", "repeated")


def block_flops(graph: Graph, chain: BlockChain, kind: str | None = None) -> list[int]:
    """FLOPs per block (only nodes of ``kind`` when given), from the cost annotations."""
    costs = graph_costs(graph, where="test").nodes
    return [
        sum(costs[n].flops for n in b.nodes if kind is None or costs[n].kind == kind)
        for b in chain.blocks
    ]


def _gpt2_layer(t: int, b: int, s: int, h: int = 64) -> int:
    """Matmul FLOPs of one GPT-2 layer: QKV, scores, context, out-proj, 4h MLP."""
    return 2 * t * 4 * h * h + 4 * b * s * s * h + 2 * t * 2 * h * 4 * h


def _llama_layer(t: int, b: int, s: int, h: int = 64, kv: int = 2, d: int = 16) -> int:
    """Matmul FLOPs of one Llama layer: Q/O, grouped K/V, scores, context, SwiGLU (ffn 128)."""
    return 2 * t * (2 * h * h + 2 * h * kv * d) + 4 * b * s * s * h + 2 * t * 3 * h * 128


@pytest.mark.parametrize(
    ("fixture", "layer_flops"), [("gpt2_path", _gpt2_layer), ("llama_path", _llama_layer)]
)
def test_real_exports_fold_into_identical_layers(
    request: pytest.FixtureRequest, fixture: str, layer_flops: Callable[[int, int, int], int]
) -> None:
    graph = load_model(request.getfixturevalue(fixture)).graph
    chain = coarsen.coarsen(graph)
    check_chain(graph, chain)
    assert [b.role for b in chain.blocks] == ["prologue", "repeated", "repeated", "epilogue"]
    assert chain.period == 2  # cuts after the attention and after the MLP residual add
    assert chain.classes[chain.blocks[1].signature] == (1, 2)
    total, matmul = block_flops(graph, chain), block_flops(graph, chain, "matmul")
    tokens = models.BATCH * models.SEQ
    assert total[1] == total[2] and sum(total) == graph_costs(graph, where="t").flops
    assert matmul[1] == matmul[2] == layer_flops(tokens, models.BATCH, models.SEQ)
    assert matmul[3] == 2 * tokens * 64 * 256  # the LM head, and nothing else, after
    # found by structure: the embedding is a Gather from a [vocab, hidden] table
    embed = next(n for n in graph.nodes if n.op_type == "Gather" and n.inputs[0] in graph.initializers)
    assert chain.block_of(embed.name) == 0
    head = [n for n in graph.nodes if n.op_type in ("MatMul", "Gemm")][-1]
    assert chain.block_of(head.name) == 3
    # the residual stream chains the blocks, in the same input slot for each layer
    for prev, block in zip(chain.blocks, chain.blocks[1:], strict=False):
        assert block.inputs[0] in prev.outputs


def _synth_config(arch: str, layers: int, **extra: Any) -> SynthConfig:
    moe = {"experts": 4, "top_k": 2} if arch == "moe" else {}
    return SynthConfig(layers=layers, hidden=64, heads=4, vocab=256, **moe, **extra)


@pytest.mark.parametrize(
    ("arch", "layers", "extra"),
    [
        ("gpt", 4, {}),
        ("gpt", 12, {"dtype": "fp16"}),
        ("llama", 6, {"kv_heads": 2}),
        ("llama", 5, {"dtype": "fp8"}),
        ("moe", 5, {}),
    ],
)
def test_synth_models_give_one_class_of_layers(
    arch: str, layers: int, extra: dict[str, Any]
) -> None:
    cfg = _synth_config(arch, layers, **extra)
    graph = load_model(build(arch, cfg), dims={"batch": 2, "seq": 16}).graph
    chain = coarsen.coarsen(graph)
    check_chain(graph, chain)
    assert len(chain.repeated) == layers
    assert chain.blocks[0].role == "prologue" and chain.blocks[-1].role == "epilogue"
    assert len({chain.blocks[i].signature for i in chain.repeated}) == 1
    head = 2 * (2 * 16) * 64 * resolve(arch, cfg).vocab  # the LM head: 2·T·h·V
    per_layer = (forward_flops(arch, cfg, batch=2, seq=16) - head) // layers
    matmul = block_flops(graph, chain, "matmul")
    assert {matmul[i] for i in chain.repeated} == {per_layer}
    assert matmul[0] == 0  # the prologue is minimal: no layer work leaked into it


def test_an_80_layer_llama_coarsens_fast() -> None:
    cfg = SynthConfig(layers=80, hidden=8192, heads=64, kv_heads=8)
    graph = load_model(build("llama", cfg), dims={"batch": 1, "seq": 128}).graph
    start = time.perf_counter()
    chain = coarsen.coarsen(graph)
    seconds = time.perf_counter() - start
    print(f"80-layer llama: {len(graph.nodes)} nodes -> {len(chain.blocks)} blocks in {seconds:.3f} s")
    assert len(chain.repeated) == 80 and len(chain.classes) == 3
    assert seconds < 3.0


def _renamed(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The same model with every node and value renamed (and numbered the other way)."""
    m = copy.deepcopy(proto)
    g = m.graph
    names: dict[str, None] = {}
    for vi in (*g.input, *g.output, *g.value_info, *g.initializer):
        names[vi.name] = None
    for node in g.node:
        names.update(dict.fromkeys(n for n in (*node.input, *node.output) if n))
    new = {n: f"t{len(names) - i}" for i, n in enumerate(names)}
    for vi in (*g.input, *g.output, *g.value_info, *g.initializer):
        vi.name = new[vi.name]
    for i, node in enumerate(g.node):
        node.name = f"op{len(g.node) - i}"
        node.input[:] = [new.get(n, n) for n in node.input]
        node.output[:] = [new.get(n, n) for n in node.output]
    return m


@pytest.mark.parametrize("source", ["llama_path", "synth_moe"])
def test_signatures_do_not_depend_on_names(request: pytest.FixtureRequest, source: str) -> None:
    if source == "synth_moe":
        proto = build("moe", _synth_config("moe", 3))
        dims = {"batch": 2, "seq": 16}
    else:
        proto, dims = onnx.load(str(request.getfixturevalue(source))), {}
    one = coarsen.coarsen(load_model(proto, dims=dims).graph)
    two = coarsen.coarsen(load_model(_renamed(proto), dims=dims).graph)
    names_one, names_two = ({n for b in c.blocks for n in b.nodes} for c in (one, two))
    assert names_one.isdisjoint(names_two)  # really renamed
    assert [b.signature for b in one.blocks] == [b.signature for b in two.blocks]
    assert [len(b.nodes) for b in one.blocks] == [len(b.nodes) for b in two.blocks]
    assert [b.role for b in one.blocks] == [b.role for b in two.blocks]


@pytest.mark.parametrize(
    "name",
    [
        "SINGLE",
        "MERGE_LATE",
        "ENCODER_DECODER",
        "RESIDUAL_STACK",
        "KV_CACHE",
        "CONTROL_FLOW",
        "STATIC_OUTPUT",
    ],
)
def test_non_chain_graphs_give_a_valid_chain(name: str) -> None:
    graph = load_model(cases.model(getattr(cases, name))).graph
    check_chain(graph, coarsen.coarsen(graph))


def test_no_repetition_means_one_single_block() -> None:
    for name in ("SINGLE", "MERGE_LATE", "CONTROL_FLOW", "STATIC_OUTPUT"):
        graph = load_model(cases.model(getattr(cases, name))).graph
        chain = coarsen.coarsen(graph)
        assert [b.role for b in chain.blocks] == ["single"] and chain.period == 0
        assert set(chain.blocks[0].inputs) == set(graph.inputs)


def test_repetition_outside_transformers_is_found() -> None:
    graph = load_model(cases.model(cases.RESIDUAL_STACK)).graph
    chain = coarsen.coarsen(graph)
    assert [b.role for b in chain.blocks] == ["repeated"] * 3 and len(chain.classes) == 1
    # an encoder-decoder folds one stack (the encoder here) and keeps the rest whole
    graph = load_model(cases.model(cases.ENCODER_DECODER)).graph
    chain = coarsen.coarsen(graph)
    assert [b.role for b in chain.blocks] == ["repeated", "repeated", "epilogue"]
    assert "mem" in chain.blocks[1].outputs and "mem" in chain.blocks[2].inputs


def test_per_layer_graph_inputs_and_outputs_do_not_hide_layers() -> None:
    """KV-cache models read a past input and write a present output in every layer."""
    graph = load_model(cases.model(cases.KV_CACHE)).graph
    chain = coarsen.coarsen(graph)
    assert [b.role for b in chain.blocks] == ["prologue", "repeated", "repeated", "repeated"]
    for i, b in enumerate(chain.blocks[1:], start=1):
        assert f"P{i}" in b.inputs and f"K{i}" in b.outputs


def test_control_flow_bodies_count_as_reads() -> None:
    graph = load_model(cases.model(cases.CONTROL_FLOW)).graph
    facts = coarsen._analyse(graph)
    if_index = next(i for i, n in enumerate(graph.nodes) if n.op_type == "If")
    assert "a" in facts.reads[if_index]  # read only inside the branches


def test_an_empty_graph_gives_an_empty_chain() -> None:
    chain = coarsen.coarsen(load_model(cases.model(cases.NO_NODES)).graph)
    assert chain.blocks == () and chain.classes == {} and chain.period == 0


def test_the_pass_runs_in_a_pipeline_and_dumps_blocks(gpt2_path: Path) -> None:
    model = load_model(gpt2_path)
    result = Pipeline([annotate_costs.PASS, coarsen.PASS]).run(
        CompileState(model, model.graph), verify=True, dump_after=["coarsen"]
    )
    chain = result.state.blocks
    assert chain is not None and len(chain.repeated) == 2
    text = result.dumps["coarsen"]
    assert text.startswith("# coarsen: 4 blocks, 3 classes, 2 repeated (period 2 segments)")
    for b in chain.blocks:
        assert f"block {b.index} {b.role} sig={b.signature}" in text
    assert "class=[1, 2]" in text and "= Gather(" in text


@settings(max_examples=40, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["Relu", "Tanh", "Add", "MatMul"]),
            st.integers(0, 20),
            st.integers(0, 20),
        ),
        min_size=1,
        max_size=8,
    ),
    inputs=st.integers(1, 3),
    repeat=st.integers(1, 4),
)
def test_any_dag_gives_a_valid_chain(
    steps: list[tuple[str, int, int]], inputs: int, repeat: int
) -> None:
    graph = load_model(cases.random_model(steps, inputs, repeat)).graph
    chain = coarsen.coarsen(graph)
    check_chain(graph, chain)
    assert coarsen.coarsen(graph) == chain  # deterministic
