"""The partitioning problem as plain data, and the one function that scores a solution.

The model after coarsening is ``prologue · L identical blocks · epilogue``. A plan cuts
the L blocks into S pipeline stages, gives stage j ``n_j`` consecutive blocks and one
*stage configuration* c_j (a device kind and a tensor-parallel degree, with the time and
memory one block costs there, both from the cost model), and replicates the pipeline
``dp`` times. Because the blocks are identical, which blocks a stage holds does not
matter, only how many: the search is over ``(n_j, c_j)``, not over block-to-stage maps.

Scoring (the same function the solver's objective is checked against):

* stage time per micro-batch ``T_j = n_j·t(c_j) + [j = 0]·pro(c_0) + [j = S−1]·epi(c_S−1)
  + [S > 1]·x(c_j)``, where ``x`` is the stage's own boundary traffic per micro-batch
  (activations out, gradients back), which sits in every 1F1B slot;
* per-step work outside the pipeline ``sync_j = n_j·sync(c_j) + [j = 0]·pro_sync(c_0) +
  [j = S−1]·epi_sync(c_S−1) − [S = 1]·tied_sync(c_0)`` (data-parallel gradient reduction,
  optimizer step, :func:`block_sync`, whose overlap with the backward widens with
  interleaving; a weight both ends read, a tied embedding and LM head, is synced once
  when one stage holds both, and held once: ``tied_bytes`` likewise);
* **throughput** (1F1B or GPipe over M micro-batches): ``(M + (S − 1)/v)·max_j T_j +
  (S − 1)·p2p + max_j sync_j`` — the bubble is ``(S − 1)/v`` slots of the slowest stage
  (v = 1 unless interleaved; with v virtual stages a micro-batch crosses v times as many
  boundaries, so ``x`` counts v times, and each device holds ``1 + (S − 1)/(S·v)`` times
  the activations, Korthikanti et al. 2022 §4.2.3);
* with ``overlap_p2p`` the slots carry no ``x``; the fill and drain expose
  ``Σ_{j<S−1} x(c_j)`` once per step instead;
* **latency** (one request through the pipeline): ``Σ_j T_j + (S − 1)·p2p``;
* memory of a stage's devices: ``n_j·(static(c_j) + act(c_j)·inflight_j) + fixed``,
  with ``inflight_j = min(S − j, M)`` under 1F1B and ``M`` under GPipe (Narayanan et
  al. 2021), at most the kind's capacity;
* devices: ``Σ_j dp·tp(c_j)`` per kind at most what the topology has.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class StageConfig:
    """One way to run a stage, with its costs from the cost model (seconds, bytes)."""

    name: str
    kind: str
    tp: int
    block_seconds: float
    """One repeated block, one micro-batch, on this configuration (forward+backward)."""
    block_static_bytes: float
    """Per device, per block: weights, gradients, optimizer state."""
    block_activation_bytes: float
    """Per device, per block, per micro-batch in flight."""
    prologue_seconds: float = 0.0
    prologue_bytes: float = 0.0
    epilogue_seconds: float = 0.0
    epilogue_bytes: float = 0.0
    sync_seconds: float = 0.0
    """Per-step work outside the pipeline (DP gradient all-reduce, optimizer), per block."""
    prologue_sync: float = 0.0
    epilogue_sync: float = 0.0
    p2p_seconds: float = 0.0
    """Boundary traffic of one stage per micro-batch, charged when there are 2+ stages."""
    recompute: str = "none"
    workspace_bytes: float = 0.0
    """Per device of any stage of this configuration, once (a transient, e.g. a block
    being recomputed)."""
    sequence_parallel: bool = False
    """Megatron sequence parallelism inside the TP group (norms, dropout, residuals and
    their activations split along the sequence)."""
    tied_bytes: float = 0.0
    """What ``prologue_bytes + epilogue_bytes`` count twice when one stage holds both ends
    (a tied embedding / LM head: one weight, one gradient, one optimizer state)."""
    tied_sync: float = 0.0
    """What ``prologue_sync + epilogue_sync`` count twice on a one-stage plan (the tied
    weight's gradient is reduced once)."""
    sync_overlap: tuple[tuple[float, float], ...] = ()
    """Per block, each collective of the gradient sync as ``(seconds, window)``: the
    compute of one micro-batch that hides it on a plain 1F1B stage (``sync_seconds``
    already charges ``max(0, seconds − window)``). Interleaving widens the window
    (:func:`block_sync`); empty when there is nothing to sync."""
    cp: int = 1
    """Context-parallel degree: the stage's sequence split over ``cp`` copies of its TP
    group (:mod:`shardc.partition.context`)."""

    @property
    def width(self) -> int:
        """Devices of one replica of the stage: ``tp · cp``."""
        return self.tp * self.cp


@dataclass(frozen=True)
class PartitionProblem:
    """Everything the solver needs; built by the partition pass from the cost model."""

    blocks: int
    configs: tuple[StageConfig, ...]
    devices: Mapping[str, int]
    """Devices available per kind."""
    capacity: Mapping[str, float]
    """Memory bytes per device, per kind."""
    dp: int = 1
    microbatches: int = 1
    max_stages: int = 8
    p2p_seconds: float = 0.0
    """Activation (and gradient) transfer between neighbouring stages, per micro-batch."""
    objective: str = "throughput"
    schedule: str = "1f1b"
    pinned_stages: int | None = None
    pinned: Mapping[int, tuple[str, ...]] = field(default_factory=dict)
    """Stage index -> the config names the user allows there."""
    pinned_blocks: Mapping[int, int] = field(default_factory=dict)
    """Stage index -> blocks the user fixed for it."""
    interleave: int = 1
    """Virtual stages per device (interleaved 1F1B, Narayanan et al. 2021 §2.2.2): each
    stage's blocks run as ``v`` chunks, so ``n_j`` must be a multiple of ``v``."""
    overlap_p2p: bool = False
    """Pipeline sends and receives run beside compute (Megatron-LM's ``overlap_p2p_comm``,
    non-blocking isend/irecv): in steady state a slot does not wait for them, and only the
    pipeline's fill and drain, one hand-off per boundary, are exposed."""

    def allowed(self, stage: int, config: str) -> bool:
        """Whether the pins let ``stage`` run ``config``."""
        return stage not in self.pinned or config in self.pinned[stage]

    def config(self, name: str) -> StageConfig:
        """Look a configuration up by name."""
        for c in self.configs:
            if c.name == name:
                return c
        raise KeyError(name)


@dataclass(frozen=True)
class StagePlan:
    """One stage of a solution."""

    config: str
    blocks: int


@dataclass(frozen=True)
class Solution:
    """A solver's answer: the stages, the scored objective and the solver's own words."""

    stages: tuple[StagePlan, ...]
    seconds: float
    status: str = "FEASIBLE"
    bound: float | None = None
    wall_seconds: float = 0.0

    @property
    def gap(self) -> float | None:
        """Relative optimality gap reported by the solver (0 when proven optimal)."""
        if self.bound is None or not self.seconds:
            return None
        return max(0.0, (self.seconds - self.bound) / self.seconds)


def stage_seconds(p: PartitionProblem, stages: tuple[StagePlan, ...], j: int) -> float:
    """``T_j`` of the module docstring."""
    c = p.config(stages[j].config)
    t = stages[j].blocks * c.block_seconds
    if j == 0:
        t += c.prologue_seconds
    if j == len(stages) - 1:
        t += c.epilogue_seconds
    if len(stages) > 1 and not p.overlap_p2p:
        t += c.p2p_seconds * p.interleave
    return t


def exposed_p2p(p: PartitionProblem, stages: tuple[StagePlan, ...]) -> float:
    """Pipeline transfers on the critical path when they overlap compute: the first
    micro-batch's forward crosses every boundary, the last one's backward crosses them
    all back (``x`` counts both directions) — ``v·S − 1`` chunk boundaries with v virtual
    stages, ``v·Σ_{j<S−1} x(c_j) + (v − 1)·x(c_{S−1})``; 0 when not overlapped (the
    slots already carry them).
    """
    if not p.overlap_p2p or len(stages) < 2:
        return 0.0
    v = p.interleave
    return sum(
        p.config(s.config).p2p_seconds * (v if j < len(stages) - 1 else v - 1)
        for j, s in enumerate(stages)
    )


def interleave_fits(p: PartitionProblem, stages: int) -> bool:
    """Whether ``stages`` can run the interleaved schedule over ``p.microbatches``.

    Megatron-LM's interleaved 1F1B moves micro-batches in groups of S through each chunk
    (:func:`shardc.plan.issue_order.interleaved_order`); Narayanan et al. 2021 §2.2.2: "this
    schedule requires the number of microbatches in a batch to be an integer multiple of
    the degree of pipeline parallelism". With a short last group the first stage's next
    chunk waits on a micro-batch still crossing the pipeline: the ``(S − 1)/v`` bubble no
    longer holds, and the order :func:`interleaved_order` writes cannot even be run (a
    rank waits on a hand-off scheduled after its own). So such a plan is not offered.
    """
    return p.interleave <= 1 or stages <= 1 or p.microbatches % stages == 0


def activation_factor(p: PartitionProblem, stages: int) -> float:
    """Extra in-flight activations of interleaving: ``1 + (S − 1)/(S·v)`` (1 when v = 1)."""
    if p.interleave <= 1 or stages <= 1:
        return 1.0
    return 1.0 + (stages - 1) / (stages * p.interleave)


def block_sync(p: PartitionProblem, c: StageConfig, stages: int) -> float:
    """Exposed sync of one block of ``c`` (plus its optimizer step) in an ``stages``-stage
    pipeline: ``sync(c)`` of the module docstring.

    Without interleaving a stage's gradients are final only after its last micro-batch's
    backward, and that backward (the next step's first forward for the ZeRO weight
    all-gather) is all that hides the sync: ``c.sync_seconds``. With v chunks per device
    (Megatron-LM ``overlap_grad_reduce`` / ``overlap_param_gather`` with one bucket set
    per model chunk), chunk c's gradients are final after the last group's S backwards
    through it, and the S backwards of chunk c − 1 follow: v − 1 of every v blocks get a
    window S times as wide; only the last chunk keeps the one-micro-batch window (the
    forward order mirrors it for the all-gather).
    """
    v = p.interleave
    if v <= 1 or stages <= 1 or not c.sync_overlap:
        return c.sync_seconds
    plain = sum(max(0.0, t - w) for t, w in c.sync_overlap)
    wide = sum(max(0.0, t - stages * w) for t, w in c.sync_overlap)
    return c.sync_seconds - plain + (plain + (v - 1) * wide) / v


def stage_sync(p: PartitionProblem, stages: tuple[StagePlan, ...], j: int) -> float:
    """``sync_j`` of the module docstring."""
    c = p.config(stages[j].config)
    t = stages[j].blocks * block_sync(p, c, len(stages))
    if j == 0:
        t += c.prologue_sync
    if j == len(stages) - 1:
        t += c.epilogue_sync
    if len(stages) == 1:
        t -= c.tied_sync
    return t


def in_flight(p: PartitionProblem, stages: int, j: int) -> int:
    """Micro-batches whose activations stage ``j`` holds at its peak."""
    return p.microbatches if p.schedule == "gpipe" else min(stages - j, p.microbatches)


def stage_bytes(p: PartitionProblem, stages: tuple[StagePlan, ...], j: int) -> float:
    """Peak memory of one device of stage ``j``."""
    c = p.config(stages[j].config)
    inflight = in_flight(p, len(stages), j) * activation_factor(p, len(stages))
    mem = stages[j].blocks * (c.block_static_bytes + c.block_activation_bytes * inflight)
    mem += c.workspace_bytes
    if j == 0:
        mem += c.prologue_bytes
    if j == len(stages) - 1:
        mem += c.epilogue_bytes
    if len(stages) == 1:
        mem -= c.tied_bytes
    return mem


def violations(p: PartitionProblem, stages: tuple[StagePlan, ...]) -> list[str]:
    """Why ``stages`` is not a legal plan (empty when it is)."""
    out = []
    if p.pinned_stages and len(stages) != p.pinned_stages:
        out.append(f"{len(stages)} stages, pinned to {p.pinned_stages}")
    if sum(s.blocks for s in stages) != p.blocks:
        out.append(f"stages hold {sum(s.blocks for s in stages)} blocks, the model has {p.blocks}")
    if any(s.blocks < 1 for s in stages):
        out.append("every stage needs at least one block")
    if p.interleave > 1 and len(stages) < 2:
        out.append(f"interleaving (v={p.interleave}) needs at least two pipeline stages")
    if p.interleave > 1 and any(s.blocks % p.interleave for s in stages):
        out.append(f"every stage's blocks must split into {p.interleave} interleaved chunks")
    if not interleave_fits(p, len(stages)):
        out.append(f"interleaving needs the {p.microbatches} micro-batches to be a multiple "
                   f"of the {len(stages)} stages")
    used: dict[str, int] = {}
    for j, s in enumerate(stages):
        c = p.config(s.config)
        if not p.allowed(j, s.config):
            out.append(f"stage {j} is pinned to {'/'.join(p.pinned[j])}, not {s.config}")
        if j in p.pinned_blocks and s.blocks != p.pinned_blocks[j]:
            out.append(f"stage {j} is pinned to {p.pinned_blocks[j]} blocks, not {s.blocks}")
        used[c.kind] = used.get(c.kind, 0) + p.dp * c.width
        if stage_bytes(p, stages, j) > p.capacity[c.kind]:
            out.append(
                f"stage {j} needs {stage_bytes(p, stages, j):.4g} B on {c.kind}, "
                f"which holds {p.capacity[c.kind]:.4g} B"
            )
    for kind, n in sorted(used.items()):
        if n > p.devices.get(kind, 0):
            out.append(f"{n} {kind} devices needed, {p.devices.get(kind, 0)} available")
    return out


def score(p: PartitionProblem, stages: tuple[StagePlan, ...]) -> float:
    """The objective of the module docstring for a (legal) plan."""
    s = len(stages)
    times = [stage_seconds(p, stages, j) for j in range(s)]
    if p.objective == "latency":
        return sum(times) + (s - 1) * p.p2p_seconds
    sync = max(stage_sync(p, stages, j) for j in range(s))
    slots = p.microbatches + (s - 1) / p.interleave
    return slots * max(times) + (s - 1) * p.p2p_seconds + sync + exposed_p2p(p, stages)
