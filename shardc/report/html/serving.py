"""The HTML report of a serving plan: both phases, the instances, the KV hand-off, the
expert all-to-all, the Pareto table, and the map with prefill and decode devices and the
links the traffic loads.

Why its own page: a serving plan has no stages or timeline; its questions are which
devices prefill and which decode, what crosses between them and how hot the links get.
The tables read the fields :mod:`shardc.report.serving` prints, formatted by the same
functions, so the page and the terminal never disagree. The map is the topology drawing
of :func:`~shardc.topology.svg.render_svg`, painted through its hooks: ``overlay`` fills
each device box in slices by role, ``link_style`` colours each edge by the traffic the
plan's :class:`~shardc.plan.serving.LinkTraffic` records put on its links (the KV
hand-off in violet, the all-to-all in orange; thicker = more bytes/s). The SVG is never
read back.
"""

from __future__ import annotations

from collections import Counter
from html import escape

from shardc.plan.model import PlanData
from shardc.plan.serving import LinkTraffic, ServingPlan
from shardc.report.html.common import TOPOLOGY_ID, UNUSED, _fact, _swatch, _tint
from shardc.report.html.map import _links_by_ends
from shardc.report.serving import (
    INSTANCE_COLUMNS,
    PARETO_COLUMNS,
    alternative_line,
    exchange_name,
    expert_lines,
    headline,
    instance_rows,
    kv_line,
    link_name,
    ms,
    pareto_rows,
    rate,
    size,
    workload_line,
)
from shardc.topology.hierarchy import fold, glyph_map
from shardc.topology.model import Topology
from shardc.topology.svg import DrawnEdge, LinkStyle, LinkStyler, Rect, render_svg

ROLE_COLOURS = {"prefill": "#2563eb", "decode": "#16a34a", "aggregated": "#0d9488"}
TRAFFIC_COLOURS = {"kv": "#7c3aed", "a2a": "#ea580c"}
TRAFFIC_NAMES = {"kv": "KV hand-off", "a2a": "expert all-to-all"}

_EdgeKey = tuple[str, str, str, str, float]


