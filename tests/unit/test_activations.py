"""Activation memory kept for backward, from the graph, against Korthikanti et al. (2022).

A synth GPT layer must come out within 5 % of the paper's closed forms in all six
configurations (REFERENCE-style sbh units at 16-bit, dropout on, as Megatron trains GPT);
a synth Llama layer (RMSNorm, SwiGLU, GQA, no dropout) matches the derivation in
docs/cost-model.md: ``sbh(12 + 4g + 6f/h) + 2as²b``, TP dividing what Megatron splits.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from shardc.compiler import analyse
from shardc.cost.memory import transformer_layer_activation_bytes
from shardc.passes import annotate_costs, coarsen, strategies
from shardc.passes.partition import costing_for
from shardc.synth import SynthConfig, build
from shardc.topology import load_topology

ROOT = Path(__file__).resolve().parents[2]
S, B, H, A, T = 512, 2, 1024, 16, 4
KIND = "a100_80g"


def _costing(arch: str, **extra: int):
    cfg = SynthConfig(layers=3, hidden=H, heads=A, seq=S, batch=B, vocab=1024, dtype="bf16",
                      **extra)
    topo = load_topology(ROOT / "topologies" / "dgx_a100_superpod.topo", {"nodes": 1})
    state = analyse(build(arch, cfg), topology=topo, mode="training",
                    passes=[annotate_costs.PASS, coarsen.PASS, strategies.PASS]).state
    return costing_for(state)


@pytest.fixture(scope="module")
def gpt():
    return _costing("gpt")


SBH = S * B * H
AS_H = A * S / H
# (tp, sequence parallel, recompute) -> Korthikanti et al. 2022, Table 2 (bytes / sbh)
KORTHIKANTI = {
    (1, False, "none"): 34 + 5 * AS_H,
    (T, False, "none"): 10 + 24 / T + 5 * AS_H / T,
    (T, True, "none"): (34 + 5 * AS_H) / T,
    (T, False, "selective"): 10 + 24 / T,
    (T, True, "selective"): 34 / T,
    (1, False, "full"): 2,
}


@pytest.mark.parametrize("tp,sp,recompute", sorted(KORTHIKANTI))
def test_gpt_layer_matches_korthikanti(gpt, tp: int, sp: bool, recompute: str) -> None:
    block = gpt.sections[1]
    got = gpt.part(block, KIND, tp, recompute, sp).activation / SBH
    want = KORTHIKANTI[(tp, sp, recompute)]
    assert got == pytest.approx(want, rel=0.05), (got, want)
    closed = transformer_layer_activation_bytes(S, B, H, A, tp=tp, sequence_parallel=sp,
                                                recompute=recompute) / SBH
    assert closed == pytest.approx(want, rel=1e-9)  # the grid's closed form agrees


def test_llama_layer_matches_derivation() -> None:
    kv, ffn = 4, 2816
    c = _costing("llama", kv_heads=kv, ffn=ffn)
    block = c.sections[1]
    g, f = kv / A, ffn / H
    assert c.dropout is False
    whole = c.part(block, KIND, 1, "none").activation / SBH
    assert whole == pytest.approx(12 + 4 * g + 6 * f + 2 * AS_H, rel=1e-6)
    # TP splits q, k, v, the scores, gate/up/down: 8 + (4 + 4g + 6f + 2as/h)/t replicated
    # is the two norm inputs, the QKV input and the MLP input (4 · 2sbh).
    tp = c.part(block, KIND, T, "none").activation / SBH
    assert tp == pytest.approx(8 + (4 + 4 * g + 6 * f + 2 * AS_H) / T, rel=1e-6)
    sp = c.part(block, KIND, T, "selective", True).activation / SBH
    assert sp == pytest.approx((12 + 4 * g + 6 * f) / T, rel=1e-6)


def test_sequence_parallel_needs_a_sequence() -> None:
    """An MLP over [batch, hidden] has no sequence dim: sp=on is a one-line user error."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from shardc.errors import OptionError
    from shardc.partition.options import PartitionOptions, Pins
    from shardc.partition.search import search

    rng = np.random.default_rng(0)
    shapes = [(256, 1024), (1024, 256), (256, 1024), (1024, 256)]
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), f"w{i}")
             for i, s in enumerate(shapes)]
    nodes, x = [], "x"
    for i in range(4):
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Relu", [f"m{i}"], [f"r{i}"]))
        x = f"r{i}"
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 256])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [8, 256])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    topo = load_topology(ROOT / "topologies" / "dgx_a100_superpod.topo", {"nodes": 1})
    state = analyse(model, topology=topo, mode="training",
                    passes=[annotate_costs.PASS, coarsen.PASS, strategies.PASS]).state
    costing = costing_for(state)
    assert not costing.has_sequence
    with pytest.raises(OptionError, match="no sequence"):
        search(costing, PartitionOptions(global_batch=8, pins=Pins(tp=2, sp=True)))


def test_memory_reserve_parses_and_refuses_the_impossible(gpt) -> None:
    from shardc.errors import OptionError
    from shardc.partition.options import PartitionOptions, parse_reserve
    from shardc.partition.search import search

    assert parse_reserve("5%").usable(80e9) == pytest.approx(76e9)
    assert parse_reserve("0.1").usable(80e9) == pytest.approx(72e9)
    assert parse_reserve("2%+4GB").usable(100e9) == pytest.approx(94e9)
    assert parse_reserve("1GiB").usable(2**31) == 2**30
    for bad in ("1.5", "-3%", "lots", "100%"):
        with pytest.raises(OptionError):
            parse_reserve(bad)
    with pytest.raises(OptionError, match="leaves nothing"):
        search(gpt, PartitionOptions(global_batch=8, memory_reserve=parse_reserve("90GB")))
    roomy = search(gpt, PartitionOptions(global_batch=8))
    held = search(gpt, PartitionOptions(global_batch=8, memory_reserve=parse_reserve("79.5GB")))
    assert all(s.memory_bytes <= s.capacity_bytes == 0.5e9 for s in held.stages)
    assert all(s.capacity_bytes == 80e9 for s in roomy.stages)


def test_cli_impossible_reserve_is_one_line_exit_2(tmp_path) -> None:
    import subprocess
    import sys

    model = tmp_path / "g.onnx"
    run = [sys.executable, "-m", "shardc"]
    subprocess.run([*run, "synth", "gpt", "--layers", "2", "--hidden", "64", "--heads", "4",
                    "--seq", "16", "--batch", "1", "--vocab", "128", "-o", str(model)],
                   check=True, capture_output=True)
    out = subprocess.run([*run, "compile", str(model), "--topology",
                          str(ROOT / "topologies" / "dgx_a100_superpod.topo"), "--set",
                          "nodes=1", "-o", str(tmp_path / "out"), "--memory-reserve", "200GB",
                          "--no-emit", "-q"], capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "memory-reserve" in out.stderr
