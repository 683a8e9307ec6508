"""``render_svg``'s hooks: what a caller draws over the topology picture lands where the
drawing says (each box's own rectangle, each edge's own path), and only there.

The HTML report paints its placement and link load through these hooks, so they are
what keeps it from reading the SVG text back.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from shardc.topology import load_topology
from shardc.topology.model import Topology
from shardc.topology.svg import DrawnEdge, LinkStyle, Rect, render_svg

ROOT = Path(__file__).resolve().parents[2] / "topologies"
NS = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def dgx() -> Topology:
    return load_topology(ROOT / "dgx_h100.topo")


@pytest.fixture(scope="module")
def mixed() -> Topology:  # five edges of two link kinds; two device kinds
    return load_topology(ROOT / "h100_h20_mixed.topo")


def _lines(svg: str) -> list[str]:
    return svg.rstrip("\n").split("\n")


def test_overlay_is_drawn_over_each_box_with_its_own_rectangle(dgx: Topology) -> None:
    seen: dict[str, Rect] = {}

    def mark(glyph: str, box: Rect) -> str:
        seen[glyph] = box
        x, y, w, h = box
        return f'<rect class="mark" x="{x}" y="{y}" width="{w}" height="{h}"/>'

    plain, marked = render_svg(dgx), render_svg(dgx, overlay=mark)
    nodes = {
        el.get("data-name"): tuple(float(el.get(a, "")) for a in ("x", "y", "width", "height"))
        for el in ET.fromstring(plain).iter(f"{NS}rect")
        if el.get("class") == "node"
    }
    assert nodes and set(seen) == set(nodes)  # every device range and switch, once
    assert {g: tuple(map(float, r)) for g, r in seen.items()} == nodes
    lines = _lines(marked)
    for i, line in enumerate(lines):  # each mark right over its box, under its labels
        if line.startswith('<rect class="mark"'):
            assert lines[i - 1].startswith('<rect class="node"')
            assert lines[i + 1].startswith("<text ") and 'class="l"' in lines[i + 1]
    # nothing else moves: dropping the marks gives the plain drawing back
    assert [ln for ln in lines if not ln.startswith('<rect class="mark"')] == _lines(plain)


def test_overlay_returning_none_draws_nothing(dgx: Topology) -> None:
    assert render_svg(dgx, overlay=lambda _g, _b: None) == render_svg(dgx)


def test_link_style_restyles_only_the_path_it_was_asked_about(mixed: Topology) -> None:
    asked: list[DrawnEdge] = []

    def style(edge: DrawnEdge) -> LinkStyle | None:
        asked.append(edge)
        if len(asked) % 2 == 0:  # every other edge keeps the default
            return None
        return LinkStyle(colour="#123456", width=edge.width + 2, opacity=0.5, note="; hot")

    plain, styled = (
        ET.fromstring(render_svg(mixed)),
        ET.fromstring(render_svg(mixed, link_style=style)),
    )
    paths = [p for p in plain.iter(f"{NS}path") if p.get("class") == "link"]
    after = [p for p in styled.iter(f"{NS}path") if p.get("class") == "link"]
    assert len(asked) == len(paths) == len(after) > 1
    for n, (edge, old, new) in enumerate(zip(asked, paths, after, strict=True)):
        assert (old.get("data-from"), old.get("data-to")) == (edge.a, edge.b)
        assert float(old.get("stroke-width", "")) == edge.width
        title_old, title_new = old.find(f"{NS}title"), new.find(f"{NS}title")
        assert title_old is not None and title_new is not None
        assert f"{edge.kind} ({edge.plane}): {edge.count} link(s)" in (title_old.text or "")
        if n % 2 == 1:
            assert ET.tostring(old) == ET.tostring(new)
            continue
        assert new.get("stroke") == "#123456"
        assert new.get("stroke-width") == f"{edge.width + 2:.1f}"
        assert new.get("stroke-opacity") == "0.5"
        assert title_new.text == (title_old.text or "") + "; hot"
        assert new.get("d") == old.get("d")
    # labels and leaders keep the link kind's colour
    texts = lambda root: [ET.tostring(t) for t in root.iter(f"{NS}text")]  # noqa: E731
    assert texts(plain) == texts(styled)


def test_kind_legend_off_drops_the_swatches_and_keeps_the_size(mixed: Topology) -> None:
    plain, bare = render_svg(mixed), render_svg(mixed, kind_legend=False)
    swatch = re.compile(r'^<rect x="[-\d.]+" y="[-\d.]+" width="16" height="16" ')
    dropped = [ln for ln in _lines(plain) if ln not in _lines(bare)]
    kinds = sorted(mixed.kinds)
    assert len(dropped) == 2 * len(kinds)  # a swatch and its name per device kind
    assert all(swatch.match(ln) for ln in dropped[::2])
    assert [re.sub("<[^>]*>", "", ln) for ln in dropped[1::2]] == kinds
    assert _lines(plain)[0] == _lines(bare)[0]  # the same width and height


def test_style_scope_keeps_every_selector_inside_the_id(dgx: Topology) -> None:
    plain, scoped = render_svg(dgx), render_svg(dgx, style_scope="map")
    style = re.findall(r"<style>(.*?)</style>", scoped)
    assert len(style) == 1
    rules = re.findall(r"([^{}]+)\{", style[0])
    assert rules and all(sel.startswith("#map .") for sel in rules)
    unscoped = re.findall(r"<style>(.*?)</style>", plain)[0]
    assert style[0].replace("#map ", "") == unscoped
    assert scoped.replace("#map ", "") == plain
