"""One op-family table (:mod:`shardc.ir.opfamilies`) for the shape, FLOP and sharding
rules: every op any of them knows is in a family, and every family member has a shape
rule, a FLOP rule and (unless the table says why not) a sharding rule.
"""

from __future__ import annotations

import onnx
import pytest
from conftest import parse

from shardc.cost.flops import (
    ELEMENTWISE_FLOPS,
    FLOP_RULES,
    MOVEMENT_OPS,
    REDUCE_OPS,
    VIEW_OPS,
    has_flop_rule,
)
from shardc.cost.graph import graph_costs
from shardc.frontend import load_model
from shardc.frontend.shape_rules import RULES as SHAPE_RULES
from shardc.ir.opfamilies import FAMILIES, FAMILY_OF, REPLICATED
from shardc.strategy.rules import RULES as SHARDING_RULES

HEAD = '<ir_version: 8, opset_import: ["" : 18]>\n'


def _has_shape_rule(op: str) -> bool:
    """A shardc rule, or (ONNX domain) the schema's own inference, which runs first."""
    if op in SHAPE_RULES:
        return True
    return "::" not in op and onnx.defs.has(op)


def test_every_op_any_rule_knows_is_in_a_family() -> None:
    known = {
        *SHAPE_RULES, *SHARDING_RULES, *FLOP_RULES, *ELEMENTWISE_FLOPS,
        *REDUCE_OPS, *VIEW_OPS, *MOVEMENT_OPS,
    }
    assert sorted(known - set(FAMILY_OF)) == []


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_member_has_a_shape_and_a_flop_rule(family: str) -> None:
    ops = FAMILIES[family]
    assert [op for op in ops if not has_flop_rule(op)] == []
    assert [op for op in ops if not _has_shape_rule(op)] == []


def test_every_op_with_a_sharding_rule_has_shape_and_flop_rules() -> None:
    missing = [op for op in SHARDING_RULES if not (has_flop_rule(op) and _has_shape_rule(op))]
    assert missing == []


def test_only_the_listed_ops_lack_a_sharding_rule() -> None:
    unsharded = {op for op in FAMILY_OF if op not in SHARDING_RULES}
    assert unsharded == set(REPLICATED)


def _cost(graph: str):  # type: ignore[no-untyped-def]
    m = load_model(parse(HEAD + graph))
    return graph_costs(m.graph, where="m").nodes[m.graph.nodes[0].name]


def test_the_new_flop_rules() -> None:
    det = _cost("g (float[2,4,4] X) => (float[2] Y) { Y = Det(X) }")
    assert det.flops == 2 * (2 * 4**3 // 3 + 4) and det.kind == "matmul"
    lrn = _cost("g (float[1,8,4,4] X) => (float[1,8,4,4] Y) { Y = LRN<size=5>(X) }")
    assert lrn.flops == (2 * 5 + 4) * 128 and lrn.kind == "norm"
    tan = _cost("g (float[3,5] X) => (float[3,5] Y) { Y = Tan(X) }")
    assert tan.flops == 3 * 15 and tan.exact
    grid = _cost(
        "g (float[1,2,4,4] X, float[1,3,3,2] G) => (float[1,2,3,3] Y) { Y = GridSample(X, G) }"
    )
    assert grid.flops == (6 + 2 * 4) * 18
    pool = _cost("g (float[1,2,4,4] X) => (float[1,2,1,1] Y) { Y = GlobalLpPool(X) }")
    assert pool.flops == 32 and pool.kind == "reduce"


def test_contrib_quantize_gets_a_shape() -> None:
    m = load_model(parse(
        '<ir_version: 8, opset_import: ["" : 18, "com.microsoft" : 1]>\n'
        "g (float[2,3] X, float s, uint8 z) => (uint8[2,3] Z) "
        "{ Y = com.microsoft.QuantizeLinear(X, s, z)  Z = Identity(Y) }"
    ))
    t = m.graph.values["Y"].type
    assert t is not None and t.shape == (2, 3) and t.dtype.name == "UINT8"


def test_contrib_fused_matmul_gets_a_shape() -> None:
    m = load_model(parse(
        '<ir_version: 8, opset_import: ["" : 18, "com.microsoft" : 1]>\n'
        "g (float[2,5,3] A, float[4,5] B) => (float[2,3,4] Z) "
        "{ Y = com.microsoft.FusedMatMul<transA=1, transB=1>(A, B)  Z = Identity(Y) }"
    ))
    t = m.graph.values["Y"].type
    assert t is not None and t.shape == (2, 3, 4)
