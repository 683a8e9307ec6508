"""Fit the fixed cost of a decode attention op to AIConfigurator's measured kernels.

Run with AIConfigurator's venv Python: ``python tests/bench/aic_attention_fit.py``. Source:
``systems/data/<system>/attention/trtllm/<ver>/generation_attention_perf.parquet``
(AIConfigurator 0.12.0, REFERENCE.md §3.4): TRT-LLM's generation attention op (RoPE, KV
append, XQA) timed on the GPU over batch, context, heads. Model: ``latency = fixed +
KV bytes / (bandwidth · η)``, least squares on the fit half of the rows (hash of the
shape), mean |error| printed for both halves. ``fixed`` minus the kind's kernel launch is
what the kinds carry as ``tag step_overhead_per_layer`` (one attention op per layer).
"""

from __future__ import annotations

import glob
import json
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

BANDWIDTH = {"h200_sxm": 4.8e12, "h100_sxm": 3.35e12}


def fit(system: str) -> dict[str, float | str]:
    """(fixed seconds, η) on the fit half; errors on both halves."""
    import aiconfigurator_core
    root = Path(aiconfigurator_core.__file__).parent / "systems/data" / system
    (path,) = sorted(glob.glob(str(root / "attention/trtllm/*/generation_attention_perf.parquet")))[-1:]
    df = pd.read_parquet(path)
    df = df[(df.kv_cache_dtype == "bfloat16") & (df.window_size == 0)].copy()
    ctx = df.isl + df.step
    df["bytes"] = df.batch_size * ctx * df.num_key_value_heads * df.head_dim * 2 * 2
    df["seconds"] = df.latency * 1e-3
    held = np.array([zlib.crc32(repr(r).encode()) % 2 == 1 for r in zip(
        df.batch_size, df.isl, df.step, df.num_heads, df.num_key_value_heads, df.head_dim,
        strict=True)])
    a, b = df[~held], df[held]
    # weighted least squares on relative error: divide both sides by the latency
    x = np.stack([1 / a.seconds, a.bytes / a.seconds], axis=1)
    fixed, inv_bw = np.linalg.lstsq(x, np.ones(len(a)), rcond=None)[0]
    eta = 1.0 / (inv_bw * BANDWIDTH[system])

    def err(d: pd.DataFrame) -> float:
        return float(np.mean(np.abs((fixed + d.bytes * inv_bw) / d.seconds - 1)))
    return {"system": system, "fixed_us": fixed * 1e6, "memory_efficiency": eta,
            "rows_fit": len(a), "rows_held": len(b), "fit_mean_abs_err": err(a),
            "held_mean_abs_err": err(b)}


if __name__ == "__main__":
    for s in BANDWIDTH:
        print(json.dumps(fit(s)))
