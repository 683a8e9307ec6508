"""shardc: a hardware-topology-aware model sharding compiler.

>>> import shardc
>>> plan = shardc.compile("examples/models/tiny_gpt2.onnx", "topologies/localhost.topo",
...                       devices=2, quiet=True)
>>> plan.world_size
2

:func:`compile` (model + topology -> :class:`Plan`) is the entry point for scripts; the
plan saves to the folder ``shardc compile`` writes and loads back with
:meth:`Plan.load`. Lower down: :func:`analyse` runs the analysis passes
(``result.state.costs.param_count``), :func:`partition_model` stops at the partition,
:func:`load_model` and :func:`load_topology` read the inputs. Errors are
:class:`ShardcError` subclasses (see :mod:`shardc.errors`); docs/api.md lists it all.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from shardc.api import compile
from shardc.compiler import analyse, partition_model
from shardc.errors import (
    ExecutionError,
    InfeasibleError,
    ModelError,
    OptionError,
    ShardcError,
    ShardcWarning,
    SolverTimeout,
    TopologyError,
)
from shardc.frontend import load_model
from shardc.partition.options import PartitionOptions, Pins, parse_pins
from shardc.plan import Device, Estimate, Plan, Stage

if TYPE_CHECKING:
    from shardc.topology import Topology

__version__ = "0.1.0"

__all__ = [
    "Device",
    "Estimate",
    "ExecutionError",
    "InfeasibleError",
    "ModelError",
    "OptionError",
    "PartitionOptions",
    "Pins",
    "Plan",
    "ShardcError",
    "ShardcWarning",
    "SolverTimeout",
    "Stage",
    "TopologyError",
    "__version__",
    "analyse",
    "compile",
    "load_model",
    "load_topology",
    "parse_pins",
    "partition_model",
]


def load_topology(
    path_or_text: str | os.PathLike[str], overrides: Mapping[str, int | float | str] | None = None
) -> Topology:
    """Parse and build a topology from a ``.topo`` file or DSL text.

    A ``str`` containing a newline is text, anything else a path; ``overrides`` replace
    ``let`` parameters (``{"nodes": 4}``, like ``--set``). Raises
    :class:`TopologyError` with ``file:line:col`` for mistakes in the text and
    :class:`OptionError` for unknown parameters. The language: docs/dsl.md.

    >>> topo = load_topology("topologies/localhost.topo", {"devices": 4})
    >>> len(topo.compute_devices), topo.compute_devices[0].kind.name
    (4, 'cpu_share')
    """
    from shardc.topology import load_topology as _load

    return _load(path_or_text, overrides)
