"""What the outer search tries, and what it says when nothing fits.

Why apart from :mod:`shardc.partition.search`: the loop there only orders and prunes;
which data-parallel widths, micro-batch counts, tensor-parallel degrees, interleavings
and per-stage pins are candidates, the usable memory per kind after ``--memory-reserve``,
and the user-level reasons and hints follow from the options and the prices alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from shardc.errors import OptionError
from shardc.partition.bounds import lower_bound
from shardc.partition.costing import config_name
from shardc.partition.options import PartitionOptions
from shardc.partition.problem import PartitionProblem, StagePlan
from shardc.progress import Progress

if TYPE_CHECKING:
    from shardc.partition.costing import Costing

DEFAULT_MICROBATCHES = 8
UNLIMITED = 1e30


def batch_size(costing: Costing) -> int:
    """The micro-batch size b: the leading dim of the first activation input."""
    for name in costing.graph.inputs:
        t = costing.graph.values[name].type
        if t is not None and t.shape and isinstance(t.shape[0], int):
            return t.shape[0]
    return 1


def candidate_widths(n: int, options: PartitionOptions, b: int) -> list[int]:
    """Data-parallel widths to try: divisors of the device count and powers of two."""
    if options.pins.dp:
        return [options.pins.dp]
    if options.objective == "latency":
        return [1]
    ws = sorted({d for d in range(1, n + 1) if n % d == 0} | {2**i for i in range(n.bit_length())})
    if options.global_batch:
        # every width the batch divides into, even one that leaves devices idle
        # (1536 samples on 256 GPUs: dp = 96 or 192)
        ws = sorted(set(ws) | {d for d in range(1, n + 1) if options.global_batch % (d * b) == 0})
        ws = [d for d in ws if options.global_batch % (d * b) == 0]
        if not ws:
            raise OptionError(
                f"--global-batch {options.global_batch} is not a multiple of the micro-batch "
                f"size {b}"
            )
    return [d for d in ws if d <= n]


def microbatches(options: PartitionOptions, dp: int, b: int) -> int:
    if options.global_batch:
        return options.global_batch // (dp * b)
    if options.microbatches:
        return options.microbatches
    return 1 if options.objective == "latency" else DEFAULT_MICROBATCHES


def tp_degrees(costing: Costing, options: PartitionOptions) -> dict[str, list[int]]:
    pins = options.pins
    kinds = sorted(costing.pool)
    if pins.kind:
        if pins.kind not in costing.pool:
            raise OptionError(
                f"--pin kind={pins.kind}: the topology has no compute devices of that kind",
                hint=f"kinds: {', '.join(kinds)}",
            )
        stage_kinds = {str(v["kind"]) for v in pins.stages.values() if "kind" in v}
        kinds = sorted({pins.kind} | stage_kinds)
    out: dict[str, list[int]] = {}
    stage_tps = {int(v["tp"]) for v in pins.stages.values() if "tp" in v}
    for t in sorted(({pins.tp} if pins.tp else set()) | stage_tps):
        _refuse_idle_tp(costing, t)
    for k in kinds:
        if pins.tp or stage_tps:
            want = ({pins.tp} if pins.tp else set()) | stage_tps
            out[k] = sorted(t for t in want if costing.groups(k, t, 1) is not None)
        else:
            out[k] = costing.tp_degrees(k)
    for j, v in pins.stages.items():
        if "kind" in v and v["kind"] not in costing.pool:
            raise OptionError(f"--pin stage{j}.kind={v['kind']}: no such device kind")
    return out


def _refuse_idle_tp(costing: Costing, tp: int) -> None:
    """A pinned tensor-parallel degree that splits no weight would be priced as if it did.

    Not under ``rule=split``, which asks for every op that can split and runs the rest
    whole on every rank (how single-op graphs are tested on two devices).
    """
    if tp <= 1 or costing.settings.tp_rule == "split" or costing.splits(tp):
        return
    fits = [t for t in range(2, 2 * tp + 1) if t != tp and costing.splits(t)][:3]
    raise OptionError(
        f"--pin tp={tp} splits nothing in this model: no attention heads, MLP width or "
        f"vocabulary divides {tp} ways",
        hint=(f"try {' or '.join(f'tp={t}' for t in fits)}" if fits else "drop the tp pin"),
    )


def stage_pins(options: PartitionOptions, configs: Sequence[Any]) -> dict[int, tuple[str, ...]]:
    pins = options.pins
    out: dict[int, tuple[str, ...]] = {}
    count = pins.pp or options.max_stages
    for j in range(count):
        want = pins.stages.get(j, {})
        kind = want.get("kind", pins.kind)
        tp = want.get("tp", pins.tp)
        rc = want.get("recompute")
        sp = want.get("sp", pins.sp)
        if kind is None and tp is None and rc is None and sp is None:
            continue
        out[j] = tuple(
            c.name
            for c in configs
            if (kind is None or c.kind == kind)
            and (tp is None or c.tp == tp)
            and (rc is None or c.recompute == rc)
            and (sp is None or c.sequence_parallel == bool(sp) or c.tp == 1)
        )
    return out


def warm_hint(
    warm: Mapping[str, Any] | None, dp: int, configs: Sequence[Any]
) -> tuple[StagePlan, ...] | None:
    """An earlier plan's stages as a hint, if its width and configurations still exist."""
    if not warm or warm.get("dp") != dp:
        return None
    names = {c.name for c in configs}
    try:
        plan = tuple(
            StagePlan(
                config_name(
                    s["kind"],
                    s["tp"],
                    s["recompute"] if warm.get("mode") == "training" else None,
                    bool(s.get("sequence_parallel")),
                    int(s.get("cp", 1)),
                ),
                int(s["blocks"][1]) - int(s["blocks"][0]) + 1,
            )
            for s in warm.get("stages", ())
        )
    except (KeyError, TypeError, ValueError, IndexError):
        return None
    return plan if plan and all(p.config in names for p in plan) else None


