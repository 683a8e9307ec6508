"""Placement: TP groups in the fastest domain, pipeline neighbours adjacent, DP on rails."""

from __future__ import annotations

import pytest

from shardc.errors import InfeasibleError
from shardc.partition.place import StageDemand, place
from shardc.topology import load_topology

KIND = """
kind g {
    compute bf16 100 TFLOPS
    memory 80 GB
    memory_bandwidth 3 TB/s
}
kind slow {
    compute bf16 50 TFLOPS
    memory 96 GB
    memory_bandwidth 4 TB/s
}
"""

DGX = KIND + """
node[0..3] {
    gpu[0..7]: g
    switch nvswitch: nvlink { members gpu[*]; bandwidth 450 GB/s; latency 1 us }
}
network ib: ib { members node[*].gpu[*]; bandwidth 400 Gb/s; latency 1 us; rails; leaf 32; oversubscription 1 }
"""


def _node(dev: str) -> str:
    return dev.split(".")[0]


def test_tp_groups_fill_islands_and_dp_groups_ride_one_rail() -> None:
    topo = load_topology(DGX)
    p = place(topo, [StageDemand("g", 8), StageDemand("g", 8)], dp=2)
    for r in range(2):
        for s in range(2):
            group = p.tp_group(r, s)
            assert len(group) == 8 and len({_node(d) for d in group}) == 1
    assert p.domain_bandwidth == (450e9, 450e9)
    # stage 0 on nodes 0-1, stage 1 on nodes 2-3: neighbours adjacent
    assert {_node(d) for d in p.tp_group(0, 0) + p.tp_group(1, 0)} == {"node0", "node1"}
    for t in range(8):
        ring = p.dp_group(0, t)
        assert len({d.split(".")[1] for d in ring}) == 1  # same local index: one rail
    assert "450 GB/s" in p.explain()


def test_tp_follows_the_fast_links_when_rails_beat_the_node() -> None:
    """Slow PCIe inside each node, fast rails between same-index GPUs: TP goes along rails."""
    topo = load_topology(KIND + """
node[0..1] {
    gpu[0..3]: g
    switch pcie: pcie { members gpu[*]; bandwidth 16 GB/s; latency 2 us }
}
link node0.gpu0 <-> node1.gpu0: nvlink { bandwidth 100 GB/s; latency 1 us }
link node0.gpu1 <-> node1.gpu1: nvlink { bandwidth 100 GB/s; latency 1 us }
link node0.gpu2 <-> node1.gpu2: nvlink { bandwidth 100 GB/s; latency 1 us }
link node0.gpu3 <-> node1.gpu3: nvlink { bandwidth 100 GB/s; latency 1 us }
""")
    p = place(topo, [StageDemand("g", 2)], dp=4)
    for r in range(4):
        a, b = p.tp_group(r, 0)
        assert _node(a) != _node(b) and a.split(".")[1] == b.split(".")[1]
    assert p.domain_bandwidth == (100e9,)


def test_heterogeneous_stages_take_their_own_kind() -> None:
    topo = load_topology(KIND + """
a[0..3]: g
b[0..3]: slow
switch s: ethernet { members a[*], b[*]; bandwidth 50 GB/s; latency 5 us }
""")
    p = place(topo, [StageDemand("g", 2), StageDemand("slow", 4)], dp=1)
    assert all(d.startswith("a") for d in p.tp_group(0, 0))
    assert all(d.startswith("b") for d in p.tp_group(0, 1))


def test_not_enough_devices_is_an_infeasible_error() -> None:
    topo = load_topology(DGX)
    with pytest.raises(InfeasibleError, match="the plan needs 48 g devices, the topology has 32"):
        place(topo, [StageDemand("g", 8), StageDemand("g", 8), StageDemand("g", 8)], dp=2)
