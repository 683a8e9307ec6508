"""The graph IR: typed, immutable, protobuf-free.

See :mod:`shardc.ir.graph` for the data model and :mod:`shardc.ir.verify` for the
invariants every pass must preserve.
"""

from shardc.ir.graph import Attribute, AttrValue, Graph, Model, Node, Value, WeightRef, WeightSource
from shardc.ir.types import Dim, DType, TensorType
from shardc.ir.verify import verify_graph

__all__ = [
    "AttrValue",
    "Attribute",
    "DType",
    "Dim",
    "Graph",
    "Model",
    "Node",
    "TensorType",
    "Value",
    "WeightRef",
    "WeightSource",
    "verify_graph",
]