def _table(columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return (f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def _links_table(title: str, links: tuple[LinkTraffic, ...], unit: str) -> str:
    if not links:
        return f'<p class="note">{escape(title)}: crosses no links.</p>'
    rows: list[tuple[str, ...]] = [(str(i + 1), link_name(x), size(x.nbytes), rate(x.bytes_per_s))
                                   for i, x in enumerate(links[:10])]
    return (f'<h3 style="font-size:14px;margin:12px 0 6px">{escape(title)}: busiest links '
            f"(top {len(rows)} of {len(links)})</h3>"
            + _table(("#", "link", f"bytes {unit}", "load"), rows))


def _edge_traffic(s: ServingPlan, topology: Topology, glyphs: dict[str, str]
                  ) -> dict[_EdgeKey, dict[str, float]]:
    """Per drawn edge: the busiest link's bytes/s of each kind of traffic on it."""
    by_ends = _links_by_ends(topology)
    out: dict[_EdgeKey, dict[str, float]] = {}
    sources = [("kv", x) for x in (s.kv_transfer.links if s.kv_transfer else ())]
    sources += [("a2a", x) for e in s.expert_traffic for x in e.links]
    for what, x in sources:
        link = by_ends.get((min(x.a, x.b), max(x.a, x.b)))
        if link is None or link.a not in glyphs or link.b not in glyphs:
            continue
        ga, gb = sorted((glyphs[link.a], glyphs[link.b]))
        loads = out.setdefault((ga, gb, link.kind, link.plane, link.bandwidth), {})
        loads[what] = max(loads.get(what, 0.0), x.bytes_per_s)
    return out


def _traffic_style(loads: dict[_EdgeKey, dict[str, float]], names: dict[str, str]
                   ) -> LinkStyler:
    """Edges that carry the plan's traffic coloured by what (KV or all-to-all) and
    thickened by their busiest link's load; the rest faded.
    """
    peak = max((v for d in loads.values() for v in d.values()), default=0.0)

    def style(edge: DrawnEdge) -> LinkStyle:
        load = loads.get((edge.a, edge.b, edge.kind, edge.plane, edge.bandwidth))
        if not load or not peak:
            return LinkStyle(opacity=0.2)
        what = max(sorted(load), key=lambda k: load[k])
        share = max(load.values()) / peak
        note = "; " + ", ".join(f"{names[k]}: busiest link {rate(v)}"
                                for k, v in sorted(load.items()))
        return LinkStyle(colour=TRAFFIC_COLOURS[what], width=edge.width + 1 + 7 * share,
                         opacity=0.95, note=note)

    return style


def _role_slices(box: Rect, roles: Counter) -> str:
    """A device box filled in slices by the share of its devices in each role."""
    x, y, w, h = (float(v) for v in box)
    total = sum(roles.values())
    order: list[str | None] = [r for r in ("prefill", "decode", "aggregated") if r in roles]
    order += [None] if None in roles else []
    title = ", ".join(f"{r or 'not used'}: {roles[r]}" for r in order)
    g = [f"<g><title>{escape(title)}</title>"]
    left = x + 1
    for r in order:
        sw = (w - 2) * roles[r] / total
        fill = _tint(ROLE_COLOURS[r], 0.45) if r else UNUSED
        g.append(f'<rect x="{left:.2f}" y="{y + 1:g}" width="{sw:.2f}" height="{h - 2:g}" '
                 f'fill="{fill}"/>')
        left += sw
    g.append("</g>")
    return "".join(g)


def _map(s: ServingPlan, topology: Topology) -> str:
    glyphs = glyph_map(fold(topology))
    role = {d: r for d, (r, _) in s.role_of().items()}
    per_glyph: dict[str, Counter] = {}
    for device in topology.devices:
        if device.kind.is_host:
            continue
        per_glyph.setdefault(glyphs[device.name], Counter())[role.get(device.name)] += 1

    def slices(glyph: str, box: Rect) -> str | None:
        return _role_slices(box, per_glyph[glyph]) if glyph in per_glyph else None

    names = {**TRAFFIC_NAMES, "a2a": exchange_name(s)}
    svg = render_svg(topology, overlay=slices,
                     link_style=_traffic_style(_edge_traffic(s, topology, glyphs), names),
                     kind_legend=False, style_scope=TOPOLOGY_ID)
    legend = "".join(f"<span>{_swatch(_tint(c, 0.45))}{r} devices</span>"
                     for r, c in ROLE_COLOURS.items() if r in role.values())
    legend += f"<span>{_swatch(UNUSED)}not used</span>"
    legend += "".join(f"<span>{_swatch(TRAFFIC_COLOURS[k])}{names[k]} links</span>"
                      for k in ("kv", "a2a"))
    return (
        '<section id="topology"><h2>Prefill and decode on the cluster</h2>'
        '<p class="sub">the folded topology drawing: repeated hardware is drawn once (×N), '
        "so a device box is filled in slices by the share of its devices in each role; "
        "links are coloured by the plan's traffic (thicker = more bytes/s on the busiest "
        "link), idle ones faded.</p>"
        f'<div class="legend">{legend}</div>'
        f'<div class="scroll" style="margin-top:8px"><div id="{TOPOLOGY_ID}">\n'
        f"{svg.rstrip()}\n</div></div></section>"
    )


def render_serving_html(plan: PlanData, topology: Topology, title: str, css: str,
                        model: str | None) -> str:
    """The report page of a serving plan."""
    s = plan.serving
    assert s is not None, "a serving plan"
    facts = [
        _fact("model", escape(model or "-")),
        _fact("topology", escape(f"{topology.name} ({len(topology.compute_devices)} compute "
                                 "devices)")),
        _fact("mode", escape(s.mode)),
        _fact("TTFT", escape(ms(s.ttft))), _fact("TPOT", escape(ms(s.tpot))),
        _fact("tokens/s per device", escape(f"{s.tokens_per_s_per_device:.4g}")),
        _fact("tokens/s per user", escape(f"{s.tokens_per_s_per_user:.3g}")),
        _fact("devices", escape(f"{s.devices_used} of {s.devices_total}")),
    ]
    traffic = [x for x in (kv_line(s), *expert_lines(s)) if x]
    sections = [
        f'<section><h1>{escape(title)}</h1><p class="sub">{escape(workload_line(s))}</p>'
        f'<p class="sub">{escape(headline(s))}</p><div class="facts">{"".join(facts)}</div>'
        "</section>",
        '<section id="instances"><h2>Instances: prefill and decode</h2>'
        + _table(INSTANCE_COLUMNS, instance_rows(s))
        + f'<p class="note">{escape(alternative_line(s))}</p></section>',
        f'<section id="traffic"><h2>KV hand-off and {exchange_name(s)}</h2>'
        + "".join(f'<p class="sub">{escape(t)}</p>' for t in traffic)
        + (_links_table("KV hand-off (all prefill → decode pairs)", s.kv_transfer.links,
                        "per request") if s.kv_transfer else "")
        + "".join(_links_table(f"{exchange_name(s)}, {e.role} instance 0", e.links,
                               "per step") for e in s.expert_traffic)
        + "</section>",
    ]
    if s.pareto:
        sections.append('<section id="pareto"><h2>Throughput vs TPOT</h2>'
                        + _table(PARETO_COLUMNS, pareto_rows(s)) + "</section>")
    sections.append(_map(s, topology))
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)} on {escape(topology.name)}</title>",
        f"<style>{css}</style>", "</head>", "<body>", "<main>", *sections, "</main>",
        "</body>", "</html>",
    ]) + "\n"
