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

Two rounds. *Stock*: the H100/H200 kinds as shipped (no efficiency factors): nothing
fitted. *Fitted*: one compute efficiency, one memory efficiency and one fixed time per layer
per step (kernel launch and synchronisation gaps: the kind tag
``step_overhead_per_layer``), shared by both GPUs, fitted to AIConfigurator's TTFT and
TPOT on the h200_sxm TP8 rows only (least mean |log ratio| on a grid); the TP4 rows and
every h100_sxm row are held out. The fitted values are applied here only (the kinds on
disk stay as they are), and the search of (b) is repeated with them. AIConfigurator evaluates each shardc pick, and the row says whether that
evaluation meets the SLO.
"""

from __future__ import annotations

import dataclasses
import math
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
from shardc.serving.candidates import (
    OVERHEAD_TAG,
    Options,
    decode_candidates,
    prefill_candidates,
)
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


Efficiency = tuple[float, float, float] | None
"""(compute efficiency, memory efficiency, seconds per layer per step) applied to every
compute kind, or None for the stock kinds."""


def _load(path: Path, sets: dict[str, int], eff: Efficiency) -> Any:
    topo = load_topology(find_topology(path, ()), dict(sets))
    if eff is None:
        return topo
    extra = {OVERHEAD_TAG: f"{eff[2] * 1e6:g}us"} if eff[2] else {}
    kinds = {k: dataclasses.replace(v, compute_efficiency=eff[0], memory_efficiency=eff[1],
                                    tags={**v.tags, **extra})
             for k, v in topo.kinds.items()}
    devices = tuple(dataclasses.replace(d, kind=kinds[d.kind.name]) for d in topo.devices)
    return dataclasses.replace(topo, kinds=kinds, devices=devices)


@cache
def _fabric(system: str, eff: Efficiency = None) -> Fabric:
    path, sets = SYSTEMS[system]
    return Fabric(_load(ROOT / path, sets, eff))


def shardc_static(system: str, tp: int, batch: int, isl: int, osl: int,
                  eff: Efficiency = None) -> tuple[float, float]:
    """(seconds of one prefill forward over one prompt, of one decode step at ``batch``)."""
    fabric = _fabric(system, eff)
    pool = fabric.pools[0]
    wl = workload(isl=isl, osl=osl)
    opts = Options(pins=(("batch", batch), ("chunk", isl), ("dp", 1), ("pp", 1), ("tp", tp)))
    (dec,) = decode_candidates(LLAMA70B, wl, fabric, pool, opts)
    (pre,) = prefill_candidates(LLAMA70B, wl, fabric, pool, opts)
    return pre.step.seconds, dec.step.seconds


@cache
def aic_static(system: str, isl: int, osl: int, tp: int, bs: int) -> tuple[float, float]:
    """AIConfigurator's (TTFT ms of one prompt, TPOT ms at ``bs``) for one shape."""
    common = ["--system", system, "--isl", str(isl), "--osl", str(osl), "--tp-size", str(tp)]
    ctx = aic_estimate(*common, "--estimate-mode", "static_ctx", "--batch-size", "1")
    gen = aic_estimate(*common, "--estimate-mode", "static_gen", "--batch-size", str(bs))
    return ctx["TTFT"], gen["TPOT"]


def _shapes() -> list[tuple[str, int, int, int, int]]:
    return [(system, isl, osl, tp, bs) for system in SYSTEMS for isl, osl in WORKLOADS
            for tp, bs in SHAPES]


def _fitted(system: str, tp: int) -> bool:
    return system == "h200_sxm" and tp == 8


def same_configurations(eff: Efficiency = None) -> list[dict[str, Any]]:
    """(a): TTFT and TPOT of the same shapes, shardc / AIConfigurator."""
    rows = []
    for system, isl, osl, tp, bs in _shapes():
        aic_ttft, aic_tpot = aic_static(system, isl, osl, tp, bs)
        ttft, tpot = shardc_static(system, tp, bs, isl, osl, eff)
        rows.append({"system": system, "isl/osl": f"{isl}/{osl}", "tp": tp, "bs": bs,
                     "set": "fit" if eff and _fitted(system, tp) else "held out",
                     "TTFT ms": ttft * 1e3, "AIC TTFT": aic_ttft,
                     "TTFT ratio": ttft * 1e3 / aic_ttft,
                     "TPOT ms": tpot * 1e3, "AIC TPOT": aic_tpot,
                     "TPOT ratio": tpot * 1e3 / aic_tpot})
    return rows


