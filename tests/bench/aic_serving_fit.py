"""Fit a kind's serving kernel lines (`shardc.serving.kernels`) to AIConfigurator's kernels.

Run: ``python tests/bench/aic_serving_fit.py [h200_sxm h100_sxm]`` (shardc's venv; it
reads the tables through AIConfigurator's venv, see bench_serving_aic.aic_python and
tests/bench/aic_tables.py for the rows and their source). For each table it prices every
row with shardc's own serving functions (`shardc.serving.step`), on the kind's fitted
GEMM lines, and searches the line (factors on the compute and memory lines, extra µs per kernel) that
minimises the mean |log(predicted / measured)| on the FIT half of the shapes (a hash of the
shape); it prints the mean and median |error| on both halves. Nothing end-to-end is fitted:
bench_serving_aic.py's TTFT/TPOT rows stay held out.

* ``gemm_*_fp8``: 128×128 block-scaled fp8 GEMMs, priced by ``step._gemm``;
* ``moe_*_<dtype>``: the MoE op over balanced routing,
  priced by ``step.routed_experts`` (imbalance 1);
* ``context_attention_efficiency``: TRT-LLM's context MLA, priced as step_time prices a
  prompt's attention (``step.context_attention`` over ``isl/2`` causal positions plus the
  kind's ``step_overhead_per_layer``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import subprocess
import sys
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from shardc.serving.kernels import KernelLines, Line
from shardc.serving.shapes import Quant
from shardc.serving.step import _gemm, context_attention, routed_experts
from shardc.topology import load_topology
from shardc.topology.loader import find_topology

ROOT = Path(__file__).resolve().parents[2]
TOPOLOGY = {"h200_sxm": "topologies/dgx_h200_cluster.topo",
            "h100_sxm": "topologies/dgx_h100_superpod.topo"}
FACTORS = [round(0.10 + 0.01 * i, 2) for i in range(91)]
OVERHEADS_US = [float(u) for u in range(0, 81)]
SUBSAMPLE = 3
"""Every third GEMM row (of ~29k) is used, both halves, to keep the search to minutes."""
QUANT = {"fp8_block": Quant(weights="fp8"), "bfloat16": Quant()}
MLA_FLOPS_PER_HEAD = 2 * (128 + 64 + 128)
"""DeepSeek-V3 context MLA per head, query token and position: qk 192 (128 + 64 rope),
v 128 (`ServingModel.attention_flops_per_position(absorbed=False)` / heads)."""


MIN_PROMPT = 512
"""Context-attention rows with shorter prompts are left out: their time is per-sequence
tile padding and launch, which the model (one prompt chunk of ≥ 512 tokens per forward,
`candidates.PREFILL_CHUNKS`) does not carry."""


def rows(system: str) -> dict[str, list[dict[str, Any]]]:
    """The measured rows, through AIConfigurator's venv."""
    if str(ROOT) not in sys.path:  # run as a script: tests/ is not importable otherwise
        sys.path.insert(0, str(ROOT))
    from tests.bench.bench_serving_aic import aic_python
    run = subprocess.run([aic_python(), str(ROOT / "tests/bench/aic_tables.py"), system],
                         capture_output=True, text=True, check=True)
    return dict(json.loads(run.stdout.strip().splitlines()[-1]))


def bare_kind(system: str) -> Any:
    """The stock kind with its serving kernel tags removed (fits start from the GEMM line)."""
    topo = load_topology(find_topology(ROOT / TOPOLOGY[system], ()), {})
    kind = next(d.kind for d in topo.devices if d.kind.name == system)
    keep = {k: v for k, v in kind.tags.items()
            if not k.startswith(("gemm_efficiency_", "moe_", "context_attention"))}
    return dataclasses.replace(kind, tags=keep)


def held(key: str) -> bool:
    """Half the shapes are held out, by a hash of the shape."""
    return zlib.crc32(key.encode()) % 2 == 1


def _errors(pred: Sequence[float], meas: Sequence[float]) -> dict[str, float]:
    e = [abs(p / m - 1.0) for p, m in zip(pred, meas, strict=True)]
    return {"mean_abs_err": statistics.fmean(e), "median_abs_err": statistics.median(e),
            "rows": len(e)}


def _loss(pred: Sequence[float], meas: Sequence[float]) -> float:
    return statistics.fmean(abs(math.log(p / m)) for p, m in zip(pred, meas, strict=True))


