"""Where a serving plan's traffic goes: the KV hand-off's and the expert all-to-all's links.

Why: the plan says how many bytes the KV hand-off and the MoE dispatch/combine move and
how long they take (:mod:`.fabric`, :mod:`.expert_comm`); the report's map and tables
also need *which links* carry them and how hot each gets, so a reader can see the hand-off
cross the RDMA rails or the all-to-all fill the UB plane. This module routes those bytes on
the topology and sums them per link direction; the records are the plan layer's
:class:`~shardc.plan.serving.LinkTraffic`.

The all-to-all of an EP group of E ranks is E·(E−1) flows (102,080 at EP 320): routing each
with :meth:`Topology.route` (one breadth-first search per pair) would take minutes, so each
sender's routes come from one search (:func:`_tree`), the same widest-among-shortest rule.
Routing is uniform: each rank sends its inner-tier bytes evenly to the ranks of its own
scale-up island and its outer-tier bytes evenly to the others, as
:func:`~shardc.cost.expert_comm.expert_alltoall` counts them.
"""

from __future__ import annotations

from collections.abc import Sequence

from shardc.cost.expert_comm import moe_exchange
from shardc.plan.serving import ExpertTraffic, LinkTraffic, ServingInstance
from shardc.serving.arch import ServingModel
from shardc.serving.fabric import Fabric
from shardc.serving.shapes import Quant, element_bytes
from shardc.topology.queries import route_tree

TOP_LINKS = 64
"""Links kept per traffic record (busiest first): the map and the tables show the hot ones,
and plan.json stays small at EP 320."""

_Hop = tuple[str, str, str]  # plane, from, to


def _tree(fabric: Fabric, plane: str, src: str) -> dict[str, tuple[float, float, str, int]]:
    """Node -> (width, latency, previous node, link index) on the widest (then fastest)
    shortest route from ``src`` on ``plane``: :func:`shardc.topology.queries.route`'s rule,
    for every node at once (the start itself left out).
    """
    best = route_tree(fabric.topo.index, plane, src)
    best.pop(src, None)
    return best  # type: ignore[return-value]  # only the start has no previous node


def _path(tree: dict[str, tuple[float, float, str, int]], dst: str) -> list[tuple[str, str]]:
    hops: list[tuple[str, str]] = []
    node = dst
    while node in tree:
        prev = tree[node][2]
        hops.append((prev, node))
        node = prev
    return hops[::-1]


def _records(load: dict[_Hop, float], per_s: float) -> tuple[LinkTraffic, ...]:
    """The busiest :data:`TOP_LINKS` hops as records; ``per_s`` turns bytes into bytes/s."""
    ordered = sorted(load.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_LINKS]
    return tuple(LinkTraffic(p, a, b, v, v * per_s) for (p, a, b), v in ordered)


def kv_links(fabric: Fabric, instances: Sequence[ServingInstance], plane: str, nbytes: float,
             requests_per_s: float) -> tuple[LinkTraffic, ...]:
    """The hops the KV hand-off loads on ``plane``, all instances together.

    Requests are spread evenly over every (prefill instance, decode TP group) pair: a
    prefill instance's first TP group sends, each TP group of a decode instance (every
    attention-DP rank of every stage holds its own sequences' cache) receives, one stream
    per rank pair, as :meth:`Fabric.kv_transfers` splits one request. ``nbytes`` of a hop
    is what one request puts on it on average, ``bytes_per_s`` the load at
    ``requests_per_s``.
    """
    senders = [i.devices[:i.tp] for i in instances if i.role == "prefill"]
    receivers = [i.devices[k:k + i.tp] for i in instances if i.role == "decode"
                 for k in range(0, len(i.devices), i.tp)]
    pairs = len(senders) * len(receivers)
    if not pairs:
        return ()
    load: dict[_Hop, float] = {}
    trees: dict[str, dict[str, tuple[float, float, str, int]]] = {}
    for src in senders:
        for dst in receivers:
            streams = max(1, min(len(src), len(dst)))
            for k in range(streams):
                if src[k] == dst[k]:
                    continue
                tree = trees.setdefault(src[k], _tree(fabric, plane, src[k]))
                for u, v in _path(tree, dst[k]):
                    load[(plane, u, v)] = load.get((plane, u, v), 0.0) + nbytes / streams / pairs
    return _records(load, requests_per_s)


