"""Pass ``price``: every step of every rank's program priced by the cost model.

Why a pass of its own: the partitioner priced the stages in aggregate; the programs need
each step's time (a compute segment's shard of each node, each collective over its real
members, each Send along its route) for the timeline, the report and the trace. Every
number comes from the same functions the partitioner uses
(:func:`shardc.cost.phases.prefill_time`, :func:`shardc.cost.network.group_collective`,
:func:`shardc.cost.network.point_to_point`), so no reader re-prices anything. It also
records the data-parallel sync of each stage: the partitioner's seconds and bytes, and the
ring's links.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from shardc.cost.compute import ShardScale
from shardc.cost.network import group_collective, point_to_point
from shardc.cost.phases import prefill_time
from shardc.partition.context_pricing import cp_scale
from shardc.partition.ring import run_seconds
from shardc.pipeline import Pass
from shardc.plan.program import Comm, Compute, DeviceProgram, Link, Programs, route_links
from shardc.sharding import shard_scale

if TYPE_CHECKING:
    from shardc.pipeline import CompileState

COST_OP = {
    "AllReduce": "all_reduce",
    "AllGather": "all_gather",
    "ReduceScatter": "reduce_scatter",
    "AllToAll": "all_to_all",
}
"""Comm op -> the cost model's name for the collective."""


def price(state: CompileState) -> Programs:
    """The lowered programs with every step's seconds, algorithm and links."""
    part, topo, lowering = state.partition, state.topology, state.lowering
    assert part is not None and topo is not None and lowering is not None
    unpriced = lowering.programs
    device_of = {p.rank: p.device for p in unpriced.programs}
    kinds = {d.name: d.kind for d in topo.compute_devices}
    training = part.mode == "training"
    out = []
    for p in unpriced.programs:
        resolution = lowering.resolutions[p.stage]
        steps: list[Compute | Comm] = []
        for s in p.steps:
            if isinstance(s, Compute):
                steps.append(replace(s, seconds=_compute(state, s, resolution, p, kinds)))
            else:
                steps.append(_comm(topo, s, p.device, device_of))
        # the gradient sync's ring: this stage and TP rank in every replica, by replica (and
        # in every context-parallel copy: cp copies hold the same weights, dp x cp reduce)
        cp = part.stages[p.stage].cp
        replicas = [part.placement.devices[(q, p.stage, c * p.tp + p.tp_rank)]
                    for q in range(part.dp) for c in range(cp)]
        sync_links = ring_links(topo, replicas) if training else ()
        out.append(replace(p, steps=tuple(steps), sync_links=sync_links))
    return replace(
        unpriced,
        programs=tuple(out),
        stage_sync_seconds={s.index: s.sync_seconds for s in part.stages} if training else {},
        stage_sync_bytes={s.index: s.sync_bytes for s in part.stages} if training else {},
    )


def _compute(
    state: CompileState, seg: Compute, resolution: Any, p: DeviceProgram, kinds: Any
) -> float:
    """A run's forward time on its device: each node's shard, grouped by how it is cut (a
    ring attention block: its share of them).
    """
    costs = state.costs
    assert costs is not None
    sizes = {"tp": p.tp}
    pairs: list[tuple[Any, ShardScale]] = []
    context = state.lowering.context if state.lowering is not None else None
    for n in seg.nodes:
        cost = costs.nodes[n]
        scale = shard_scale(resolution.strategies[n], cost, sizes)
        if context is not None:  # a sequence chunk, as the partitioner priced it
            scale = cp_scale(scale, state.graph.node(n), len(cost.input_bytes),
                             len(cost.output_bytes), *context)
        pairs.append((cost, scale))
    kind = kinds[p.device]
    return run_seconds(pairs, lambda g, s: prefill_time(g, kind, shard=s).seconds, seg.share)


def _comm(topo: Any, c: Comm, device: str, device_of: dict[int, str]) -> Comm:
    """``c`` priced: a Send/Recv along its route, a collective over its members' devices."""
    if c.op in ("Send", "Recv"):
        other = device_of[c.peer]
        a, b = (device, other) if c.op == "Send" else (other, device)
        est = point_to_point(topo, a, b, c.nbytes)
        links = route_links(topo.route(a, b).nodes)
        return replace(c, algorithm="p2p", seconds=est.seconds, links=links)
    members = [device_of[r] for r in c.group]
    est = group_collective(topo, COST_OP[c.op], c.nbytes, members)
    return replace(c, algorithm=est.algorithm, seconds=est.seconds, links=ring_links(topo, members))


def ring_links(topo: Any, members: Sequence[str]) -> tuple[Link, ...]:
    """Links a ring over ``members`` crosses (each neighbour pair's route), once each."""
    if len(members) < 2:
        return ()
    out: list[Link] = []
    for a, b in zip(members, [*members[1:], members[0]], strict=True):
        out += route_links(topo.route(a, b).nodes)
    return tuple(dict.fromkeys(out))


def run(state: CompileState) -> CompileState:
    """Price the lowered programs (see the module docstring)."""
    return state.with_(programs=price(state))


def dump(state: CompileState) -> str:
    """Every rank's priced steps: seconds, and for comms the algorithm and links."""
    assert state.programs is not None
    lines = []
    for p in state.programs.programs:
        lines.append(f"rank {p.rank} ({p.device})")
        for s in p.steps:
            if isinstance(s, Compute):
                lines.append(f"  compute {s.label}: {s.seconds * 1e3:.4f} ms")
            else:
                links = " ".join(str(x) for x in s.links)
                lines.append(f"  {s.op} {s.value} {s.nbytes:.0f} B {s.algorithm} "
                             f"{s.seconds * 1e3:.4f} ms [{links}]")
    for sync in state.programs.syncs:
        lines.append(f"stage {sync.stage} dp sync: {sync.seconds * 1e3:.4f} ms, "
                     f"{sync.nbytes:.0f} B")
    return "\n".join(lines) + "\n"


PASS = Pass(
    name="price",
    run=run,
    requires=("costs", "topology", "partition", "lowering"),
    provides=("programs",),
    description="each program step priced by the cost model: seconds, algorithm, links",
    dump=dump,
)
