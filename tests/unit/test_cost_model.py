"""Compute roofline and memory model: hand-worked cases."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from shardc.cost.compute import (
    ShardScale,
    node_time,
    optimizer_time,
    pass_multiplier,
    peak_for,
)
from shardc.cost.memory import (
    FP8_DEEPSEEK_V3,
    FP8_UE8M0,
    TrainingState,
    WeightFormat,
    in_flight_microbatches,
    inference_memory,
    kv_cache_bytes,
    training_memory,
    transformer_layer_activation_bytes,
)
from shardc.cost.ops import NodeCost
from shardc.ir import DType


@dataclass(frozen=True)
class Kind:
    """A device kind as the topology builds it: H100 SXM figures (REFERENCE.md §1.1)."""

    name: str = "h100"
    peak_flops: dict = field(
        default_factory=lambda: {"bf16": 989.4e12, "fp8": 1978.9e12, "fp32": 494.7e12}
    )
    memory_bandwidth: float = 3.35e12
    compute_efficiency: float = 1.0
    memory_efficiency: float = 1.0


def _matmul(m: int, k: int, n: int, dtype: DType = DType.BFLOAT16) -> NodeCost:
    b = dtype.bits // 8
    return NodeCost(
        2 * m * k * n,
        (m * k + k * n) * b,
        m * n * b,
        k * n * b,
        dtype,
        "matmul",
        input_bytes=(m * k * b, k * n * b),
        output_bytes=(m * n * b,),
    )


def test_large_gemm_is_compute_bound_and_timed_at_peak() -> None:
    est = node_time(_matmul(8192, 8192, 8192), Kind())
    assert est.bound == "compute"
    assert est.seconds == pytest.approx(2 * 8192**3 / 989.4e12)
    assert "compute-bound" in est.explain()


def test_decode_gemv_is_memory_bound() -> None:
    est = node_time(_matmul(1, 8192, 8192), Kind())
    assert est.bound == "memory"
    assert est.seconds == pytest.approx((8192 + 8192 * 8192 + 8192) * 2 / 3.35e12)


def test_column_split_reads_whole_activation_but_an_eighth_of_the_weight() -> None:
    m, k, n = 16, 4096, 4096
    cost = _matmul(m, k, n)
    est = node_time(cost, Kind(), ShardScale(flops=1 / 8, inputs=(1.0, 1 / 8), outputs=(1 / 8,)))
    assert est.flops == cost.flops / 8
    assert est.bytes == pytest.approx((m * k + k * n / 8 + m * n / 8) * 2)
    uniform = node_time(cost, Kind(), ShardScale.uniform(1 / 8))
    assert uniform.bytes == pytest.approx(cost.bytes_total / 8)


def test_efficiency_factors_and_dtype_peaks() -> None:
    slow = Kind(compute_efficiency=0.5)
    assert node_time(_matmul(4096, 4096, 4096), slow).seconds == pytest.approx(
        2 * 2 * 4096**3 / 989.4e12
    )
    assert node_time(_matmul(4096, 4096, 4096, DType.FLOAT8E4M3FN), Kind()).peak_flops == 1978.9e12
    assert peak_for(Kind(peak_flops={"bf16": 1.0}), DType.FLOAT8E4M3FN) == (1.0, "bf16")
    with pytest.raises(ValueError, match="no compute peak"):
        peak_for(Kind(peak_flops={}), DType.FLOAT)


def test_training_multipliers_and_optimizer() -> None:
    assert pass_multiplier("inference") == 1
    assert pass_multiplier("training") == 3
    assert pass_multiplier("training", "full") == 4
    assert pass_multiplier("training", "selective", attention_share=0.1) == pytest.approx(3.1)
    assert optimizer_time(1e9, Kind()) == pytest.approx(28e9 / 3.35e12)


def test_fp8_block_scales() -> None:
    # 128x128 blocks of a 7168 x 2048 matrix: 56 x 16 scales
    assert FP8_DEEPSEEK_V3.nbytes((7168, 2048)) == 7168 * 2048 + 56 * 16 * 4
    assert FP8_UE8M0.nbytes((7168, 2048)) == 7168 * 2048 + 56 * 16
    assert FP8_DEEPSEEK_V3.bytes_per_param() == pytest.approx(1 + 4 / 16384)
    assert WeightFormat(DType.FLOAT8E4M3FN, (1, 128), 4).nbytes((4, 256)) == 1024 + 4 * 2 * 4


def test_mixed_precision_adam_is_16_bytes_per_param_and_zero_shards_it() -> None:
    assert sum(TrainingState().per_param(2.0).values()) == 16
    z1 = TrainingState(zero_stage=1, dp=8).per_param(2.0)
    assert z1 == {"weights": 2.0, "gradients": 2.0, "optimizer": 1.5}
    z3 = TrainingState(zero_stage=3, dp=8).per_param(2.0)
    assert sum(z3.values()) == pytest.approx(2.0)


def test_llama_layer_memory_counted_by_hand() -> None:
    """Llama-3-8B-shaped layer: h 4096, 32 heads, 8 KV heads of 128, ffn 14336."""
    h, kv, ffn = 4096, 8 * 128, 14336
    params = 2 * h * h + 2 * h * kv + 3 * h * ffn + 2 * h  # q,o + k,v + gate,up,down + norms
    assert params == 218_112_000
    s, b, a = 4096, 1, 32
    act = transformer_layer_activation_bytes(s, b, h, a)
    assert act == s * b * h * (34 + 5 * a * s / h)
    mem = training_memory(
        params,
        WeightFormat(),
        TrainingState(),
        activations_per_microbatch=act,
        in_flight=4,
        workspace=2**30,
        optimizer_workspace=2**28,
    )
    assert (
        mem.components["weights"] + mem.components["gradients"] + mem.components["optimizer"]
        == 16 * params
    )
    assert mem.peak == 16 * params + 4 * act + 2**30
    assert mem.peak_phase == "forward/backward" and "GiB" in mem.explain()
    # the optimizer's workspace never adds to activations that are already freed
    lean = training_memory(
        params,
        WeightFormat(),
        TrainingState(),
        activations_per_microbatch=0,
        in_flight=0,
        workspace=0,
        optimizer_workspace=2**33,
    )
    assert lean.peak == 16 * params + 2**33 and lean.peak_phase == "optimizer step"


def test_activation_recompute_and_tensor_parallel() -> None:
    s, b, h, a = 2048, 1, 12288, 96
    full = transformer_layer_activation_bytes(s, b, h, a)
    assert transformer_layer_activation_bytes(s, b, h, a, tp=8) == pytest.approx(full / 8)
    assert transformer_layer_activation_bytes(s, b, h, a, recompute="selective") == 34 * s * b * h
    assert transformer_layer_activation_bytes(s, b, h, a, recompute="full") == 2 * s * b * h
    no_sp = transformer_layer_activation_bytes(s, b, h, a, tp=8, sequence_parallel=False)
    assert no_sp == pytest.approx(s * b * h * (10 + 24 / 8 + 5 * a * s / (h * 8)))


def test_pipeline_in_flight_and_kv_cache() -> None:
    assert [in_flight_microbatches("1f1b", i, 4, 8) for i in range(4)] == [4, 3, 2, 1]
    assert in_flight_microbatches("1f1b", 0, 4, 2) == 2
    assert in_flight_microbatches("gpipe", 3, 4, 8) == 8
    # Llama-70B: 80 layers, 8 KV heads of 128, bf16, 32 sequences of 8192
    kv = kv_cache_bytes(32, 8192, 80, 8, 128, 2)
    assert kv == 32 * 8192 * 80 * 2 * 8 * 128 * 2 == 85_899_345_920
    mem = inference_memory(140e9, kv_cache=kv, prefill_activations=5e9, decode_activations=1e8)
    assert mem.peak == 140e9 + kv + 5e9 and mem.peak_phase == "prefill"


# ---- communication ----------------------------------------------------------------------
from shardc.cost.comm import (  # noqa: E402
    NCCL_BASE_LATENCY,
    Flow,
    Tier,
    bus_factor,
    collective_time,
    concurrent_transfer_times,
    transfer_time,
)

NVLINK = Tier(8, 450e9, 3.4e-6, "nvlink")  # H100 per-GPU NVLink4, NCCL ring Simple α
IB = Tier(4, 50e9, 14e-6, "ib")  # NDR 400 Gb/s per GPU, NCCL NET Simple α


def test_ring_all_reduce_matches_the_closed_form() -> None:
    p, n, b, a = 8, 1 << 30, 100e9, 5e-6
    est = collective_time("all_reduce", n, [Tier(p, b, a, "x")], algorithm="ring")
    assert est.seconds == pytest.approx(2 * (p - 1) / p * n / b + 2 * (p - 1) * a + NCCL_BASE_LATENCY["ring"])
    assert est.busbw == pytest.approx(est.algbw * 2 * (p - 1) / p)


def test_all_gather_reduce_scatter_all_to_all_closed_forms() -> None:
    p, n, b, a = 4, 1 << 28, 50e9, 2e-6
    for op, algo in (
        ("all_gather", "ring"),
        ("reduce_scatter", "ring"),
        ("all_to_all", "pairwise"),
    ):
        est = collective_time(op, n, [Tier(p, b, a)], algorithm=algo)
        assert est.seconds == pytest.approx(
            (p - 1) / p * n / b + (p - 1) * a + NCCL_BASE_LATENCY["ring"]), op
    assert bus_factor("all_to_all", 8) == 7 / 8 and bus_factor("broadcast", 8) == 1


def test_small_messages_pick_the_tree_large_ones_the_ring() -> None:
    tiers = [Tier(8, 50e9, 10e-6)]
    assert collective_time("all_reduce", 1024, tiers).algorithm == "tree"
    assert collective_time("all_reduce", 1 << 30, tiers).algorithm == "ring"


def test_switch_allows_direct_and_hierarchy_helps_across_nodes() -> None:
    switched = Tier(8, 450e9, 3.4e-6, "nvswitch", switched=True)
    small = collective_time("all_reduce", 64 * 1024, [switched])
    assert small.algorithm == "direct" and small.latency_seconds == pytest.approx(
        2 * 3.4e-6 + NCCL_BASE_LATENCY["ring"])
    # all-to-all across 4 nodes: 24 of 32 ranks' bytes leave the node, over 50 GB/s NICs
    a2a = collective_time("all_to_all", 1 << 30, [NVLINK, IB])
    assert a2a.algorithm == "hierarchical"
    assert a2a.bandwidth_seconds == pytest.approx(24 / 32 * (1 << 30) / 50e9)


def test_ring_across_nodes_uses_every_nic() -> None:
    """A 2-node ring is paced by the node's 8 NICs together (400 GB/s), not by one."""
    est = collective_time(
        "all_reduce", 1 << 32, [NVLINK, Tier(2, 50e9, 14e-6, "ib")], algorithm="ring"
    )
    assert est.bottleneck == "ib"
    assert est.bandwidth_seconds == pytest.approx(2 * 15 / 16 * (1 << 32) / 400e9)