def _step_tokens(inst: ServingInstance, mtp: int) -> float:
    """Tokens one step of ``inst`` carries, as :mod:`.candidates` prices its steps."""
    if inst.role == "prefill":
        return float(inst.batch * inst.dp)
    decode = inst.batch * inst.dp * (1 + mtp)
    return float(decode + (inst.prefill_chunk * inst.dp if inst.role == "aggregated" else 0))


def expert_traffic(m: ServingModel, fabric: Fabric, instances: Sequence[ServingInstance],
                   quant: Quant, mtp: int, moe_comm: str = "alltoall"
                   ) -> tuple[ExpertTraffic, ...]:
    """The dispatch + combine (or, with ``moe_comm="allgather"``, all-gather +
    reduce-scatter) of each role's MoE instances (none for a dense model).
    """
    if not m.moe:
        return ()
    out = []
    for inst in instances:
        if inst.index != 0 or inst.ep <= 1:
            continue
        ep = inst.ep
        group = inst.devices[:ep]
        est = moe_exchange(
            moe_comm, fabric.tiers(group), tokens_per_rank=_step_tokens(inst, mtp) / ep,
            hidden=m.hidden,
            top_k=m.top_k, dispatch_bytes=element_bytes(quant.dispatch),
            combine_bytes=element_bytes(quant.combine), route_nodes=m.route_nodes,
            low_latency=inst.role == "decode",
        )
        both = 1.0 + element_bytes(quant.combine) / element_bytes(quant.dispatch)
        inner, outer = est.inner_bytes * both * m.moe_layers, est.outer_bytes * both * m.moe_layers
        load: dict[_Hop, float] = {}
        for stage in range(inst.pp):
            _route_group(fabric, inst.devices[stage * ep:(stage + 1) * ep], inner, outer, load)
        step = inst.step_seconds
        out.append(ExpertTraffic(
            inst.role, inst.kind, ep, est.tiers, inner + outer, outer,
            inst.step_breakdown.get("ep_alltoall_total", 0.0),
            inst.step_breakdown.get("ep_alltoall_exposed", 0.0),
            _records(load, 1.0 / step if step else 0.0),
        ))
    return tuple(out)


def _route_group(fabric: Fabric, group: Sequence[str], inner: float, outer: float,
                 load: dict[_Hop, float]) -> None:
    """Add one EP group's per-step all-to-all to ``load``.

    Each rank reaches every peer on the widest plane joining them (the route rule); the
    peers on the plane of its widest peer (its scale-up island) share its ``inner`` bytes,
    the others its ``outer`` bytes (all of them, when it has no island).
    """
    members = list(group)
    planes = fabric.topo.planes
    for src in members:
        trees = {p: _tree(fabric, p, src) for p in planes}
        best: dict[str, tuple[float, float, str]] = {}
        for dst in members:
            if dst == src:
                continue
            options = [(-t[dst][0], t[dst][1], p) for p, t in trees.items() if dst in t]
            if options:
                w, lat, p = min(options)
                best[dst] = (-w, lat, p)
        if not best:
            continue
        widest = max(best.values(), key=lambda x: (x[0], -x[1]))[2]
        near = [d for d, (_, _, p) in best.items() if p == widest]
        far = [d for d in best if d not in near]
        shares = ((near, inner + (0.0 if far else outer)), (far, outer))
        for peers, nbytes in shares:
            for dst in peers:
                plane = best[dst][2]
                for u, v in _path(trees[plane], dst):
                    key = (plane, u, v)
                    load[key] = load.get(key, 0.0) + nbytes / len(peers)
