"""The one-screen summary ``shardc topo check`` prints, as plain data.

Kept apart from the CLI so that the ``--json`` output and the table are the same
numbers, and so that reports can reuse it. Domains are grouped by shape: 32 NVLink
islands of 8 GPUs is one line, not 32.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from shardc.topology.model import DTYPES, Topology


def _kinds(topo: Topology) -> list[dict[str, Any]]:
    counts = Counter(d.kind.name for d in topo.devices)
    rows = []
    for name in sorted(counts):
        kind = topo.kinds[name]
        rows.append({
            "kind": name,
            "count": counts[name],
            "role": kind.role,
            "host": kind.is_host,
            "peak_flops": {d: kind.peak_flops[d] for d in DTYPES if d in kind.peak_flops},
            "memory_bytes": kind.memory_bytes,
            "memory_bandwidth": kind.memory_bandwidth,
        })
    return rows


def _aggregate(topo: Topology) -> dict[str, Any]:
    dtypes = [d for d in DTYPES if any(d in k.peak_flops for k in topo.kinds.values())]
    compute = topo.compute_devices
    return {
        "compute_devices": len(compute),
        "peak_flops": {d: topo.aggregate_flops(d) for d in dtypes},
        "memory_bytes": topo.aggregate_memory(),
        "memory_bandwidth": sum(d.kind.memory_bandwidth or 0.0 for d in compute),
    }


def _plane(topo: Topology, plane: str) -> dict[str, Any]:
    links = [link for link in topo.links if link.plane == plane]
    names = {d.name for d in topo.devices}
    ports = [link.bandwidth for link in links if link.a in names or link.b in names]
    shapes: Counter = Counter()
    examples: dict[tuple, Any] = {}
    for domain in topo.bandwidth_domains(plane=plane):
        shape = (domain.size, domain.kinds)
        shapes[shape] += 1
        if shape not in examples and domain.size > 1:
            examples[shape] = topo.collective(domain.devices, plane)
    domains = []
    for (size, kinds), count in sorted(shapes.items(), key=lambda x: (-x[0][0], x[0][1])):
        entry: dict[str, Any] = {"count": count, "size": size, "kinds": dict(kinds)}
        coll = examples.get((size, kinds))
        if coll is not None:
            entry.update(bandwidth=coll.bandwidth, hops=coll.hops, latency=coll.latency)
        domains.append(entry)
    on_plane = {x for link in links for x in (link.a, link.b)}
    return {
        "plane": plane,
        "kinds": sorted({link.kind for link in links}),
        "links": len(links),
        "switches": sum(1 for s in topo.switches if s.plane == plane),
        "port_bandwidth": [min(ports), max(ports)] if ports else None,
        "hosts": sum(1 for d in topo.devices if d.kind.is_host and d.name in on_plane),
        "domains": domains,
    }


def summarize(topo: Topology) -> dict[str, Any]:
    """Devices per kind, aggregate compute and memory, planes and bandwidth domains."""
    return {
        "name": topo.name,
        "file": topo.source,
        "params": dict(topo.params),
        "devices": len(topo.devices),
        "compute_devices": len(topo.compute_devices),
        "switches": len(topo.switches),
        "links": len(topo.links),
        "kinds": _kinds(topo),
        "aggregate": _aggregate(topo),
        "planes": [_plane(topo, p) for p in topo.planes],
    }
