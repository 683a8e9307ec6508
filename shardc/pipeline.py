"""The pass contract and the runner that checks it.

A pass is a plain function from :class:`CompileState` to :class:`CompileState`, declared
with :class:`Pass`: its name, the state fields it *requires* and the ones it *provides*
(and, for a long one, that it reports its own progress).
The runner checks both sides of that contract, verifies the IR after each pass when asked
(always in tests), times every pass, can dump the state after any pass
(``--dump-after``), and names the failing pass and the ones that ran before it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from shardc.cost.precision import policy
from shardc.errors import OptionError, PipelineError, ShardcError
from shardc.ir import Graph, Model, verify_graph
from shardc.partition.options import PartitionOptions

if TYPE_CHECKING:
    from shardc.cost.graph import GraphCosts, Precision
    from shardc.ir.blocks import BlockChain
    from shardc.partition.search import PartitionResult
    from shardc.plan.lowered import Lowering
    from shardc.plan.model import PlanData
    from shardc.plan.program import Programs
    from shardc.plan.timeline import Timeline
    from shardc.strategy.table import StrategyTable


@dataclass(frozen=True)
class CompileOptions:
    """What the user asked for; passes read it, never change it."""

    mode: str = "training"
    """``training`` (forward + backward + optimizer per step) or ``inference``."""
    dims: Mapping[str, int] = field(default_factory=dict)
    custom_flops: Mapping[str, float] = field(default_factory=dict)
    """FLOPs per output element for custom ops shardc has no rule for (``dom::Op``)."""
    partition: PartitionOptions = field(default_factory=PartitionOptions)
    dtype: str | None = None
    """The precision the plan is priced in (``fp32``, ``bf16``, ``fp16``, ``fp8``; None:
    the model's own types); see :mod:`shardc.cost.precision`."""

    def __post_init__(self) -> None:
        if self.mode not in ("training", "inference"):
            raise OptionError(f"unknown mode {self.mode!r}", hint="use training or inference")
        if self.dtype is not None:
            policy(self.dtype)  # an unknown name is an OptionError before any work


@dataclass(frozen=True)
class CompileState:
    """Everything the passes share: the model, its current graph and typed side tables.

    Each analysis gets its own typed field, filled by the pass that provides it, instead
    of a grab-bag dictionary: a later pass that needs costs says so in ``requires``.
    """

    model: Model
    graph: Graph
    options: CompileOptions = field(default_factory=CompileOptions)
    topology: Any = None
    precision: Precision | None = None
    """The graph as prices see it, float types re-typed by ``--dtype`` (pass precision)."""
    costs: GraphCosts | None = None
    blocks: BlockChain | None = None
    """The model folded into a chain of blocks, identical blocks marked (pass coarsen)."""
    strategies: StrategyTable | None = None
    """Legal shardings of every node and the resharding each implies (pass strategies)."""
    partition: PartitionResult | None = None
    """Stages, devices, strategies and the step estimate (pass partition)."""
    lowering: Lowering | None = None
    """Per (stage, TP rank) device-file nodes and every rank's unpriced program (pass lower)."""
    programs: Programs | None = None
    """Every rank's program, each step priced (pass price)."""
    timeline: Timeline | None = None
    """The programs laid out in time: events, link loads, step time (pass timeline)."""
    plan: PlanData | None = None
    """The frozen, typed Plan every writer and reader uses (pass plan)."""
    warnings: tuple[str, ...] = ()

    def with_(self, **changes: Any) -> CompileState:
        """A copy with some fields replaced (passes are functional)."""
        return replace(self, **changes)

    def warn(self, *messages: str) -> CompileState:
        """A copy with warnings appended."""
        return replace(self, warnings=(*self.warnings, *messages))

    def has(self, name: str) -> bool:
        """True when the field is present and filled."""
        return getattr(self, name, None) is not None


STATE_FIELDS = frozenset(f.name for f in fields(CompileState))


def filled(state: CompileState) -> list[str]:
    """The state's filled fields, sorted (what a pipeline carrying on from it is given)."""
    return sorted(f for f in STATE_FIELDS if state.has(f))


@dataclass(frozen=True)
class Pass:
    """A named step of the compiler with its declared inputs and outputs."""

    name: str
    run: Callable[..., CompileState]
    """``run(state)``, or ``run(state, progress)`` when :attr:`reports_progress`."""
    requires: tuple[str, ...] = ("graph",)
    provides: tuple[str, ...] = ()
    description: str = ""
    dump: Callable[[CompileState], str] | None = None
    """Renders what this pass added, for ``--dump-after``."""
    reports_progress: bool = False
    """``run`` takes a second argument, ``progress(step, done, total)`` or None, and calls
    it as its own work advances (the partition search: per solve)."""

    def __post_init__(self) -> None:
        unknown = (set(self.requires) | set(self.provides)) - STATE_FIELDS
        if unknown:
            raise PipelineError(
                f"pass {self.name!r} declares unknown state fields {sorted(unknown)}"
            )


@dataclass(frozen=True)
class PassTiming:
    """Wall time of one pass, for ``--json`` and the summary."""

    name: str
    seconds: float


@dataclass
class PipelineResult:
    """Final state plus timings and any dumps requested."""

    state: CompileState
    timings: list[PassTiming]
    dumps: dict[str, str]


class Pipeline:
    """Runs passes in a declared order, checking each one's contract."""

    def __init__(self, passes: Sequence[Pass], *, given: Sequence[str] = ()):
        """``given``: state fields filled before the first pass (a pipeline that carries
        on from another's state, as the build's Plan passes carry on after partition).
        """
        names = [p.name for p in passes]
        self.given = frozenset(given)
        if len(set(names)) != len(names):
            raise PipelineError(f"duplicate pass names in {names}")
        self.passes = tuple(passes)
        self._check_order()

    @property
    def names(self) -> list[str]:
        """Pass names in run order (what ``--dump-after`` accepts)."""
        return [p.name for p in self.passes]

    def _check_order(self) -> None:
        available = {"model", "graph", "options", "topology", "warnings", *self.given}
        for p in self.passes:
            missing = [r for r in p.requires if r not in available]
            if missing:
                raise PipelineError(
                    f"pass {p.name!r} requires {missing}, which no earlier pass provides "
                    f"(order: {self.names})"
                )
            available.update(p.provides)

    def run(
        self,
        state: CompileState,
        *,
        verify: bool = False,
        dump_after: Sequence[str] = (),
        on_pass: Callable[[str, int, int], None] | None = None,
        on_step: Callable[[str, str, int, int], None] | None = None,
    ) -> PipelineResult:
        """Run every pass; ``on_pass(name, index, total)`` reports progress, and
        ``on_step(name, step, done, total)`` the progress inside passes that report it.
        """
        unknown = [d for d in dump_after if d not in self.names]
        if unknown:
            raise ShardcError(
                f"--dump-after {unknown[0]}: no such pass",
                hint=f"passes are: {', '.join(self.names)}",
            )
        timings: list[PassTiming] = []
        dumps: dict[str, str] = {}
        done: list[str] = []
        for index, p in enumerate(self.passes):
            if on_pass is not None:
                on_pass(p.name, index, len(self.passes))
            for r in p.requires:
                if not state.has(r):
                    raise PipelineError(f"pass {p.name!r} needs {r!r}, which is not filled")
            start = time.perf_counter()
            try:
                if p.reports_progress:
                    state = p.run(state, _inside(p.name, on_step))
                else:
                    state = p.run(state)
            except ShardcError:
                raise
            except Exception as exc:
                raise PipelineError(
                    f"pass {p.name!r} failed after {done}: {type(exc).__name__}: {exc}"
                ) from exc
            timings.append(PassTiming(p.name, time.perf_counter() - start))
            missing = [f for f in p.provides if not state.has(f)]
            if missing:
                raise PipelineError(f"pass {p.name!r} did not provide {missing}")
            if verify:
                try:
                    verify_graph(state.graph)
                except PipelineError as exc:
                    raise PipelineError(f"after pass {p.name!r} (ran {done}): {exc}") from exc
            done.append(p.name)
            if p.name in dump_after:
                dumps[p.name] = dump_state(state, p)
        return PipelineResult(state, timings, dumps)


def _inside(
    name: str, on_step: Callable[[str, str, int, int], None] | None
) -> Callable[[str, int, int], None] | None:
    """Pass ``name``'s own progress callback, forwarding to ``on_step``."""
    if on_step is None:
        return None
    return lambda step, done, total: on_step(name, step, done, total)


def dump_state(state: CompileState, after: Pass) -> str:
    """The IR as text, with what ``after`` added rendered by its own dumper."""
    if after.dump is not None:
        return after.dump(state)
    from shardc.ir.printer import format_graph

    return format_graph(state.graph)
