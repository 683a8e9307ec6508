"""Price every stage configuration from the graph itself: what the solver chooses between.

Why here and not in the solver: the solver sees numbers only. This module turns the
costed, coarsened graph into those numbers, using the cost model and nothing else:

* **compute** of a node set on one device of a kind, each node scaled by the strategy
  Megatron's rule (:mod:`shardc.partition.megatron`) gives it at that tensor-parallel
  degree (:func:`shardc.sharding.shard_scale`), forward + backward (+ recomputation) in
  training, forward alone in inference;
* **tensor-parallel traffic**: every collective :meth:`StrategyTable.resolve` finds for
  that choice, charged to the block of the node that needs it, timed on the very TP
  group :mod:`shardc.partition.place` would pick (training: the forward's and the
  backward's conjugate, and the forward's again under full recomputation);
* **memory** per device: the weights the shard holds (plus gradients and Adam state in
  training, divided by ZeRO), and the activations a micro-batch leaves behind: outputs
  of every non-view node (none), minus the attention core (selective: the nodes that
  read or write the score matrix, found as the widest activation-by-activation MatMul
  output), or the block's inputs alone (full, plus one block's activations as workspace
  while it is recomputed);
* **pipeline transfers**: a block's inputs that are activations, to the next stage's
  first device, forward (and the gradient back in training);
* **per-step sync**: the gradient all-reduce (reduce-scatter + all-gather with ZeRO)
  over the data-parallel group and the Adam update.

Identical blocks are priced once, from the first of their class (the chain's symmetry).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from shardc.cost import activations as acts
from shardc.cost import memory as mem
from shardc.cost.compute import ShardScale, optimizer_time, sequence_time
from shardc.cost.network import group_collective, pipeline_transfer
from shardc.cost.ops import NodeCost
from shardc.cost.phases import prefill_time, training_time
from shardc.errors import InfeasibleError
from shardc.ir import Graph
from shardc.partition.megatron import MegatronRule
from shardc.partition.place import _take_groups
from shardc.partition.problem import StageConfig
from shardc.partition.split import SplitRule, tp_rule
from shardc.sharding import Strategy, TensorSharding, reshard, shard_scale
from shardc.vocabulary import RECOMPUTES

if TYPE_CHECKING:
    from shardc.passes.annotate_costs import GraphCosts
    from shardc.passes.coarsen import BlockChain
    from shardc.passes.strategies import StrategyTable
    from shardc.topology import Topology
    from shardc.topology.model import DeviceKind

SP_OPS = {"all_reduce": ("reduce_scatter", "all_gather")}
"""What sequence parallelism runs in place of a TP collective (the same array moves)."""
MAX_TP = 64
"""Largest tensor-parallel degree tried: beyond it each device's matrix slices are too
thin to run near peak, and no published large-model run goes further."""


@dataclass(frozen=True)
class TensorChoice:
    """The strategy of every node at one tensor-parallel degree, and the traffic it makes."""

    tp: int
    strategies: Mapping[str, Strategy]
    comm: Mapping[int, tuple[tuple[str, float], ...]]
    """Block index -> (collective, bytes of the whole array) per forward pass."""


@dataclass(frozen=True)
class PartCost:
    """A node set (prologue, one block, epilogue) on one device of a TP group."""

    compute: float
    comm: float
    static: float
    activation: float
    workspace: float
    params: float
    """Parameters this device holds (after the TP split)."""
    grad_bytes: float
    """Bytes of this device's gradients, as reduced across data-parallel replicas."""

    @property
    def seconds(self) -> float:
        """Time of one micro-batch: compute and its tensor-parallel traffic, exposed."""
        return self.compute + self.comm


@dataclass(frozen=True)
class Settings:
    """What the user chose that changes prices."""

    mode: str = "training"
    zero: int = 1
    recompute: tuple[str, ...] = RECOMPUTES
    tp_rule: str | None = None
    """How tensor-parallel stages shard their ops (None: Megatron's pairing)."""
    sequence_parallel: tuple[bool, ...] = (False, True)
    """Sequence-parallel choices offered to tensor-parallel stages (training only)."""
    overlap_dp: bool = True
    """Overlap the data-parallel gradient reduction with the backward (and the ZeRO
    weight all-gather with the next forward), as DDP and Megatron-LM do today; False
    prices it all exposed, as Megatron-LM of 2021 (Narayanan et al.) ran."""
    overlap_p2p: bool = True
    """Run pipeline sends and receives beside compute (non-blocking isend/irecv, as
    Megatron-LM's ``overlap_p2p_comm``): only the fill and drain expose them
    (:func:`shardc.partition.problem.exposed_p2p`); False charges every 1F1B slot, as
    the blocking sends of 2021 did."""
    dropout: bool | None = None
    """Whether training applies dropout (masks kept for backward); None: the graph says
    (Dropout nodes, or LayerNorm models, trained with dropout as GPT is; RMSNorm models
    such as Llama are trained without)."""


