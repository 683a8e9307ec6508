"""Step time of a Megatron-style grid: tensor × pipeline × data parallelism of a transformer.

Why: it is the yardstick the partitioner must beat ("best Megatron grid") and what the
cost model is validated with against published runs (Narayanan et al., SC'21, Table 1).
It composes the cost model's own pieces; its only formulas *define* the grid schedule:

* **ranks** (Megatron's order) ``tp_i + t·(dp_i + d·pp_i)``: a TP group is t consecutive
  devices (one node), a stage a block of t·d, a DP group one device per TP group;
* **tensor parallelism** splits every layer node by t (:func:`tensor_parallel_shard`)
  and costs, per layer and micro-batch, 2 all-reduces of b·s·h in the forward and 2 in
  the backward, +2 when full recomputation reruns the forward; sequence parallelism
  swaps each all-reduce for a reduce-scatter plus an all-gather of the same array;
* **pipeline**: per micro-batch each stage sends its activation forward and receives a
  gradient back (2·v transfers with v interleaved chunks), scattered over the t links of
  a TP group and all-gathered over NVLink (Narayanan §4.1); the 1F1B bubble is
  ``(p−1)/(m·v)`` of the ideal time (GPipe's is the same; it differs in memory);
* **data parallelism**: one all-reduce of the device's gradients per step (ZeRO ≥ 1:
  reduce-scatter gradients + all-gather weights), not overlapped with the backward, as
  in Megatron-LM of 2021; tied embeddings add an all-reduce between the end stages.

Per-device step time = compute + TP + PP + bubble + DP + optimizer, all exposed. The
grid and the step records (:class:`GridConfig`, :class:`StepEstimate`) live in
:mod:`shardc.cost.grid_config`, shared with the partitioner's own grid pricing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from shardc.cost import memory as mem
from shardc.cost.compute import (
    DeviceSpec,
    ShardScale,
    node_time,
    optimizer_time,
    pass_multiplier,
)
from shardc.cost.grid_config import GridConfig, StepEstimate
from shardc.cost.network import group_collective, pipeline_transfer, point_to_point
from shardc.cost.ops import NodeCost
from shardc.cost.phases import prefill_time, training_time
from shardc.errors import OptionError

__all__ = ["GridConfig", "StepEstimate", "TransformerCosts", "estimate_grid"]

if TYPE_CHECKING:
    from shardc.synth import SynthConfig
    from shardc.topology import Topology

#: a TP all-reduce, or (sequence parallel) the reduce-scatter + all-gather pair
TP_OPS = {False: ("all_reduce",), True: ("reduce_scatter", "all_gather")}
#: the DP gradient all-reduce, or (ZeRO >= 1) reduce-scatter + all-gather of weights
DP_OPS = {False: ("all_reduce",), True: ("reduce_scatter", "all_gather")}


def _sorted(counts: Counter[NodeCost]) -> tuple[NodeCost, ...]:
    """A multiset of costs in a deterministic order (by value, not by node name)."""
    return tuple(sorted(counts.elements(), key=lambda c: (
        c.kind, c.flops, c.bytes_read, c.bytes_written, c.input_bytes, c.output_bytes,
        c.param_bytes, c.dtype.name, c.exact)))


@dataclass(frozen=True)
class TransformerCosts:
    """Forward node costs of one micro-batch: one layer, and all that is not a layer.

    ``outside`` (embeddings, positions, mask, final norm, LM head) is charged to the
    last pipeline stage with the head, which dominates it.
    """

    layer: tuple[NodeCost, ...]
    outside: tuple[NodeCost, ...]
    layers: int
    hidden: int
    heads: int
    seq: int
    micro_batch: int
    layer_params: int
    outside_params: int
    tied_embeddings: bool = False
    act_bytes: int = 2

    @property
    def hidden_bytes(self) -> int:
        """Bytes of the hidden state of one micro-batch, b·s·h: what TP and PP move."""
        return self.micro_batch * self.seq * self.hidden * self.act_bytes

    @property
    def score_bytes(self) -> int:
        """Bytes of the attention score matrix of one micro-batch, b·a·s²."""
        return self.micro_batch * self.heads * self.seq * self.seq * self.act_bytes

    @staticmethod
    def split(one: Iterable[NodeCost], two: Iterable[NodeCost]
              ) -> tuple[tuple[NodeCost, ...], tuple[NodeCost, ...]]:
        """(layer, outside) from the costs of a 1-layer and a 2-layer build of one model.

        The layer is the multiset difference two − one, so no node name is read; the
        1-layer build must be contained in the 2-layer one and hold every layer node.
        """
        c1, c2 = Counter(one), Counter(two)
        layer = c2 - c1
        if c1 - c2 or not layer or layer - c1:
            raise ValueError("the 2-layer build is not the 1-layer build plus one layer")
        return _sorted(layer), _sorted(c1 - layer)

    @classmethod
    def from_synth(cls, arch: str, config: SynthConfig) -> TransformerCosts:
        """Cost a 1- and a 2-layer ``shardc.synth`` build of ``config`` and difference them.

        ``config`` must fix ``batch`` (the micro-batch) and ``seq``. The frontend and the
        cost pass are imported here, so the cost package keeps no import-time dependency
        on them.
        """
        from shardc.cost.graph import graph_costs
        from shardc.frontend import load_model
        from shardc.synth import build, resolve

        res = resolve(arch, config)
        if not (res.batch and res.seq):
            raise OptionError("TransformerCosts.from_synth needs batch and seq in the config")
        one, two = (graph_costs(load_model(build(arch, replace(config, layers=n))).graph,
                                where=f"synth {arch} x{n}") for n in (1, 2))
        layer, outside = cls.split(one.nodes.values(), two.nodes.values())
        per_layer = two.param_count - one.param_count
        return cls(layer, outside, res.layers, res.hidden, res.heads, res.seq, res.batch,
                   per_layer, one.param_count - per_layer, res.tie_embeddings,
                   res.precision.np_act.itemsize)


def tensor_parallel_shard(cost: NodeCost, tp: int, hidden_bytes: int,
                          sequence_parallel: bool = False) -> ShardScale:
    """Megatron's split of one node over ``tp`` ranks, told apart by shapes alone.

    A weight MatMul whose output is the hidden state is row-parallel (reads 1/t of its
    input and weight, writes the whole partial sum); any other weight MatMul is
    column-parallel (reads the whole input). Other nodes writing the hidden state
    (norms, residual adds, the row-parallel bias, the embedding) are replicated unless
    sequence parallelism splits them; everything else (heads, MLP width) is split by t.
    """
    if tp == 1:
        return ShardScale()
    f = 1.0 / tp
    writes_hidden = sum(cost.output_bytes) == hidden_bytes
    if cost.kind == "matmul" and cost.param_bytes:
        return ShardScale(f, (f, f), (1.0,)) if writes_hidden else ShardScale(f, (1.0, f), (f,))
    if writes_hidden and cost.kind != "matmul" and not sequence_parallel:
        return ShardScale()
    return ShardScale.uniform(f)


def sharded_seconds(costs: Sequence[NodeCost], kind: DeviceSpec, *, tp: int, hidden_bytes: int,
                    mode: str = "training", recompute: str = "none",
                    sequence_parallel: bool = False, attention_share: float = 0.0) -> float:
    """Seconds of one micro-batch through ``costs`` on one rank of a TP group of ``tp``.

    Training counts forward+backward(+recompute); inference the forward alone. Nodes
    are grouped by their Megatron shard so each group is one roofline sum.
    """
    groups: dict[ShardScale, list[NodeCost]] = {}
    for c in costs:
        shard = tensor_parallel_shard(c, tp, hidden_bytes, sequence_parallel)
        groups.setdefault(shard, []).append(c)
    if mode == "inference":
        return sum(prefill_time(g, kind, shard=s).seconds for s, g in groups.items())
    return sum(training_time(g, kind, recompute=recompute, attention_share=attention_share,
                             shard=s).seconds for s, g in groups.items())


def _train_seconds(costs: Sequence[NodeCost], kind: DeviceSpec, cfg: GridConfig,
                   hidden_bytes: int, recompute: str, attention_share: float = 0.0) -> float:
    """Forward+backward(+recompute) seconds of one micro-batch under ``cfg``."""
    return sharded_seconds(costs, kind, tp=cfg.tp, hidden_bytes=hidden_bytes,
                           recompute=recompute, sequence_parallel=cfg.sequence_parallel,
                           attention_share=attention_share)


def attention_share(costs: TransformerCosts, kind: DeviceSpec) -> float:
    """Share of a layer's forward time in the attention core (what selective recomputes):
    the weight-free nodes that read or write the b·a·s² score matrix.
    """
    total = sum(node_time(c, kind).seconds for c in costs.layer)
    core = sum(node_time(c, kind).seconds for c in costs.layer
               if not c.param_bytes and costs.score_bytes in (*c.input_bytes, *c.output_bytes))
    return core / total if total else 0.0


@dataclass(frozen=True)
class GridPlacement:
    """The groups of rank 0 in Megatron's rank order (tp, then dp, then pp)."""

    tp_group: tuple[str, ...]
    dp_group: tuple[str, ...]
    pp_group: tuple[str, ...]


