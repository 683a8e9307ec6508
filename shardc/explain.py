"""Why a node or a value of the model ended up where it did in a plan.

Read from the plan folder only — plan.json (stages, chosen strategies), the device models
(which ranks hold the node, which ``shardc``-domain ops touch its values, how each weight
was sliced: the ``shardc.slices`` metadata) and schedule.json (what each transfer costs
and which links it crosses) — so a plan loaded from disk explains itself exactly as one
compiled in this process. The node's block is named from the chain of blocks plan.json
records (``emission.blocks``).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import onnx

from shardc.emit.program import DOMAIN, node_attr
from shardc.errors import OptionError
from shardc.explanation import STRATEGY_WHY, CommStep, Explanation

if TYPE_CHECKING:
    from shardc.plan.program import Comm

Plan = Any
"""The :class:`shardc.handle.Plan` being explained. Not imported, even for typing: the
handle calls explain, so an arrow back would close a cycle between the layers."""



@dataclass(frozen=True)
class _Rank:
    rank: int
    device: str
    stage: int
    tp: int
    nodes: dict[str, onnx.NodeProto]
    producers: dict[str, onnx.NodeProto]
    consumers: dict[str, list[onnx.NodeProto]]
    weights: frozenset[str]
    inputs: frozenset[str]
    slices: dict[str, dict[str, Any]]


def _index(plan: Plan) -> dict[int, _Rank]:
    """Every rank's model, indexed by node and value name (cached per plan)."""
    cached = getattr(plan, "_explain_index", None)
    if cached is not None:
        return cached
    out: dict[int, _Rank] = {}
    for r in plan.ranks:
        if r.file is None:
            continue
        model = onnx.load_from_string(plan._read(r.file))
        meta = {p.key: p.value for p in model.metadata_props}
        producers, consumers = {}, defaultdict(list)
        for n in model.graph.node:
            for o in n.output:
                producers[o] = n
            for i in n.input:
                consumers[i].append(n)
        out[r.rank] = _Rank(
            rank=r.rank,
            device=r.device,
            stage=r.stage,
            tp=r.tp,
            nodes={n.name: n for n in model.graph.node},
            producers=producers,
            consumers=dict(consumers),
            weights=frozenset(t.name for t in model.graph.initializer),
            inputs=frozenset(i.name for i in model.graph.input),
            slices=json.loads(meta.get("shardc.slices", "{}")),
        )
    plan._explain_index = out
    return out


def _priced(plan: Plan) -> dict[tuple[int, str, str], Comm]:
    """(rank, op, value) -> the first such comm of the rank's program, as the Plan priced it."""
    out: dict[tuple[int, str, str], Comm] = {}
    for rank, comms in plan.comms.items():
        for c in comms:
            out.setdefault((rank, c.op, c.value), c)
    return out


def _comms(plan: Plan, index: dict[int, _Rank], ranks: list[int], node_of: Any) -> list[CommStep]:
    """Comm ops next to the explained node/value on ``ranks``, one entry per comm node."""
    priced = _priced(plan)
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for r in ranks:
        st = index[r]
        for where, comm in node_of(st):
            value = comm.output[0] if comm.op_type == "Recv" else comm.input[0]
            entry = found.setdefault(
                (comm.name, where),
                {
                    "op": comm.op_type,
                    "value": value,
                    "ranks": [],
                    "peers": [],
                    "groups": [],
                    "comm": None,
                },
            )
            entry["ranks"].append(r)
            peer = node_attr(comm, "peer")
            if peer is not None:
                entry["peers"].append(int(peer))
            group = tuple(int(g) for g in node_attr(comm, "group", []))
            if group and group not in entry["groups"]:
                entry["groups"].append(group)
            entry["comm"] = entry["comm"] or priced.get((r, comm.op_type, value))
    out = []
    for (node, where), e in sorted(found.items(), key=lambda kv: (kv[0][1] != "before", kv[0])):
        c = e["comm"]
        out.append(
            CommStep(
                op=e["op"],
                node=node,
                value=e["value"],
                where=where,
                ranks=tuple(e["ranks"]),
                groups=tuple(e["groups"]),
                peers=tuple(e["peers"]),
                bytes=float(c.nbytes) if c else 0.0,
                seconds=float(c.seconds) if c else 0.0,
                algorithm=c.algorithm if c else "",
                links=tuple(str(x) for x in c.links) if c else (),
            )
        )
    return out


