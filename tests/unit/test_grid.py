"""Megatron grid estimator (shardc.cost.grid): hand-worked cases on a two-node toy cluster."""

from __future__ import annotations

import pytest

from shardc.cost.compute import ShardScale, optimizer_time
from shardc.cost.grid import (
    GridConfig,
    TransformerCosts,
    estimate_grid,
    place_grid,
    tensor_parallel_shard,
)
from shardc.cost.network import group_collective, point_to_point
from shardc.cost.ops import NodeCost
from shardc.cost.phases import training_time
from shardc.errors import OptionError
from shardc.ir import DType
from shardc.passes.annotate_costs import graph_costs
from shardc.synth import SynthConfig
from shardc.topology import load_topology

# Two nodes of four devices: 100 GB/s switch inside a node, 10 GB/s rail network across.
TOPO = load_topology("""
kind toy {
    compute bf16 100 TFLOPS
    memory 80 GB
    memory_bandwidth 1 TB/s
}
node[0..1] {
    gpu[0..3]: toy
    switch nvs: nvlink {
        members gpu[*]
        bandwidth 100 GB/s
        latency 1 us
    }
}
network ib: ib {
    members node[*].gpu[*]
    bandwidth 10 GB/s
    latency 2 us
    rails
}
""")
B, S, H, A = 1, 16, 64, 4  # micro-batch, sequence, hidden, heads
HB = B * S * H * 2  # bytes of one bf16 hidden state


def _mm(m: int, k: int, n: int, weight: bool = True) -> NodeCost:
    return NodeCost(2 * m * k * n, (m * k + k * n) * 2, m * n * 2, k * n * 2 if weight else 0,
                    DType.BFLOAT16, "matmul", input_bytes=(m * k * 2, k * n * 2),
                    output_bytes=(m * n * 2,))


def _ew(elems: int) -> NodeCost:
    return NodeCost(elems, elems * 2, elems * 2, 0, DType.BFLOAT16, "elementwise",
                    input_bytes=(elems * 2,), output_bytes=(elems * 2,))


T = B * S
LAYER = (_mm(T, H, 4 * H), _ew(T * 4 * H), _mm(T, 4 * H, H), _ew(T * H))  # fc_in, gelu, fc_out, add
EMBED = NodeCost(0, T * H * 2, T * H * 2, 0, DType.BFLOAT16, "movement",
                 input_bytes=(T * H * 2, T * 8), output_bytes=(T * H * 2,))
OUTSIDE = (EMBED, _mm(T, H, 512))  # embedding lookup, LM head


def _costs(layers: int = 4) -> TransformerCosts:
    return TransformerCosts(LAYER, OUTSIDE, layers, H, A, S, B, layer_params=8 * H * H,
                            outside_params=512 * H)


def test_bubble_fraction_is_p_minus_1_over_m_v() -> None:
    cfg = GridConfig(tp=1, pp=4, dp=1, micro_batch=1, global_batch=8)
    assert cfg.microbatches == 8
    assert cfg.bubble_fraction == pytest.approx(3 / 8)
    assert GridConfig(1, 4, 1, 1, 8, interleave=2).bubble_fraction == pytest.approx(3 / 16)
    assert GridConfig(1, 1, 2, 2, 8).bubble_fraction == 0.0


@pytest.mark.parametrize("kwargs", [
    {"global_batch": 6},  # not a multiple of dp * micro_batch = 4
    {"recompute": "most"},
    {"schedule": "zigzag"},
    {"interleave": 2, "pp": 1},
    {"interleave": 2, "pp": 4},  # 2 micro-batches, 4 stages: the groups of p do not fill
    {"tp": 0},
])
def test_bad_grids_are_user_errors(kwargs: dict) -> None:
    base = {"tp": 1, "pp": 2, "dp": 2, "micro_batch": 2, "global_batch": 8}
    with pytest.raises(OptionError):
        GridConfig(**{**base, **kwargs})


def test_split_takes_the_multiset_difference_without_names() -> None:
    one = [*OUTSIDE, *LAYER]
    two = [*LAYER, *OUTSIDE, *LAYER]
    layer, outside = TransformerCosts.split(one, two)
    assert sorted(layer, key=repr) == sorted(LAYER, key=repr)
    assert sorted(outside, key=repr) == sorted(OUTSIDE, key=repr)
    with pytest.raises(ValueError, match="one layer"):
        TransformerCosts.split(one, [*LAYER, *LAYER])  # lost the embedding and head
    with pytest.raises(ValueError, match="one layer"):
        TransformerCosts.split(one, one)


def test_tensor_parallel_shards_by_role() -> None:
    col, row = LAYER[0], LAYER[2]
    assert tensor_parallel_shard(col, 4, HB) == ShardScale(0.25, (1.0, 0.25), (0.25,))
    assert tensor_parallel_shard(row, 4, HB) == ShardScale(0.25, (0.25, 0.25), (1.0,))
    assert tensor_parallel_shard(LAYER[1], 4, HB) == ShardScale.uniform(0.25)  # MLP width
    assert tensor_parallel_shard(LAYER[3], 4, HB) == ShardScale()  # residual: replicated
    assert tensor_parallel_shard(LAYER[3], 4, HB, True) == ShardScale.uniform(0.25)  # SP
    assert tensor_parallel_shard(col, 1, HB) == ShardScale()


