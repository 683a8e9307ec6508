"""A stable text form of the IR, for ``--dump-after`` and for reading test failures.

One line per node, ``%out: type = Op(%in, ...) {attrs}``, with an optional trailing
annotation supplied by the pass being dumped (its side table, e.g. costs).
"""

from __future__ import annotations

from collections.abc import Callable

from shardc.ir.graph import Attribute, Graph, Node


def _attr(a: Attribute) -> str:
    if isinstance(a.value, bytes):
        return f"{a.name}=<{a.kind.lower()}>"
    return f"{a.name}={a.value!r}"


def format_node(node: Node, graph: Graph) -> str:
    """One node as a line of text."""
    outs = ", ".join(
        f"%{o}: {graph.values[o].type}" if o and graph.values.get(o) else f"%{o}"
        for o in node.outputs
    )
    ins = ", ".join(f"%{i}" if i else "_" for i in node.inputs)
    attrs = " {" + ", ".join(_attr(a) for a in node.attributes) + "}" if node.attributes else ""
    body = f" [{len(node.subgraphs)} subgraph(s)]" if node.subgraphs else ""
    return f"{outs} = {node.qualified_op}({ins}){attrs}{body}"


def format_graph(graph: Graph, *, annotate: Callable[[Node], str] | None = None) -> str:
    """The whole graph as text; ``annotate(node)`` adds a trailing ``# ...`` comment."""
    lines = [f"graph {graph.name!r} ("]
    lines += [f"  %{i}: {graph.values[i].type}" for i in graph.inputs]
    lines.append(f") -> ({', '.join('%' + o for o in graph.outputs)})")
    lines.append(f"  # {len(graph.initializers)} initializers, {len(graph.nodes)} nodes")
    for node in graph.nodes:
        note = annotate(node) if annotate else ""
        lines.append(f"  {format_node(node, graph)}" + (f"  # {note}" if note else ""))
    return "\n".join(lines)