def _follow(st: _Rank, values: list[str], hops: int = 6) -> list[tuple[str, onnx.NodeProto]]:
    """Comm nodes downstream of ``values`` on this rank: those nearest (within ``hops``
    standard nodes: a row-split product's partial sum passes a reshape and a bias add
    before its AllReduce), and the comms those feed in turn.
    """
    out: list[tuple[str, onnx.NodeProto]] = []
    frontier, seen, depth = list(values), set(), 0
    while frontier and depth <= hops:
        nxt = []
        for v in frontier:
            for c in st.consumers.get(v, []):
                if c.name in seen:
                    continue
                seen.add(c.name)
                if c.domain == DOMAIN:
                    out.append(("after", c))
                else:
                    nxt += [o for o in c.output if o]
        if out:
            break
        frontier, depth = nxt, depth + 1
    chained = [o for _, c in out for o in c.output if o]
    while chained:
        v = chained.pop(0)
        for c in st.consumers.get(v, []):
            if c.domain == DOMAIN and c.name not in seen:
                seen.add(c.name)
                out.append(("after", c))
                chained += [o for o in c.output if o]
    return out


def _upstream(st: _Rank, values: list[str], hops: int = 3) -> list[tuple[str, onnx.NodeProto]]:
    """Comm nodes that produce ``values``, through at most ``hops`` renames (Identity,
    Cast, Reshape) on the way: an output gathered by an AllGather, a boundary Recv.
    """
    out: list[tuple[str, onnx.NodeProto]] = []
    for v in values:
        node, depth = st.producers.get(v), 0
        while node is not None and node.domain != DOMAIN and depth < hops:
            if node.op_type not in ("Identity", "Cast", "Reshape"):
                node = None
                break
            node, depth = st.producers.get(node.input[0]), depth + 1
        if node is not None and node.domain == DOMAIN:
            out.append(("before", node))
    return out


def _stage_reasons(plan: Plan, stages: list[int], node: str | None) -> list[str]:
    out = []
    block = plan.typed.block_of(node) if node else None
    for j in stages:
        st = plan.stages[j]
        first, last = st.blocks
        held = f"block {first}" if first == last else f"blocks {first}–{last}"
        if st.chunks is not None:  # interleaved: v runs, chunk c of stage j is c·pp + j
            held = f"blocks {st.held} ({len(st.chunks)} interleaved chunks)"
        where = f"stage {j} holds repeated {held}"
        if j == 0:
            where += " and the model's start"
        if j == plan.pp - 1:
            where += " and its end"
        if block is not None:
            role, k = block
            where = (
                f"the node is in repeated block {k}; " if k is not None
                else f"the node is in the model's {role}; "
            ) + where
        out.append(
            f"{where}: the partitioner's split, {st.seconds * 1e3:.3g} ms per micro-batch on "
            f"{st.kind} with tp={st.tp}"
        )
    if plan.dp > 1:
        out.append(
            f"dp={plan.dp}: every replica holds the same copy and runs its own micro-batches; "
            "gradients are summed once per step"
            if plan.estimate.mode == "training"
            else f"dp={plan.dp}: every replica holds the same copy and serves its own requests"
        )
    return out


def explain(plan: Plan, name: str) -> Explanation:
    """Explain node or value ``name`` of ``plan`` (see :meth:`shardc.plan.Plan.explain`)."""
    index = _index(plan)
    if not index:
        raise OptionError(
            "explain needs the device files, and this plan has none",
            hint="compile a model whose weights are readable",
        )
    holding = sorted(r for r, st in index.items() if name in st.nodes)
    if holding:
        return _explain_node(plan, index, name, holding)
    slices = {
        r: {k: v for k, v in st.slices.items() if v.get("source") == name}
        for r, st in index.items()
    }
    weight_ranks = sorted(r for r, s in slices.items() if s or name in index[r].weights)
    if weight_ranks:
        return _explain_weight(plan, index, name, weight_ranks, slices)
    made = sorted(r for r, st in index.items() if name in st.producers or name in st.inputs)
    if made:
        return _explain_value(plan, index, name, made)
    from shardc.topology.diagnostics import did_you_mean

    names = {n for st in index.values() for n in (*st.nodes, *st.producers)}
    raise OptionError(
        f"no node or value named {name!r} in the plan", hint=did_you_mean(name, names)
    )


def _placement(index: dict[int, _Rank], ranks: list[int]) -> tuple[tuple[str, ...], list[int]]:
    devices = tuple(index[r].device for r in ranks)
    stages = sorted({index[r].stage for r in ranks})
    return devices, stages


