"""``explain`` names a node's block from the plan alone: a plan loaded from its folder
says the same as the one compiled in this process (plan.json records the chain of blocks
in ``emission.blocks``; explain never reads the compiler's state).
"""

from __future__ import annotations

from pathlib import Path

import pytest

import shardc

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compiled() -> shardc.Plan:
    return shardc.compile(
        ROOT / "examples/models/tiny_gpt2.onnx", ROOT / "topologies/localhost.topo",
        devices=4, pins="tp=2,pp=2", quiet=True,
    )


def test_loaded_plan_names_the_block(compiled: shardc.Plan, tmp_path: Path) -> None:
    compiled.save(tmp_path / "p")
    loaded = shardc.Plan.load(tmp_path / "p")
    assert loaded.state is None  # nothing but the folder
    blocks = loaded.typed.blocks
    assert [b.role for b in blocks] == ["prologue", "repeated", "repeated", "epilogue"]
    assert blocks == compiled.typed.blocks
    for name, says in (
        ("node_embedding", "the node is in the model's prologue; stage 0"),
        ("node_Gemm_287", "the node is in repeated block 1; stage 1"),
        ("node_linear", "the node is in the model's epilogue; stage 1"),
    ):
        first = loaded.explain(name).reasons[0]
        assert first.startswith(says), first
        assert compiled.explain(name).reasons == loaded.explain(name).reasons


def test_block_of_counts_only_repeated_blocks(compiled: shardc.Plan) -> None:
    plan = compiled.typed
    first_repeated = next(b for b in plan.blocks if b.role == "repeated")
    assert plan.block_of(first_repeated.nodes[0]) == ("repeated", 0)
    assert plan.block_of(plan.blocks[0].nodes[0]) == ("prologue", None)
    assert plan.block_of("no such node") is None
