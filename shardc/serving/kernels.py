"""Per-kernel-family efficiency lines of a device kind, for the serving step model.

A kind's ``efficiency`` lines are fitted on plain (bf16) GEMMs. Some kernels a serving
step runs reach a different fraction of the same peaks, measured per kernel family
(AIConfigurator's TRT-LLM tables, tests/bench/aic_serving_fit.py). A kind states them as
tags, each relative to the kind's own lines; a family or dtype a kind does not tag prices
on the plain lines, so kinds without these tags price as before. For a family ``gemm``
(dense weight GEMMs) or ``moe`` (a MoE op's grouped expert GEMMs) and a weight dtype::

    tag gemm_efficiency_fp8 0.56          # factor on the kind's compute line
    tag gemm_memory_efficiency_fp8 0.9    # factor on the kind's memory line
    tag gemm_overhead_fp8 3us             # seconds each kernel costs beyond its launch
    tag context_attention_efficiency 0.57 # prefill (flash) attention, on the compute line

Why they differ: DeepSeek-V3's 128×128 block-scaled fp8 GEMMs quantise their activations
per block (one more kernel) and rescale every k-block's partial product; a MoE op runs
many small per-expert problems in one grouped launch (weights read in per-expert pieces),
plus routing sort, permute and finalize kernels (its ``overhead``); a context attention
kernel's softmax and causal masking keep it below the GEMM line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from shardc.cost.compute import DeviceSpec
from shardc.errors import OptionError
from shardc.serving.workload import parse_duration

FAMILIES = ("gemm", "moe")
CONTEXT_ATTENTION_TAG = "context_attention_efficiency"


@dataclass(frozen=True, slots=True)
class Line:
    """A kernel family's factors on the kind's compute and memory lines, and its extra
    seconds per kernel beyond the launch.
    """

    compute: float = 1.0
    memory: float = 1.0
    extra: float = 0.0


PLAIN = Line()


@dataclass(frozen=True, slots=True)
class KernelLines:
    """The kind's lines per (family, weight dtype), and its context-attention factor."""

    lines: tuple[tuple[str, str, Line], ...] = ()
    context_attention: float = 1.0

    def line(self, family: str, dtype: str) -> Line:
        """The line of ``family`` kernels with ``dtype`` weights (plain if untagged)."""
        for fam, dt, line in self.lines:
            if fam == family and dt == dtype:
                return line
        return PLAIN


def _factor(value: str, where: str) -> float:
    try:
        f = float(value)
    except ValueError:
        raise OptionError(f"{where}: expected a factor in (0, 1], got {value!r}") from None
    if not 0 < f <= 1:
        raise OptionError(f"{where}: expected a factor in (0, 1], got {value!r}")
    return f


def kernel_lines(name: str, tags: Mapping[str, str]) -> KernelLines:
    """The lines kind ``name``'s tags state (a bad value: OptionError naming the tag)."""
    found: dict[tuple[str, str], dict[str, float]] = {}
    for key, value in tags.items():
        for fam in FAMILIES:
            for field, prefix in (("compute", f"{fam}_efficiency_"),
                                  ("memory", f"{fam}_memory_efficiency_"),
                                  ("extra", f"{fam}_overhead_")):
                if key.startswith(prefix):
                    where = f"kind {name}: tag {key}"
                    found.setdefault((fam, key[len(prefix):]), {})[field] = (
                        parse_duration(value, where) if field == "extra"
                        else _factor(value, where))
    ctx = tags.get(CONTEXT_ATTENTION_TAG)
    return KernelLines(
        lines=tuple((fam, dt, Line(**vals)) for (fam, dt), vals in sorted(found.items())),
        context_attention=_factor(ctx, f"kind {name}: tag {CONTEXT_ATTENTION_TAG}")
        if ctx else 1.0,
    )


_SCALED: dict[tuple[object, float, float], DeviceSpec] = {}


def scaled(kind: DeviceSpec, compute: float, memory: float = 1.0) -> DeviceSpec:
    """``kind`` with its compute and memory lines (plain factors and curves) multiplied.

    The curves keep their shapes: a kernel family that runs at 40 % of the GEMM line on
    big problems is taken to lose the same share on small ones (what the fits check).
    """
    if (compute == 1.0 and memory == 1.0) or not dataclasses.is_dataclass(kind) \
            or isinstance(kind, type):
        return kind
    key = (kind, compute, memory)  # kinds are frozen and hashable; searches ask often
    if key not in _SCALED:
        names = {f.name for f in dataclasses.fields(kind)}
        changes: dict[str, object] = {
            "compute_efficiency": kind.compute_efficiency * compute,
            "memory_efficiency": kind.memory_efficiency * memory}
        for curve, factor in (("compute_curve", compute), ("memory_curve", memory)):
            if curve in names:
                changes[curve] = tuple((x, e * factor) for x, e in getattr(kind, curve))
        _SCALED[key] = dataclasses.replace(kind, **changes)
    return _SCALED[key]
