"""The IR's validity, written as a check that runs after every pass in tests.

A pass that breaks one of these invariants is a bug in shardc, so violations raise
:class:`shardc.errors.PipelineError`, not a user error.
"""

from __future__ import annotations

from shardc.errors import PipelineError
from shardc.ir.graph import Graph


def verify_graph(graph: Graph) -> None:
    """Check single assignment, topological order, and that every name is declared."""
    problems: list[str] = []
    known = set(graph.inputs) | set(graph.initializers) | set(graph.outer)
    for name in (*graph.inputs, *graph.initializers):
        if name not in graph.values:
            problems.append(f"declared value {name!r} has no Value entry")
    seen_nodes: set[str] = set()
    for node in graph.nodes:
        if node.name in seen_nodes:
            problems.append(f"duplicate node name {node.name!r}")
        seen_nodes.add(node.name)
        for i in node.present_inputs:
            if i not in known:
                problems.append(f"node {node.name!r} reads {i!r} before it is defined")
        for o in node.outputs:
            if not o:
                continue
            if o in known:
                problems.append(f"value {o!r} is assigned twice (by node {node.name!r})")
            if o not in graph.values:
                problems.append(f"output {o!r} of node {node.name!r} has no Value entry")
            known.add(o)
        for sub in node.subgraphs:
            try:
                verify_graph(sub)
            except PipelineError as exc:
                problems.append(f"in a subgraph of {node.name!r}: {exc}")
    for o in graph.outputs:
        if o not in known:
            problems.append(f"graph output {o!r} is never produced")
    if problems:
        shown = "; ".join(problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise PipelineError(f"invalid IR graph {graph.name!r}: {shown}{more}")
