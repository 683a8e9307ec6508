"""GPT-3 175B: what Megatron practitioners run against shardc's free plan, one cost model.

Issue 14's cases, on ``topologies/dgx_a100_superpod.topo`` (A100 80 GB), GPT-3 175B
(96 layers, hidden 12,288, 96 heads, seq 2,048, vocab 51,200; synth graph, bf16,
micro-batch 1), training, 1F1B, ZeRO-1, the default 5 % memory reserve:

* 64 GPUs (``nodes=8``), global batch 64: practitioners run TP8 × PP8 with sequence
  parallelism and selective recomputation;
* 1,024 GPUs, global batch 1,536: Calculon's pick tp2·pp16·dp32, selective + SP, 6
  virtual stages (also priced at v = 1 and 2; the free search tries v ∈ {1, 2, 3, 4, 6});
* 4,096 GPUs, global batch 1,536: Calculon's pick tp8·pp16·dp32, SP, no recomputation,
  6 virtual stages (also v = 1 and 2).

Each practitioner configuration is priced by :func:`shardc.partition.grid.price_grid`
(the prices the solver optimises) and must fit; the free search (nothing pinned) must
find a plan at least as fast. Run ``python tests/bench/bench_practitioners.py`` or
``pytest tests/bench/bench_practitioners.py -m bench`` (a few minutes: the 4,096-GPU
search alone prices hundreds of widths).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from shardc.compiler import analyse
from shardc.cost.grid import GridConfig
from shardc.partition.costing import Costing
from shardc.partition.grid import price_grid
from shardc.partition.options import DEFAULT_RESERVE, PartitionOptions, parse_reserve
from shardc.partition.search import PartitionResult, search
from shardc.passes import annotate_costs, coarsen, strategies
from shardc.passes.partition import costing_for
from shardc.synth import SynthConfig, build
from shardc.topology import load_topology

TOPOLOGY = Path(__file__).resolve().parents[2] / "topologies" / "dgx_a100_superpod.topo"
GPT3 = SynthConfig(layers=96, hidden=12288, heads=96, vocab=51200, seq=2048, batch=1,
                   dtype="bf16", max_positions=2048)
RESERVE = parse_reserve(DEFAULT_RESERVE)


@dataclass(frozen=True)
class Case:
    """A cluster size, a global batch and the configurations practitioners run there."""

    gpus: int
    global_batch: int
    practitioners: tuple[tuple[str, GridConfig], ...]


def _grid(t: int, p: int, d: int, g: int, rc: str, sp: bool, v: int = 1) -> GridConfig:
    return GridConfig(t, p, d, 1, g, recompute=rc, sequence_parallel=sp, interleave=v,
                      zero_stage=1)


CASES = (
    Case(64, 64, (("Megatron TP8xPP8 + SP + selective", _grid(8, 8, 1, 64, "selective", True)),)),
    Case(1024, 1536, (
        ("Calculon tp2.pp16.dp32 sel+SP v=1", _grid(2, 16, 32, 1536, "selective", True)),
        ("Calculon tp2.pp16.dp32 sel+SP v=2", _grid(2, 16, 32, 1536, "selective", True, 2)),
        ("Calculon tp2.pp16.dp32 sel+SP v=6", _grid(2, 16, 32, 1536, "selective", True, 6)),
    )),
    Case(4096, 1536, (
        ("Calculon tp8.pp16.dp32 SP v=1", _grid(8, 16, 32, 1536, "none", True)),
        ("Calculon tp8.pp16.dp32 SP v=2", _grid(8, 16, 32, 1536, "none", True, 2)),
        ("Calculon tp8.pp16.dp32 SP v=6", _grid(8, 16, 32, 1536, "none", True, 6)),
    )),
)


def costing(case: Case) -> Costing:
    """The partitioner's prices for GPT-3 on ``case.gpus`` A100 (ZeRO-1)."""
    topo = load_topology(TOPOLOGY, {"nodes": case.gpus // 8})
    state = analyse(build("gpt", GPT3), topology=topo, mode="training",
                    partition=PartitionOptions(global_batch=case.global_batch),
                    passes=[annotate_costs.PASS, coarsen.PASS, strategies.PASS]).state
    return costing_for(state)


def describe(r: PartitionResult) -> str:
    """A plan in one phrase: degrees, recomputation, SP, interleave, solver status."""
    tps = "/".join(str(t) for t in sorted({s.tp for s in r.stages}))
    rcs = "/".join(sorted({s.recompute for s in r.stages}))
    sp = "+SP" if any(s.sequence_parallel for s in r.stages) else ""
    return (f"tp{tps} pp{r.pp} dp{r.dp} v={r.interleave} {rcs}{sp} "
            f"({r.status.lower()}, gap {r.gap or 0:.1%})")


def run(case: Case) -> tuple[list[str], float, float]:
    """Table lines, the best practitioner step and the free plan's step for ``case``."""
    c = costing(case)
    lines = [f"GPT-3 175B on {case.gpus} A100 80GB, global batch {case.global_batch}:"]
    best = float("inf")
    for name, cfg in case.practitioners:
        est = price_grid(c, cfg, RESERVE)
        fit = "fits" if est.fits else "DOES NOT FIT"
        lines.append(f"  {name:<36} {est.seconds:8.2f} s  peak {est.peak_memory / 1e9:5.1f} GB "
                     f"of {est.capacity / 1e9:.1f} usable ({fit})")
        if est.fits:
            best = min(best, est.seconds)
    start = time.perf_counter()
    r = search(c, PartitionOptions(global_batch=case.global_batch, memory_reserve=RESERVE))
    wall = time.perf_counter() - start
    peak = max(s.memory_bytes for s in r.stages)
    lines.append(f"  {'shardc free plan':<36} {r.step_seconds:8.2f} s  peak {peak / 1e9:5.1f} GB "
                 f"  {describe(r)}, search {wall:.1f} s")
    return lines, best, r.step_seconds


@pytest.mark.bench
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.gpus}gpus")
def test_free_plan_beats_practitioners(case: Case) -> None:
    lines, best, free = run(case)
    print("\n" + "\n".join(lines))
    assert best < float("inf"), "no practitioner configuration fits"
    assert free <= best * (1 + 1e-9), "\n".join(lines)


def main() -> int:
    """Print every case; exit 1 if a free plan is slower than a practitioner's."""
    ok = True
    for case in CASES:
        lines, best, free = run(case)
        print("\n".join(lines), flush=True)
        ok &= best < float("inf") and free <= best * (1 + 1e-9)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