class Ticks:
    """The search's progress: one tick per (width, stage count) settled, out of all the
    pairs listed before the first solve (so the total is known up front).
    """

    def __init__(self, report: Progress | None, total: int) -> None:
        self.report = report or (lambda step, done, total: None)
        self.total, self.done, self.step = total, 0, ""

    def width(self, dp: int) -> None:
        """The search moves on to data-parallel width ``dp``."""
        self.step = f"dp={dp}"
        self.report(self.step, self.done, self.total)

    def count(self, stages: int) -> None:
        """One stage count of the current width is settled (solved or skipped)."""
        self.done += 1
        self.report(self.step, self.done, self.total)




def interleaves(options: PartitionOptions, blocks: int, training: bool) -> list[int]:
    """Virtual stages per device to try: the pinned ``v``, else 1, 2, 3, 4 and 6 (training
    throughput only; a latency plan runs one micro-batch, where chunks only add hops).
    """
    v = options.pins.v
    if v is not None:
        if v > 1 and (options.schedule != "1f1b" or not training):
            raise OptionError(f"--pin v={v}: interleaving needs training with the 1f1b schedule")
        if v > 1 and options.pins.pp == 1:
            raise OptionError(
                f"--pin v={v},pp=1: interleaving runs v model chunks per pipeline stage "
                "around a ring of stages; one stage has no ring",
                hint="pin pp=2 or more, or v=1",
            )
        if blocks % v:
            raise OptionError(
                f"--pin v={v}: the model's {blocks} blocks do not split into {v} interleaved "
                "chunks per stage",
                hint=f"use a v that divides {blocks}",
            )
        if options.pins.pp and blocks % (options.pins.pp * v):
            raise OptionError(
                f"--pin v={v},pp={options.pins.pp}: {blocks} blocks do not split into "
                f"pp × v = {options.pins.pp * v} equal chunks"
            )
        return [v]
    if options.objective == "latency" or options.schedule != "1f1b" or not training:
        return [1]
    if options.pins.pp == 1:  # one stage: no ring of stages for chunks to walk
        return [1]
    # 3 and 6 as well: 96-layer GPT-3 on 16 stages has 6 blocks per stage, which only
    # v ∈ {2, 3, 6} split, and v = 6 is what Megatron users (and Calculon) pick there.
    return [1] + [v for v in (2, 3, 4, 6) if blocks % v == 0 and blocks >= 2 * v]


def capacities(costing: Costing, options: PartitionOptions) -> dict[str, float]:
    """Usable bytes per device of each kind: its memory less ``--memory-reserve``."""
    out = {}
    reserve = options.memory_reserve
    for k in sorted(costing.pool):
        raw = costing.kinds[k].memory_bytes
        if not raw:
            out[k] = UNLIMITED
            continue
        usable = reserve.usable(float(raw))
        if usable <= 0:
            raise OptionError(
                f"--memory-reserve {reserve.text} leaves nothing of {k}'s "
                f"{raw / 1e9:.4g} GB per device",
                hint="reserve a smaller fraction or fewer GB",
            )
        out[k] = usable
    return out


def floor_of(problem: PartitionProblem) -> float:
    """The smallest score any stage count of ``problem`` could reach."""
    return min(lower_bound(problem, s) for s in range(1, problem.max_stages + 1))


def why(reasons: list[str], costing: Costing, tps: Mapping[str, Sequence[int]]) -> str:
    mem = [r for r in reasons if "whole pool" in r] or [r for r in reasons if "memory" in r]
    return (mem or reasons or ["no width and configuration fits"])[0].split(": ", 1)[-1]


def fits_hint(costing: Costing, tps: Mapping[str, Sequence[int]]) -> str:
    """What would fit: the smallest TP degree (with full recomputation) whose block fits."""
    _, block, _, blocks = costing.sections
    tips = []
    for kind in sorted(tps):
        cap = costing.kinds[kind].memory_bytes or UNLIMITED
        t = 1
        while t <= len(costing.pool[kind]):
            part = costing.part(block, kind, t, "full")
            need = part.static + costing._state(part, 1) + part.activation + part.workspace
            stages = math.ceil(blocks * need / cap)
            if need <= cap and stages * t > len(costing.pool[kind]):
                tips.append(
                    f"{kind}: even at tp={t} with full recomputation the {blocks} blocks need "
                    f"{stages * t} devices of {cap / 1e9:.3g} GB, the pool has "
                    f"{len(costing.pool[kind])}"
                )
                break
            if need <= cap:
                tips.append(
                    f"{kind}: one block needs {need / 1e9:.3g} GB at tp={t} with full "
                    f"recomputation, so {stages}+ stages of tp={t}"
                )
                break
            t *= 2
        else:
            tips.append(f"{kind}: even tp={t // 2} cannot hold one block; use fp8 weights")
    return "; ".join(tips) or "more devices, fp8 weights or recomputation"