def place_grid(topology: Topology, cfg: GridConfig) -> GridPlacement:
    """Bind the grid to ``topology``'s compute devices in rank order.

    Every other group is a translate of rank 0's over the same kind of links (TP inside a
    node, DP and PP on the same rail of other nodes), so rank 0's groups time them all.
    """
    names = [d.name for d in sorted(topology.compute_devices, key=lambda d: d.rank)]
    if cfg.devices > len(names):
        raise OptionError(f"grid tp={cfg.tp} pp={cfg.pp} dp={cfg.dp} needs {cfg.devices} "
                          f"devices; {topology.name} has {len(names)}",
                          hint="enlarge the topology (e.g. --set nodes=N) or shrink the grid")
    t, d = cfg.tp, cfg.dp
    return GridPlacement(tuple(names[:t]), tuple(names[i * t] for i in range(d)),
                         tuple(names[i * t * d] for i in range(cfg.pp)))


def _timed(topo: Topology, ops: Iterable[str], nbytes: float, group: Sequence[str],
           label: str) -> tuple[float, str]:
    """Seconds of ``ops`` run one after another on ``group``, and how they were timed."""
    if len(set(group)) == 1 or nbytes <= 0:
        return 0.0, f"{label}: none"
    est = [group_collective(topo, op, nbytes, group) for op in ops]
    return sum(e.seconds for e in est), f"{label}: " + " + ".join(e.explain() for e in est)


