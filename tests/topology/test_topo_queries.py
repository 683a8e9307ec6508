"""Routes, bandwidth domains, collectives and the networkx view, against closed forms."""

from __future__ import annotations

import math

import networkx as nx
import pytest

from shardc.errors import OptionError
from shardc.topology import load_topology

H100 = "kind h100 { compute bf16 989.4 TFLOPS; memory 80 GB; memory_bandwidth 3.35 TB/s }\n"
POD = H100 + """
let nodes = 4
node[0..nodes-1] {
    gpu[0..7]: h100
    switch nvswitch: nvlink { members gpu[*]; bandwidth 450 GB/s; latency 1 us }
}
network ib: ib {
    members node[*].gpu[*]
    bandwidth 400 Gb/s
    latency 2 us
    spine_latency 4 us
    rails
    leaf 2
    oversubscription 2
}
"""


@pytest.fixture(scope="module")
def pod():
    return load_topology(POD)


def test_networkx_view(pod) -> None:
    g = pod.graph
    assert isinstance(g, nx.MultiGraph)
    assert g.nodes["node1.gpu3"] == {"type": "device", "kind": "h100", "rank": 11, "host": False}
    assert g.nodes["node1.nvswitch"]["type"] == "switch"
    edge = g.edges["node1.gpu3", "node1.nvswitch", "nvlink"]
    assert edge["bandwidth"] == 450e9 and edge["latency"] == 0.5e-6 and edge["kind"] == "nvlink"
    assert g.number_of_edges() == len(pod.links)
    # 8 rails x 2 leaves of 2 nodes, one spine
    assert sorted(s.tier for s in pod.switches).count("leaf") == 16


def test_routes_respect_planes_and_sum_latency(pod) -> None:
    inside = pod.route("node0.gpu0", "node0.gpu5")
    assert (inside.plane, inside.hops, inside.bandwidth) == ("nvlink", 2, 450e9)
    assert inside.latency == pytest.approx(1e-6)
    same_leaf = pod.route("node0.gpu2", "node1.gpu2")
    assert same_leaf.plane == "ib" and same_leaf.hops == 2
    assert same_leaf.latency == pytest.approx(2e-6)
    far = pod.route("node0.gpu0", "node3.gpu5")
    assert far.nodes == ("node0.gpu0", "ib.rail0.leaf0", "ib.spine", "ib.rail5.leaf1",
                         "node3.gpu5")
    assert far.bandwidth == 50e9 and far.latency == pytest.approx(2e-6 + 4e-6)
    assert set(pod.routes("node0.gpu0", "node0.gpu1")) == {"nvlink", "ib"}
    with pytest.raises(OptionError, match="does not join"):
        pod.route("node0.gpu0", "node1.gpu0", plane="nvlink")
    assert pod.route("node0.gpu0", "node0.gpu0").hops == 0


def test_bandwidth_domains(pod) -> None:
    islands = pod.bandwidth_domains(400e9)
    assert [d.size for d in islands] == [8, 8, 8, 8]
    assert islands[1].devices[0] == "node1.gpu0" and islands[0].planes == ("nvlink",)
    assert islands[0].kinds == (("h100", 8),) and islands[0].min_bandwidth == 450e9
    (everything,) = pod.bandwidth_domains(50e9)
    assert everything.size == 32 and everything.planes == ("ib", "nvlink")
    assert pod.bandwidth_domains(1e15) == []
    by_plane = pod.domains_by_plane()
    assert [d.size for d in by_plane["nvlink"]] == [8] * 4 and by_plane["ib"][0].size == 32


def test_collective_inside_and_across_nodes(pod) -> None:
    island = pod.collective([f"node2.gpu{i}" for i in range(8)])
    assert (island.plane, island.bandwidth, island.hops) == ("nvlink", 450e9, 2)
    assert island.fabrics == ("node2.nvswitch",)
    rail = pod.collective([f"node{i}.gpu3" for i in range(4)])
    # 2 leaves of 2: each uplink carries 2 x 50 / 2 = 50 GB/s shared by 2 members
    assert rail.plane == "ib" and rail.bandwidth == pytest.approx(25e9)
    assert rail.link_bandwidth == 50e9 and rail.injection_bandwidth == 50e9 and rail.hops == 4
    same_leaf = pod.collective(["node0.gpu3", "node1.gpu3"])
    assert same_leaf.bandwidth == 50e9 and same_leaf.hops == 2
    assert pod.collective(["node0.gpu0"]).bandwidth == math.inf
    with pytest.raises(OptionError):
        pod.collective(["node0.gpu0", "node1.gpu1"], plane="nvlink")


def test_full_mesh_injection_versus_link_bandwidth() -> None:
    topo = load_topology(H100 + "npu[0..7]: h100\nmesh hccs: hccs { members npu[*]; "
                         "bandwidth 28 GB/s; latency 0.5 us }\n")
    coll = topo.collective([f"npu{i}" for i in range(8)])
    assert coll.link_bandwidth == 28e9 and coll.bandwidth == pytest.approx(7 * 28e9)
    assert coll.hops == 1 and len(topo.links) == 28


def test_two_tier_switch_planes() -> None:
    # CloudMatrix-style: per-node L1 switches under one L2 switch
    topo = load_topology(H100 + """
node[0..3] {
    npu[0..7]: h100
    switch l1: ub { members npu[*] 392 GB/s; latency 0.5 us }
}
switch l2: ub { members node[*].l1 3136 GB/s; latency 1 us }
""")
    (domain,) = topo.bandwidth_domains(300e9)
    assert domain.size == 32
    coll = topo.collective([d.name for d in topo.devices])
    assert coll.bandwidth == pytest.approx(392e9) and coll.hops == 4
    assert coll.latency == pytest.approx(1.5e-6)
    assert topo.route("node0.npu0", "node3.npu7").latency == pytest.approx(1.5e-6)


def test_unknown_devices_are_option_errors(pod) -> None:
    with pytest.raises(OptionError, match=r"no device named 'node9\.gpu0'"):
        pod.route("node9.gpu0", "node0.gpu0")
