"""Graph views of a topology: the public networkx graph and the internal plane index.

The networkx :class:`~networkx.MultiGraph` is for users and for tools that want graph
algorithms (drawing, custom analyses): devices and switches are nodes, every link is an
edge keyed by its plane. The queries in :mod:`.queries` do not use it: they walk plain
per-plane adjacency lists (:class:`PlaneIndex`), which are several times faster than
networkx subgraph views and keep a 10,000-device query in the low milliseconds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import networkx as nx

if TYPE_CHECKING:
    from shardc.topology.model import Link, Topology


def to_networkx(topo: Topology) -> nx.MultiGraph:
    """Devices (``type='device'``, kind, rank), switches (``type='switch'``) and links.

    Edge attributes: ``bandwidth`` (bytes/s per direction), ``latency`` (s), ``kind``,
    ``plane``, ``fabric``, ``efficiency``; the edge key is the plane.
    """
    graph = nx.MultiGraph(name=topo.name)
    graph.add_nodes_from(
        (d.name, {"type": "device", "kind": d.kind.name, "rank": d.rank, "host": d.kind.is_host})
        for d in topo.devices
    )
    graph.add_nodes_from(
        (s.name, {"type": "switch", "kind": s.kind, "plane": s.plane, "tier": s.tier,
                  "fabric": s.fabric})
        for s in topo.switches
    )
    graph.add_edges_from(
        (link.a, link.b, link.plane,
         {"bandwidth": link.bandwidth, "latency": link.latency, "kind": link.kind,
          "plane": link.plane, "fabric": link.fabric, "efficiency": link.efficiency})
        for link in topo.links
    )
    return graph


class PlaneIndex:
    """Adjacency per plane: ``adj[plane][node] -> [(neighbour, link index), ...]``."""

    def __init__(self, topo: Topology):
        self.links: tuple[Link, ...] = topo.links
        self.adj: dict[str, dict[str, list[tuple[str, int]]]] = {}
        self.switches = frozenset(s.name for s in topo.switches)
        for i, link in enumerate(topo.links):
            adj = self.adj.setdefault(link.plane, {})
            adj.setdefault(link.a, []).append((link.b, i))
            adj.setdefault(link.b, []).append((link.a, i))

    def planes_of(self, node: str) -> list[str]:
        """The planes a node has links on, sorted."""
        return sorted(p for p, adj in self.adj.items() if node in adj)
