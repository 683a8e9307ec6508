"""shardc: a hardware-topology-aware model sharding compiler.

>>> import shardc
>>> result = shardc.analyse("examples/models/tiny_gpt2.onnx")
>>> result.state.costs.param_count
116382

The API grows with the compiler; today it loads models, runs the analysis passes and
partitions a model onto a topology (:func:`partition_model` with
:class:`PartitionOptions`). Errors are :class:`ShardcError` subclasses (see :mod:`shardc.errors`).
"""

from __future__ import annotations

from typing import Any

from shardc.compiler import analyse, partition_model
from shardc.errors import (
    InfeasibleError,
    ModelError,
    OptionError,
    ShardcError,
    SolverTimeout,
    TopologyError,
)
from shardc.frontend import load_model
from shardc.partition.options import PartitionOptions, Pins, parse_pins

__version__ = "0.1.0"

__all__ = [
    "InfeasibleError",
    "ModelError",
    "OptionError",
    "PartitionOptions",
    "Pins",
    "ShardcError",
    "SolverTimeout",
    "TopologyError",
    "__version__",
    "analyse",
    "load_model",
    "load_topology",
    "parse_pins",
    "partition_model",
]


def load_topology(path_or_text: Any, overrides: Any = None) -> Any:
    """Parse a topology file (or DSL text); see :mod:`shardc.topology`."""
    from shardc.topology import load_topology as _load

    return _load(path_or_text, overrides)