def fit_line(data: list[dict[str, Any]], key: Callable[[dict[str, Any]], str],
             price: Callable[[dict[str, Any], Line], float], *, memory: bool = True,
             overhead: bool = True) -> dict[str, Any]:
    """Best line on the fit half (coordinate descent: compute factor, memory factor, extra
    µs, three rounds); errors on both halves.
    """
    fit = [r for r in data if not held(key(r))]
    out = [r for r in data if held(key(r))]
    meas = [r["latency"] * 1e-3 for r in fit]
    line = Line()

    def loss(q: Line) -> float:
        return _loss([price(r, q) for r in fit], meas)

    for _ in range(3):
        line = min((dataclasses.replace(line, compute=f) for f in FACTORS), key=loss)
        if memory:
            line = min((dataclasses.replace(line, memory=f) for f in FACTORS if f >= 0.4),
                       key=loss)
        if overhead:  # additive: price once, then try every extra
            base = [price(r, dataclasses.replace(line, extra=0.0)) for r in fit]
            us = min(OVERHEADS_US, key=lambda u: _loss([b + u * 1e-6 for b in base], meas))
            line = dataclasses.replace(line, extra=us * 1e-6)
    return {"compute": line.compute, "memory": line.memory, "extra_us": line.extra * 1e6,
            "fit": _errors([price(r, line) for r in fit], meas),
            "held_out": _errors([price(r, line) for r in out],
                                [r["latency"] * 1e-3 for r in out])}


def fit(system: str) -> dict[str, Any]:
    """All lines of one system."""
    kind = bare_kind(system)
    tables = rows(system)
    fp8 = QUANT["fp8_block"]
    gemm = tables["gemm_fp8_block"]
    out: dict[str, Any] = {"system": system}
    out["gemm_fp8"] = fit_line(
        gemm[::SUBSAMPLE], lambda r: f"{r['m']},{r['n']},{r['k']}",
        lambda r, q: _gemm(r["m"], r["k"], r["n"], fp8, kind, line=q))
    for dtype, quant in QUANT.items():
        moe = [r for r in tables["moe"] if r["moe_dtype"] == dtype
               and r["moe_ep_size"] <= r["num_experts"]]
        out[f"moe_{dtype}"] = fit_line(
            moe, lambda r: ",".join(str(r[k]) for k in (
                "num_tokens", "hidden_size", "inter_size", "topk", "num_experts", "moe_ep_size")),
            lambda r, line, q=quant: routed_experts(
                r["num_tokens"], r["hidden_size"], r["inter_size"], r["num_experts"], r["topk"],
                r["moe_ep_size"], q, kind, KernelLines(lines=(("moe", q.weights, line),))))
    overhead = float(kind.tags.get("step_overhead_per_layer", "0us").removesuffix("us")) * 1e-6
    out["context_attention"] = fit_line(
        [r for r in tables["context_mla"] if r["isl"] >= MIN_PROMPT],
        lambda r: f"{r['num_heads']},{r['batch_size']},{r['isl']}",
        lambda r, line: context_attention(
            r["batch_size"] * r["isl"] * (r["isl"] / 2) * MLA_FLOPS_PER_HEAD * r["num_heads"],
            Quant(), kind, KernelLines(context_attention=line.compute)) + overhead,
        memory=False, overhead=False)
    out["context_attention"]["gqa_check"] = gqa_check(
        tables["context_gqa"], kind, out["context_attention"]["compute"], overhead)
    return out


def gqa_check(data: list[dict[str, Any]], kind: Any, factor: float,
              overhead: float) -> dict[str, float]:
    """The MLA-fitted context-attention line on GQA/MHA context attention (never fitted):
    step_time prices a Llama prompt's attention on the same line, 4·heads·head_dim FLOPs
    per query token and position.
    """
    rows = [r for r in data if r["isl"] >= MIN_PROMPT]
    pred = [context_attention(r["batch_size"] * r["isl"] * (r["isl"] / 2) * 4 * r["num_heads"]
                              * r["head_dim"], Quant(), kind,
                              KernelLines(context_attention=factor)) + overhead for r in rows]
    plain = [context_attention(r["batch_size"] * r["isl"] * (r["isl"] / 2) * 4 * r["num_heads"]
                               * r["head_dim"], Quant(), kind, KernelLines()) + overhead
             for r in rows]
    meas = [r["latency"] * 1e-3 for r in rows]
    return {**_errors(pred, meas), "plain_line_mean_abs_err": _errors(plain, meas)["mean_abs_err"]}


if __name__ == "__main__":
    for s in sys.argv[1:] or list(TOPOLOGY):
        print(json.dumps(fit(s)))
