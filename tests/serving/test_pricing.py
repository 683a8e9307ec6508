"""Decode and prefill steps against hand-computed rooflines; the EP all-to-all closed form."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest

from shardc.cost.comm import Tier
from shardc.cost.expert_comm import distinct_targets, expert_alltoall
from shardc.serving import MLA, ServingModel
from shardc.serving.shapes import Parallel, Quant, StepContext, StepShape
from shardc.serving.step import M_TILE, accepted_tokens, step_time


@dataclass(frozen=True)
class Kind:
    """A device kind with round numbers: 1 PFLOP/s bf16, 2 PFLOP/s fp8, 1 TB/s, no launch
    (hashed by name, as kernel lines are cached per kind).
    """

    name: str = "round"
    peak_flops: dict = field(default_factory=lambda: {"bf16": 1e15, "fp8": 2e15})
    memory_bandwidth: float = 1e12
    compute_efficiency: float = 1.0
    memory_efficiency: float = 1.0

    def __hash__(self) -> int:
        return hash(self.name)


DENSE = ServingModel("dense", layers=2, hidden=1024, heads=8, kv_heads=8, head_dim=128,
                     ffn=4096, vocab=1000)


def test_decode_of_one_sequence_reads_every_weight_and_the_kv_once() -> None:
    est = step_time(DENSE, Kind(), Parallel(), Quant(),
                    StepShape(decode_seqs=1, decode_context=1000), StepContext())
    # by hand, bytes at 1 TB/s (2-byte weights and KV; activations ~0.1 %):
    attn = 4 * 1024 * 1024 * 2 / 1e12  # q, k, v, o projections
    kv = 1000 * 2 * 8 * 128 * 2 / 1e12  # 1000 positions of K and V, 8 heads x 128
    ffn = 3 * 1024 * 4096 * 2 / 1e12
    head = 1000 * 1024 * 2 / 1e12
    assert est.seconds == pytest.approx(2 * (attn + kv + ffn) + head, rel=5e-3)
    assert est.bound == "dense_ffn"


def test_fp8_weights_halve_the_weight_reads_and_batching_amortises_them() -> None:
    shape = StepShape(decode_seqs=1, decode_context=1)
    bf16 = step_time(DENSE, Kind(), Parallel(), Quant(), shape, StepContext())
    fp8 = step_time(DENSE, Kind(), Parallel(), Quant(weights="fp8"), shape, StepContext())
    assert fp8.parts["dense_ffn"] == pytest.approx(bf16.parts["dense_ffn"] / 2, rel=2e-2)
    batch = step_time(DENSE, Kind(), Parallel(), Quant(), StepShape(decode_seqs=32,
                      decode_context=1), StepContext())
    # the weights are read once either way; 32 rows only add their activations' bytes
    assert bf16.parts["dense_ffn"] < batch.parts["dense_ffn"] < 1.08 * bf16.parts["dense_ffn"]


def test_small_gemms_pay_for_a_whole_tile() -> None:
    """3 rows cost the FLOPs of M_TILE rows: compute-bound only past the tile."""
    kind = Kind(peak_flops={"bf16": 1e12}, memory_bandwidth=1e15)  # force compute-bound
    one = step_time(DENSE, kind, Parallel(), Quant(), StepShape(decode_seqs=3), StepContext())
    full = step_time(DENSE, kind, Parallel(), Quant(), StepShape(decode_seqs=M_TILE),
                     StepContext())
    assert one.parts["dense_ffn"] == pytest.approx(full.parts["dense_ffn"], rel=1e-3)
    assert one.parts["dense_ffn"] == pytest.approx(2 * 2 * M_TILE * 3 * 1024 * 4096 / 1e12,
                                                   rel=1e-3)


def test_prefill_is_compute_bound_at_two_flops_per_weight_per_token() -> None:
    tokens = 8192
    kind = Kind(memory_bandwidth=1e14)  # the activations' bytes no longer matter
    est = step_time(DENSE, kind, Parallel(), Quant(),
                    StepShape(prefill_tokens=tokens, prefill_context=tokens / 2), StepContext())
    per_layer = 2 * tokens * 3 * 1024 * 4096 / 1e15
    swiglu = tokens * 2 * 4096 * 1.5 * 2 / 1e14  # the gate kernel: read 2f, write f, bf16
    assert est.parts["dense_ffn"] == pytest.approx(2 * (per_layer + swiglu), rel=1e-3)
    core = 2 * tokens * (tokens / 2) * 4 * 8 * 128 / 1e15  # 2 layers of QK and PV
    assert est.parts["attention_core_kv"] == pytest.approx(core, rel=1e-3)


def test_tensor_parallel_splits_gqa_cache_but_not_the_mla_latent() -> None:
    mla = ServingModel("mla", layers=1, hidden=1024, heads=16, kv_heads=16, head_dim=64,
                       ffn=2048, vocab=10, mla=MLA(256, 128, 32, 16, 32))
    assert mla.kv_values_per_token_layer == 144 and mla.kv_split(8) == 1
    assert DENSE.kv_split(4) == 4 and DENSE.kv_split(16) == 8
    assert mla.attention_flops_per_position(absorbed=True) == 2 * 16 * (2 * 128 + 16)


def test_mtp_expected_accepted_tokens() -> None:
    assert accepted_tokens(0, 0.9) == 1.0
    assert accepted_tokens(1, 0.8) == pytest.approx(1.8)
    assert accepted_tokens(2, 0.5) == pytest.approx(1.75)


def test_alltoall_one_tier_closed_form() -> None:
    tiers = [[Tier(8, 100e9, 1e-6, "nvlink")]]
    est = expert_alltoall(tiers, tokens_per_rank=128, hidden=7168, top_k=8, dispatch_bytes=1,
                          combine_bytes=2)
    sent = 128 * 8 * (1 - (7 / 8) ** 8) * 7168 * 7 / 8
    assert est.dispatch_seconds == pytest.approx(2e-6 + sent / 100e9)
    assert est.combine_seconds == pytest.approx(2e-6 + 2 * sent / 100e9)


def test_node_limited_routing_caps_the_scale_out_bytes() -> None:
    tiers = [[Tier(8, 160e9, 1e-6, "nvlink"), Tier(18, 50e9, 2e-6, "ib")]]
    free = expert_alltoall(tiers, tokens_per_rank=64, hidden=7168, top_k=8, dispatch_bytes=1,
                           combine_bytes=2)
    limited = expert_alltoall(tiers, tokens_per_rank=64, hidden=7168, top_k=8,
                              dispatch_bytes=1, combine_bytes=2, route_nodes=4)
    assert free.outer_bytes == pytest.approx(64 * distinct_targets(18, 8) * 7168 * 17 / 18)
    assert limited.outer_bytes == pytest.approx(64 * 4 * 7168 * 17 / 18)
    assert limited.seconds < free.seconds
    assert math.isclose(distinct_targets(1, 8), 1.0)


def test_a_fixed_time_per_layer_adds_once_per_layer() -> None:
    shape = StepShape(decode_seqs=8, decode_context=100)
    base = step_time(DENSE, Kind(), Parallel(), Quant(), shape, StepContext())
    slow = step_time(DENSE, Kind(), Parallel(), Quant(), shape,
                     StepContext(layer_overhead=20e-6))
    assert slow.seconds == pytest.approx(base.seconds + DENSE.layers * 20e-6)