def _p2p(topo: Topology, place: GridPlacement, nbytes: float, cfg: GridConfig
         ) -> tuple[float, str]:
    """One pipeline transfer: scattered over the TP group's links, then all-gathered."""
    if cfg.pp == 1:
        return 0.0, "pp: none (pp=1)"
    split = cfg.scatter_gather and cfg.tp > 1
    send = point_to_point(topo, place.pp_group[0], place.pp_group[1],
                          nbytes / cfg.tp if split else nbytes)
    seconds = pipeline_transfer(topo, place.pp_group[0], place.pp_group[1], nbytes,
                                place.tp_group, scatter_gather=cfg.scatter_gather,
                                sharded=cfg.sequence_parallel)
    how = " then all-gather" if split and not cfg.sequence_parallel else ""
    return seconds, f"pp (per transfer): {send.explain()}{how}"


def estimate_grid(costs: TransformerCosts, cfg: GridConfig, topology: Topology
                  ) -> StepEstimate:
    """Step time, memory and work of ``cfg`` for the model ``costs`` on ``topology``.

    ``costs`` must be for micro-batch ``cfg.micro_batch``; layers must divide evenly
    into ``pp · interleave`` chunks.
    """
    if costs.micro_batch != cfg.micro_batch:
        raise OptionError(f"costs are for micro-batch {costs.micro_batch}, the grid uses "
                          f"{cfg.micro_batch}", hint="cost the model at the grid's micro-batch")
    if costs.layers % (cfg.pp * cfg.interleave):
        raise OptionError(f"{costs.layers} layers do not split into pp × interleave = "
                          f"{cfg.pp} × {cfg.interleave} equal chunks")
    place = place_grid(topology, cfg)
    kind = topology.device(place.tp_group[0]).kind
    m, per_stage, hb = cfg.microbatches, costs.layers // cfg.pp, costs.hidden_bytes
    share = attention_share(costs, kind) if cfg.recompute == "selective" else 0.0
    layer_s = _train_seconds(costs.layer, kind, cfg, hb, cfg.recompute, share)
    outside_s = _train_seconds(costs.outside, kind, cfg, hb, "none")  # layers only recompute
    compute = m * (per_stage * layer_s + outside_s)

    tp_op, tp_note = _timed(topology, TP_OPS[cfg.sequence_parallel], hb, place.tp_group,
                            "tp (per op)")
    tp_ops = per_stage * (4 + (2 if cfg.recompute == "full" else 0)) + 2  # + embedding, head
    tp_comm = m * tp_ops * tp_op
    p2p, pp_note = _p2p(topology, place, hb, cfg)
    pp_comm = m * 2 * cfg.interleave * p2p
    bubble = cfg.bubble_fraction * (compute + tp_comm + pp_comm)

    params = (per_stage * costs.layer_params + costs.outside_params) / cfg.tp
    dp_comm, dp_note = _timed(topology, DP_OPS[cfg.zero_stage >= 1], params * cfg.grad_bytes,
                              place.dp_group, "dp")
    tied, tied_note = _timed(topology, ("all_reduce",), costs.outside_params / cfg.tp
                             * cfg.grad_bytes * (costs.tied_embeddings and cfg.pp > 1),
                             (place.pp_group[0], place.pp_group[-1]), "tied embeddings")
    dp_comm += tied
    opt = optimizer_time(params / (cfg.dp if cfg.zero_stage >= 1 else 1), kind)

    mult = pass_multiplier("training", cfg.recompute, attention_share=share)
    per_mb = costs.layers * mult * sum(c.flops for c in costs.layer)
    per_mb += 3 * sum(c.flops for c in costs.outside)
    return StepEstimate(cfg, compute, tp_comm, pp_comm, bubble, dp_comm, opt,
                        _memory(costs, cfg, params, per_stage), per_mb * m * cfg.dp,
                        kind.memory_bytes, (tp_note, pp_note, dp_note, tied_note))


