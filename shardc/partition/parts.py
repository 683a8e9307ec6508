"""A node set's price on one device of a tensor-parallel group: time, memory, traffic.

Why apart from the graph facts (:mod:`shardc.partition.pricing`): this is where the cost
model (:mod:`shardc.cost`) is applied — compute per node at its shard's scale, the TP
collectives it needs, weights and what fused kernels keep for backward — and it is the
one function every configuration, grid and report figure is priced through.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from shardc.cost import activations as acts
from shardc.cost.compute import ShardScale, pass_multiplier, sequence_time
from shardc.cost.ops import NodeCost
from shardc.cost.phases import prefill_time, training_time
from shardc.sharding import shard_scale

if TYPE_CHECKING:
    pass


from shardc.cost.network import point_to_point
from shardc.partition.context import ContextMap, context_map, graph_consts
from shardc.partition.context_pricing import cp_collectives, cp_scale
from shardc.partition.pricing import SP_OPS, GraphPrices, PartCost, TensorChoice
from shardc.partition.ring import (
    block_shares,
    in_flight_bytes,
    kv_chunk_bytes,
    ring_comm_seconds,
    ring_map,
    run_seconds,
)


class PartPrices(GraphPrices):
    """:meth:`part`: a prologue, block or epilogue on one device of a ``tp`` group."""

    def part(
        self,
        nodes: Iterable[str],
        kind: str,
        tp: int,
        recompute: str,
        sp: bool = False,
        cp: int = 1,
    ) -> PartCost:
        """A node set on one device of a ``tp`` group of ``kind`` (weights and activations
        per device; traffic timed on the group placement would use with one replica).

        ``sp`` (sequence parallelism, Korthikanti et al. 2022): the nodes TP leaves
        replicated (norms, residual adds, dropout) run on 1/t of the sequence, each TP
        all-reduce becomes a reduce-scatter plus an all-gather, and the activations TP
        leaves replicated are stored split by t.

        ``cp`` (context parallelism, :mod:`shardc.partition.context`): the node set on one
        of ``cp`` sequence chunks, as the emitted programs run it; its K/V all-gathers timed
        on the cp group, the gathered K/V kept for backward.
        """
        nodes = tuple(nodes)
        sp = sp and tp > 1
        key = (nodes[:1], len(nodes), kind, tp, recompute, sp, cp)
        if key in self._parts:
            return self._parts[key]
        spec = self.kinds[kind]
        ch = self.choice(tp)
        sizes = {"tp": tp}
        training = self.settings.mode == "training"
        node_costs = [self.costs.nodes[n] for n in nodes]
        scales = [
            ShardScale.uniform(1.0 / tp)
            if sp and ch.strategies[n].is_replicated
            else shard_scale(ch.strategies[n], c, sizes)
            for n, c in zip(nodes, node_costs, strict=True)
        ]
        cmap = self.context(cp) if cp > 1 else None
        if cmap is not None:
            scales = [
                cp_scale(s, self.graph.node(n), len(c.input_bytes), len(c.output_bytes), cmap, cp)
                for n, s, c in zip(nodes, scales, node_costs, strict=True)
            ]
        core = self._attention_core(nodes)
        share = 0.0
        if recompute == "selective" and core:
            whole = sequence_time(node_costs, spec).seconds
            part = sequence_time([self.costs.nodes[n] for n in core], spec).seconds
            share = part / whole if whole else 0.0
        groups: dict[ShardScale, list[NodeCost]] = defaultdict(list)
        for c, s in zip(node_costs, scales, strict=True):
            groups[s].append(c)
        if training:
            compute = sum(
                training_time(g, spec, recompute=recompute, attention_share=share, shard=s).seconds
                for s, g in groups.items()
            )
        else:
            compute = sum(prefill_time(g, spec, shard=s).seconds for s, g in groups.items())
        group = (self.groups(kind, tp, 1) or [[]])[0]
        blocks = {self.chain.block_of(n) for n in nodes}
        passes = (2 + (recompute == "full")) if training else 1
        comm = passes * sum(
            self._collective(one, nbytes / cp, group)
            for b in sorted(blocks)
            for op, nbytes in ch.comm.get(b, ())
            for one in (SP_OPS.get(op, (op,)) if sp else (op,))
        )
        weight_bytes, params = self._weights(nodes, ch, sizes)
        act_all, act_kept, inputs = self._activations(nodes, ch, sizes, sp, cmap, cp)
        in_flight = 0.0
        if cmap is not None:
            ring = (self.groups(kind, tp * cp, 1) or [[]])[0][::tp]
            cp_comm = cp_collectives(nodes, cmap, lambda n, i: self.operand_bytes(n, i, ch, sizes),
                                     self._nbytes, training, recompute)
            comm += sum(self._collective(op, nbytes, ring) for op, nbytes in cp_comm)
            ringed = {p[:2] for a in cmap.ring for p in (a.k, a.v)}
            whole_kv = sum(self.operand_bytes(n, i, ch, sizes)
                           for n, i, _ in cmap.gathers if n in set(nodes) and (n, i) not in ringed)
            if training:  # the gathered K and V are what backward reads
                act_all += whole_kv * (1 - 1 / cp)
                act_kept += whole_kv * (1 - 1 / cp)
            if cmap.ring:
                extra, in_flight, saved = self._ring(nodes, cmap, cp, spec, ring, ch, sizes,
                                                     dict(zip(nodes, scales, strict=True)),
                                                     recompute)
                comm += extra
                compute -= saved
        if not training:
            activation = 0.0
            workspace = max(
                (sum(c.input_bytes) + sum(c.output_bytes) for c in node_costs), default=0.0
            )
            static = weight_bytes
        else:
            activation = {"none": act_all, "selective": act_kept, "full": inputs}[recompute]
            workspace = act_all if recompute == "full" else 0.0
            static = weight_bytes  # gradients and optimizer state are added per dp
        workspace = max(workspace, in_flight)
        grad = weight_bytes if weight_bytes else 0.0
        out = PartCost(compute, comm, static, activation, workspace, params, grad)
        self._parts[key] = out
        return out

    def _ring(
        self, nodes: Sequence[str], cmap: ContextMap, cp: int, spec: Any, ring: Sequence[str],
        ch: TensorChoice, sizes: Mapping[str, int], scales: Mapping[str, ShardScale],
        recompute: str,
    ) -> tuple[float, float, float]:
        """(exposed seconds, bytes in flight, compute saved) of the ring attentions among
        ``nodes``
        (:mod:`shardc.partition.ring`): each block priced as the ``price`` pass prices
        it (:func:`run_seconds`), each transfer on every hop of the cp ring as the pass
        prices a Send (:func:`point_to_point`), the two chunks a rank holds beyond
        its own during one attention as workspace (one layer's at a time). Compute saved:
        the zigzag split's masked quarters (:func:`zigzag_shares`), at the pass
        multiplier the block's compute is charged at (the all-cp-blocks work of a
        contiguous split is in ``compute`` already).
        """
        inside, seconds, in_flight = set(nodes), 0.0, 0.0
        training = self.settings.mode == "training"
        links = list(zip(ring, [*ring[1:], *ring[:1]], strict=True)) if len(ring) > 1 else []

        def hops(nbytes: float) -> list[float]:
            return [point_to_point(self.topology, a, b, nbytes).seconds for a, b in links]

        shares, saved = block_shares(cp, cmap.zigzag), 0.0
        k = pass_multiplier(self.settings.mode, recompute) if training else 1.0
        for a in cmap.ring:
            if a.pv not in inside:
                continue
            chunk = kv_chunk_bytes(a, lambda n, i: self.operand_bytes(n, i, ch, sizes), cp)
            pairs = [(self.costs.nodes[n], scales[n]) for n in a.nodes]
            blocks = [run_seconds(pairs, lambda g, s: prefill_time(g, spec, shard=s).seconds,
                                  share) for share in shares]
            seconds += ring_comm_seconds(hops, chunk, blocks, training, recompute)
            in_flight = max(in_flight, in_flight_bytes(chunk, cp))
            saved += k * (blocks[-1] / shares[-1] - sum(blocks))  # all cp blocks, less run
        return seconds, in_flight, saved

    def _attention_core(self, nodes: Sequence[str]) -> tuple[str, ...]:
        """Weight-free nodes reading or writing the widest activation-by-activation
        product (the b·a·s² score matrix of an attention block).
        """
        widest = 0
        for n in nodes:
            node = self.graph.node(n)
            if node.op_type == "MatMul" and not any(i in self.table.free for i in node.inputs):
                widest = max(widest, sum(self.costs.nodes[n].output_bytes))
        if not widest:
            return ()
        return tuple(
            n
            for n in nodes
            if not self.costs.nodes[n].param_bytes
            and widest in (*self.costs.nodes[n].input_bytes, *self.costs.nodes[n].output_bytes)
        )

    def _weights(
        self, nodes: Sequence[str], ch: TensorChoice, sizes: Mapping[str, int]
    ) -> tuple[float, float]:
        """Bytes and parameters of the initializers ``nodes`` read, as one device holds them."""
        frac: dict[str, float] = {}
        for n in nodes:
            node, strat = self.graph.node(n), ch.strategies[n]
            for i, v in enumerate(node.inputs):
                val = self.graph.values.get(v) if v else None
                if val is None or val.weight is None:
                    continue
                lay = strat.inputs[i] if i < len(strat.inputs) else None
                f = lay.local_fraction(sizes) if lay is not None else 1.0
                frac[v] = max(frac.get(v, 0.0), f)
        nbytes = sum(self._nbytes(v) * f for v, f in frac.items())
        params = sum(self._numel(v) * f for v, f in frac.items())
        return nbytes, params

    @cached_property
    def dropout(self) -> bool:
        """Whether training keeps dropout masks (see :attr:`Settings.dropout`)."""
        if self.settings.dropout is not None:
            return self.settings.dropout
        ops = {n.op_type for n in self.graph}
        return "Dropout" not in ops and "LayerNormalization" in ops

    def operand_bytes(self, node: str, i: int, ch: TensorChoice, sizes: Mapping[str, int]) -> float:
        """Bytes of input ``i`` of ``node`` as one TP rank reads it (its strategy's layout)."""
        v = self.graph.node(node).inputs[i]
        strat = ch.strategies.get(node)
        lay = strat.inputs[i] if strat is not None and i < len(strat.inputs) else None
        return self._nbytes(v) * (lay.local_fraction(sizes) if lay is not None else 1.0)

    @cached_property
    def _contexts(self) -> dict[int, ContextMap]:
        return {}

    def context(self, cp: int) -> ContextMap:
        """Where the sequence lives under ``cp``, and with ``--cp-comm ring`` the attentions
        the ring runs (raises :class:`ContextError`).
        """
        if cp not in self._contexts:
            cmap = context_map(self.graph, self.table.labels, cp)
            if self.settings.cp_comm != "allgather":  # raises where the ring cannot run
                cmap = ring_map(self.graph, cmap, cp, self.settings.cp_comm,
                                graph_consts(self.graph))
            self._contexts[cp] = cmap
        return self._contexts[cp]

    def _activations(
        self,
        nodes: Sequence[str],
        ch: TensorChoice,
        sizes: Mapping[str, int],
        sp: bool,
        cmap: ContextMap | None = None,
        cp: int = 1,
    ) -> tuple[float, float, float]:
        """(what fused kernels keep for backward, without the attention core, the block's
        inputs alone) per device: :mod:`shardc.cost.activations`, each tensor at the
        fraction its producer's layout leaves one device, replicated ones split by t
        under sequence parallelism.
        """
        grad = self.gradient_values
        saved = acts.saved_tensors(self.graph, nodes, grad, dropout=self.dropout)
        tp = sizes.get("tp", 1)

        def share(value: str) -> float:
            base = value.split("#", 1)[0]
            f = self._fraction(base, ch, sizes)
            f = f / tp if sp and f >= 1.0 else f
            return f / cp if cmap is not None and base in cmap.dims else f

        all_ = sum(t.nbytes * share(t.value) for t in saved)
        kept = sum(t.nbytes * share(t.value) for t in saved if not t.core)
        inside = set(nodes)
        entering = {
            v
            for n in nodes
            for v in self.graph.node(n).present_inputs
            if v in grad and (p := self.graph.producer(v)) is not None and p.name not in inside
        }
        return all_, kept, sum(self._nbytes(v) * share(v) for v in entering)

    def _fraction(self, value: str, ch: TensorChoice, sizes: Mapping[str, int]) -> float:
        """Share of ``value`` one device of the TP group stores (its producer's layout)."""
        node = self.graph.producer(value)
        if node is None:
            return 1.0
        strat = ch.strategies.get(node.name)
        if strat is None:
            return 1.0
        j = node.outputs.index(value)
        lay = strat.outputs[j] if j < len(strat.outputs) else None
        return lay.local_fraction(sizes) if lay is not None else 1.0
