"""The graph side of the partitioner's prices: the chain, the TP choices, the groups.

Why a module of its own: every stage price (:mod:`shardc.partition.parts`) and every
configuration (:mod:`shardc.partition.costing`) starts from the same few facts — which
nodes form the prologue, a typical block and the epilogue, what each tensor-parallel
degree does to every node and which collectives it needs, which devices a TP group of a
kind would get — computed once per graph and topology here.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import TYPE_CHECKING, Self

from shardc.cost import activations as acts
from shardc.cost.network import group_collective
from shardc.errors import InfeasibleError
from shardc.ir import Graph
from shardc.partition.experts import ExpertRegion, find_regions
from shardc.partition.megatron import MegatronRule
from shardc.partition.place import _take_groups
from shardc.partition.split import SplitRule, tp_rule
from shardc.sharding import Strategy, TensorSharding, reshard
from shardc.vocabulary import RECOMPUTES

if TYPE_CHECKING:
    from shardc.cost.graph import GraphCosts
    from shardc.ir.blocks import BlockChain
    from shardc.strategy.table import StrategyTable
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
    cp_comm: str = "allgather"
    """How context parallelism moves K and V (:data:`~shardc.vocabulary.CP_COMMS`)."""
    ep: int = 1
    """Expert parallelism across data-parallel replicas (``--pin ep``): ep consecutive
    replicas split the experts, tokens exchanged by all-to-all (:mod:`.expert_ep`)."""
    dropout: bool | None = None
    """Whether training applies dropout (masks kept for backward); None: the graph says
    (Dropout nodes, or LayerNorm models, trained with dropout as GPT is; RMSNorm models
    such as Llama are trained without)."""


_EP_FREE = ("rule", "expert_regions", "sections", "gradient_values", "boundary_bytes")
"""Cached properties of :class:`GraphPrices` that do not depend on ``Settings.ep``."""


class GraphPrices:
    """The chain, tensor-parallel choices and groups of one graph on one topology."""

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

    def with_ep(self, ep: int) -> Self:
        """The same prices with experts spread over ``ep`` replicas (the search tries
        several: :func:`shardc.partition.search.search`); ``self`` when it already is.
        """
        if ep == self.settings.ep:
            return self
        other = type(self)(self.graph, self.costs, self.chain, self.table, self.topology,
                           replace(self.settings, ep=ep))
        # what does not depend on ep is shared, not worked out again: the tensor-parallel
        # rule's analysis and its choice per degree, the chain, the expert regions
        other._choices = self._choices
        for name in _EP_FREE:
            if name in self.__dict__:
                other.__dict__[name] = self.__dict__[name]
        return other

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
    def gradient_values(self) -> frozenset[str]:
        """Values on the gradient path (what backward may keep)."""
        return acts.gradient_values(self.graph)

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

    @cached_property
    def expert_regions(self) -> tuple[ExpertRegion, ...]:
        """The graph's MoE layers as the exporter wrote them, found once: expert
        parallelism across replicas asks for them per configuration it prices.
        """
        return find_regions(self.graph, self.table.free)[0]

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