def _memory(costs: TransformerCosts, cfg: GridConfig, params: float, per_stage: int
            ) -> mem.MemoryEstimate:
    """The first stage's memory: it holds the most micro-batches in flight under 1F1B.

    Interleaving adds (p−1)/(p·v) of a stage's activations (Korthikanti et al. 2022
    §4.2.3). With full recomputation, the backward of one layer holds that layer's full
    activations again; the LM head's logits are the other large transient.
    """
    def layer_bytes(recompute: str) -> float:
        return mem.transformer_layer_activation_bytes(
            costs.seq, cfg.micro_batch, costs.hidden, costs.heads, tp=cfg.tp,
            sequence_parallel=cfg.sequence_parallel, recompute=recompute,
            bytes_per_elem=costs.act_bytes)

    act = per_stage * layer_bytes(cfg.recompute)
    if cfg.interleave > 1:
        act *= 1 + (cfg.pp - 1) / (cfg.pp * cfg.interleave)
    logits = max((sum(c.output_bytes) for c in costs.outside), default=0) / cfg.tp
    workspace = (layer_bytes("none") if cfg.recompute == "full" else 0.0) + logits
    state = mem.TrainingState(grad_bytes=cfg.grad_bytes, zero_stage=cfg.zero_stage, dp=cfg.dp)
    return mem.training_memory(
        params, mem.WeightFormat(), state, activations_per_microbatch=act,
        in_flight=mem.in_flight_microbatches(cfg.schedule, 0, cfg.pp, cfg.microbatches),
        workspace=workspace)
