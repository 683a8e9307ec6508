"""What context parallelism costs and which cp degrees the search tries.

Why apart from :mod:`shardc.partition.context`: that module follows the sequence through
the graph (a :class:`~shardc.partition.context.ContextMap`, or a
:class:`~shardc.partition.context.ContextError` naming the node it cannot split); this one
is the partitioner's side of CP: each node's compute and bytes under CP and the
collectives the emitted programs run, priced through the cost model's own functions, and
the degrees offered to the search. It changes with the cost model and the search space,
the analysis with the ops CP can follow.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from shardc.ir import Node
from shardc.partition.context import ContextError, ContextMap


# -- pricing: what the emitted programs do, through the cost model's functions ------------
def cp_scale(scale: Any, node: Node, n_in: int, n_out: int, cmap: ContextMap, cp: int) -> Any:
    """A node's :class:`~shardc.cost.compute.ShardScale` under CP: FLOPs and every chunked
    operand over ``cp``; weights, constant-derived values and the gathered K/V whole.

    A node with no chunked output (the mask and position arithmetic) runs whole on every
    rank, as the emitted programs run it, and keeps its scale.
    """
    from shardc.cost.compute import ShardScale

    if not any(o in cmap.dims for o in node.outputs if o):
        return scale
    default = scale.flops if not scale.inputs and not scale.outputs else 1.0
    gathered = {i for nd, i, _ in cmap.gathers if nd == node.name}

    def frac(fractions: Sequence[float], k: int, value: str, whole: bool) -> float:
        f = fractions[k] if k < len(fractions) else default
        return f if whole or value not in cmap.dims else f / cp

    ins = tuple(frac(scale.inputs, i, node.inputs[i] if i < len(node.inputs) else "",
                     i in gathered) for i in range(n_in))
    outs = tuple(frac(scale.outputs, j, node.outputs[j] if j < len(node.outputs) else "",
                      False) for j in range(n_out))
    return ShardScale(scale.flops / cp, ins, outs)


def cp_collectives(
    nodes: Sequence[str], cmap: ContextMap, operand_bytes: Callable[[str, int], float],
    output_bytes: Callable[[str], float], training: bool, recompute: str,
) -> list[tuple[str, float]]:
    """(op, bytes) of the CP collectives a node set runs per micro-batch, as emitted:
    each gathered K/V an all-gather in the forward (again under full recomputation) and a
    reduce-scatter of its gradient in the backward; each chunked graph output an
    all-gather (its backward is a local slice). Bytes are the gathered tensor's on one
    rank of the TP group, the convention of every other collective the plan prices.
    The K/V of ring attentions (:attr:`ContextMap.ring`) are not gathered: the ring's
    transfers are priced by :func:`shardc.partition.ring.ring_comm_seconds`.
    """
    inside = set(nodes)
    ringed = {p[:2] for a in cmap.ring for p in (a.k, a.v)}  # passed round, not gathered
    out: list[tuple[str, float]] = []
    for nd, i, _ in cmap.gathers:
        if nd in inside and (nd, i) not in ringed:
            b = operand_bytes(nd, i)
            out.append(("all_gather", b))
            if training:
                out.append(("reduce_scatter", b))
                if recompute == "full":
                    out.append(("all_gather", b))
    out += [("all_gather", output_bytes(o)) for o in cmap.outputs
            if cmap.made_by.get(o) in inside]
    return out


CP_MIN_SEQUENCE = 8192
"""Shortest sequence for which the search offers cp > 1 unpinned. A bound on the search
space, not a price: below it the K/V gathers cost more than the chunked activations save
on every benchmark shardc runs, and offering cp there only multiplies the CP-SAT runs.
``--pin cp=N`` works at any length the sequence divides."""

MAX_CP = 16
"""Largest cp the search offers (Llama 3 405B's long-context training used cp = 16)."""


def cp_degrees(costing: Any, options: Any, devices: int) -> tuple[int, ...]:
    """The cp degrees to search: the pin alone (checked: a one-line error if the graph
    cannot run it), else 1 and, for long sequences, each power of two the sequence and the
    devices allow.
    """
    pin = options.pins.cp
    if pin is not None:
        if pin > 1:
            wants_sp = options.pins.sp or any(v.get("sp") for v in options.pins.stages.values())
            if wants_sp:
                raise ContextError(f"--pin cp={pin}: context parallelism is not combined with "
                                   "sp=on; drop one of them")
            costing.context(pin)
        return (pin,)
    if costing.sequence_length < CP_MIN_SEQUENCE:
        return (1,)
    out, cp = [1], 2
    while cp <= min(devices, MAX_CP):
        try:
            costing.context(cp)
        except ContextError:
            break
        out.append(cp)
        cp *= 2
    return tuple(out)
