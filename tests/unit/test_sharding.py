"""The sharding vocabulary: layouts, the reshard table, shard fractions, legality."""

from __future__ import annotations

import pytest
from conftest import parse

from shardc.cost.ops import NodeCost
from shardc.frontend import load_model
from shardc.ir import DType
from shardc.sharding import (
    Reshard,
    Strategy,
    TensorSharding,
    combine,
    legal_for,
    reshard,
    reshard_volumes,
    shard_scale,
    why_illegal,
)

T = TensorSharding.parse


def test_layout_text_round_trips_and_describes_itself() -> None:
    s = TensorSharding(("dp", None, "tp"), partial="ep")
    assert str(s) == "[dp, -, tp]+partial(ep)" and T(str(s)) == s
    assert s.split_axes == ("dp", "tp") and s.axes == {"dp", "tp", "ep"}
    assert not s.is_replicated and TensorSharding.replicated(3).is_replicated
    assert TensorSharding.split(3, -1, "tp") == T("[-, -, tp]") and T("[]").rank == 0
    assert hash(s) == hash(T("[dp, -, tp]+partial(ep)"))


def test_an_axis_splits_one_dim_and_is_never_also_partial() -> None:
    with pytest.raises(ValueError, match="one dim"):
        TensorSharding(("tp", "tp"))
    with pytest.raises(ValueError, match="partial"):
        TensorSharding(("tp", None), partial="tp")
    with pytest.raises(ValueError, match="not a sharding"):
        T("dp, tp")


@pytest.mark.parametrize(
    ("src", "dst", "want"),
    [
        ("[-, -]+partial(tp)", "[-, -]", [("all_reduce", "tp", None, None)]),
        ("[-, -]+partial(tp)", "[-, tp]", [("reduce_scatter", "tp", None, 1)]),
        ("[-, tp]", "[-, -]", [("all_gather", "tp", 1, None)]),
        ("[tp, -]", "[-, tp]", [("all_to_all", "tp", 0, 1)]),
        ("[-, -]", "[tp, -]", [("slice", "tp", None, 0)]),
        ("[-, -]", "[-, -]+partial(tp)", [("scale", "tp", None, None)]),
        ("[dp, tp]", "[dp, tp]", []),
        # axes are independent: the batch split stays, only the partial sum is resolved
        ("[dp, -]+partial(tp)", "[dp, tp]", [("reduce_scatter", "tp", None, 1)]),
        # tp may enter dim 0 only once dp has left it, whatever the cost order says
        ("[dp, -]", "[tp, -]", [("all_gather", "dp", 0, None), ("slice", "tp", None, 0)]),
        # slices first: gather the smaller, already sliced tensor
        ("[dp, -]", "[-, tp]", [("slice", "tp", None, 1), ("all_gather", "dp", 0, None)]),
    ],
)
def test_reshard_names_the_collectives(src: str, dst: str, want: list) -> None:
    steps = reshard(T(src), T(dst))
    assert [(s.op, s.axis, s.src_dim, s.dst_dim) for s in steps] == want
    assert all(s.communicates == (s.op not in ("slice", "scale")) for s in steps)


def test_reshard_refuses_a_rank_change() -> None:
    with pytest.raises(ValueError, match="rank"):
        reshard(T("[-, -]"), T("[-]"))


def test_reshard_volumes_follow_the_nccl_tests_convention() -> None:
    sizes = {"dp": 2, "tp": 4}
    (ar,) = reshard_volumes(T("[dp, -]+partial(tp)"), T("[dp, -]"), 800.0, sizes)
    assert ar[0].op == "all_reduce" and ar[1] == 400.0  # the buffer one rank holds
    (ag,) = reshard_volumes(T("[dp, tp]"), T("[dp, -]"), 800.0, sizes)
    assert ag[1] == 400.0  # the whole array over the tp group: this rank's dp half
    (sl, ag2) = reshard_volumes(T("[dp, -]"), T("[-, tp]"), 800.0, sizes)
    assert (sl[1], ag2[0].op, ag2[1]) == (0.0, "all_gather", 200.0)


def _cost(inputs: tuple[int, ...], outputs: tuple[int, ...]) -> NodeCost:
    return NodeCost(
        1000, sum(inputs), sum(outputs), 0, DType.BFLOAT16, "matmul", True, inputs, outputs
    )


def test_shard_scale_column_row_and_batch() -> None:
    cost = _cost((64, 32), (128,))
    column = Strategy("column", (T("[-, -]"), T("[-, tp]")), (T("[-, tp]"),))
    s = shard_scale(column, cost, {"tp": 8})
    assert (s.flops, s.inputs, s.outputs) == (1 / 8, (1.0, 1 / 8), (1 / 8,))
    row = Strategy("row", (T("[-, tp]"), T("[tp, -]")), (T("[-, -]+partial(tp)"),))
    s = shard_scale(row, cost, {"tp": 8})
    assert (s.flops, s.inputs, s.outputs) == (1 / 8, (1 / 8, 1 / 8), (1.0,))  # partials whole
    both = combine(Strategy("batch", (T("[dp, -]"), T("[-, -]")), (T("[dp, -]"),)), column)
    assert both is not None and both.name == "batch+column"
    s = shard_scale(both, cost, {"tp": 4, "dp": 2})
    assert (s.flops, s.inputs, s.outputs) == (1 / 8, (1 / 2, 1 / 4), (1 / 8,))
    # an axis the mesh does not have (size 1) changes nothing; omitted inputs count whole
    s = shard_scale(column, _cost((64, 32, 0), (128,)), {})
    assert (s.flops, s.inputs) == (1.0, (1.0, 1.0, 1.0))


def test_combine_refuses_clashes() -> None:
    column = Strategy("column", (T("[-, -]"), T("[-, tp]")), (T("[-, tp]"),))
    over_dim = Strategy("x", (T("[-, -]"), T("[-, dp]")), (T("[-, dp]"),))
    assert combine(column, column) is None  # same axis twice
    assert combine(column, over_dim) is None  # two axes on one dim


def test_legality_checks_ranks_divisibility_and_stated_counts() -> None:
    model = load_model(
        parse(
            '<ir_version: 8, opset_import: ["" : 18]>\n'
            "g (float[6,12] X, float[12,20] W) => (float[6,20] Y) { Y = MatMul(X, W) }"
        )
    )
    node = model.graph.nodes[0]
    column = Strategy("column", (T("[-, -]"), T("[-, tp]")), (T("[-, tp]"),))
    assert legal_for(column, node, model.graph, {"tp": 4})
    bad = why_illegal(column, node, model.graph, {"tp": 8})
    assert bad is not None and "20" in bad.reason and bad.value == "W"
    heads = Strategy(
        "column", column.inputs, column.outputs, divides=(("tp", 2),), notes=("2 KV heads",)
    )
    assert legal_for(heads, node, model.graph, {"tp": 2})
    assert not legal_for(heads, node, model.graph, {"tp": 4})
    wrong_rank = Strategy("x", (T("[-]"), T("[-, -]")), (T("[-, -]"),))
    assert "rank" in why_illegal(wrong_rank, node, model.graph, {}).reason  # type: ignore[union-attr]


def test_reshard_text_names_axis_and_dims() -> None:
    assert str(Reshard("all_to_all", "ep", 1, 0)) == "all_to_all(ep) dim 1→0"
    assert str(Reshard("all_reduce", "tp")) == "all_reduce(tp)"