def _explain_node(plan: Plan, index: dict[int, _Rank], name: str, ranks: list[int]) -> Explanation:
    node = index[ranks[0]].nodes[name]
    devices, stages = _placement(index, ranks)
    tp = max(index[r].tp for r in ranks)
    chosen = (plan.typed.pipeline.strategies or {}).get(name)
    reasons = _stage_reasons(plan, stages, name)
    if tp == 1:
        strategy = None
        reasons.append("its stage has tp=1: the node runs whole on one device per replica")
    elif chosen:
        strategy = chosen
        base = chosen.split("+")[-1]
        reasons.append(STRATEGY_WHY.get(base, f"strategy {chosen}"))
    else:
        strategy = "replicated"
        reasons.append(
            f"its stage has tp={tp}, but the node is not split: it is cheap or follows its "
            "inputs' layout, so every TP rank runs it whole (Megatron's pairing splits the "
            "weight products, the attention core, the embedding and the LM head)"
        )

    def near(st: _Rank) -> list[tuple[str, onnx.NodeProto]]:
        n = st.nodes[name]
        return _upstream(st, [i for i in n.input if i], hops=0) + _follow(
            st, [o for o in n.output if o]
        )

    return Explanation(
        name=name,
        what="node",
        op=node.op_type if not node.domain else f"{node.domain}::{node.op_type}",
        ranks=tuple(ranks),
        devices=devices,
        stages=tuple(stages),
        strategy=strategy,
        comms=tuple(_comms(plan, index, ranks, near)),
        reasons=tuple(reasons),
    )


def _explain_weight(
    plan: Plan,
    index: dict[int, _Rank],
    name: str,
    ranks: list[int],
    slices: dict[int, dict[str, dict[str, Any]]],
) -> Explanation:
    devices, stages = _placement(index, ranks)
    pieces: dict[str, list[int]] = {}
    split = False
    for r in ranks:
        for local, s in sorted(slices[r].items()):
            if s["dim"] < 0:
                text = f"whole, as {local!r}"
            else:
                split = True
                parts = f" (in each of {s['pieces']} parts)" if s["pieces"] > 1 else ""
                text = (
                    f"[{s['start']}:{s['stop']}] of dim {s['dim']} (length {s['size']}){parts}, "
                    f"as {local!r}"
                )
            pieces.setdefault(text, []).append(r)
        if not slices[r]:
            pieces.setdefault("whole", []).append(r)
    shards = [f"ranks {rs}: {text}" for text, rs in pieces.items()]
    reasons = _stage_reasons(plan, stages, None)
    users = sorted(
        {
            c.name
            for r in ranks
            for local in (name, *slices[r])
            for c in index[r].consumers.get(local, [])
        }
    )
    strategies = (plan.typed.pipeline.strategies or {})
    for u in users:
        if u in strategies:
            reasons.append(f"read by {u!r}, which is {strategies[u]}-split: so is this weight")
    if not split:
        reasons.append("no rank holds a slice: every rank that reads it holds it whole")
    return Explanation(
        name=name,
        what="weight",
        op=None,
        ranks=tuple(ranks),
        devices=devices,
        stages=tuple(stages),
        strategy="split" if split else "whole",
        shards=tuple(shards),
        comms=(),
        reasons=tuple(reasons),
    )


def _explain_value(plan: Plan, index: dict[int, _Rank], name: str, ranks: list[int]) -> Explanation:
    devices, stages = _placement(index, ranks)
    reasons = _stage_reasons(plan, stages, None)
    producer = index[ranks[0]].producers.get(name)
    if producer is not None and producer.domain != DOMAIN:
        reasons.append(f"made by node {producer.name!r} ({producer.op_type})")
    elif producer is not None:
        reasons.append(f"made by the {producer.op_type} {producer.name!r}")
    else:
        reasons.append("a graph input of these ranks")

    def near(st: _Rank) -> list[tuple[str, onnx.NodeProto]]:
        return _upstream(st, [name]) + _follow(st, [name], hops=0)

    comms = _comms(plan, index, ranks, near)
    if any(c.op == "AllReduce" for c in comms):
        reasons.append("it leaves its node as partial sums on each TP rank, so it is summed")
    if any(c.op == "AllGather" for c in comms):
        reasons.append("it leaves its node split across the TP group, so it is gathered")
    if any(c.op in ("Send", "Recv") for c in comms):
        reasons.append("it crosses a pipeline stage boundary")
    return Explanation(
        name=name,
        what="value",
        op=None,
        ranks=tuple(ranks),
        devices=devices,
        stages=tuple(stages),
        strategy=None,
        comms=tuple(comms),
        reasons=tuple(reasons),
    )

