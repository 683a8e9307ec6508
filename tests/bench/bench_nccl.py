"""nccl-tests-style all-reduce bus bandwidth on DGX H100, predicted next to published figures.

The cost model times an all-reduce of S bytes over every GPU of
``topologies/dgx_h100.topo`` (one node) and of ``dgx_h100_superpod.topo --set nodes=N``
and reports nccl-tests' ``busbw = S/t · 2(n−1)/n`` (REFERENCE.md §2.1).

Published figures (large messages), with their sources:

* one node, default algorithm (NVLink SHARP / NVLS): "On 8 GPUs, you should reach a peak
  busBw of ~480GB/s (algbw ~275GB/s)" — sjeaugey, NVIDIA/nccl-tests issue #212
  (2024-05-06); a measured 476 GB/s "looks to be in the expected range for H100" —
  AddyLaddy, NVIDIA/nccl-tests issue #290 (2025-03-03).
* one node, ring (``NCCL_ALGO=RING``) or any non-all-reduce collective: "NCCL can get an
  effective NVLink bandwidth of 370GB/s" (450 GB/s line rate less ~20 % protocol
  overhead) — sjeaugey, NVIDIA/nccl-tests #212. NCCL's own model agrees: 18 links ×
  20.6 GB/s = 370.8 GB/s (REFERENCE.md §1.1, from ``src/graph/topo.h``).
* two nodes, ring: "For NDR @ 400Gbps you should see 46-48GB/s per NIC" — AddyLaddy,
  NVIDIA/nccl-tests #290. Our reading [D]: a DGX H100 has 8 NICs and NCCL's rings
  cross the network on all of them at once, so the ring busbw is 8 × 46–48 = 368–384 GB/s.
* 248 nodes of 8 H200 (NVLink4 and 8 × 400G NICs, as DGX H100: REFERENCE.md §1.2),
  default algorithm, 512 MiB: "typically measuring around 350G" — NVIDIA/nccl-tests
  #283 (2025-01-18, a user report, not a maintainer's figure).
* one DGX A100 (checks the A100 SuperPOD file the Megatron benchmark uses): 230–250 GB/s
  at large sizes — docs.alayanew.com "NCCL-tests in practice" (2026-05-06) [S].

Size dependence: the SimAI ratio columns of REFERENCE.md §2.6 (achieved ÷ nominal busbw,
[UNCONFIRMED semantics]) are printed beside the model's own busbw ÷ nominal.
Run ``python tests/bench/bench_nccl.py`` or ``pytest tests/bench/bench_nccl.py -m bench``.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from shardc.cost.comm import CommEstimate
from shardc.cost.network import group_collective
from shardc.topology import Topology, load_topology

ROOT = Path(__file__).resolve().parents[2] / "topologies"
MiB, GiB = 2**20, 2**30
SIZES = (8 * 1024, MiB, 16 * MiB, 64 * MiB, 256 * MiB, GiB, 4 * GiB, 16 * GiB)
NODES = (1, 2, 8, 32, 248)  # 1 = dgx_h100.topo; the rest dgx_h100_superpod.topo
NVLINK_H100, NIC_NDR = 450e9, 50e9  # nominal per direction (REFERENCE.md §1.1, §1.5)
# REFERENCE.md §2.6, SimAI astra-sim-alibabacloud/inputs/ratio: NVLink 1 node; NIC 2, 8, 32
# nodes. Keyed by message size; None where the table has no column for that node count.
SIMAI = {16 * MiB: (0.45, 0.32, 0.13, 0.044), 64 * MiB: (0.65, 0.50, 0.39, 0.106),
         256 * MiB: (0.73, 0.85, 0.69, 0.387), GiB: (0.77, 0.92, 0.90, 0.74),
         4 * GiB: (0.79, 0.95, 0.95, 0.923), 16 * GiB: (0.81, 0.96, 0.96, 0.957)}


@dataclass(frozen=True)
class Published:
    """One published busbw figure and where it comes from."""

    label: str
    topology: str
    nodes: int
    size: int
    low: float
    high: float
    source: str


PUBLISHED = (
    Published("1 node, default (NVLS)", "dgx_h100", 1, 8 * GiB, 476e9, 480e9,
              "NVIDIA/nccl-tests #212, #290"),
    Published("1 node, ring", "dgx_h100", 1, 8 * GiB, 370e9, 370e9, "NVIDIA/nccl-tests #212"),
    Published("2 nodes, ring", "dgx_h100_superpod", 2, 8 * GiB, 368e9, 384e9,
              "NVIDIA/nccl-tests #290 (46-48 GB/s per NIC x 8)"),
    Published("248 nodes (H200), default", "dgx_h100_superpod", 248, 512 * MiB, 350e9, 350e9,
              "NVIDIA/nccl-tests #283 (user report)"),
    Published("1 DGX A100", "dgx_a100_superpod", 1, 8 * GiB, 230e9, 250e9,
              "docs.alayanew.com NCCL-tests blog [S]"),
)


@functools.cache
def topology(name: str, nodes: int) -> Topology:
    """A stock topology; the SuperPOD files resized to ``nodes``."""
    overrides = {} if name == "dgx_h100" else {"nodes": nodes}
    return load_topology(ROOT / f"{name}.topo", overrides)


def all_reduce(name: str, nodes: int, size: int) -> CommEstimate:
    """All-reduce of ``size`` bytes over every GPU of the first ``nodes`` nodes."""
    topo = topology(name, nodes)
    devices = [d.name for d in topo.compute_devices][: 8 * nodes]
    return group_collective(topo, "all_reduce", size, devices)


def _where(nodes: int) -> str:
    return "dgx_h100" if nodes == 1 else "dgx_h100_superpod"


def curve_table() -> str:
    """Predicted busbw (GB/s) vs size for each node count, with the algorithm chosen."""
    head = "".join(f"{f'{n} node' + ('s' if n > 1 else ''):>15}" for n in NODES)
    lines = [f"{'size':>9}{head}"]
    for size in SIZES:
        cells = []
        for n in NODES:
            e = all_reduce(_where(n), n, size)
            cells.append(f"{e.busbw / 1e9:>8.1f} {e.algorithm[:6]:<6}")
        lines.append(f"{_size(size):>9}" + "".join(cells))
    return "\n".join(lines)


def ratio_table() -> str:
    """The model's busbw ÷ nominal next to SimAI's measured ratios (REFERENCE.md §2.6)."""
    lines = [f"{'size':>9} {'1 node':>15} {'2 nodes':>15} {'8 nodes':>15} {'32 nodes':>15}",
             f"{'':>9} {'model / SimAI':>15} {'model / SimAI':>15} {'model / SimAI':>15} "
             f"{'model / SimAI':>15}"]
    for size, simai in SIMAI.items():
        cells = []
        for n, ref in zip((1, 2, 8, 32), simai, strict=True):
            e = all_reduce(_where(n), n, size)
            nominal = NVLINK_H100 if n == 1 else 8 * NIC_NDR  # NVLink, or the node's NICs
            cells.append(f"{e.busbw / nominal:>7.2f} / {ref:<5.3g}")
        lines.append(f"{_size(size):>9} " + " ".join(cells))
    return "\n".join(lines)


def published_rows() -> list[tuple[Published, CommEstimate]]:
    """Each published figure with the model's estimate for the same case."""
    return [(p, all_reduce(p.topology, p.nodes, p.size)) for p in PUBLISHED]


