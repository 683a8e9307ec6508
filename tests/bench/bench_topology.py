"""Topology benchmarks: parse + build at 10,000 devices, queries at 384 and 10,000.

Run ``python tests/bench/bench_topology.py`` for the figures, or
``pytest tests/bench/bench_topology.py -m bench`` to check the budgets from issue 3:
parse + build of a 10,000-device topology under 2 s, and a bandwidth-domain query on a
384-device topology under 50 ms. The default test run skips them.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from shardc.topology import load_topology
from shardc.topology.parser import lark_parser

ROOT = Path(__file__).resolve().parents[2] / "topologies"
SUPERPOD = ROOT / "dgx_h100_superpod.topo"  # 8 GPUs per node: nodes=1250 is 10,000 GPUs
CM384 = ROOT / "cloudmatrix384.topo"
BUILD_BUDGET_S = 2.0
DOMAIN_BUDGET_S = 0.050


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float, object]:
    """Median and worst wall time of ``repeat`` calls, and the last result."""
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), max(times), result


def build_10k():
    return load_topology(SUPERPOD, {"nodes": 1250})


def figures() -> dict[str, tuple[float, float]]:
    """Every measured figure, in seconds: name -> (median, worst)."""
    out: dict[str, tuple[float, float]] = {}
    lark_parser.cache_clear()
    cold = time.perf_counter()
    build_10k()
    out["parse+build 10,000 devices, cold (incl. grammar)"] = (time.perf_counter() - cold,) * 2
    med, worst, topo = timed(build_10k, 5)
    out["parse+build 10,000 devices"] = (med, worst)
    med, worst, _ = timed(lambda: build_10k().graph, 3)
    out["parse+build+networkx graph 10,000 devices"] = (med, worst)
    out["bandwidth domains >= 400 GB/s, 10,000 devices"] = timed(
        lambda: topo.bandwidth_domains(400e9), 5)[:2]
    names = [d.name for d in topo.devices]
    out["collective over 10,000 devices (IB)"] = timed(lambda: topo.collective(names), 5)[:2]
    out["route node0.gpu0 -> node1249.gpu7"] = timed(
        lambda: topo.route("node0.gpu0", "node1249.gpu7"), 20)[:2]
    cm = load_topology(CM384)
    out["bandwidth domains >= 200 GB/s, CloudMatrix384"] = timed(
        lambda: cm.bandwidth_domains(200e9), 50)[:2]
    out["domains on every plane, CloudMatrix384"] = timed(cm.domains_by_plane, 50)[:2]
    npus = [d.name for d in cm.compute_devices]
    out["collective over 384 NPUs, CloudMatrix384"] = timed(lambda: cm.collective(npus), 50)[:2]
    return out


@pytest.fixture(autouse=True)
def _only_when_asked(request: pytest.FixtureRequest) -> None:
    if "bench" not in (request.config.getoption("-m") or ""):
        pytest.skip("benchmark: run with -m bench")


@pytest.mark.bench
def test_parse_and_build_10k_devices_under_2s() -> None:
    build_10k()  # the grammar is built once per process; budgets are for warm runs
    median, _, topo = timed(build_10k, 3)
    assert len(topo.devices) == 10_000
    assert median < BUILD_BUDGET_S, f"{median:.3f} s"


@pytest.mark.bench
def test_bandwidth_domains_on_384_devices_under_50ms() -> None:
    cm = load_topology(CM384)
    median, _, domains = timed(lambda: cm.bandwidth_domains(200e9), 20)
    assert [d.size for d in domains] == [384]
    assert median < DOMAIN_BUDGET_S, f"{median * 1e3:.2f} ms"


def main() -> int:
    """Print the figures and whether the budgets hold."""
    print(f"python {sys.version.split()[0]}; times are median (worst) of repeated runs")
    results = figures()
    width = max(map(len, results))
    for name, (median, worst) in results.items():
        print(f"  {name:<{width}}  {median * 1e3:9.2f} ms  ({worst * 1e3:.2f} ms)")
    build = results["parse+build 10,000 devices"][0]
    domains = results["bandwidth domains >= 200 GB/s, CloudMatrix384"][0]
    ok = build < BUILD_BUDGET_S and domains < DOMAIN_BUDGET_S
    print(f"budgets: build {build:.3f} s < {BUILD_BUDGET_S} s, "
          f"domains {domains * 1e3:.2f} ms < {DOMAIN_BUDGET_S * 1e3:.0f} ms: "
          f"{'OK' if ok else 'OVER'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
