"""Per-kernel-family lines (`shardc.serving.kernels`): tags parse, scale the right kernels
only, and a MoE op pays for the experts its tokens pick, not for every expert it holds.
"""

from __future__ import annotations

import math

import pytest
from test_pricing import Kind

from shardc.errors import OptionError
from shardc.serving.kernels import KernelLines, Line, kernel_lines, scaled
from shardc.serving.shapes import Quant
from shardc.serving.step import M_TILE, context_attention, routed_experts


def test_tags_become_lines_per_family_and_dtype() -> None:
    lines = kernel_lines("k", {"gemm_efficiency_fp8": "0.5", "gemm_overhead_fp8": "3us",
                               "moe_efficiency_fp8": "0.3", "moe_memory_efficiency_fp8": "0.9",
                               "context_attention_efficiency": "0.6", "role": "decode"})
    assert lines.line("gemm", "fp8") == Line(0.5, 1.0, 3e-6)
    assert lines.line("moe", "fp8") == Line(0.3, 0.9, 0.0)
    assert lines.line("moe", "bf16") == Line()  # untagged dtype: the plain lines
    assert lines.context_attention == 0.6


@pytest.mark.parametrize("value", ["1.5", "0", "fast"])
def test_a_bad_factor_names_the_kind_and_tag(value: str) -> None:
    with pytest.raises(OptionError, match="kind k: tag moe_efficiency_fp8"):
        kernel_lines("k", {"moe_efficiency_fp8": value})


def test_scaling_keeps_the_kind_when_the_factor_is_one() -> None:
    kind = Kind()
    assert scaled(kind, 1.0) is kind
    half = scaled(kind, 0.5, 0.8)
    assert half.compute_efficiency == 0.5 and half.memory_efficiency == 0.8


def test_context_attention_runs_on_its_own_line() -> None:
    flops = 1e12  # 1 ms at the bf16 peak
    plain = context_attention(flops, Quant(), Kind(), KernelLines())
    slow = context_attention(flops, Quant(), Kind(), KernelLines(context_attention=0.5))
    assert plain == pytest.approx(1e-3) and slow == pytest.approx(2e-3)


def test_few_tokens_cost_only_the_experts_they_pick() -> None:
    """One token with top-8 of 256 experts, 16 per rank: it reaches at most 8 experts, so
    the grouped GEMMs read ~0.5 experts' weights here and compute one tile for each, not
    a tile for all 16 experts the rank holds.
    """
    h, f, experts, k, ep = 1024, 512, 256, 8, 16
    t = routed_experts(1, h, f, experts, k, ep, Quant(), Kind(), KernelLines())
    p_active = 1 - (1 - k / experts)
    active = experts / ep * p_active
    weights = active * 3 * h * f * 2  # bytes: gate+up and down, bf16
    flops = active * 2 * M_TILE * 3 * h * f
    assert t >= weights / 1e12
    assert t < (weights + 3 * h * 2 * 16) / 1e12 + flops / 1e15 + 1e-6
    # the padded compute of every slot would have cost more than the whole answer
    assert experts / ep * 2 * M_TILE * 3 * h * f / 1e15 > flops / 1e15


def test_moe_line_scales_compute_and_adds_its_overhead_once() -> None:
    """Many tokens: compute-bound, so halving the MoE compute line doubles the GEMMs."""
    args = (32768, 4096, 4096, 8, 1, 1, Quant())  # 8 experts of 4096 rows each, one rank
    plain = routed_experts(*args, Kind(), KernelLines())
    half = KernelLines(lines=(("moe", "bf16", Line(0.5, 1.0, 1e-5)),))
    slow = routed_experts(*args, Kind(), half)
    gemm_flops = 2 * 32768 * 3 * 4096 * 4096
    assert slow - plain == pytest.approx(gemm_flops / 1e15 + 1e-5, rel=0.01)
    assert math.isfinite(slow)


def test_aggregated_prompts_queue_for_the_prefill_slot() -> None:
    """Half the steps carry a chunk (q = 4 steps x 10 prompts/80 tokens); the slot is busy
    2/3 of the time, so M/D/1 waits one whole service (8 s) before the 8 s prompt.
    """
    from shardc.serving.candidates import _prompt_queue
    mean, ttft = _prompt_queue(4, 10, 80, mixed=2.0, decode=1.0) or (0.0, 0.0)
    assert mean == pytest.approx(1.5)
    assert ttft == pytest.approx(8.0 + 8.0 + 0.75)
    assert _prompt_queue(8, 10, 80, mixed=2.0, decode=1.0) is None  # cannot keep up
