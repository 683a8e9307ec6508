"""The compiler's own small graph: values, nodes, graphs and the model around them.

Built from ONNX once by :mod:`shardc.frontend` and read by every pass; only the frontend
and :mod:`shardc.emit` touch protobuf. Everything here is immutable: a pass that changes
the graph returns a new one (:meth:`Graph.replace`), so analyses computed on a graph stay
valid for exactly that graph. Weights are *references* (where the bytes live), never
arrays: planning a 1 T-parameter model must not read a byte of its weights.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Protocol

from shardc.ir.types import TensorType

Scalar = int | float | str
AttrValue = Scalar | tuple[int, ...] | tuple[float, ...] | tuple[str, ...] | bytes


@dataclass(frozen=True, slots=True)
class Attribute:
    """One node attribute.

    ``kind`` is the ONNX attribute type name (``INT``, ``FLOATS``, ``GRAPH``…) so an empty
    list keeps its type through a round trip. Attributes the IR does not interpret
    (``GRAPH``, ``TENSOR``, ``SPARSE_TENSOR``, ``TYPE_PROTO`` and references to function
    attributes) carry the serialized ``AttributeProto`` as ``bytes``; ``TENSOR`` attributes
    also expose small integer payloads through :attr:`Node.const_outputs` of the frontend.
    """

    name: str
    kind: str
    value: AttrValue

    @property
    def is_opaque(self) -> bool:
        """True when ``value`` holds serialized protobuf that only emit decodes."""
        return isinstance(self.value, bytes)


@dataclass(frozen=True, slots=True)
class WeightRef:
    """Where an initializer's bytes live, so emit can slice them without loading the rest.

    ``location`` is a path relative to the model's folder for external data, or None for
    bytes stored inside the model file. ``small_value`` holds the values of small integer
    tensors (shape constants, axes) that shape propagation and sharding rules need.
    """

    location: str | None = None
    offset: int | None = None
    length: int | None = None
    small_value: tuple[int | float, ...] | None = None


@dataclass(frozen=True, slots=True)
class Value:
    """A named tensor: graph input, weight or an intermediate result.

    ``type`` is None for non-tensor values (sequences, maps, optionals), which the planner
    treats as opaque. ``const`` carries the elements of small integer constants.
    """

    name: str
    type: TensorType | None
    weight: WeightRef | None = None
    const: tuple[int | float, ...] | None = None

    @property
    def is_weight(self) -> bool:
        """True for initializers (parameters and constant tensors stored with the model)."""
        return self.weight is not None

    @property
    def nbytes(self) -> int | None:
        """Size in bytes when the shape is static."""
        return None if self.type is None else self.type.nbytes


@dataclass(frozen=True, slots=True)
class Node:
    """One operator application.

    ``inputs`` and ``outputs`` are value names; an empty string marks an omitted optional
    input, as in ONNX. ``subgraphs`` holds the bodies of control-flow nodes (If branches,
    Loop/Scan bodies) and of calls to model-local functions, converted to IR so that their
    cost can be summed into this one opaque node; the planner never splits them.
    """

    name: str
    op_type: str
    domain: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attributes: tuple[Attribute, ...] = ()
    subgraphs: tuple[Graph, ...] = ()
    doc: str = ""

    @property
    def qualified_op(self) -> str:
        """``op_type`` with its domain when not the default one (``com.microsoft::Gelu``)."""
        return self.op_type if self.domain in ("", "ai.onnx") else f"{self.domain}::{self.op_type}"

    def attr(self, name: str, default: AttrValue | None = None) -> AttrValue | None:
        """The value of attribute ``name``, or ``default`` when absent."""
        for a in self.attributes:
            if a.name == name:
                return a.value
        return default

    @property
    def present_inputs(self) -> tuple[str, ...]:
        """Inputs that are actually wired (omitted optionals dropped)."""
        return tuple(i for i in self.inputs if i)


@dataclass(frozen=True)
class Graph:
    """A topologically ordered graph of nodes over named values.

    ``values`` maps every name used in the graph (inputs, weights, intermediates, outputs)
    to its :class:`Value`; names visible from an enclosing graph (for subgraphs) are listed
    in ``outer`` instead. Producer and consumer views are derived once and cached.
    """

    name: str
    nodes: tuple[Node, ...]
    values: Mapping[str, Value]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    initializers: tuple[str, ...] = ()
    outer: tuple[str, ...] = ()
    doc: str = ""
    extra: Mapping[str, bytes] = field(default_factory=dict)

    # -- derived views -------------------------------------------------------------------
    @cached_property
    def _producers(self) -> dict[str, Node]:
        return {out: n for n in self.nodes for out in n.outputs if out}

    @cached_property
    def _consumers(self) -> dict[str, tuple[Node, ...]]:
        acc: dict[str, list[Node]] = {}
        for n in self.nodes:
            for i in dict.fromkeys(n.present_inputs):
                acc.setdefault(i, []).append(n)
        return {k: tuple(v) for k, v in acc.items()}

    @cached_property
    def _by_name(self) -> dict[str, Node]:
        return {n.name: n for n in self.nodes}

    def producer(self, value: str) -> Node | None:
        """The node computing ``value``; None for inputs, weights and outer values."""
        return self._producers.get(value)

    def consumers(self, value: str) -> tuple[Node, ...]:
        """Nodes reading ``value``, in graph order."""
        return self._consumers.get(value, ())

    def node(self, name: str) -> Node:
        """Look a node up by name (KeyError if absent)."""
        return self._by_name[name]

    def value(self, name: str) -> Value:
        """Look a value up by name (KeyError if absent)."""
        return self.values[name]

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    @property
    def weights(self) -> tuple[Value, ...]:
        """Initializer values in their original order."""
        return tuple(self.values[n] for n in self.initializers)

    def replace(self, **changes: object) -> Graph:
        """A copy with some fields changed; derived views are recomputed lazily."""
        return replace(self, **changes)  # type: ignore[arg-type]


class WeightSource(Protocol):
    """Reads initializer bytes on demand (implemented by the frontend, used by emit)."""

    def array(self, name: str) -> object:  # numpy.ndarray, typed loosely to keep ir numpy-free
        """The weight as an array, read from wherever it lives."""
        ...


@dataclass(frozen=True)
class Model:
    """A graph plus what the file said around it, and a handle to read weights lazily.

    ``source`` names where it came from (a path or ``<ModelProto>``), for messages.
    ``dims`` are the symbolic dimensions the user bound. ``functions`` are serialized
    model-local ``FunctionProto`` messages, kept for an exact round trip.
    """

    graph: Graph
    opset_imports: tuple[tuple[str, int], ...]
    ir_version: int
    source: str
    weights: WeightSource | None = None
    producer_name: str = ""
    producer_version: str = ""
    model_version: int = 0
    domain: str = ""
    doc: str = ""
    metadata: tuple[tuple[str, str], ...] = ()
    functions: tuple[bytes, ...] = ()
    dims: Mapping[str, int] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    def opset(self, domain: str = "") -> int | None:
        """The imported version of ``domain`` (default ONNX domain when empty)."""
        for d, v in self.opset_imports:
            if d == domain or (domain == "" and d == "ai.onnx"):
                return v
        return None