def fit() -> tuple[float, float, float]:
    """The (compute, memory, per-layer overhead) minimising mean |log ratio| on h200 TP8."""
    rows = [r for r in _shapes() if _fitted(r[0], r[3])]
    best: tuple[float, tuple[float, float, float]] | None = None
    for c in [x / 100 for x in range(50, 101, 5)]:
        for m in [x / 100 for x in range(40, 101, 5)]:
            for o in [x * 1e-6 for x in range(0, 81, 10)]:
                err = 0.0
                for system, isl, osl, tp, bs in rows:
                    aic_ttft, aic_tpot = aic_static(system, isl, osl, tp, bs)
                    ttft, tpot = shardc_static(system, tp, bs, isl, osl, (c, m, o))
                    err += abs(math.log(ttft * 1e3 / aic_ttft))
                    err += abs(math.log(tpot * 1e3 / aic_tpot))
                if best is None or err < best[0]:
                    best = (err, (c, m, o))
    assert best is not None
    return best[1]


@cache
def aic_search(tmp: Path) -> tuple[float, float]:
    """AIConfigurator's best tokens/s/GPU on 16 H200 at TTFT 1 s, TPOT 50 ms, and its time."""
    start = time.perf_counter()
    run = subprocess.run([aiconfigurator(), "cli", "default", "--model-path", HF, "--system",
                          "h200_sxm", "--backend", "trtllm", "--total-gpus", "16", "--isl",
                          "4000", "--osl", "500", "--ttft", "1000", "--tpot", "50",
                          "--save-dir", str(tmp)], capture_output=True, text=True, check=True)
    found = re.search(r"Per-GPU Throughput:\s*([0-9][0-9,.]*)", run.stdout)
    return (float(found.group(1).replace(",", "")) if found else 0.0,
            time.perf_counter() - start)


def searches(tmp: Path, eff: Efficiency = None) -> dict[str, Any]:
    """(b) and (c): both searches on 16 H200 at TTFT 1 s, TPOT 50 ms."""
    best, aic_seconds = aic_search(tmp)
    start = time.perf_counter()
    topo = _load(ROOT / "topologies/dgx_h200_cluster.topo", {"nodes": 2}, eff)
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
    meets = ours.get("TTFT", math.inf) <= 1000 and ours.get("TPOT", math.inf) <= 50
    return {"kinds": "stock" if eff is None else
            f"compute {eff[0]}, memory {eff[1]}, {eff[2] * 1e6:g} us/layer",
            "AIC best tokens/s/gpu": best, "shardc pick": f"{plan.mode} {' '.join(args[2:])}",
            "shardc's own tokens/s/gpu": plan.tokens_per_s_per_device,
            "AIC: tokens/s/gpu": ours.get("tokens/s/gpu", 0.0),
            "AIC: TTFT ms": ours.get("TTFT", 0.0), "AIC: TPOT ms": ours.get("TPOT", 0.0),
            "meets SLO per AIC": meets,
            "ratio to AIC best": ours.get("tokens/s/gpu", 0.0) / best if best else 0.0,
            "AIC search s": aic_seconds, "shardc search s": shardc_seconds}


def _show(title: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n== {title}")
    for r in rows:
        print("  " + "; ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                               for k, v in r.items()))


def main(tmp: Path) -> dict[str, list[dict[str, Any]]]:
    """Both rounds, stock and fitted; printed and returned."""
    eff = fit()
    out = {"stock": same_configurations(), "fitted": same_configurations(eff),
           "searches": [searches(tmp), searches(tmp, eff)]}
    _show("same shapes, stock kinds: shardc / AIConfigurator (TRT-LLM)", out["stock"])
    _show(f"same shapes, fitted compute {eff[0]} memory {eff[1]} {eff[2] * 1e6:g} us/layer "
          "(on the h200 TP8 rows)", out["fitted"])
    _show("searches on 16 H200, TTFT 1 s, TPOT 50 ms", out["searches"])
    return out


@pytest.mark.bench
def test_against_aiconfigurator(tmp_path: Path) -> None:
    out = main(tmp_path)
    held = [r for r in out["fitted"] if r["set"] == "held out"]
    assert all(0.2 < r["TTFT ratio"] < 5 and 0.2 < r["TPOT ratio"] < 5 for r in held)
    assert all(r["AIC: tokens/s/gpu"] > 0 for r in out["searches"])


if __name__ == "__main__":
    main(Path(tempfile.mkdtemp()))
