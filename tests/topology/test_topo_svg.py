"""``topo show --svg``: a geometric check of the drawing, on the SVG's own coordinates.

For every stock topology (and random generated ones): edge labels overlap neither each
other, nor a device or switch box, nor a group title, nor the header; every edge path
stays out of the boxes it does not connect and of the groups that hold neither of its
ends. Text widths are estimated from the font size and the number of characters.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from itertools import combinations, pairwise
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from topo_gen import Model, models, render

from shardc.topology import load_topology
from shardc.topology.svg import render_svg

ROOT = Path(__file__).resolve().parents[2] / "topologies"
STOCK = sorted(ROOT.glob("*.topo"))
SETS = {"localhost": {"devices": "8"}}
NS = "{http://www.w3.org/2000/svg}"
FONT = {"e": (10, True), "g": (13, True), "t": (15, True)}  # class -> (size, bold)

Rect = tuple[float, float, float, float]  # x0, y0, x1, y1


def text_box(x: float, y: float, text: str, size: float, bold: bool, anchor: str = "start",
             per_char: float | None = None) -> Rect:
    """Baseline at ``y``: ascenders up to 0.9 em above it, descenders 0.25 em below."""
    width = len(text) * size * (per_char or (0.7 if bold else 0.62))
    x0 = x - width / 2 if anchor == "middle" else x
    return (x0, y - 0.9 * size, x0 + width, y + 0.25 * size)


def overlap(a: Rect, b: Rect) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def rect_of(el: ET.Element) -> Rect:
    x, y = float(el.get("x", 0)), float(el.get("y", 0))
    return (x, y, x + float(el.get("width", 0)), y + float(el.get("height", 0)))


def path_points(d: str) -> list[tuple[float, float]]:
    """Every coordinate pair in ``d``: with corners drawn as ``Q`` (control point = the
    corner) this is exactly the orthogonal polyline the router found.
    """
    numbers = [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", d)]
    return list(zip(numbers[::2], numbers[1::2], strict=True))


def segment_hits(p: tuple[float, float], q: tuple[float, float], r: Rect) -> bool:
    """Whether the axis-aligned segment pq passes through the inside of ``r``."""
    x0, x1 = sorted((p[0], q[0]))
    y0, y1 = sorted((p[1], q[1]))
    return x0 < r[2] and x1 > r[0] and y0 < r[3] and y1 > r[1]


def check_geometry(svg: str) -> None:
    root = ET.fromstring(svg)
    nodes = {el.get("data-name"): rect_of(el) for el in root.iter(f"{NS}rect")
             if el.get("class") == "node"}
    groups = {el.get("data-name"): rect_of(el) for el in root.iter(f"{NS}rect")
              if el.get("class") == "group"}
    labels: list[tuple[str, Rect]] = []
    titles: list[tuple[str, Rect]] = []
    for el in root.iter(f"{NS}text"):
        cls = el.get("class", "")
        if cls in FONT:
            size, bold = FONT[cls]
            box = text_box(float(el.get("x", 0)), float(el.get("y", 0)), el.text or "", size,
                           bold)
            (labels if cls == "e" else titles).append((el.text or "", box))
    assert nodes and labels

    for (ta, a), (tb, b) in combinations(labels, 2):
        assert not overlap(a, b), f"labels {ta!r} and {tb!r} overlap"
    for text, box in labels:
        for name, node in nodes.items():
            assert not overlap(box, node), f"label {text!r} covers the box {name}"
        for title, tbox in titles:
            assert not overlap(box, tbox), f"label {text!r} covers the title {title!r}"

    for el in root.iter(f"{NS}path"):
        if el.get("class") != "link":
            continue
        ends = {el.get("data-from"), el.get("data-to")}
        points = path_points(el.get("d", ""))
        assert len(points) >= 2
        for p, q in pairwise(points):
            assert p[0] == q[0] or p[1] == q[1], f"{ends}: not orthogonal at {p} {q}"
            for name, node in nodes.items():  # not through any box, not even its own ends
                assert not segment_hits(p, q, node), f"edge {ends} crosses the box {name}"
            for name, frame in groups.items():
                if not any(str(end).startswith(f"{name}.") for end in ends):
                    assert not segment_hits(p, q, frame), f"edge {ends} crosses group {name}"
            for title, tbox in titles:  # a tight width estimate here: 0.5 em a character
                x0, y0, _x1, y1 = tbox
                tight = (x0, y0, x0 + len(title) * 13 * 0.5, y1)
                assert not segment_hits(p, q, tight), f"edge {ends} crosses {title!r}"
        for end, point in ((el.get("data-from"), points[0]), (el.get("data-to"), points[-1])):
            x0, y0, x1, y1 = nodes[str(end)]
            on_side = (x0 <= point[0] <= x1 and point[1] in (y0, y1)) or (
                y0 <= point[1] <= y1 and point[0] in (x0, x1))
            assert on_side, f"edge {ends} does not end on the side of {end}"


@pytest.mark.parametrize("path", STOCK, ids=[p.stem for p in STOCK])
def test_stock_drawings_have_no_collisions(path: Path) -> None:
    svg = render_svg(load_topology(path, SETS.get(path.stem, {})))
    check_geometry(svg)


@pytest.mark.parametrize("name", ["cloudmatrix384", "dgx_a100_superpod"])
def test_drawing_is_byte_identical(name: str) -> None:
    path = ROOT / f"{name}.topo"
    assert render_svg(load_topology(path)) == render_svg(load_topology(path))


def test_drawing_is_self_contained() -> None:
    svg = render_svg(load_topology(ROOT / "gb200_nvl72.topo"))
    assert "http" not in svg.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "@import" not in svg and "@font-face" not in svg and "<image" not in svg


def test_cloudmatrix_tiers_and_labels() -> None:
    """The UB tiers sit side by side with the RDMA and VPC leaves, each under what it
    serves, so the ub_l1 -> ub_l2 edge is a straight drop past no other box.
    """
    svg = render_svg(load_topology(ROOT / "cloudmatrix384.topo"))
    root = ET.fromstring(svg)
    rects = {el.get("data-name"): rect_of(el) for el in root.iter(f"{NS}rect")
             if el.get("data-name")}
    assert rects["ub_l2"][1] == rects["rdma"][1] == rects["vpc"][1]  # one row
    assert rects["rdma"][2] < rects["ub_l2"][0] and rects["ub_l2"][2] < rects["vpc"][0]
    (ub,) = [el for el in root.iter(f"{NS}path") if el.get("data-to") == "ub_l2"]
    assert len(path_points(ub.get("d", ""))) == 2  # one straight segment
    texts = [el.text for el in root.iter(f"{NS}text") if el.get("class") == "e"]
    assert sorted(texts) == sorted(["392 GB/s ×384", "160 GB/s ×192", "3.14 TB/s ×48",
                                    "50 GB/s ×384", "50 GB/s ×48"])


@settings(max_examples=int(__import__("os").environ.get("TOPO_EXAMPLES", 15)), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(models())
def test_generated_drawings_have_no_collisions(m: Model) -> None:
    check_geometry(render_svg(load_topology(render(m, 0))))