def test_send_recv_and_contention() -> None:
    one = transfer_time(1e9, 50e9, 2e-6)
    assert one.seconds == pytest.approx(2e-6 + 0.02)
    alone = concurrent_transfer_times([Flow(1e9, ("l",))], {"l": 50e9})
    shared = concurrent_transfer_times([Flow(1e9, ("l",)), Flow(1e9, ("l",))], {"l": 50e9})
    assert alone == [pytest.approx(0.02)] and shared == [pytest.approx(0.04)] * 2
    # a short flow finishes, then the long one gets the whole link back
    mixed = concurrent_transfer_times([Flow(0.5e9, ("l",)), Flow(1.5e9, ("l",))], {"l": 50e9})
    assert mixed == [pytest.approx(0.02), pytest.approx(0.04)]
    # flows on disjoint links do not slow each other; a shared uplink does
    fabric = {"a": 50e9, "b": 50e9, "up": 50e9}
    assert (
        concurrent_transfer_times([Flow(1e9, ("a",)), Flow(1e9, ("b",))], fabric)
        == [pytest.approx(0.02)] * 2
    )
    assert (
        concurrent_transfer_times([Flow(1e9, ("a", "up")), Flow(1e9, ("b", "up"))], fabric)
        == [pytest.approx(0.04)] * 2
    )


# ---- phases -------------------------------------------------------------------------------
from shardc.cost.phases import decode_time, prefill_time, training_time  # noqa: E402


def test_phases_compose_forward_estimates() -> None:
    layer = [_matmul(4096, 4096, 4096), _matmul(4096, 4096, 16384)]
    fwd = prefill_time(layer, Kind())
    assert training_time(layer, Kind()).seconds == pytest.approx(3 * fwd.seconds)
    assert training_time(layer, Kind(), recompute="full").seconds == pytest.approx(4 * fwd.seconds)
    step = [_matmul(1, 4096, 4096)]
    kv = 2 * 8 * 128 * 8192 * 2  # one layer: K and V, 8 heads of 128, 8192 context, bf16
    dec = decode_time(step, Kind(), kv_cache_bytes=kv)
    assert dec.seconds == pytest.approx(prefill_time(step, Kind()).seconds + kv / 3.35e12)
    assert dec.forward.bound == "memory" and "KV cache" in dec.explain()
