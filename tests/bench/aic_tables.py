"""Dump rows of AIConfigurator's measured kernel tables as JSON (run with its venv's Python).

``python tests/bench/aic_tables.py h200_sxm`` prints one JSON object of plain rows that
tests/bench/aic_serving_fit.py fits shardc's serving kernel lines to. Source: the TRT-LLM
tables of ``aiconfigurator_core/systems/data/<system>/`` (AIConfigurator 0.12.0,
REFERENCE.md §3.4), latencies measured on the real GPU:

* ``gemm/trtllm/<ver>/gemm_perf.parquet``, ``fp8_block`` rows: DeepSeek's 128×128
  block-scaled fp8 GEMMs (the dense projections of an fp8 DeepSeek-V3);
* ``moe/trtllm/<ver>/moe_perf.parquet``: the whole MoE op (routing, permute, grouped
  gate+up and down GEMMs, finalize) over ``num_tokens`` tokens of the EP group, on one
  rank holding ``num_experts / moe_ep_size`` experts; ``balanced`` routing only, so the
  rows say what the kernels cost and not a routing-skew assumption; moe_tp_size 1;
* ``mla/trtllm/<ver>/context_mla_perf.parquet``: TRT-LLM's context MLA (full MHA over
  the local heads, qk 192 / v 128), bf16 KV;
* ``attention/trtllm/<ver>/context_attention_perf.parquet``: context (flash) attention
  of GQA/MHA heads, bf16, no sliding window: only a check of the MLA-fitted line.

shardc is not imported: AIConfigurator is a peer, not a dependency.
"""

from __future__ import annotations

import glob
import json
import sys
from pathlib import Path

import pandas as pd


def _latest(system: str, pattern: str) -> pd.DataFrame:
    import aiconfigurator_core
    root = Path(aiconfigurator_core.__file__).parent / "systems/data" / system
    (path,) = sorted(glob.glob(str(root / pattern)))[-1:]
    return pd.read_parquet(path)


def tables(system: str) -> dict[str, list[dict[str, object]]]:
    """The three tables' rows, as lists of plain dicts."""
    gemm = _latest(system, "gemm/trtllm/*/gemm_perf.parquet")
    gemm = gemm[gemm.gemm_dtype == "fp8_block"][["m", "n", "k", "latency"]]
    moe = _latest(system, "moe/trtllm/1.3.0rc20/moe_perf.parquet")
    moe = moe[(moe.distribution == "balanced") & (moe.moe_tp_size == 1)
              & moe.moe_dtype.isin(["fp8_block", "bfloat16"])
              & (moe.kernel_source != "moe_torch_flow_nongated")]
    moe = moe[["moe_dtype", "num_tokens", "hidden_size", "inter_size", "topk", "num_experts",
               "moe_ep_size", "latency"]]
    mla = _latest(system, "mla/trtllm/*/context_mla_perf.parquet")
    mla = mla[mla.kv_cache_dtype == "bfloat16"][["num_heads", "batch_size", "isl", "latency"]]
    gqa = _latest(system, "attention/trtllm/*/context_attention_perf.parquet")
    gqa = gqa[(gqa.attn_dtype == "bfloat16") & (gqa.kv_cache_dtype == "bfloat16")
              & (gqa.window_size == 0)]
    gqa = gqa[["batch_size", "isl", "num_heads", "num_key_value_heads", "head_dim", "latency"]]
    return {name: df.to_dict("records") for name, df in
            (("gemm_fp8_block", gemm), ("moe", moe), ("context_mla", mla),
             ("context_gqa", gqa))}


if __name__ == "__main__":
    print(json.dumps(tables(sys.argv[1])))
