"""The compile options and the words they take, declared once.

Why a module of its own that imports only the errors: the cost model, the partitioner,
the timeline writer, the CLI and the API all check or offer these values. Declared in
each, they drifted (three copies of the schedules, three of the recompute modes, the
options' defaults in the CLI, the API, plan.json's record and the partitioner's options);
declared here, a new schedule, mode or option is added in one place and every layer, from
``cost`` up, sees it. :data:`OPTIONS` is the table of compile options.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from shardc.errors import OptionError

OBJECTIVES = ("throughput", "latency")
"""What the partitioner minimises: time per sample, or time for one sample."""

SCHEDULES = ("1f1b", "gpipe")
"""Pipeline schedules the timeline can lay out and the cost model prices."""

RECOMPUTES = ("none", "selective", "full")
"""Activation recomputation: keep everything, recompute attention's core, or keep only
each block's input (Korthikanti et al.)."""

TP_RULES = ("megatron", "split")
"""How a tensor-parallel stage shards its ops: Megatron's pairing of weight products, or
every op split where it legally can (:mod:`shardc.partition.split`)."""

class StrategyName(StrEnum):
    """The names of the sharding strategies (and of the loops whose split they are) that
    the partitioner, the emitter and the reports read by name.

    ``str``-valued, so a member *is* its word: plan.json, the reports and every ``==``
    against a plain string see ``"column"``. Other names are made up as needed and
    stay plain strings: an unlabelled loop's ``tp@d2``, a combination ``batch+column``, a
    repeat ``heads#2``.
    """

    REPLICATE = "replicate"
    """Every operand whole on every rank."""
    FOLLOW = "follow"
    """Derived from the inputs' layouts (elementwise ops and views)."""
    BATCH = "batch"
    """The batch dim split over ``dp``."""
    SEQ = "seq"
    """The sequence dim split over ``sp``."""
    SEQ_TP = "seq_tp"
    """The sequence split over the tensor-parallel group (Megatron sequence parallelism)."""
    COLUMN = "column"
    """A weight product's output features split (column-parallel)."""
    ROW = "row"
    """A weight product's contracted input features split (row-parallel, partial sums)."""
    HEADS = "heads"
    """Attention heads split over ``tp``."""
    VOCAB = "vocab"
    """The vocabulary of an embedding or LM head split over ``tp``."""
    HIDDEN = "hidden"
    """An embedding table's (or a gathered row's) hidden dim split over ``tp``."""
    CHANNELS = "channels"
    """Convolution and normalisation channels split over ``tp``."""
    EXPERTS = "experts"
    """Mixture-of-experts experts split: stacked expert weights over the ``tp`` group (EP =
    TP, whole experts per rank); the dispatch/combine rules over ``ep`` (all-to-all)."""


CP_COMMS = ("allgather", "ring", "zigzag")
"""How context-parallel attention moves K and V over the cp group: one all-gather of each
(Llama 3), a ring of point-to-point steps overlapped with blockwise attention
(Megatron-LM's ``cp_comm_type="p2p"``, Liu et al. 2023), or that ring on the
load-balanced causal split (rank c holds sequence chunks c and 2cp-1-c, Megatron-LM's)."""

MODES = ("training", "inference", "serving")
"""What a step is: forward, backward and optimizer, or a forward pass only."""


# -- the compile options ------------------------------------------------------------------
@dataclass(frozen=True)
class Option:
    """One compile option as every interface offers it: ``shardc compile --NAME``, the
    ``NAME=`` keyword of :func:`shardc.compile`, plan.json's ``options.NAME``.

    ``choices`` or the bounds (``low``, ``high``; ``positive`` for a float that must be
    above 0) are checked by :meth:`check`, the one validation both the CLI and the API
    run (through :class:`shardc.options.PlanOptions`), with the messages the CLI prints.
    """

    name: str
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    low: int | None = None
    high: int | None = None
    positive: bool = False
    recorded: bool = True
    """Kept in plan.json's ``options`` (``recompute`` is folded into the pins instead)."""
    metavar: str | None = None
    kind: type | None = None
    """The value's type where the default (None) does not say: ``int`` for counts."""
    cli: str | None = None
    """The flag where it is not ``--`` + the name (``--pin``, repeatable, for ``pins``)."""
    sparse: bool = False
    """Recorded in plan.json only when it differs from its default, so plans made before
    the option existed (or without it) stay byte-identical."""

    @property
    def flag(self) -> str:
        """The command-line spelling, ``--global-batch``."""
        return self.cli or "--" + self.name.replace("_", "-")

    @property
    def type(self) -> type:
        """What a value is: :attr:`kind`, else the default's type, else ``str``."""
        return self.kind or (str if self.default is None else type(self.default))

    def check(self, value: Any) -> None:
        """Raise :class:`OptionError` if ``value`` is not one this option takes (None,
        the "not given" of an option without a default, always is).
        """
        if value is None:
            return
        if self.choices and value not in self.choices:
            raise OptionError(
                f"unknown {self.name} {value!r}", hint=f"use {', '.join(self.choices)}"
            )
        if self.high is not None and self.low is not None and not self.low <= value <= self.high:
            words = [str(v) for v in range(self.low, self.high + 1)]
            raise OptionError(f"{self.flag} {value}: use {', '.join(words[:-1])} or {words[-1]}")
        if self.low is not None and value < self.low:
            raise OptionError(f"{self.flag} must be at least {self.low}, got {value}")
        if self.positive and value <= 0:
            raise OptionError(f"{self.flag} must be positive, got {value}")