def test_one_stage_one_tp_degenerates_to_data_parallel() -> None:
    cfg = GridConfig(tp=1, pp=1, dp=4, micro_batch=1, global_batch=8)
    est = estimate_grid(_costs(), cfg, TOPO)
    kind = TOPO.kinds["toy"]
    per_mb = 4 * training_time(LAYER, kind).seconds + training_time(OUTSIDE, kind).seconds
    assert est.compute == pytest.approx(cfg.microbatches * per_mb)
    assert est.tp_comm == est.pp_comm == est.bubble == 0.0
    params = 4 * 8 * H * H + 512 * H
    devices = ["node0.gpu0", "node0.gpu1", "node0.gpu2", "node0.gpu3"]
    ar = group_collective(TOPO, "all_reduce", params * 2.0, devices)
    assert est.dp_comm == pytest.approx(ar.seconds)
    assert est.optimizer == pytest.approx(optimizer_time(params, kind))
    assert est.seconds == pytest.approx(est.compute + est.dp_comm + est.optimizer)


def test_tp_all_reduces_six_per_layer_with_full_recompute() -> None:
    cfg = GridConfig(tp=4, pp=1, dp=2, micro_batch=1, global_batch=4, recompute="full")
    est = estimate_grid(_costs(layers=3), cfg, TOPO)
    one = group_collective(TOPO, "all_reduce", HB, ["node0.gpu0", "node0.gpu1", "node0.gpu2",
                                                    "node0.gpu3"])
    # 2 forward + 2 backward + 2 recomputed per layer, + embedding and head, per micro-batch
    assert est.tp_comm == pytest.approx(cfg.microbatches * (3 * 6 + 2) * one.seconds)
    no_recompute = estimate_grid(_costs(layers=3), GridConfig(4, 1, 2, 1, 4), TOPO)
    assert no_recompute.tp_comm == pytest.approx(cfg.microbatches * (3 * 4 + 2) * one.seconds)


def test_pipeline_sends_twice_per_microbatch_and_pays_the_bubble() -> None:
    cfg = GridConfig(tp=1, pp=2, dp=1, micro_batch=1, global_batch=4)
    est = estimate_grid(_costs(), cfg, TOPO)
    send = point_to_point(TOPO, "node0.gpu0", "node0.gpu1", HB)  # dp=1: stages are neighbours
    assert est.pp_comm == pytest.approx(4 * 2 * send.seconds)
    assert est.bubble == pytest.approx((est.compute + est.pp_comm) * 1 / 4)


def test_placement_follows_megatron_rank_order() -> None:
    place = place_grid(TOPO, GridConfig(tp=2, pp=2, dp=2, micro_batch=1, global_batch=2))
    assert place.tp_group == ("node0.gpu0", "node0.gpu1")
    assert place.dp_group == ("node0.gpu0", "node0.gpu2")
    assert place.pp_group == ("node0.gpu0", "node1.gpu0")
    with pytest.raises(OptionError, match="needs 16 devices"):
        place_grid(TOPO, GridConfig(tp=4, pp=2, dp=2, micro_batch=1, global_batch=2))


def test_zero_shards_optimizer_state_across_data_parallel_ranks() -> None:
    params = 4 * 8 * H * H + 512 * H
    plain = estimate_grid(_costs(), GridConfig(1, 1, 4, 1, 4), TOPO)
    zero = estimate_grid(_costs(), GridConfig(1, 1, 4, 1, 4, zero_stage=1), TOPO)
    assert plain.memory.components["optimizer"] == pytest.approx(12 * params)
    assert zero.memory.components["optimizer"] == pytest.approx(12 * params / 4)
    assert zero.memory.components["gradients"] == plain.memory.components["gradients"]
    assert zero.optimizer == pytest.approx(plain.optimizer / 4)


def test_memory_holds_p_microbatches_on_the_first_stage() -> None:
    est = estimate_grid(_costs(layers=4), GridConfig(1, 2, 1, 1, 8), TOPO)
    per_layer = S * B * H * (34 + 5 * A * S / H)  # Korthikanti, no recomputation, t = 1
    assert est.memory.components["activations"] == pytest.approx(2 * 2 * per_layer)


def test_costs_from_synth_add_up_to_the_whole_model() -> None:
    cfg = SynthConfig(layers=3, hidden=H, heads=A, vocab=128, seq=S, batch=2,
                      max_positions=S)
    costs = TransformerCosts.from_synth("gpt", cfg)
    from shardc.frontend import load_model
    from shardc.synth import build, parameter_count

    whole = graph_costs(load_model(build("gpt", cfg)).graph, where="test")
    layer_flops = sum(c.flops for c in costs.layer)
    assert 3 * layer_flops + sum(c.flops for c in costs.outside) == whole.flops
    assert 3 * costs.layer_params + costs.outside_params == parameter_count("gpt", cfg)
    assert costs.hidden_bytes == 2 * S * H * 2 and costs.micro_batch == 2
    assert costs.tied_embeddings
    est = estimate_grid(costs, GridConfig(1, 3, 1, 2, 8), TOPO)
    assert est.seconds > 0 and "pipeline bubble" in est.explain()
