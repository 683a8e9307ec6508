"""shardc's serving prices side by side with NVIDIA AIConfigurator (a peer, never a dependency).

Run: ``pytest -m bench tests/bench/bench_serving_aic.py -s`` (or as a script). It installs
``aiconfigurator==0.12.0`` into a venv in a temporary folder (about two minutes; set
``AICONFIGURATOR=/path/to/aiconfigurator`` to reuse one). AIConfigurator runs offline from
kernel timings measured on real H100/H200 systems (REFERENCE.md §3.4).

(a) Same configurations: a Llama-3.1-70B-shaped model, TRT-LLM, on h200_sxm and h100_sxm,
    three workloads, two shapes; AIConfigurator's ``static_ctx`` (one forward over the
    prompts: TTFT) and ``static_gen`` (one decode step at the batch: TPOT) next to the
    same shapes priced by shardc's step model. Ratios shardc / AIConfigurator.
(b) Searches: AIConfigurator's ``cli default`` on 16 H200 at TTFT 1 s / TPOT 50 ms, and
    shardc's own search on two DGX H200 nodes at the same SLO, shardc's pick evaluated by
    AIConfigurator (``estimate``), as a ratio to AIConfigurator's own best tokens/s/GPU;
    (c) wall time of each search.

Nothing here is fitted: the H100/H200 kinds carry no efficiency factors (stock values).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from shardc.serving import ServingOptions, from_synth_config, plan_serving, workload
from shardc.serving.candidates import Options, decode_candidates, prefill_candidates
from shardc.serving.fabric import Fabric
from shardc.synth import SynthConfig, resolve
from shardc.topology import load_topology
from shardc.topology.loader import find_topology

ROOT = Path(__file__).resolve().parents[2]
HF = "meta-llama/Meta-Llama-3.1-70B"
LLAMA70B = from_synth_config("llama", resolve("llama", SynthConfig(
    layers=80, hidden=8192, heads=64, kv_heads=8, ffn=28672, vocab=128256)).as_dict(), "l70b")
SYSTEMS = {"h200_sxm": ("topologies/dgx_h200_cluster.topo", {"nodes": 1}),
           "h100_sxm": ("topologies/dgx_h100.topo", {})}
WORKLOADS = ((4000, 500), (1000, 1000), (8000, 200))
SHAPES = ((8, 64), (4, 16))  # (tp, batch)


@cache
def aiconfigurator() -> str:
    """The aiconfigurator executable: $AICONFIGURATOR, else a fresh venv in a temp folder."""
    given = os.environ.get("AICONFIGURATOR")
    if given:
        return given
    venv = Path(tempfile.mkdtemp(prefix="shardc-aic-")) / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin/pip"), "install", "-q", "aiconfigurator==0.12.0"],
                   check=True)
    return str(venv / "bin/aiconfigurator")


_FIELD = re.compile(r"^\s*(TTFT|TPOT|tokens/s/gpu):\s*([0-9,.]+)", re.M)


def aic_estimate(*args: str) -> dict[str, float]:
    """Run ``aiconfigurator cli estimate`` and read its TTFT, TPOT, tokens/s/gpu."""
    run = subprocess.run([aiconfigurator(), "cli", "estimate", "--model-path", HF,
                          "--backend", "trtllm", *args], capture_output=True, text=True,
                         check=True)
    return {k: float(v.replace(",", "")) for k, v in _FIELD.findall(run.stdout)}


def _fabric(system: str) -> Fabric:
    path, sets = SYSTEMS[system]
    return Fabric(load_topology(find_topology(ROOT / path, ()), dict(sets)))


def shardc_static(system: str, tp: int, batch: int, isl: int, osl: int) -> tuple[float, float]:
    """(seconds of one prefill forward over one prompt, of one decode step at ``batch``)."""
    fabric = _fabric(system)
    pool = fabric.pools[0]
    wl = workload(isl=isl, osl=osl)
    opts = Options(pins=(("batch", batch), ("chunk", isl), ("dp", 1), ("pp", 1), ("tp", tp)))
    (dec,) = decode_candidates(LLAMA70B, wl, fabric, pool, opts)
    (pre,) = prefill_candidates(LLAMA70B, wl, fabric, pool, opts)
    return pre.step.seconds, dec.step.seconds


def same_configurations() -> list[dict[str, Any]]:
    """(a): TTFT and TPOT of the same shapes, shardc / AIConfigurator."""
    rows = []
    for system in SYSTEMS:
        for isl, osl in WORKLOADS:
            for tp, bs in SHAPES:
                common = ["--system", system, "--isl", str(isl), "--osl", str(osl),
                          "--tp-size", str(tp)]
                ctx = aic_estimate(*common, "--estimate-mode", "static_ctx", "--batch-size", "1")
                gen = aic_estimate(*common, "--estimate-mode", "static_gen", "--batch-size",
                                   str(bs))
                ttft, tpot = shardc_static(system, tp, bs, isl, osl)
                rows.append({"system": system, "isl/osl": f"{isl}/{osl}", "tp": tp, "bs": bs,
                             "TTFT ms": ttft * 1e3, "AIC TTFT": ctx["TTFT"],
                             "TTFT ratio": ttft * 1e3 / ctx["TTFT"],
                             "TPOT ms": tpot * 1e3, "AIC TPOT": gen["TPOT"],
                             "TPOT ratio": tpot * 1e3 / gen["TPOT"]})
    return rows


def searches(tmp: Path) -> dict[str, Any]:
    """(b) and (c): both searches on 16 H200 at TTFT 1 s, TPOT 50 ms."""
    start = time.perf_counter()
    run = subprocess.run([aiconfigurator(), "cli", "default", "--model-path", HF, "--system",
                          "h200_sxm", "--backend", "trtllm", "--total-gpus", "16", "--isl",
                          "4000", "--osl", "500", "--ttft", "1000", "--tpot", "50",
                          "--save-dir", str(tmp)], capture_output=True, text=True, check=True)
    aic_seconds = time.perf_counter() - start
    found = re.search(r"Per-GPU Throughput:\s*([0-9][0-9,.]*)", run.stdout)
    best = float(found.group(1).replace(",", "")) if found else 0.0
    start = time.perf_counter()
    topo = load_topology(find_topology(ROOT / "topologies/dgx_h200_cluster.topo", ()),
                         {"nodes": 2})
    plan = plan_serving(LLAMA70B, topo, workload(isl=4000, osl=500, ttft="1s", tpot="50ms"),
                        ServingOptions(pareto=False))
    shardc_seconds = time.perf_counter() - start
    inst = {i.role: i for i in plan.instances}
    count = {r: sum(1 for i in plan.instances if i.role == r) for r in inst}
    if plan.mode == "aggregated":
        a = inst["aggregated"]
        args = ["--estimate-mode", "agg", "--tp-size", str(a.tp), "--pp-size", str(a.pp),
                "--batch-size", str(a.batch)]
    else:
        p, d = inst["prefill"], inst["decode"]
        args = ["--estimate-mode", "disagg", "--p-tp", str(p.tp), "--p-pp", str(p.pp),
                "--p-bs", str(max(1, p.batch // 4000)), "--p-workers", str(count["prefill"]),
                "--d-tp", str(d.tp), "--d-pp", str(d.pp), "--d-bs", str(d.batch),
                "--d-workers", str(count["decode"])]
    ours = aic_estimate("--system", "h200_sxm", "--isl", "4000", "--osl", "500", *args)
    return {"AIC best tokens/s/gpu": best, "shardc pick": f"{plan.mode} {' '.join(args[2:])}",
            "shardc pick, shardc's tokens/s/gpu": plan.tokens_per_s_per_device,
            "shardc pick, AIC's tokens/s/gpu": ours.get("tokens/s/gpu", 0.0),
            "ratio to AIC best": ours.get("tokens/s/gpu", 0.0) / best if best else 0.0,
            "AIC search s": aic_seconds, "shardc search s": shardc_seconds}


def _show(title: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n== {title}")
    for r in rows:
        print("  " + "; ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                               for k, v in r.items()))


@pytest.mark.bench
def test_same_configurations_as_aiconfigurator() -> None:
    rows = same_configurations()
    _show("same shapes, shardc / AIConfigurator (TRT-LLM)", rows)
    assert all(0.2 < r["TTFT ratio"] < 5 and 0.2 < r["TPOT ratio"] < 5 for r in rows)


@pytest.mark.bench
def test_search_against_aiconfigurator(tmp_path: Path) -> None:
    result = searches(tmp_path)
    _show("searches on 16 H200, TTFT 1 s, TPOT 50 ms", [result])
    assert result["shardc pick, AIC's tokens/s/gpu"] > 0


if __name__ == "__main__":
    _show("same shapes, shardc / AIConfigurator (TRT-LLM)", same_configurations())
    _show("searches", [searches(Path(tempfile.mkdtemp()))])
