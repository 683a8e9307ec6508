"""The precision a plan is priced and sized in (``--dtype``), as mixed-precision training
runs an fp32 model.

Why an override and not the model's own types: models are exported in fp32 and trained
under ``torch.autocast`` (or Transformer Engine), so the step a cluster actually runs
moves 2-byte activations, holds 2-byte weights and runs its GEMMs on the bf16 units.
Pricing the export as written would plan a different job. The override re-types the
graph the cost model reads; the emitted device programs keep the model's own types, so
they still run and verify against the original.

What each choice means:

=======  =============================================  ====================================
dtype    floating-point values, weights, traffic         matmuls that read a weight
=======  =============================================  ====================================
fp32     fp32                                             fp32
bf16     bf16                                             bf16
fp16     fp16                                             fp16
fp8      bf16                                             fp8 arithmetic; the weights they
                                                          read stored in fp8 (E4M3, 1 byte)
=======  =============================================  ====================================

fp8 follows Transformer Engine's recipe: the linear layers' GEMMs run on the fp8 units
(a kind that lists none falls back to its bf16 peak, see
:func:`shardc.cost.compute.peak_for`) and their weights are held in fp8, while
activations, what crosses devices, norms, embeddings and the attention core (an
activation-by-activation product) stay bf16. A weight also read by something other than
such a GEMM (GPT-2's embedding, tied to the LM head) stays bf16. Only fp32, fp16 and bf16
values are re-typed, the types mixed precision moves between: fp64, an already
quantized (fp8, int8) tensor and integer values keep their own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from shardc.errors import OptionError
from shardc.ir import DType, Graph, Node, TensorType, Value

PRECISIONS = ("fp32", "bf16", "fp16", "fp8")
"""The values ``--dtype`` and ``dtype=`` take."""

RETYPED = frozenset({DType.FLOAT, DType.FLOAT16, DType.BFLOAT16})
"""Types the override replaces."""

GEMMS = frozenset({"MatMul", "Gemm"})
"""Ops that run as linear layers when one operand is a weight."""


@dataclass(frozen=True)
class PrecisionPolicy:
    """One ``--dtype`` choice: what values are priced as, and what weight GEMMs run in."""

    name: str
    values: DType
    """Every re-typed value: activations, weights, what travels between devices."""
    gemm: DType
    """Arithmetic of a MatMul/Gemm that reads a weight, and storage of such weights."""


_POLICIES = {
    "fp32": PrecisionPolicy("fp32", DType.FLOAT, DType.FLOAT),
    "bf16": PrecisionPolicy("bf16", DType.BFLOAT16, DType.BFLOAT16),
    "fp16": PrecisionPolicy("fp16", DType.FLOAT16, DType.FLOAT16),
    "fp8": PrecisionPolicy("fp8", DType.BFLOAT16, DType.FLOAT8E4M3FN),
}


def policy(name: str) -> PrecisionPolicy:
    """The policy called ``name``, or an :class:`OptionError` listing the choices."""
    try:
        return _POLICIES[name]
    except KeyError:
        raise OptionError(
            f"unknown dtype {name!r}", hint=f"use one of {', '.join(PRECISIONS)}"
        ) from None


@dataclass(frozen=True)
class PricedGraph:
    """The graph as the cost model sees it under a policy."""

    graph: Graph
    """Same nodes and values as the model's graph; float types replaced."""
    compute: Mapping[str, DType]
    """Nodes whose arithmetic runs in another type than their inputs say (fp8 GEMMs)."""


def price(graph: Graph, chosen: PrecisionPolicy) -> PricedGraph:
    """Re-type ``graph``'s float values (and pick its low-precision GEMMs) under ``chosen``."""
    gemms: dict[str, DType] = {}
    narrow: set[str] = set()
    if chosen.gemm != chosen.values:
        gemms, narrow = _weight_gemms(graph, chosen.gemm)
    values: dict[str, Value] = {}
    changed = False
    for name, v in graph.values.items():
        t = v.type
        if t is not None and t.dtype in RETYPED:
            dtype = chosen.gemm if name in narrow else chosen.values
            if dtype != t.dtype:
                v = replace(v, type=TensorType(dtype, t.shape))
                changed = True
        values[name] = v
    return PricedGraph(graph.replace(values=values) if changed else graph, gemms)


def _weight_gemms(graph: Graph, dtype: DType) -> tuple[dict[str, DType], set[str]]:
    """(GEMMs reading a weight -> ``dtype``, weight-derived values only they read).

    A value is weight-derived when it is an initializer or every input of its producer
    is (``Transpose(W)``, ``Cast(W)``): the chain is folded into the weight at run time.
    """
    derived = set(graph.initializers)
    for node in graph.nodes:
        if all(i in derived for i in node.present_inputs):
            derived.update(o for o in node.outputs if o)
    gemms = {
        n.name: dtype
        for n in graph.nodes
        if n.domain in ("", "ai.onnx")
        and n.op_type in GEMMS
        and any(i in derived and _is_float(graph, i) for i in n.inputs[:2])
    }
    # backwards, so a chain node's outputs are settled before its inputs are asked
    narrow: set[str] = set()
    for node in reversed(graph.nodes):
        for v in node.present_inputs:
            if v not in derived or v in narrow or v in graph.outputs:
                continue
            readers = graph.consumers(v)
            if readers and all(_narrow_reader(v, r, gemms, narrow, derived) for r in readers):
                narrow.add(v)
    return gemms, narrow


def _narrow_reader(
    v: str, node: Node, gemms: Mapping[str, DType], narrow: set[str], derived: set[str]
) -> bool:
    """Whether ``node`` leaves weight ``v`` narrow: a chosen GEMM reading it as a factor
    (a Gemm's bias stays wide), or a weight-only chain node whose outputs are narrow.
    """
    if node.name in gemms:
        return v in node.inputs[:2]
    outs = [o for o in node.outputs if o]
    return bool(outs) and all(o in derived for o in outs) and all(o in narrow for o in outs)


def _is_float(graph: Graph, name: str) -> bool:
    t = graph.values[name].type if name in graph.values else None
    return t is not None and t.dtype in RETYPED
