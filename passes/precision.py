"""Pass ``precision``: the types the plan is priced and sized in (``--dtype``).

Why a side table and not a rewrite of ``state.graph``: the device programs are cut from
``state.graph`` and must keep the model's own types to run and verify against it, while
every price (FLOPs at which peak, bytes of weights, activations and traffic) must see the
chosen precision. So the re-typed graph lives in ``state.precision``, and the passes
that price (``annotate_costs``, ``partition``) and the timeline of the emitted schedule
read it; emission writes types from ``state.graph``. What each dtype means is in
:mod:`shardc.cost.precision`. Without ``--dtype`` the priced graph is ``state.graph``.
"""

from __future__ import annotations

from shardc.cost.graph import Precision
from shardc.cost.precision import PricedGraph, policy, price
from shardc.ir import Graph, Node
from shardc.pipeline import CompileState, Pass

__all__ = ["PASS", "Precision", "priced_graph"]
"""``Precision`` re-exported: its home is :mod:`shardc.cost.graph`."""


def priced_graph(state: CompileState) -> Graph:
    """The graph prices are computed on: the re-typed one once this pass has run."""
    return state.precision.graph if state.precision is not None else state.graph


def run(state: CompileState) -> CompileState:
    """Re-type ``state.graph`` for pricing under ``state.options.dtype``."""
    name = state.options.dtype
    priced = PricedGraph(state.graph, {}) if name is None else price(state.graph, policy(name))
    return state.with_(precision=Precision(name, priced.graph, priced.compute))


def dump(state: CompileState) -> str:
    """The priced IR, GEMMs running in another type marked."""
    from shardc.ir.printer import format_graph

    assert state.precision is not None
    compute = state.precision.compute

    def note(node: Node) -> str:
        return f"computes in {compute[node.name].short}" if node.name in compute else ""

    return format_graph(state.precision.graph, annotate=note)


PASS = Pass(
    name="precision",
    run=run,
    requires=("graph",),
    provides=("precision",),
    description="the types prices are computed in (--dtype): float values re-typed, "
    "fp8 GEMMs marked; device programs keep the model's own",
    dump=dump,
)
