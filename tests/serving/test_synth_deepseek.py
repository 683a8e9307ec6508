"""``shardc synth deepseek``: a DeepSeek-V3-shaped graph (MLA, dense leading layers, shared +
routed experts) that runs in onnxruntime and matches a numpy reference written from
Hugging Face's DeepseekV3Attention; its closed forms give V3's 671 B parameters.
"""

from __future__ import annotations

import json
import math

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from shardc.cli.main import cli
from shardc.errors import OptionError
from shardc.serving import from_synth_config
from shardc.synth import SynthConfig, build, graph_parameters, parameter_count, resolve

TINY = SynthConfig(layers=3, hidden=48, heads=4, ffn=24, experts=6, top_k=2, dense_layers=1,
                   dense_ffn=80, q_lora_rank=24, kv_lora_rank=16, qk_nope_head_dim=8,
                   qk_rope_head_dim=8, v_head_dim=12, vocab=61, capacity_factor=3.0,
                   dtype="fp32")
IDS = np.random.default_rng(3).integers(0, 61, (2, 7))


def _rms(x: np.ndarray, w: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    return x / np.sqrt((x**2).mean(-1, keepdims=True) + eps) * w


def _rope(x: np.ndarray) -> np.ndarray:
    s, d = x.shape[1], x.shape[-1]
    inv = 1.0 / 10000.0 ** (np.arange(0, d, 2) / d)
    emb = np.concatenate([np.outer(np.arange(s), inv)] * 2, -1)[None, :, None, :]
    rot = np.concatenate([-x[..., d // 2:], x[..., : d // 2]], -1)
    return x * np.cos(emb) + rot * np.sin(emb)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1 + np.exp(-x))


def _mla(x: np.ndarray, w: dict, p: str, c: dict) -> np.ndarray:
    b, s, _ = x.shape
    n, nope, rp, vd = c["heads"], c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["v_head_dim"]
    q = _rms(x @ w[f"{p}.q_a_proj.weight"], w[f"{p}.q_a_norm.weight"]) @ w[f"{p}.q_b_proj.weight"]
    q = q.reshape(b, s, n, nope + rp)
    ckv = x @ w[f"{p}.kv_a_proj_with_mqa.weight"]
    latent, k_pe = ckv[..., : c["kv_lora_rank"]], ckv[..., c["kv_lora_rank"]:]
    kv = (_rms(latent, w[f"{p}.kv_a_norm.weight"]) @ w[f"{p}.kv_b_proj.weight"])
    kv = kv.reshape(b, s, n, nope + vd)
    k_pe = np.broadcast_to(_rope(k_pe.reshape(b, s, 1, rp)), (b, s, n, rp))
    qf = np.concatenate([q[..., :nope], _rope(q[..., nope:])], -1)
    kf = np.concatenate([kv[..., :nope], k_pe], -1)
    scores = np.einsum("bqhd,bkhd->bhqk", qf, kf) / math.sqrt(nope + rp)
    scores = np.where(np.tril(np.ones((s, s), bool)), scores, -np.inf)
    ctx = np.einsum("bhqk,bkhd->bqhd", _softmax(scores), kv[..., nope:]).reshape(b, s, n * vd)
    return ctx @ w[f"{p}.o_proj.weight"]


def _swiglu(x: np.ndarray, w: dict, p: str) -> np.ndarray:
    g, u, d = (w[f"{p}.{k}_proj.weight"] for k in ("gate", "up", "down"))
    return (_silu(x @ g) * (x @ u)) @ d


def _moe(x: np.ndarray, w: dict, p: str, c: dict) -> np.ndarray:
    t = x.reshape(-1, x.shape[-1])
    probs = _softmax(t @ w[f"{p}.router.weight"])
    choice = np.argsort(-probs, -1, kind="stable")[:, : c["top_k"]]
    gates = np.take_along_axis(probs, choice, -1)
    gates /= gates.sum(-1, keepdims=True)
    out = np.zeros_like(t)
    ex = {k: w[f"{p}.experts.{k}_proj.weight"] for k in ("gate", "up", "down")}
    for i in range(t.shape[0]):
        for j, e in enumerate(choice[i]):
            out[i] += gates[i, j] * (_silu(t[i] @ ex["gate"][e]) * (t[i] @ ex["up"][e])) @ ex[
                "down"][e]
    return out.reshape(x.shape) + _swiglu(x, w, f"{p}.shared")


def reference(w: dict, c: dict, ids: np.ndarray) -> np.ndarray:
    h = w["embed_tokens.weight"][ids]
    for i in range(c["layers"]):
        p = f"layers.{i}"
        h = h + _mla(_rms(h, w[f"{p}.attn_norm.weight"]), w, f"{p}.attn", c)
        m = _rms(h, w[f"{p}.mlp_norm.weight"])
        h = h + (_swiglu(m, w, f"{p}.mlp") if i < c["dense_layers"] else _moe(m, w, f"{p}.moe", c))
    return _rms(h, w["norm.weight"]) @ w["lm_head.weight"]


def test_tiny_deepseek_matches_numpy_reference() -> None:
    model = build("deepseek", TINY, with_weights=True, seed=2)
    w = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (logits,) = sess.run(["logits"], {"input_ids": IDS})
    want = reference(w, resolve("deepseek", TINY).as_dict(), IDS)
    np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-4)
    assert graph_parameters(model)[0] == parameter_count("deepseek", TINY)


def test_v3_shape_has_671b_parameters_and_a_576_value_latent_cache() -> None:
    cfg = SynthConfig(layers=61, hidden=7168, heads=128)
    assert round(parameter_count("deepseek", cfg) / 1e9) == 671  # DeepSeek-V3 report: 671B
    res = resolve("deepseek", cfg)
    m = from_synth_config("deepseek", res.as_dict())
    assert m.kv_values_per_token_layer == 576 and m.moe_layers == 58 and m.route_nodes == 4
    assert round(m.total_params / 1e9) == 671 and round(m.active_params / 1e9) == 37


def test_deepseek_options_are_checked() -> None:
    with pytest.raises(OptionError, match="--dense-layers 5 exceeds --layers 2"):
        resolve("deepseek", SynthConfig(layers=2, hidden=64, heads=4, dense_layers=5))
    with pytest.raises(OptionError, match="applies to deepseek only"):
        resolve("llama", SynthConfig(layers=2, hidden=64, heads=4, kv_lora_rank=8))


def test_cli_writes_a_declared_v3_graph(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "v3.onnx"
    run = CliRunner().invoke(cli, ["synth", "deepseek", "--layers", "4", "--hidden", "7168",
                                   "--heads", "128", "-o", str(out), "--json"])
    assert run.exit_code == 0, run.output
    report = json.loads(run.stdout)
    assert report["weights_written"] is False and report["config"]["kv_lora_rank"] == 512
    assert report["parameters"] == report["parameters_closed_form"]
