"""The lowering walk: one (stage, TP rank)'s nodes, comm nodes and weight shards.

Why one walk per (stage, tensor-parallel rank): every replica of a stage runs the same
nodes on the same weight shards; only the peers of its Send/Recv differ. So the walk
builds a :class:`~shardc.plan.lowered.Template` per (stage, tp rank), and the device-file
writer instantiates it per replica from the Plan's priced programs.

The walk follows, on one device, what :meth:`StrategyTable.resolve` decided for the
stage's tensor-parallel degree: each node reads its inputs in the layout its strategy
wants, and whatever layout is missing is made from a copy on hand with the steps of
:func:`shardc.sharding.reshard` — a collective becomes a ``shardc`` node; a slice is
cut from a weight at lowering time or taken from an activation with a ``Slice``; a
scale is a ``Mul``. Values cross stages whole: the sender makes a replicated
copy, every receiving tp rank gets one from the sender of the same index modulo the
sender's degree; between sequence-parallel stages of one degree the residual stream
travels as sequence shards instead, rank t's to rank t. Weights are cut by
:mod:`shardc.passes.lower_weights`, single nodes rewritten for their shard by
:mod:`shardc.passes.lower_nodes`, values brought into the layout a node wants by
:mod:`shardc.passes.lower_layouts`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import onnx
from onnx import helper

from shardc.ir import Node
from shardc.passes.lower_experts import ExpertEmitter
from shardc.passes.lower_layouts import Layouts
from shardc.passes.lower_nodes import LoweringError, NodeRewrites, static_shape, tp_dim
from shardc.passes.lower_weights import WeightViews
from shardc.passes.precision import priced_graph
from shardc.plan.lowered import PendingComm, Template
from shardc.plan.program import DOMAIN
from shardc.sharding import Strategy, TensorSharding
from shardc.strategy.resolve import pinned_layouts

if TYPE_CHECKING:
    from shardc.pipeline import CompileState


class Walk(Layouts, WeightViews, NodeRewrites):
    """Builds the template of one (stage, tp rank)."""

    def __init__(
        self,
        state: CompileState,
        stage: int,
        tp_rank: int,
        tp: int,
        nodes: Sequence[str],
        resolution: Any,
        cross: Mapping[str, tuple[int, tuple[int, ...]]],
        tags: Mapping[str, int],
        tps: Sequence[int],
        shards: Mapping[str, TensorSharding] | None = None,
        chunks: Sequence[Sequence[str]] | None = None,
    ) -> None:
        self.state, self.graph = state, state.graph
        assert state.strategies is not None, "emission runs after the strategy table is built"
        self.table = state.strategies
        self.t = Template(stage, tp_rank, tp)
        self.rank, self.tp = tp_rank, tp
        self.nodes = nodes
        self.chunks = chunks
        """The stage's model chunks (interleaved plans): each receives what it reads at its
        own start, so a chunk never waits on a value a later hand-off brings."""
        self.res = resolution
        self.cross, self.tags, self.tps = cross, tags, tps
        self.shards = shards or {}
        """Cross-stage values that travel as this rank's sequence shard (see lower)."""
        self.copies: dict[str, dict[TensorSharding | None, str]] = defaultdict(dict)
        self.fresh = 0
        self.initializers = set(state.model.graph.initializers)
        self.lazy: dict[str, Node] = {}
        """Weight views (see :meth:`_weight_view`) by output, made on demand per layout."""
        for node in self.graph.nodes:  # in order, so a view of a view is seen as one
            if self._weight_view(node):
                self.lazy[node.outputs[0]] = node
        self.pieces = self._fused()
        self.experts = ExpertEmitter(self)
        self.boundary = pinned_layouts(self.graph, self.table, {"tp": tp}) if tp > 1 else {}
        """Graph inputs and outputs held split at the program's edge (the KV cache, see
        :func:`~shardc.strategy.table.kv_pins`): each rank reads and writes its heads."""

    # -- naming -----------------------------------------------------------------------
    def _name(self, base: str, what: str) -> str:
        self.fresh += 1
        return f"{base}__{what}{self.fresh}"

    def _emit(self, node: onnx.NodeProto) -> None:
        self.t.nodes.append(node)

    # -- the walk -----------------------------------------------------------------------
    def run(self) -> Template:
        """Per chunk (one unless interleaved): its inputs and receives first (in producer
        order), then its nodes, sending each cross-stage value and gathering each graph
        output as soon as it is made.
        """
        produced: set[str] = set()
        for nodes in self.chunks or (self.nodes,):
            if self.chunks:
                self.t.chunk_starts.append(len(self.t.steps))
            produced |= {o for n in nodes for o in self.graph.node(n).outputs if o}
            self._receive(nodes, produced)
            self._walk(nodes)
        return self._finish()

    def _receive(self, nodes: Sequence[str], produced: set[str]) -> None:
        """The graph inputs and cross-stage values ``nodes`` read that this rank does not
        hold yet, in producer order.
        """
        graph, initializers = self.graph, self.initializers
        needed: list[str] = []
        for n in nodes:
            for v in reads(graph.node(n), graph):
                if (v not in produced and v not in initializers and v not in needed
                        and v not in self.copies):
                    needed.append(v)
        order = {o: i for i, n in enumerate(graph.nodes) for o in n.outputs if o}
        for v in sorted(needed, key=lambda x: (order.get(x, -1), x)):
            if v in self.lazy:  # a weight view: made here from the stored weight, not sent
                continue
            if v in graph.inputs:
                self.t.inputs.append(v)
                if v in self.boundary:  # fed as this rank's shard: no Slice, no traffic
                    self._local_type(v)
                    self.copies[v][self.boundary[v]] = v
                    continue
            elif v in self.cross:
                src = self.cross[v][0]
                layout = self.shards.get(v)
                share = layout.local_fraction({"tp": self.tp}) if layout is not None else 1.0
                self._comm_node(
                    "Recv",
                    [],
                    [v],
                    PendingComm(
                        "Recv",
                        v,
                        v,
                        self._bytes(v) * share,
                        peer=(src, self.rank % self.tps[src]),
                        tag=self.tags[v],
                    ),
                    recv_of=v,
                )
                if layout is not None:
                    self.copies[v][layout] = v
                    continue
            else:
                raise LoweringError(f"stage {self.t.stage} reads {v!r}, which no stage produces")
            self.copies[v][self._whole(v)] = v

    def _walk(self, nodes: Sequence[str]) -> None:
        """``nodes`` in order on this rank's shards (see the module docstring)."""
        graph = self.graph
        for name in nodes:
            node = graph.node(name)
            strat: Strategy = self.res.strategies[name]
            if node.outputs and node.outputs[0] in self.lazy:  # made per layout by get()
                self.t.steps.append(("node", name))
                continue
            k = max((self.pieces.get(o, 1) for o in node.outputs if o), default=1)
            if node.qualified_op == "com.microsoft::Attention" and tp_dim(strat) is not None:
                k = 3  # its QKV weight and bias hold Q, K and V side by side
            if self.experts.owns(name):  # rows chosen by routing: no Slice may cut them
                outs = self.experts.node(node)
            else:
                ins = [
                    self.get(v, strat.inputs[i] if i < len(strat.inputs) else None, k)
                    if v
                    else ""
                    for i, v in enumerate(node.inputs)
                ]
                outs = list(node.outputs)
                for k, out in enumerate(outs):
                    layout = self.res.layouts.get(out) if out else None
                    split = layout is not None and not layout.is_replicated
                    if out in graph.outputs and (split or out in self.boundary):
                        outs[k] = f"{out}__local"
                self._node(node, strat, ins, outs)
            self.t.steps.append(("node", name))
            for out, local in zip(node.outputs, outs, strict=True):
                if not out:
                    continue
                self.copies[out][self.res.layouts.get(out) or self._whole(out)] = local
                if out in graph.outputs:
                    keep = self.boundary.get(out) or self._whole(out)
                    if out in self.boundary:
                        self._local_type(out)
                    whole = self.get(out, keep)
                    if whole != out:
                        self._emit(helper.make_node("Identity", [whole], [out], name=f"{out}__out"))
                    self.t.outputs.append(out)
                if out in self.cross and self.cross[out][0] == self.t.stage:
                    self._send(out)

    def _finish(self) -> Template:
        """The template, with the graph outputs no node makes on the last stage."""
        graph, initializers = self.graph, self.initializers
        if self.t.stage == len(self.tps) - 1:  # outputs no node makes: inputs, weights
            made = {o for n in graph.nodes for o in n.outputs if o}
            for out in (o for o in graph.outputs if o not in made):
                if out in initializers:
                    self._initializer(out, None)
                elif out not in self.t.inputs:
                    self.t.inputs.append(out)
                self.t.outputs.append(out)
        return self.t

    def _local_type(self, v: str) -> None:
        """Record the shape this rank's program declares for boundary value ``v``."""
        t = self.graph.values[v].type
        assert t is not None and t.shape is not None
        dim = self.boundary[v].dim_of("tp")
        shape = list(t.shape)
        if dim is not None:
            whole = shape[dim]
            assert isinstance(whole, int)  # a split dim is bound (the partitioner priced it)
            shape[dim] = whole // self.tp
        self.t.local_shapes[v] = tuple(shape)  # type: ignore[arg-type]

    def _bytes(self, v: str) -> float:
        """Size of ``v`` as the plan prices it (``--dtype``): for the timeline's transfer
        times only; the types written into the program are the model's (``self.graph``).
        """
        return float(priced_graph(self.state).values[v].nbytes or 0)

    def _send(self, v: str) -> None:
        """The replicated value to every receiving rank whose index maps onto this one."""
        layout = self.shards.get(v)
        share = layout.local_fraction({"tp": self.tp}) if layout is not None else 1.0
        whole = self.get(v, layout or self._whole(v))
        for k in self.cross[v][1]:
            for r in range(self.tps[k]):
                if r % self.tp == self.rank:
                    self._comm_node(
                        "Send",
                        [whole],
                        [],
                        PendingComm(
                            "Send", whole, "", self._bytes(v) * share, peer=(k, r),
                            tag=self.tags[v],
                        ),
                    )

    def _comm_node(
        self, op: str, ins: list[str], outs: list[str], pending: PendingComm, recv_of: str = ""
    ) -> None:
        attrs: dict[str, Any] = {"tag": pending.tag}
        if op in ("Send", "Recv"):
            attrs["peer"] = -1  # set per replica
        else:
            attrs["group"] = [-1]
        if recv_of:
            t = self.graph.values[recv_of].type
            shape = static_shape(t)
            if t is None or shape is None:
                raise LoweringError(f"{recv_of!r} crosses stages with an unknown shape")
            if (layout := self.shards.get(recv_of)) is not None:  # this rank's shard
                shape = [d // self.tp if a else d for d, a in zip(shape, layout.dims, strict=True)]
            attrs["dtype"] = int(t.dtype.value)  # the model's own, whatever --dtype priced
            # typed explicitly: a scalar's shape is an empty list, whose type ONNX cannot guess
            ints = onnx.AttributeProto.INTS
            attrs["shape"] = helper.make_attribute("shape", shape, attr_type=ints)
        if pending.axis >= 0:
            attrs["axis"] = pending.axis
        name = self._name(pending.value or (outs[0] if outs else op), op.lower())
        shape_attr = attrs.pop("shape", None)
        node = helper.make_node(op, ins, outs, name=name, domain=DOMAIN, **attrs)
        if shape_attr is not None:  # typed above; kept in make_node's sorted attribute order
            node.attribute.append(shape_attr)
            node.attribute.sort(key=lambda a: a.name)
        self._emit(node)
        self.t.steps.append(("comm", (len(self.t.nodes) - 1, pending)))


def reads(node: Any, graph: Any) -> list[str]:
    """The node's inputs, then the values of ``graph`` its bodies (If/Loop/Scan) capture:
    a rank must hold those too, though no edge of the outer graph says so.
    """
    names = list(node.present_inputs)
    stack = list(node.subgraphs)
    while stack:
        body = stack.pop(0)
        names += [v for v in body.outer if v in graph.values and v not in names]
        for inner in body.nodes:
            stack.extend(inner.subgraphs)
    return names
