"""The canonical form: one description per cluster, however its file was spelt.

Ranges or spelled-out names, parameters or literals, ``1.6 TB/s`` or ``1600 GB/s``,
a network's sugar or explicit switches and links: all reduce to the same sets of kinds,
devices, switches and links with SI values, sorted in natural name order (``gpu2``
before ``gpu10``). Declaration order (and so rank numbering), parameter names, fabric
names and kinds defined but unused are spelling, not cluster, and are left out.

Two renderings: :func:`to_json` (the export; deterministic, byte-identical across runs)
and :func:`to_dsl` (topology text spelling every device, switch and link, which parses
back to an equal topology — the round trip the property tests check).
"""

from __future__ import annotations

import json
import re
from typing import Any

from shardc.topology import units
from shardc.topology.model import DTYPES, DeviceKind, Topology

FORMAT = "shardc.topology/1"
_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple:
    """Sort key that orders ``node2.gpu10`` after ``node2.gpu9``."""
    parts = _DIGITS.split(name)
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts))


def _kind(kind: DeviceKind) -> dict[str, Any]:
    return {
        "peak_flops": dict(sorted(kind.peak_flops.items())),
        "memory_bytes": kind.memory_bytes,
        "memory_bandwidth": kind.memory_bandwidth,
        "compute_efficiency": kind.compute_efficiency,
        "memory_efficiency": kind.memory_efficiency,
        **({"compute_curve": [list(p) for p in kind.compute_curve]} if kind.compute_curve else {}),
        **({"memory_curve": [list(p) for p in kind.memory_curve]} if kind.memory_curve else {}),
        **({"kernel_launch": kind.kernel_launch} if kind.kernel_launch else {}),
        "tags": dict(sorted(kind.tags.items())),
    }


def canonical(topo: Topology) -> dict[str, Any]:
    """A JSON-ready dict describing the cluster and nothing of its spelling."""
    ends = []
    for link in topo.links:
        a, b = sorted((link.a, link.b), key=natural_key)
        ends.append(((natural_key(a), natural_key(b), link.plane), a, b, link))
    ends.sort(key=lambda x: x[0])
    links = [{"a": a, "b": b, "plane": link.plane, "kind": link.kind,
              "bandwidth": link.bandwidth, "latency": link.latency,
              "efficiency": link.efficiency} for _, a, b, link in ends]
    return {
        "format": FORMAT,
        "kinds": {name: _kind(topo.kinds[name]) for name in sorted(topo.kinds)},
        "devices": [{"name": d.name, "kind": d.kind.name}
                    for d in sorted(topo.devices, key=lambda d: natural_key(d.name))],
        "switches": [{"name": s.name, "kind": s.kind, "plane": s.plane,
                      **({"reduction": True} if s.reduction else {})}
                     for s in sorted(topo.switches, key=lambda s: natural_key(s.name))],
        "links": links,
    }


def to_json(topo: Topology) -> str:
    """Canonical JSON text, ending in a newline."""
    return json.dumps(canonical(topo), indent=2, sort_keys=True, ensure_ascii=True) + "\n"


# --------------------------------------------------------------------------- text form
def _kind_text(name: str, kind: DeviceKind) -> list[str]:
    lines = [f"kind {name} {{"]
    for dtype in sorted(kind.peak_flops, key=DTYPES.index):
        lines.append(f"    compute {dtype} {units.exact(kind.peak_flops[dtype], units.COMPUTE)}")
    if kind.memory_bytes is not None:
        lines.append(f"    memory {units.exact(kind.memory_bytes, units.SIZE)}")
    if kind.memory_bandwidth is not None:
        lines.append(f"    memory_bandwidth {units.exact(kind.memory_bandwidth, units.BANDWIDTH)}")
    for which in ("compute", "memory"):
        factor = getattr(kind, f"{which}_efficiency")
        if factor != 1.0:
            lines.append(f"    efficiency {which} {factor!r}")
    for at, e in kind.compute_curve:
        lines.append(f"    efficiency compute {e!r} at {units.exact(at, units.TIME)}")
    for at, e in kind.memory_curve:
        lines.append(f"    efficiency memory {e!r} at {units.exact(at, units.SIZE)}")
    if kind.kernel_launch:
        lines.append(f"    launch {units.exact(kind.kernel_launch, units.TIME)}")
    for key, value in sorted(kind.tags.items()):
        lines.append(f'    tag {key} "{value}"' if value else f"    tag {key}")
    return [*lines, "}"]


def _tree(topo: Topology) -> dict:
    """Names split on '.' into nested dicts; leaves are the declaration lines."""
    root: dict = {}
    entries = [(d.name, f"{{}}: {d.kind.name}") for d in topo.devices]
    entries += [(s.name, f"switch {{}}: {s.kind} {{{{ plane {s.plane}"
                 + ("; reduction" if s.reduction else "") + " }}")
                for s in topo.switches]
    for name, template in entries:
        *groups, local = name.split(".")
        node = root
        for group in groups:
            node = node.setdefault(group, {})
        node[local] = template.format(local)
    return root


def _emit(node: dict, depth: int, out: list[str]) -> None:
    pad = "    " * depth
    for local in sorted(node, key=natural_key):
        child = node[local]
        if isinstance(child, dict):
            out.append(f"{pad}{local} {{")
            _emit(child, depth + 1, out)
            out.append(f"{pad}}}")
        else:
            out.append(pad + child)


def to_dsl(topo: Topology) -> str:
    """Topology text spelling out every device, switch and link of ``topo``."""
    out = [f"# canonical form of {topo.name}: every device, switch and link spelt out"]
    for name in sorted(topo.kinds):
        out.extend(_kind_text(name, topo.kinds[name]))
    _emit(_tree(topo), 0, out)
    for link in canonical(topo)["links"]:
        eff = f"; efficiency {link['efficiency']!r}" if link["efficiency"] != 1.0 else ""
        out.append(
            f"link {link['a']} <-> {link['b']}: {link['kind']} {{ "
            f"bandwidth {units.exact(link['bandwidth'], units.BANDWIDTH)}; "
            f"latency {units.exact(link['latency'], units.TIME)}; plane {link['plane']}{eff} }}"
        )
    return "\n".join(out) + "\n"
