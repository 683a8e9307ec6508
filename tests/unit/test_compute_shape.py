"""Compute that is not one constant: efficiency by op size, a launch per kernel, NVLS.

Why: a roofline at one fitted efficiency prices a 0.1-GFLOP GEMM of a TP-16 shard at the
rate of a 1-TFLOP one, and a 1 MB copy at the streaming bandwidth; the kind's curves
(topologies/kinds/nvidia.topo, from Calculon's step tables) and ``launch`` correct both.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from shardc.cost.comm import NVLS_EFFICIENCY, Tier, collective_time
from shardc.cost.compute import efficiency, node_time
from shardc.cost.network import group_collective
from shardc.cost.ops import NodeCost
from shardc.ir import DType
from shardc.topology import canonical, load_topology, to_dsl
from shardc.topology.model import DeviceKind

ROOT = Path(__file__).resolve().parents[2]
A100 = load_topology(ROOT / "topologies" / "dgx_a100_superpod.topo", {"nodes": 1})


def _gemm(m: int, n: int, k: int) -> NodeCost:
    ins = (m * k * 2, k * n * 2)
    return NodeCost(2 * m * n * k, sum(ins), m * n * 2, k * n * 2, DType.BFLOAT16, "matmul",
                    input_bytes=ins, output_bytes=(m * n * 2,))


def test_curve_interpolates_log_linearly_and_caps() -> None:
    pts = ((1.0, 0.2), (100.0, 0.6))
    assert efficiency(pts, 0.8, 0.5) == 0.2
    assert efficiency(pts, 0.8, 10.0) == pytest.approx(0.4)
    assert efficiency(pts, 0.8, 100.0) == 0.8
    assert efficiency((), 0.8, 1e-9) == 0.8


def test_small_gemms_run_below_large_ones_on_the_a100() -> None:
    kind = A100.kinds["a100_80g"]
    big, small = _gemm(8192, 8192, 8192), _gemm(512, 512, 512)
    rate = [c.flops / node_time(c, kind).seconds for c in (big, small)]
    assert rate[0] == pytest.approx(312e12 * kind.compute_efficiency, rel=0.01)
    assert rate[1] < 0.5 * rate[0]  # 0.27 GFLOP: under Calculon's 1-GFLOP step, plus launch
    # a kind without curves keeps the plain roofline
    flat = replace(kind, compute_curve=(), memory_curve=(), kernel_launch=0.0)
    assert node_time(small, flat).seconds < node_time(small, kind).seconds


def test_launch_is_paid_by_kernels_not_by_fused_element_wise_nodes() -> None:
    kind = DeviceKind("k", {"bf16": 1e15}, 1e10, 1e12, kernel_launch=5e-6)
    add = NodeCost(0, 8, 4, 0, DType.BFLOAT16, "elementwise")
    assert node_time(add, kind).seconds == pytest.approx(12 / 1e12)
    assert node_time(_gemm(2, 2, 2), kind).seconds == pytest.approx(5e-6, rel=1e-3)


def test_curves_and_launch_round_trip_through_the_canonical_text(tmp_path) -> None:
    src = tmp_path / "src.topo"
    src.write_text("kind k {\n compute bf16 1 TFLOPS\n memory 1 GB\n memory_bandwidth 1 TB/s\n"
                   " efficiency memory 0.6 at 1 MB\n efficiency compute 0.5 at 3 us\n"
                   " launch 2 us\n}\ngpu0: k\n")
    for topo in (A100, load_topology(src)):
        path = tmp_path / "a.topo"
        path.write_text(to_dsl(topo))
        assert canonical(load_topology(path)) == canonical(topo)
    kind = load_topology(src).kinds["k"]
    assert kind.kernel_launch == 2e-6 and kind.memory_curve == ((1e6, 0.6),)
    assert len(A100.kinds["a100_80g"].compute_curve) == 4


def test_a_bad_efficiency_point_is_a_located_error(tmp_path) -> None:
    from shardc.errors import TopologyError

    path = tmp_path / "b.topo"
    path.write_text("kind k {\n compute bf16 1 TFLOPS\n memory 1 GB\n memory_bandwidth 1 TB/s\n"
                    " efficiency compute 0.5 at 3 GB\n}\ngpu0: k\n")
    with pytest.raises(TopologyError, match=r"b\.topo:5"):
        load_topology(path)


def test_nvls_halves_all_reduce_traffic_on_a_reducing_switch() -> None:
    h100 = load_topology(ROOT / "topologies" / "dgx_h100.topo")
    devs = [d.name for d in h100.compute_devices]
    est = group_collective(h100, "all_reduce", 1 << 30, devs)
    assert est.algorithm == "nvls"
    plain = Tier(8, 450e9 * 0.824, 936.25e-9, "nvlink", switched=True)
    ring = collective_time("all_reduce", 1 << 30, [plain])
    assert est.bandwidth_seconds == pytest.approx((1 << 30) / (450e9 * 0.824 * NVLS_EFFICIENCY))
    assert est.seconds < 0.75 * ring.seconds
    # A100's NVSwitch (gen2) does not reduce: no NVLS there
    a100 = [d.name for d in A100.compute_devices]
    assert group_collective(A100, "all_reduce", 1 << 30, a100).algorithm != "nvls"