class Costing:
    """Prices for one graph on one topology; caches per (kind, tp, recompute, dp)."""

    def __init__(
        self,
        graph: Graph,
        costs: GraphCosts,
        chain: BlockChain,
        table: StrategyTable,
        topology: Topology,
        settings: Settings,
    ) -> None:
        self.graph, self.costs, self.chain, self.table = graph, costs, chain, table
        self.topology, self.settings = topology, settings
        self._choices: dict[int, TensorChoice] = {}
        self._parts: dict[tuple, PartCost] = {}
        self._comm: dict[tuple, float] = {}
        self.kinds: dict[str, DeviceKind] = {}
        self.pool: dict[str, list[str]] = {}
        for dev in topology.compute_devices:
            self.kinds.setdefault(dev.kind.name, dev.kind)
            self.pool.setdefault(dev.kind.name, []).append(dev.name)

    # -- the chain -----------------------------------------------------------------------
    @cached_property
    def sections(self) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], int]:
        """(prologue nodes, one representative block's nodes, epilogue nodes, block count)."""
        blocks = self.chain.blocks
        rep = self.chain.repeated
        if not rep:
            every = tuple(n for b in blocks for n in b.nodes)
            return (), every, (), 1
        first, last = rep[0], rep[-1]
        pro = tuple(n for b in blocks[:first] for n in b.nodes)
        epi = tuple(n for b in blocks[last + 1 :] for n in b.nodes)
        return pro, blocks[first].nodes, epi, len(rep)

    @cached_property
    def boundary_bytes(self) -> float:
        """Activations entering a repeated block: what one pipeline transfer moves."""
        _, block, _, count = self.sections
        if count < 2:
            return 0.0
        b = self.chain.blocks[self.chain.block_of(block[0])]
        grad = self.gradient_values  # masks and position tables are rebuilt per stage
        return float(sum(self._nbytes(v) for v in b.inputs if v in grad))

    def _nbytes(self, value: str) -> float:
        n = self.graph.values[value].nbytes  # None unless the shape is static
        return float(n) if n is not None else 0.0

    def _numel(self, value: str) -> int:
        """Element count of an initializer (0 unless its shape is static)."""
        t = self.graph.values[value].type
        assert t is not None, f"initializer {value!r} has no tensor type"
        return t.numel or 0

    # -- tensor-parallel choices ---------------------------------------------------------
    @cached_property
    def rule(self) -> MegatronRule | SplitRule:
        """The tensor-parallel rule for this graph (its analysis done once)."""
        return tp_rule(self.graph, self.table, self.settings.tp_rule)

    def choice(self, tp: int) -> TensorChoice:
        """The tensor-parallel rule at degree ``tp``, played through the graph (cached)."""
        if tp not in self._choices:
            sizes = {"tp": tp}
            chosen = self.rule.choose(sizes)
            done = self.table.resolve(self.graph, chosen, sizes)
            comm: dict[int, list[tuple[str, float]]] = defaultdict(list)
            for step in done.collectives:
                nbytes = (
                    self._nbytes(step.value)
                    if step.value
                    else sum(self._nbytes(o) for o in self.graph.node(step.consumer).outputs[:1])
                )
                comm[self.chain.block_of(step.consumer)].append((step.step.op, nbytes))
            for out in self.graph.outputs:  # graph outputs are handed back whole
                layout = done.layouts.get(out)
                producer = self.graph.producer(out)
                if layout is None or layout.is_replicated or producer is None:
                    continue
                for r in reshard(layout, TensorSharding.replicated(layout.rank)):
                    if r.communicates:
                        comm[self.chain.block_of(producer.name)].append((r.op, self._nbytes(out)))
            self._choices[tp] = TensorChoice(
                tp, dict(done.strategies), self._typical(comm)
            )
        return self._choices[tp]

    def _typical(
        self, comm: Mapping[int, list[tuple[str, float]]]
    ) -> dict[int, tuple[tuple[str, float], ...]]:
        """Per-block traffic with the first repeated block made like the others.

        A collective is charged to the block of the node that needs it, so the first
        layer would carry the embedding's all-reduce; it is the prologue's output, and
        the representative block (the first) must price a typical layer.
        """
        out = {k: tuple(v) for k, v in comm.items()}
        rep = self.chain.repeated
        if len(rep) < 2:
            return out
        first, second = rep[0], rep[1]
        extra = Counter(out.get(first, ())) - Counter(out.get(second, ()))
        out[first] = out.get(second, ())
        if extra and first > 0:
            out[first - 1] = out.get(first - 1, ()) + tuple(sorted(extra.elements()))
        return out

    def splits(self, tp: int) -> bool:
        """Whether degree ``tp`` splits anything with a weight (else it only wastes devices);
        under the split rule, whether it divides any op's work at all.
        """
        ch = self.choice(tp)
        if self.settings.tp_rule == "split":
            return any(not s.is_replicated for s in ch.strategies.values())
        return any(
            s.name in ("row", "column", "vocab", "heads", "experts")
            for n, s in ch.strategies.items()
            if self.costs.nodes[n].param_bytes or s.name == "heads"
        )

    # -- groups on the topology ----------------------------------------------------------
    def groups(self, kind: str, tp: int, dp: int) -> list[list[str]] | None:
        """The ``dp`` TP groups placement would give a first stage of ``kind``, or None."""
        pool = self.pool.get(kind, [])
        if tp * dp > len(pool):
            return None
        try:
            return _take_groups(self.topology, pool, tp, dp)[0]
        except InfeasibleError:
            return None

    def _collective(self, op: str, nbytes: float, group: Sequence[str]) -> float:
        key = (op, round(nbytes), tuple(group))
        if key not in self._comm:
            self._comm[key] = (
                0.0
                if len(group) < 2 or nbytes <= 0
                else group_collective(self.topology, op, nbytes, group).seconds
            )
        return self._comm[key]

    # -- prices --------------------------------------------------------------------------
    def part(
        self, nodes: Iterable[str], kind: str, tp: int, recompute: str, sp: bool = False
    ) -> PartCost:
        """A node set on one device of a ``tp`` group of ``kind`` (weights and activations
        per device; traffic timed on the group placement would use with one replica).

        ``sp`` (sequence parallelism, Korthikanti et al. 2022): the nodes TP leaves
        replicated (norms, residual adds, dropout) run on 1/t of the sequence, each TP
        all-reduce becomes a reduce-scatter plus an all-gather, and the activations TP
        leaves replicated are stored split by t.
        """
        nodes = tuple(nodes)
        sp = sp and tp > 1
        key = (nodes[:1], len(nodes), kind, tp, recompute, sp)
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
            self._collective(one, nbytes, group)
            for b in sorted(blocks)
            for op, nbytes in ch.comm.get(b, ())
            for one in (SP_OPS.get(op, (op,)) if sp else (op,))
        )
        weight_bytes, params = self._weights(nodes, ch, sizes)
        act_all, act_kept, inputs = self._activations(nodes, ch, sizes, sp)
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
        grad = weight_bytes if weight_bytes else 0.0
        out = PartCost(compute, comm, static, activation, workspace, params, grad)
        self._parts[key] = out
        return out

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
    def gradient_values(self) -> frozenset[str]:
        """Values on the gradient path (what backward may keep)."""
        return acts.gradient_values(self.graph)

    @cached_property
    def dropout(self) -> bool:
        """Whether training keeps dropout masks (see :attr:`Settings.dropout`)."""
        if self.settings.dropout is not None:
            return self.settings.dropout
        ops = {n.op_type for n in self.graph}
        return "Dropout" not in ops and "LayerNormalization" in ops

    def _activations(
        self, nodes: Sequence[str], ch: TensorChoice, sizes: Mapping[str, int], sp: bool
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
            f = self._fraction(value.split("#", 1)[0], ch, sizes)
            return f / tp if sp and f >= 1.0 else f

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

    # -- the configurations --------------------------------------------------------------
    def tp_degrees(self, kind: str, limit: int | None = None) -> list[int]:
        """Powers of two that fit in the kind's fastest bandwidth domain, split some
        weight, and stay at most :data:`MAX_TP` (and ``limit``).

        A TP group leaving the fastest domain (NVLink island, UB plane) pays several
        all-reduces per layer on the slow fabric; Megatron keeps TP inside a node for
        that reason, and so does the search, which saves pricing hopeless degrees.
        """
        pool = self.pool.get(kind, [])
        out, t, fastest = [1], 2, None
        while t <= min(len(pool), limit or MAX_TP, MAX_TP):
            try:
                _, threshold = _take_groups(self.topology, pool, t, 1)
            except InfeasibleError:
                break
            fastest = threshold if fastest is None else fastest
            if threshold < fastest:
                break
            if self.splits(t):
                out.append(t)
            t *= 2
        return out

    def configs(
        self, dp: int, tps: Mapping[str, Sequence[int]], recomputes: Sequence[str]
    ) -> tuple[StageConfig, ...]:
        """Every (kind, tp, recompute, sequence parallel) that has ``dp`` groups of ``tp``
        devices.
        """
        training = self.settings.mode == "training"
        out = []
        for kind in sorted(tps):
            for tp in tps[kind]:
                groups = self.groups(kind, tp, dp)
                if groups is None:
                    continue
                dp_group = [g[0] for g in groups]
                sps = self.settings.sequence_parallel if tp > 1 and training else (False,)
                for sp in sps if self.has_sequence else (False,):
                    p2p = self._p2p(kind, tp, dp, groups, sp)
                    for rc in recomputes if training else ("none",):
                        out.append(self._config(kind, tp, rc, sp, dp, dp_group, p2p))
        return tuple(out)

    def _config(
        self, kind: str, tp: int, rc: str, sp: bool, dp: int, dp_group: list[str], p2p: float
    ) -> StageConfig:
        """One stage configuration priced from its parts (block, prologue, epilogue)."""
        pro, block, epi, _ = self.sections
        spec = self.kinds[kind]
        training = self.settings.mode == "training"
        b = self.part(block, kind, tp, rc, sp)
        p = self.part(pro, kind, tp, "none", sp) if pro else _ZERO
        e = self.part(epi, kind, tp, "none", sp) if epi else _ZERO
        b_state, b_sync = self._training_terms(b, dp, dp_group, spec, rc)
        p_state, p_sync = self._training_terms(p, dp, dp_group, spec)
        e_state, e_sync = self._training_terms(e, dp, dp_group, spec)
        tied_bytes = tied_sync = 0.0
        if pro and epi and self.tied:  # one stage holding both ends holds the weight once
            both = self.part(pro + epi, kind, tp, "none", sp)
            w_state, w_sync = self._training_terms(both, dp, dp_group, spec)
            ends = p.static + p_state + e.static + e_state
            tied_bytes = max(0.0, ends - both.static - w_state)
            tied_sync = max(0.0, p_sync + e_sync - w_sync)
        return StageConfig(
            name=config_name(kind, tp, rc if training else None, sp),
            kind=kind,
            tp=tp,
            block_seconds=b.seconds,
            block_static_bytes=b.static + b_state,
            block_activation_bytes=b.activation,
            prologue_seconds=p.seconds,
            prologue_bytes=p.static + p_state + p.activation + p.workspace,
            epilogue_seconds=e.seconds,
            epilogue_bytes=e.static + e_state + e.activation + e.workspace,
            sync_seconds=b_sync,
            prologue_sync=p_sync,
            epilogue_sync=e_sync,
            p2p_seconds=p2p,
            recompute=rc,
            workspace_bytes=b.workspace,
            sequence_parallel=sp,
            tied_bytes=tied_bytes,
            tied_sync=tied_sync,
        )

    @cached_property
    def tied(self) -> frozenset[str]:
        """Weights both the prologue and the epilogue read: a tied embedding and LM head.

        Why: a one-stage plan holds, syncs and updates such a weight once, where pricing
        the two ends apart counted it twice (~3 % of a small GPT's sync). With two or more
        stages each end keeps its own copy, as Megatron-LM does.
        """
        pro, _, epi, _ = self.sections

        def weights(nodes: Sequence[str]) -> set[str]:
            return {
                v
                for n in nodes
                for v in self.graph.node(n).present_inputs
                if (val := self.graph.values.get(v)) is not None and val.weight is not None
            }

        return frozenset(weights(pro) & weights(epi))

    @cached_property
    def has_sequence(self) -> bool:
        """Whether the blocks pass a ``[batch, sequence, …]`` activation (rank 3 or more,
        a sequence longer than one): what sequence parallelism splits.
        """
        _, block, _, _ = self.sections
        inside = set(block)
        for n in block:
            for v in self.graph.node(n).present_inputs:
                p = self.graph.producer(v)
                t = self.graph.values[v].type if v in self.graph.values else None
                if p is None or p.name in inside or v not in self.gradient_values or t is None:
                    continue
                shape = t.shape or ()
                if len(shape) >= 3 and isinstance(shape[1], int) and shape[1] > 1:
                    return True
        return False

    def _training_terms(
        self,
        part: PartCost,
        dp: int,
        dp_group: Sequence[str],
        spec: DeviceKind,
        recompute: str = "none",
    ) -> tuple[float, float]:
        """Optimizer-state bytes and per-step gradient sync of a part (both nil for inference)."""
        if self.settings.mode != "training":
            return 0.0, 0.0
        return self._state(part, dp), self._sync(part, dp, dp_group, spec, recompute)

    def _state(self, part: PartCost, dp: int) -> float:
        """Gradients and Adam state of a part's parameters on one device (ZeRO-sharded)."""
        if not part.params:
            return 0.0
        per_weight = part.static / part.params
        state = mem.TrainingState(
            grad_bytes=per_weight,
            optimizer_bytes=12.0 if per_weight < 4 else 8.0,
            zero_stage=self.settings.zero,
            dp=dp,
        )
        per = state.per_param(per_weight)
        return part.params * (per["weights"] + per["gradients"] + per["optimizer"]) - part.static

    def sync_bytes(self, part: PartCost, dp: int) -> float:
        """Bytes of a part's gradients one device hands to each collective of the
        data-parallel sync (0 when nothing is synced: inference, one replica, no weights).

        The one definition: :meth:`_sync` prices its collectives on it and the schedule
        puts it on the sync events, so the timeline's link bytes match the price.
        """
        if self.settings.mode != "training" or dp <= 1 or not part.params:
            return 0.0
        return part.grad_bytes

    def _sync(
        self,
        part: PartCost,
        dp: int,
        group: Sequence[str],
        spec: DeviceKind,
        recompute: str = "none",
    ) -> float:
        """Gradient reduction across replicas and the Adam step, once per step: what of it
        is exposed.

        With ``Settings.overlap_dp`` (DDP / Megatron's ``overlap_grad_reduce``) the
        bucketed reduce-scatter (or all-reduce) of a part's gradients runs while the
        backward of the last micro-batch computes the next buckets, so only what exceeds
        that backward is exposed; with ZeRO the all-gather of updated weights overlaps the
        next step's first forward (``overlap_param_gather``). Each per block, so it scales
        with the blocks a stage holds as the rest of the sync does.
        """
        if not part.params:
            return 0.0
        ops = ("reduce_scatter", "all_gather") if self.settings.zero >= 1 else ("all_reduce",)
        nbytes = self.sync_bytes(part, dp)
        times = [self._collective(op, nbytes, group) for op in ops]
        if self.settings.overlap_dp and self.settings.mode == "training":
            passes = 4.0 if recompute == "full" else 3.0  # forward 1, backward 2 (+1)
            forward = part.compute / passes
            windows = (part.compute - forward, forward)  # backward for grads, forward for weights
            times = [max(0.0, t - w) for t, w in zip(times, windows, strict=False)]
        held = part.params / (dp if self.settings.zero >= 1 else 1)
        return sum(times) + optimizer_time(held, spec)

    def _p2p(self, kind: str, tp: int, dp: int, groups: list[list[str]], sp: bool = False) -> float:
        """One micro-batch's boundary traffic to the next stage's group (scatter/gather
        over the TP group's links, :func:`shardc.cost.network.pipeline_transfer`).
        """
        nbytes = self.boundary_bytes
        if not nbytes:
            return 0.0
        used = {d for g in groups for d in g}
        rest = [d for d in self.pool[kind] if d not in used]
        nxt = None
        if len(rest) >= tp * dp:
            try:
                nxt = _take_groups(self.topology, rest, tp, dp)[0][0][0]
            except InfeasibleError:
                nxt = None
        if nxt is None:
            others = [d for k in sorted(self.pool) if k != kind for d in self.pool[k]]
            nxt = others[0] if others else None
        if nxt is None:
            return 0.0
        try:
            one = pipeline_transfer(self.topology, groups[0][0], nxt, nbytes, groups[0], sharded=sp)
        except (InfeasibleError, KeyError, ValueError):
            return 0.0
        return one * (2 if self.settings.mode == "training" else 1)


def config_name(kind: str, tp: int, recompute: str | None, sp: bool = False) -> str:
    """A stage configuration's name: ``kind/tpN[/recompute][/sp]`` (plan.json reads it)."""
    return f"{kind}/tp{tp}" + (f"/{recompute}" if recompute else "") + ("/sp" if sp else "")


_ZERO = PartCost(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
