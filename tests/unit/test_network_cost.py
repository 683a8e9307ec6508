"""Collectives over a parsed topology: the right tiers, planes and bottlenecks."""

from __future__ import annotations

from pathlib import Path

import pytest

from shardc.cost.network import group_collective, point_to_point, tier_options
from shardc.topology import load_topology

TOPOLOGIES = Path(__file__).parents[2] / "topologies"

# DGX H100 figures from REFERENCE.md §1.1/§1.5: NVLink4 450 GB/s per direction through
# NVSwitch (ASTRA-sim's calibrated 936.25 ns), 8x ConnectX-7 400 Gb/s rails per node.
DGX = """
kind h100 {
    compute bf16, fp16 989.4 TFLOPS
    memory 80 GB
    memory_bandwidth 3.35 TB/s
}
let nodes = 4
node[0..nodes-1] {
    gpu[0..7]: h100
    switch nvswitch: nvlink {
        members gpu[*]
        bandwidth 450 GB/s
        latency 936.25 ns
    }
}
network ib: ib {
    members node[*].gpu[*]
    bandwidth 400 Gb/s
    latency 1 us
    rails
    leaf 32
    oversubscription 1
}
"""


@pytest.fixture(scope="module")
def dgx():
    return load_topology(DGX)


def _devs(topo, n):
    return [d.name for d in topo.compute_devices][:n]


def test_one_island_is_one_switched_nvlink_tier(dgx) -> None:
    (tiers,) = tier_options(dgx, _devs(dgx, 8))
    assert [(t.size, t.name, t.switched) for t in tiers] == [(8, "nvlink", True)]
    est = group_collective(dgx, "all_reduce", 1 << 30, _devs(dgx, 8))
    # within NCCL's 8.4 us base latency of the link's 450 GB/s
    assert est.bottleneck == "nvlink" and est.busbw == pytest.approx(450e9, rel=5e-3)


def test_two_nodes_compose_nvlink_and_infiniband(dgx) -> None:
    shapes = sorted(
        [(t.size, t.name) for t in tiers] for tiers in tier_options(dgx, _devs(dgx, 16))
    )
    assert shapes == [[(8, "nvlink"), (2, "ib")], [(16, "ib")]]
    est = group_collective(dgx, "all_reduce", 1 << 30, _devs(dgx, 16))
    # rings over every NIC: min(450, 8 x 50) GB/s per rank
    assert est.algorithm == "ring" and est.bottleneck == "ib"
    assert est.busbw == pytest.approx(400e9, rel=0.02)


def test_tensor_parallel_group_on_one_node_beats_one_spread_across_nodes(dgx) -> None:
    devs = _devs(dgx, 32)
    inside = group_collective(dgx, "all_reduce", 64 << 20, devs[:4])
    across = group_collective(dgx, "all_reduce", 64 << 20, devs[0:32:8])  # gpu0 of each node
    assert inside.seconds * 5 < across.seconds


def test_point_to_point_takes_the_fast_plane_inside_a_node(dgx) -> None:
    d = _devs(dgx, 16)
    near, far = point_to_point(dgx, d[0], d[1], 1 << 30), point_to_point(dgx, d[0], d[8], 1 << 30)
    assert "nvlink" in near.bottleneck and "ib" in far.bottleneck
    assert near.seconds == pytest.approx((1 << 30) / 450e9 + 936.25e-9, rel=1e-6)
    assert far.seconds == pytest.approx((1 << 30) / 50e9, rel=1e-3)


def test_transfers_sharing_a_link_slow_each_other_on_the_real_topology(dgx) -> None:
    from shardc.cost.network import concurrent_transfers

    d = _devs(dgx, 32)
    alone = concurrent_transfers(dgx, [(d[0], d[8], 1 << 30)])[0]
    # gpu0 of node 0 sends to gpu0 of nodes 1 and 2: both leave through its one NIC
    shared = concurrent_transfers(dgx, [(d[0], d[8], 1 << 30), (d[0], d[16], 1 << 30)])
    assert all(s.seconds == pytest.approx(2 * alone.seconds, rel=1e-3) for s in shared)
    # different GPUs use different rails: no contention
    apart = concurrent_transfers(dgx, [(d[0], d[8], 1 << 30), (d[1], d[9], 1 << 30)])
    assert all(s.seconds == pytest.approx(alone.seconds, rel=1e-6) for s in apart)
    # opposite directions of one link do not contend
    both_ways = concurrent_transfers(dgx, [(d[0], d[8], 1 << 30), (d[8], d[0], 1 << 30)])
    assert all(s.seconds == pytest.approx(alone.seconds, rel=1e-6) for s in both_ways)


def test_islands_joined_only_through_a_host_are_not_a_tier() -> None:
    # GB200: the two GPUs of a superchip meet on C2C only through their Grace CPU, which
    # does not forward GPU traffic; GPUs of different superchips must still be priced
    # (on NVLink) instead of dividing by the zero bandwidth of that path.
    topo = load_topology(TOPOLOGIES / "gb200_nvl72.topo")
    gpus = [d.name for d in topo.compute_devices if ".gpu" in d.name]
    spread = gpus[:4]  # two superchips, two GPUs each
    assert all(t.bandwidth > 0 for opt in tier_options(topo, spread) for t in opt)
    est = group_collective(topo, "all_reduce", 1e9, spread)
    assert est.seconds > 0 and est.algorithm