def published_table() -> str:
    """Predicted vs published large-message busbw."""
    lines = [f"{'case':<27} {'size':>8} {'predicted':>13} {'published':>11} {'pred/pub':>8}  "
             f"source"]
    for p, e in published_rows():
        pub = f"{p.low / 1e9:.0f}" if p.low == p.high else f"{p.low / 1e9:.0f}-{p.high / 1e9:.0f}"
        mid = (p.low + p.high) / 2
        lines.append(f"{p.label:<27} {_size(p.size):>8} {e.busbw / 1e9:>6.1f} {e.algorithm[:6]:<6} "
                     f"{pub:>11} {e.busbw / mid:>8.2f}  {p.source}")
    return "\n".join(lines)


def _size(n: int) -> str:
    for unit, div in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if n >= div:
            return f"{n / div:g} {unit}"
    return f"{n} B"


@pytest.mark.bench
def test_busbw_curves_and_published_figures() -> None:
    print("\n" + curve_table() + "\n" + ratio_table() + "\n" + published_table())
    for n in NODES:  # an alpha-beta model's busbw can only grow with the message
        busbw = [all_reduce(_where(n), n, s).busbw for s in SIZES]
        assert busbw == sorted(busbw), (n, busbw)
    for p, e in published_rows():
        # No in-switch reduction in the model: it must not beat NVLS, and should stay
        # within a factor of two of every published figure.
        assert p.high / 2 < e.busbw <= max(p.high, 480e9), (p.label, e.busbw)


def main() -> int:
    """Print the three tables."""
    print("all-reduce busbw (GB/s) predicted by shardc's cost model, nccl-tests convention")
    print(curve_table())
    print("\nbusbw / nominal (1 node: 450 GB/s NVLink; N nodes: 8 x 50 GB/s NICs) vs SimAI")
    print(ratio_table())
    print("\npredicted vs published")
    print(published_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
