"""The canonical form: spelling-independent, deterministic, and a faithful text form."""

from __future__ import annotations

import json

from shardc.topology import load_topology, natural_key

RANGES = """
kind h100 { compute bf16 989.4 TFLOPS; memory 80 GB; memory_bandwidth 3.35 TB/s }
node[0..1] {
    gpu[0..1]: h100
    switch nv: nvlink { members gpu[*]; bandwidth 450 GB/s; latency 1 us }
}
network ib: ib { members node[*].gpu[*]; bandwidth 400 Gb/s; latency 2 us }
"""

SPELT_OUT = """
let two = 2
node[1] {
    gpu1: fast
    gpu0: fast
    switch nv: nvlink { members gpu0, gpu1; bandwidth 3600 Gb/s; latency 1000 ns }
}
node[0] {
    gpu[0..two-1]: fast
    switch nv: nvlink { members gpu[0..1]; bandwidth 0.45 TB/s; latency 0.001 ms }
}
kind fast { compute bf16 0.9894 PFLOPS; memory 80000 MB; memory_bandwidth 3350 GB/s }
kind unused { tag role host }
"""


def test_two_spellings_of_one_cluster_compare_equal() -> None:
    a = load_topology(RANGES)
    b_text = SPELT_OUT + (
        "network ib: ib { members node[0].gpu[*], node[1].*; bandwidth 50 GB/s; "
        "latency 2000 ns }\n"
    )
    b = load_topology(b_text.replace("fast", "h100"))
    assert a == b and hash(a) == hash(b)
    assert a.to_json() == b.to_json()
    assert [d.rank for d in b.devices] != [0, 1, 2, 3] or b.devices[0].name != "node0.gpu0"


def test_different_clusters_differ() -> None:
    a = load_topology(RANGES)
    assert a != load_topology(RANGES.replace("450 GB/s", "451 GB/s"))
    assert a != load_topology(RANGES.replace("gpu[0..1]", "gpu[0..2]"))


def test_json_is_deterministic_and_sorted() -> None:
    first = load_topology(RANGES).to_json()
    assert first == load_topology(RANGES).to_json()
    data = json.loads(first)
    assert data["format"] == "shardc.topology/1"
    assert [d["name"] for d in data["devices"]] == sorted(
        (d["name"] for d in data["devices"]), key=natural_key)
    link = data["links"][0]
    assert set(link) == {"a", "b", "plane", "kind", "bandwidth", "latency", "efficiency"}


def test_natural_order() -> None:
    names = ["node10.gpu1", "node2.gpu10", "node2.gpu9", "ib.spine"]
    assert sorted(names, key=natural_key) == ["ib.spine", "node2.gpu9", "node2.gpu10",
                                              "node10.gpu1"]


def test_canonical_text_round_trips_and_spells_everything_out() -> None:
    topo = load_topology(RANGES)
    text = topo.to_dsl()
    assert "network" not in text and "[" not in text  # every switch and link explicit
    assert load_topology(text) == topo
