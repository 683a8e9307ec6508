"""The stock topologies: they parse, have the right shape, and match published totals."""

from __future__ import annotations

from pathlib import Path

import pytest

from shardc.topology import load_topology

ROOT = Path(__file__).resolve().parents[2] / "topologies"
STOCK = sorted(ROOT.glob("*.topo"))
# file -> (devices, compute devices, {plane: [(domain count, size), ...]})
EXPECTED = {
    "dgx_a100_superpod": (3072, 3072, {"nvlink": [(384, 8)], "ib": [(1, 3072)]}),
    "dgx_h100": (8, 8, {"nvlink": [(1, 8)]}),
    "dgx_h100_superpod": (256, 256, {"nvlink": [(32, 8)], "ib": [(1, 256)]}),
    "gb200_nvl72": (108, 72, {"nvlink": [(1, 72)], "c2c": [(36, 2)], "ib": [(1, 72)]}),
    "h20_cluster": (128, 128, {"nvlink": [(16, 8)], "roce": [(1, 128)]}),
    "h100_h20_mixed": (64, 64, {"nvlink": [(8, 8)], "ib": [(1, 64)]}),
    "ascend910b": (32, 32, {"hccs": [(4, 8)], "roce": [(1, 32)]}),
    "cloudmatrix384": (576, 384, {"ub": [(1, 384)], "rdma": [(1, 384)], "vpc": []}),
    "ascend950_pool": (64, 64, {"ub": [(4, 16)], "roce": [(1, 64)]}),
    "localhost": (2, 2, {"loopback": [(1, 2)]}),
    # DeepSeek's serving pool: 4 prefill + 18 decode H800 nodes (REFERENCE.md §3.2)
    "deepseek_h800": (176, 176, {"nvlink": [(22, 8)], "ib": [(1, 176)]}),
    "dgx_h200_cluster": (16, 16, {"nvlink": [(2, 8)], "ib": [(1, 16)]}),
}


@pytest.fixture(scope="module")
def loaded():
    return {path.stem: load_topology(path) for path in STOCK}


def test_every_stock_file_is_expected() -> None:
    assert {p.stem for p in STOCK} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shape(loaded, name) -> None:
    devices, compute, planes = EXPECTED[name]
    topo = loaded[name]
    assert (len(topo.devices), len(topo.compute_devices)) == (devices, compute)
    shapes = {}
    for plane, domains in topo.domains_by_plane().items():
        sizes: dict[int, int] = {}
        for d in domains:
            sizes[d.size] = sizes.get(d.size, 0) + 1
        shapes[plane] = sorted(((n, s) for s, n in sizes.items()), reverse=True)
    assert shapes == planes


def test_kind_libraries_parse() -> None:
    for path in sorted((ROOT / "kinds").glob("*.topo")):
        assert load_topology(path).devices == ()


def test_every_stock_file_cites_sources() -> None:
    for path in [*STOCK, *(ROOT / "kinds").glob("*.topo")]:
        text = path.read_text()
        assert "REFERENCE.md" in text, path.name
        assert "[V]" in text or "[S]" in text or "measured" in text, path.name


def test_cloudmatrix384_matches_published_totals(loaded) -> None:
    topo = loaded["cloudmatrix384"]
    (ub,) = topo.bandwidth_domains(plane="ub")
    assert ub.kinds == (("ascend910c", 384),)
    assert len(topo.bandwidth_domains(plane="ub", hosts=True)[0].devices) == 576
    # ~300 PFLOPS BF16, ~48-49.2 TB HBM, 1,229 TB/s HBM bandwidth (REFERENCE.md 1.4)
    assert topo.aggregate_flops("bf16") == pytest.approx(288.8e15, rel=1e-3)
    assert topo.aggregate_memory() == pytest.approx(49.152e12)
    assert sum(d.kind.memory_bandwidth for d in topo.compute_devices) == pytest.approx(
        1228.8e12)
    coll = topo.collective([d.name for d in topo.compute_devices])
    assert coll.plane == "ub" and coll.bandwidth == pytest.approx(392e9)


def test_nvlink_aggregates(loaded) -> None:
    nvl72 = loaded["gb200_nvl72"]
    ports = [link.bandwidth for link in nvl72.links if link.plane == "nvlink"]
    assert 2 * sum(ports) == pytest.approx(129.6e12)  # "130 TB/s" NVLink Switch System
    dgx = loaded["dgx_h100"]
    assert 2 * sum(link.bandwidth for link in dgx.links) == pytest.approx(7.2e12)


def test_parameters_resize_stock_files() -> None:
    assert len(load_topology(ROOT / "localhost.topo", {"devices": 8}).devices) == 8
    small = load_topology(ROOT / "dgx_a100_superpod.topo", {"nodes": 4})
    assert len(small.devices) == 32
    pool = load_topology(ROOT / "ascend950_pool.topo", {"pr_nodes": 1, "dt_nodes": 3})
    roles = [d.kind.role for d in pool.devices]
    assert roles.count("prefill") == 16 and roles.count("decode") == 48


@pytest.mark.parametrize("name", sorted(set(EXPECTED) - {"dgx_a100_superpod"}))
def test_stock_round_trips_through_canonical_text(loaded, name) -> None:
    topo = loaded[name]
    assert load_topology(topo.to_dsl()) == topo
