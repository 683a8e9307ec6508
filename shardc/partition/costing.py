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
The graph facts live in :mod:`shardc.partition.pricing`, a node set's price in
:mod:`shardc.partition.parts`; this module turns them into stage configurations.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING

from shardc.cost import memory as mem
from shardc.cost.compute import optimizer_time
from shardc.cost.network import pipeline_transfer
from shardc.errors import InfeasibleError
from shardc.partition import expert_ep as xep
from shardc.partition.place import _take_groups
from shardc.partition.problem import StageConfig

if TYPE_CHECKING:
    from shardc.topology.model import DeviceKind


from shardc.partition.parts import PartPrices
from shardc.partition.pricing import MAX_TP, SP_OPS, PartCost, Settings, TensorChoice

__all__ = ["MAX_TP", "SP_OPS", "Costing", "PartCost", "Settings", "TensorChoice", "config_name"]


class Costing(PartPrices):
    """Prices for one graph on one topology; caches per (kind, tp, recompute, dp)."""

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
        self,
        dp: int,
        tps: Mapping[str, Sequence[int]],
        recomputes: Sequence[str],
        cp: int = 1,
    ) -> tuple[StageConfig, ...]:
        """Every (kind, tp, recompute, sequence parallel) that has ``dp`` groups of ``tp``
        devices, each ``cp`` times over (context parallelism; SP is not combined with it).
        """
        training = self.settings.mode == "training"
        out = []
        for kind in sorted(tps):
            for tp in tps[kind]:
                groups = self.groups(kind, tp * cp, dp)
                if groups is None:
                    continue
                # gradients are reduced over every copy of a weight: dp x cp devices
                dp_group = [g[k * tp] for g in groups for k in range(cp)]
                sps = self.settings.sequence_parallel if tp > 1 and training else (False,)
                for sp in sps if self.sequence_splits(tp) and cp == 1 else (False,):
                    p2p = self._p2p(kind, tp, dp, self.groups(kind, tp, dp) or groups, sp) / cp
                    for rc in recomputes if training else ("none",):
                        out.append(self._config(kind, tp, rc, sp, dp, dp_group, p2p, cp))
        return tuple(out)

    def _config(
        self,
        kind: str,
        tp: int,
        rc: str,
        sp: bool,
        dp: int,
        dp_group: list[str],
        p2p: float,
        cp: int = 1,
    ) -> StageConfig:
        """One stage configuration priced from its parts (block, prologue, epilogue)."""
        pro, block, epi, _ = self.sections
        spec = self.kinds[kind]
        training = self.settings.mode == "training"
        b = self.part(block, kind, tp, rc, sp, cp)
        p = self.part(pro, kind, tp, "none", sp, cp) if pro else _ZERO
        e = self.part(epi, kind, tp, "none", sp, cp) if epi else _ZERO
        dp = dp * cp  # weights are replicated over cp: their state and sync span dp x cp
        b_state, b_sync = self._training_terms(b, dp, dp_group, spec, rc)
        a2a = 0.0
        if self.settings.ep > 1 and training:  # experts across replicas (partition.expert_ep)
            a2a, b_state, b_sync = self._expert_ep(block, b, tp, dp, dp_group, spec, rc, b_state)
        p_state, p_sync = self._training_terms(p, dp, dp_group, spec)
        e_state, e_sync = self._training_terms(e, dp, dp_group, spec)
        tied_bytes = tied_sync = 0.0
        if pro and epi and self.tied:  # one stage holding both ends holds the weight once
            both = self.part(pro + epi, kind, tp, "none", sp, cp)
            w_state, w_sync = self._training_terms(both, dp, dp_group, spec)
            ends = p.static + p_state + e.static + e_state
            tied_bytes = max(0.0, ends - both.static - w_state)
            tied_sync = max(0.0, p_sync + e_sync - w_sync)
        return StageConfig(
            name=config_name(kind, tp, rc if training else None, sp, cp),
            kind=kind,
            tp=tp,
            block_seconds=b.seconds + a2a,
            block_static_bytes=b.static + b_state,
            block_activation_bytes=b.activation,
            prologue_seconds=p.seconds,
            prologue_bytes=p.static + p_state + p.activation + p.workspace,
            epilogue_seconds=e.seconds,
            epilogue_bytes=e.static + e_state + e.activation + e.workspace,
            sync_seconds=b_sync,
            sync_overlap=(self.sync_overlap(b, dp, dp_group, rc)
                          if training and dp > 1 else ()),
            prologue_sync=p_sync,
            epilogue_sync=e_sync,
            p2p_seconds=p2p,
            recompute=rc,
            workspace_bytes=b.workspace,
            sequence_parallel=sp,
            tied_bytes=tied_bytes,
            tied_sync=tied_sync,
            cp=cp,
        )

    def _expert_ep(
        self, block: Sequence[str], b: PartCost, tp: int, dp: int, dp_group: list[str],
        spec: DeviceKind, rc: str, b_state: float,
    ) -> tuple[float, float, float]:  # fmt: skip
        """(all-to-all seconds, state bytes, sync seconds) of a block under ``Settings.ep``."""
        ep = self.settings.ep
        params, nbytes = xep.expert_params(self, block, tp)
        a2a = xep.block_alltoall(self, block, dp_group[:ep], tp)
        state = b_state - xep.saved_bytes(params, nbytes, ep, self.settings.zero)
        sync = self._sync(xep.synced_part(b, params, ep), dp, dp_group, spec, rc)
        return a2a, state, sync

    def ep_seconds(self, kind: str, tp: int, dp: int) -> float:
        """One block's ep all-to-alls per micro-batch on ``kind`` (0 without ep)."""
        if self.settings.ep <= 1 or self.settings.mode != "training":
            return 0.0
        groups = self.groups(kind, tp, dp)
        if groups is None:
            return 0.0
        _, block, _, _ = self.sections
        return xep.block_alltoall(self, block, [g[0] for g in groups][: self.settings.ep], tp)

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
    def sequence_length(self) -> int:
        """The sequence length of the ``[batch, sequence, …]`` activation the blocks pass
        (rank 3 or more), 1 if none: what sequence parallelism splits.
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
                    return shape[1]
        return 1

    @property
    def has_sequence(self) -> bool:
        """Whether the blocks pass a sequence longer than one."""
        return self.sequence_length > 1

    def sequence_splits(self, tp: int) -> bool:
        """Whether sequence parallelism over ``tp`` devices can be emitted: the sequence
        divides (else the norms cannot run on shards and the plan would say SP but run TP).
        """
        return self.has_sequence and self.sequence_length % tp == 0

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
        pairs = self.sync_overlap(part, dp, group, recompute)
        held = part.params / (dp if self.settings.zero >= 1 else 1)
        return sum(max(0.0, t - w) for t, w in pairs) + optimizer_time(held, spec)

    def sync_overlap(
        self, part: PartCost, dp: int, group: Sequence[str], recompute: str = "none"
    ) -> tuple[tuple[float, float], ...]:
        """Each collective of a part's gradient sync with the compute that can hide it:
        ``(seconds, window)`` pairs, the window 0 when the sync is not overlapped.

        The window is one micro-batch's backward of the part for the gradient
        reduction and its forward for the ZeRO weight all-gather: what a
        non-interleaved stage has left once its last micro-batch makes the gradients
        final. :func:`shardc.partition.problem.block_sync` widens it under interleaving.
        """
        if not part.params:
            return ()
        ops = ("reduce_scatter", "all_gather") if self.settings.zero >= 1 else ("all_reduce",)
        nbytes = self.sync_bytes(part, dp)
        times = [self._collective(op, nbytes, group) for op in ops]
        windows: tuple[float, ...] = (0.0, 0.0)
        if self.settings.overlap_dp and self.settings.mode == "training":
            passes = 4.0 if recompute == "full" else 3.0  # forward 1, backward 2 (+1)
            forward = part.compute / passes
            windows = (part.compute - forward, forward)  # backward for grads, forward for weights
        return tuple(zip(times, windows, strict=False))

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


def config_name(
    kind: str, tp: int, recompute: str | None, sp: bool = False, cp: int = 1
) -> str:
    """A stage configuration's name: ``kind/tpN[/recompute][/sp][/cpN]`` (plan.json reads
    it).
    """
    return (f"{kind}/tp{tp}" + (f"/{recompute}" if recompute else "") + ("/sp" if sp else "")
            + (f"/cp{cp}" if cp > 1 else ""))


_ZERO = PartCost(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
