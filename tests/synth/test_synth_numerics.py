"""Small synthesized models with weights run in onnxruntime and match a numpy reference."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnxruntime as ort
import pytest
from onnx.reference import ReferenceEvaluator
from synth_reference import forward, weights_of

from shardc.synth import SynthConfig, build, capacity, resolve

BATCH, SEQ, VOCAB = 2, 12, 97
IDS = np.random.default_rng(7).integers(0, VOCAB, (BATCH, SEQ))

CONFIGS = {
    "gpt": SynthConfig(layers=2, hidden=48, heads=4, vocab=VOCAB, dtype="fp32"),
    "llama": SynthConfig(layers=2, hidden=64, heads=8, kv_heads=2, ffn=96, vocab=VOCAB,
                         dtype="fp32"),
    "moe": SynthConfig(layers=2, hidden=32, heads=4, kv_heads=2, ffn=40, experts=6, top_k=2,
                       shared_experts=1, vocab=VOCAB, dtype="fp32", batch=BATCH, seq=SEQ),
}


def _run(arch: str, cfg: SynthConfig, seed: int = 0) -> tuple[np.ndarray, dict]:
    model = build(arch, cfg, with_weights=True, seed=seed)
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"input_ids": IDS})
    return logits, weights_of(model)


@pytest.mark.parametrize(("arch", "tied"), [("gpt", None), ("gpt", False), ("llama", None),
                                            ("llama", True)])
def test_dense_models_match_reference(arch: str, tied: bool | None) -> None:
    cfg = replace(CONFIGS[arch], tie_embeddings=tied)
    logits, w = _run(arch, cfg)
    assert ("lm_head.weight" in w) == (not resolve(arch, cfg).tie_embeddings)
    want, _ = forward(arch, w, resolve(arch, cfg).as_dict(), IDS)
    assert logits.shape == (BATCH, SEQ, VOCAB) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-4)


def test_moe_matches_top_k_reference_with_capacity_drops() -> None:
    cfg = CONFIGS["moe"]
    res = resolve("moe", cfg)
    cap = capacity(res, BATCH * SEQ)
    assert cap == 8  # ceil(1.0 * 2 * 24 / 6)
    logits, w = _run("moe", cfg)
    want, dropped = forward("moe", w, res.as_dict(), IDS, capacity=cap)
    assert dropped > 0  # the drop path is exercised
    np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-4)


def test_dropless_moe_is_exact_top_k_routing() -> None:
    cfg = replace(CONFIGS["moe"], capacity_factor=3.0)  # = E/k: capacity = all tokens
    res = resolve("moe", cfg)
    assert capacity(res, BATCH * SEQ) == BATCH * SEQ
    logits, w = _run("moe", cfg)
    want, dropped = forward("moe", w, res.as_dict(), IDS, capacity=None)
    assert dropped == 0
    np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-4)


def test_symbolic_moe_computes_the_same_capacity_in_graph() -> None:
    static, _ = _run("moe", CONFIGS["moe"])
    symbolic, _ = _run("moe", replace(CONFIGS["moe"], batch=None, seq=None))
    np.testing.assert_array_equal(static, symbolic)


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_fp16_runs_in_onnxruntime(arch: str) -> None:
    logits32, _ = _run(arch, CONFIGS[arch])
    logits16, _ = _run(arch, replace(CONFIGS[arch], dtype="fp16"))
    assert logits16.dtype == np.float16
    np.testing.assert_allclose(logits16.astype(np.float32), logits32, atol=5e-2)


def test_seed_changes_weights_deterministically() -> None:
    a, _ = _run("llama", CONFIGS["llama"], seed=3)
    b, _ = _run("llama", CONFIGS["llama"], seed=3)
    c, _ = _run("llama", CONFIGS["llama"], seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


@pytest.mark.parametrize("arch", sorted(CONFIGS))
@pytest.mark.parametrize("dtype", ["bf16", "fp8"])
def test_bf16_and_fp8_evaluate_close_to_fp32(arch: str, dtype: str) -> None:
    """Low-precision models evaluate close to fp32 (in ONNX's reference evaluator).

    onnxruntime's CPU kernels lack bf16 (Add, Pow, ...). Hidden 256 gives each fp8 weight
    two 128-row scale blocks; a bf16 router may flip a near-tie, hence "almost all".
    """
    cfg = replace(CONFIGS[arch], hidden=256, ffn=256, layers=1)
    want, _ = _run(arch, cfg)
    model = build(arch, replace(cfg, dtype=dtype), with_weights=True)
    (got,) = ReferenceEvaluator(model).run(["logits"], {"input_ids": IDS})
    got = np.asarray(got).astype(np.float32)
    assert got.shape == want.shape
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.99
    assert np.mean(np.abs(got - want) < 0.1) > 0.99