OPTIONS: Mapping[str, Option] = {
    o.name: o
    for o in (
        Option("mode", "training", "Plan a training step (forward, backward, optimizer), "
               "inference, or serving (prefill/decode instances for a workload: --isl, "
               "--osl, --tpot ...).", choices=MODES),
        Option("objective", "throughput", "Samples per second, or (inference) one request's "
               "latency.", choices=OBJECTIVES),
        Option("microbatches", None, "Micro-batches per pipeline per step (default 8).", low=1,
               kind=int),
        Option("global_batch", None, "Samples per step; sets micro-batches per replica to "
               "B / (dp x micro-batch size).", low=1, kind=int),
        Option("schedule", "1f1b", "Pipeline schedule: one-forward-one-backward, or all "
               "forwards then all backwards.", choices=SCHEDULES),
        Option("zero", 1, "ZeRO stage of the data-parallel optimizer state.", low=0, high=3),
        Option("pins", (), "Fix part of the answer: tp=8, pp=4,dp=16, kind=h100, "
               "stage0.kind=h20, stage1.blocks=30, recompute=full, rule=split (tensor "
               "parallel splits every op it can, batch first, not only Megatron's weight "
               "products: for graphs that are not transformers), cp=2 (context "
               "parallelism: each stage's sequence split over 2 copies, K/V all-gathered: "
               "2x the ranks), ep=2 (training: MoE experts split over 2 data-parallel replicas, "
               "tokens moved by all-to-all). With tp, pp, dp and every "
               "stage's blocks pinned, compile evaluates that configuration.",
               metavar="KEY=VALUE[,...]", cli="--pin"),
        Option("cp_comm", "allgather", "How context parallelism (--pin cp=N) moves K and V: "
               "one all-gather of each over the cp group, or a ring of cp-1 point-to-point "
               "steps overlapped with blockwise attention (online softmax; pays off for "
               "long sequences and many KV heads), or zigzag: the ring with each rank "
               "holding sequence chunks c and 2cp-1-c, so causal attention's work is "
               "even over the ranks.", choices=CP_COMMS, sparse=True),
        Option("recompute", None, "Activation recomputation for every stage (same as --pin "
               "recompute=...).", choices=RECOMPUTES, recorded=False),
        Option("dtype", None, "Price and size the plan in this precision, as mixed-precision "
               "training runs an fp32 export: fp32, bf16 or fp16 for every float value, "
               "weight and transfer; fp8 for the weights and arithmetic of GEMMs that read a "
               "weight, bf16 elsewhere. Device programs keep the model's types. Default: the "
               "model's own.", metavar="[fp32|bf16|fp16|fp8]"),
        Option("time_limit", 20.0, "Solver budget for the whole search, in CP-SAT "
               "deterministic seconds: a measure of solver work, not wall-clock time, so the "
               "same inputs give the same plan on any machine (one deterministic second is "
               "roughly one to a few wall seconds).", positive=True),
        Option("seed", 0, "Solver random seed."),
        Option("max_stages", 16, "The most pipeline stages to consider.", low=1),
        Option("memory_reserve", "5%", "Memory per device no plan may use (CUDA/NCCL context, "
               "communication buffers, allocator fragmentation): a fraction (0.05), a "
               "percentage (5%) or bytes (4GB, 4GiB)."),
        Option("warm_start", None, "An earlier plan.json whose plan seeds the solver."),
    )
}
"""Every compile option, in the order ``shardc compile --help`` lists them. The CLI builds
its flags from this table, :func:`shardc.compile` its defaults, plan.json's ``options``
record its keys, and :class:`shardc.partition.options.PartitionOptions` its defaults and
checks: a new option or a changed default is one edit here."""


def default(name: str) -> Any:
    """The default of option ``name`` (for dataclass fields and keyword defaults)."""
    return OPTIONS[name].default


def check_options(values: Any, names: Iterable[str]) -> None:
    """Check attributes ``names`` of ``values`` against their :data:`OPTIONS` entries."""
    for name in names:
        OPTIONS[name].check(getattr(values, name))
