"""Name-free structural hashes of IR pieces: what makes two runs of nodes the same.

Exporters rename everything (``val_N``), so a structure found by names would be found by
luck. These keys read ops, attributes, types, small integer constants and the wiring
between nodes, never a node or value name; ``coarsen`` hashes segments of the graph with
them and control-flow bodies are hashed alike. Deterministic across runs: blake2b over a
``repr``, no ``hash()`` seed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable

from shardc.ir.graph import Graph, Node

BODY_KINDS = frozenset({"GRAPH", "GRAPHS"})
"""Attribute kinds holding control-flow bodies (hashed structurally, not by value)."""


def outer_reads(node: Node) -> tuple[str, ...]:
    """Names a control-flow body reads from enclosing scopes (recursively)."""
    if not any(a.kind in BODY_KINDS for a in node.attributes):
        return ()
    names: list[str] = []
    for sub in node.subgraphs:
        names += sub.outer
        for inner in sub.nodes:
            names += [n for n in outer_reads(inner) if n not in sub.values]
    return tuple(names)


def type_key(graph: Graph, name: str) -> object:
    """Dtype and shape of a value, never its name."""
    v = graph.values.get(name)
    return "?" if v is None or v.type is None else (v.type.dtype.name, v.type.shape)


def small_int(v: object) -> object:
    """A constant's value as structure sees it: 32- and 64-bit integers (shapes, axes,
    indices) decide what a block does; floats and 8-bit or narrower integers do not (each
    layer of a quantized model has its own scales and zero points, yet the layers are
    alike and cost the same).
    """
    const = getattr(v, "const", None)
    t = getattr(v, "type", None)
    if const is None or (t is not None and (t.dtype.is_float or t.dtype.bits <= 8)):
        return None
    return const


def attr_key(node: Node) -> tuple[object, ...]:
    """Attributes by name, kind and value; bodies are hashed structurally instead."""
    return tuple(
        (a.name, a.kind, None if a.kind in BODY_KINDS else a.value)
        for a in sorted(node.attributes, key=lambda a: a.name)
    )


def canonical(
    graph: Graph, nodes: Iterable[Node], outside: Callable[[str], object]
) -> tuple[list[object], dict[str, tuple[str, int, int]]]:
    """Nodes as name-free tuples, and the local label of every value they make.

    A read is ``_`` (omitted), the local label ``(L, node, slot)`` of a value made earlier
    in ``nodes``, or whatever ``outside(name)`` says for anything else.
    """
    local: dict[str, tuple[str, int, int]] = {}
    parts: list[object] = []
    for node in nodes:
        names = (*node.inputs, *outer_reads(node))
        refs = tuple(local[n] if n in local else outside(n) if n else "_" for n in names)
        outs = tuple(type_key(graph, o) for o in node.outputs)
        bodies = tuple(body_key(sub) for sub in node.subgraphs)
        parts.append((node.qualified_op, attr_key(node), refs, outs, bodies))
        local.update({o: ("L", len(parts) - 1, j) for j, o in enumerate(node.outputs) if o})
    return parts, local


def digest(parts: object) -> str:
    """16 hex digits of blake2b over the repr: the same in every run (no hash seed)."""
    return hashlib.blake2b(repr(parts).encode(), digest_size=8).hexdigest()


def body_key(sub: Graph) -> str:
    """Structural hash of a control-flow body: formal inputs and outer reads by position."""
    slots: dict[str, object] = {n: ("in", i) for i, n in enumerate(sub.inputs)}
    slots.update({n: ("outer", i, type_key(sub, n)) for i, n in enumerate(sub.outer)})

    def outside(name: str) -> object:
        v = sub.values.get(name)
        weight = ("W", type_key(sub, name), v.const) if v is not None and v.is_weight else "?"
        return slots.get(name, weight)

    parts, local = canonical(sub, sub.nodes, outside)
    parts.append(tuple(local.get(o, slots.get(o, "?")) for o in sub.outputs))
    return digest(parts)
