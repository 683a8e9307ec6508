"""``shardc topo``: check, show and export topology files.

Thin by design: parse options, call :mod:`shardc.topology`, print with rich. Errors are
:class:`~shardc.errors.ShardcError` subclasses, which the top-level group prints as one
line (plus the caret context for topology errors) with exit status 2.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from shardc.cli.options import console as _console
from shardc.cli.options import include_path_option
from shardc.errors import OptionError, TopologyError
from shardc.report.text import markup_safe
from shardc.topology import Topology, load_topology, units
from shardc.topology.hierarchy import fold, walk
from shardc.topology.loader import stock_topologies
from shardc.topology.model import INT_DTYPES
from shardc.topology.summary import summarize
from shardc.topology.svg import render_svg

_SET_HELP = "Override a 'let' parameter of the file (repeatable), e.g. --set nodes=4."


def parse_sets(values: tuple[str, ...]) -> dict[str, str]:
    """``("nodes=4", ...)`` to ``{"nodes": "4"}``; a malformed item is an OptionError."""
    out: dict[str, str] = {}
    for item in values:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name.isidentifier() or not value.strip():
            raise OptionError(f"--set expects NAME=VALUE, got {item!r}", hint="e.g. --set nodes=4")
        if name in out:
            raise OptionError(f"--set {name} is given twice")
        out[name] = value.strip()
    return out


def _load(file: str, sets: tuple[str, ...], include_path: tuple[Path, ...]) -> Topology:
    """FILE may be a path or the name of a topology on the search path (``gb200_nvl72``)."""
    return load_topology(file, parse_sets(sets), include_path=include_path)


@click.group("topo")
def topo() -> None:
    """Check, show and export cluster topology files (.topo)."""


@topo.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--set", "sets", multiple=True, metavar="NAME=VALUE", help=_SET_HELP)
@include_path_option
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
def check(
    file: str, sets: tuple[str, ...], include_path: tuple[Path, ...], as_json: bool
) -> None:
    """Report errors, or summarise: devices per kind, aggregates, planes, domains."""
    summary = summarize(_load(file, sets, include_path))
    if as_json:
        click.echo(json.dumps(summary, indent=2, sort_keys=True))
        return
    _print_summary(_console(), summary)


def _print_summary(console: Console, s: dict) -> None:
    params = ", ".join(f"{k}={v}" for k, v in s["params"].items())
    console.print(
        f"[bold]{markup_safe(s['name'])}[/] ({markup_safe(s['file'])}): OK: {s['devices']} devices "
        f"({s['compute_devices']} compute), {s['switches']} switches, {s['links']} links"
    )
    if params:
        console.print(f"parameters: {markup_safe(params)}")
    dtypes = list(s["aggregate"]["peak_flops"])
    kinds = Table(title="Devices", title_justify="left")
    for column in ("kind", "role", "count", *dtypes, "memory", "mem bw"):
        kinds.add_column(column, justify="left" if column in ("kind", "role") else "right")
    for k in s["kinds"]:
        flops = [_rate(k["peak_flops"].get(d), d) for d in dtypes]
        kinds.add_row(markup_safe(k["kind"]), markup_safe(k["role"] or "-"), str(k["count"]),
                      *flops,
                      units.human(k["memory_bytes"], units.SIZE),
                      units.human(k["memory_bandwidth"], units.BANDWIDTH))
    console.print(kinds)
    agg = s["aggregate"]
    peaks = " · ".join(f"{d} {_rate(v, d)}" for d, v in agg["peak_flops"].items())
    console.print(
        f"Aggregate over {agg['compute_devices']} compute devices: {peaks} · memory "
        f"{units.human(agg['memory_bytes'], units.SIZE)} · memory bandwidth "
        f"{units.human(agg['memory_bandwidth'], units.BANDWIDTH)}"
    )
    planes = Table(title="Planes and bandwidth domains", title_justify="left")
    for column in ("plane", "kinds", "links", "switches", "device ports", "domains"):
        planes.add_column(column)
    for p in s["planes"]:
        ports = p["port_bandwidth"]
        port_text = "-" if not ports else " – ".join(
            dict.fromkeys(units.human(x, units.BANDWIDTH) for x in ports))
        planes.add_row(markup_safe(p["plane"]), markup_safe(", ".join(p["kinds"])),
                       str(p["links"]), str(p["switches"]), port_text,
                       markup_safe(_domains_text(p)))
    console.print(planes)


def _rate(value: float | None, dtype: str) -> str:
    text = units.human(value, units.COMPUTE)
    return text.replace("FLOPS", "OPS") if dtype in INT_DTYPES else text


def _domains_text(plane: dict) -> str:
    lines = []
    for d in plane["domains"]:
        kinds = " + ".join(f"{n} {k}" for k, n in d["kinds"].items())
        line = f"{d['count']} × ({kinds})"
        if "bandwidth" in d:
            line += (f": {units.human(d['bandwidth'], units.BANDWIDTH)}/device, "
                     f"{d['hops']} hops, {units.human(d['latency'], units.TIME)}")
        lines.append(line)
    if plane["hosts"]:
        lines.append(f"+ {plane['hosts']} host devices")
    return "\n".join(lines) or "-"


@topo.command("show")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--set", "sets", multiple=True, metavar="NAME=VALUE", help=_SET_HELP)
@include_path_option
@click.option("--svg", "svg_out", type=click.Path(dir_okay=False), default=None,
              help="Also write a drawing of the (folded) hierarchy to this SVG file.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the folded hierarchy as one JSON object instead of a table.")
def show(
    file: str,
    sets: tuple[str, ...],
    include_path: tuple[Path, ...],
    svg_out: str | None,
    as_json: bool,
) -> None:
    """Print the hierarchy as a table (repeated groups folded); optionally draw it."""
    topology = _load(file, sets, include_path)
    console = _console()
    ports: dict[str, list[str]] = {}
    names = {d.name for d in topology.devices} | {s.name for s in topology.switches}
    for link in topology.links:
        for end in (link.a, link.b):
            if end in names:
                text = f"{link.plane} {units.human(link.bandwidth, units.BANDWIDTH)}"
                ports.setdefault(end, [])
                if text not in ports[end]:
                    ports[end].append(text)
    rows = [
        {
            "depth": depth,
            "name": entry.label,
            "count": entry.count,
            "what": entry.what,
            "kind": entry.kind,
            "host": entry.host,
            "links": ports.get(entry.first, []),
        }
        for depth, entry in walk(fold(topology))
    ]
    if svg_out:
        try:
            Path(svg_out).write_text(render_svg(topology), encoding="utf-8")
        except OSError as exc:
            raise OptionError(f"cannot write {svg_out}: {exc.strerror or exc}") from None
    if as_json:
        click.echo(json.dumps({"name": topology.name, "devices": len(topology.devices),
                               "compute_devices": len(topology.compute_devices),
                               "hierarchy": rows}, indent=2, sort_keys=True))
        return
    table = Table(
        title=f"{markup_safe(topology.name)}: {len(topology.devices)} devices", title_justify="left"
    )
    for column in ("name", "count", "what", "links of one (plane, bandwidth)"):
        table.add_column(column)
    for row in rows:
        what = {"group": "group", "device": row["kind"], "switch": f"switch ({row['kind']})"}
        label = what[row["what"]] + (" [host]" if row["host"] else "")
        table.add_row(
            markup_safe("  " * row["depth"] + row["name"]),
            str(row["count"]),
            markup_safe(label),
            markup_safe(", ".join(row["links"])),
        )
    console.print(table)
    if svg_out:
        console.print(f"wrote {markup_safe(svg_out)}")


@topo.command("export")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--set", "sets", multiple=True, metavar="NAME=VALUE", help=_SET_HELP)
@include_path_option
@click.option("--json", "fmt", flag_value="json", default=True,
              help="Canonical JSON on stdout (the default).")
@click.option("--dsl", "fmt", flag_value="dsl",
              help="Canonical topology text instead: every device, switch and link.")
def export(file: str, sets: tuple[str, ...], include_path: tuple[Path, ...], fmt: str) -> None:
    """Print the canonical form: deterministic, byte-identical across runs."""
    topology = _load(file, sets, include_path)
    click.echo(topology.to_json() if fmt == "json" else topology.to_dsl(), nl=False)


@topo.command("list")
@include_path_option
@click.option("--json", "as_json", is_flag=True, help="Print the list as one JSON object.")
def list_cmd(include_path: tuple[Path, ...], as_json: bool) -> None:
    """List the topologies addressable by name: stock ones and those on the search path.

    Any of them can be given by name where a topology file is expected
    (``shardc compile m.onnx --topology gb200_nvl72``); the first folder on the search
    path (--include-path, $SHARDC_TOPOLOGY_PATH, the stock folder) wins a name.
    """
    entries = []
    for stock in stock_topologies(include_path):
        try:
            topology = load_topology(stock.path, include_path=include_path)
            devices: int | None = len(topology.devices)
            compute: int | None = len(topology.compute_devices)
        except TopologyError:
            devices = compute = None  # listed anyway: `topo check` says what is wrong
        entries.append({"name": stock.name, "devices": devices, "compute_devices": compute,
                        "description": stock.description, "path": str(stock.path)})
    if as_json:
        click.echo(json.dumps({"topologies": entries}, indent=2, sort_keys=True))
        return
    table = Table(title="Topologies by name", title_justify="left")
    for column in ("name", "devices", "description"):
        table.add_column(column, justify="right" if column == "devices" else "left")
    for e in entries:
        count = "?" if e["devices"] is None else str(e["devices"])
        if e["devices"] is not None and e["compute_devices"] != e["devices"]:
            count += f" ({e['compute_devices']} compute)"
        table.add_row(str(e["name"]), count, str(e["description"]))
    _console().print(table)
