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
from collections.abc import Mapping, Sequence
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
from shardc.handle import Plan
from shardc.partition.options import PartitionOptions, Pins, parse_pins
from shardc.plan import Device, Estimate, Stage
from shardc.train import parallelize
from shardc.version import __version__

if TYPE_CHECKING:
    from shardc.runtime.verify import VerifyReport
    from shardc.topology import Topology

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
    "parallelize",
    "parse_pins",
    "partition_model",
    "verify",
]


def load_topology(
    path_or_text: str | os.PathLike[str],
    overrides: Mapping[str, int | float | str] | None = None,
    *,
    include_path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
) -> Topology:
    """Parse and build a topology from a ``.topo`` file, a stock name, or DSL text.

    A ``str`` containing a newline is text; anything else a path, or the name of a
    topology on the search path (``"gb200_nvl72"``; ``shardc topo list`` shows them).
    ``overrides`` replace ``let`` parameters (``{"nodes": 4}``, like ``--set``).
    ``include`` looks next to the including file (never in the current directory for
    text), then in ``include_path``, ``$SHARDC_TOPOLOGY_PATH`` and the stock folder.
    Raises :class:`TopologyError` with ``file:line:col`` for mistakes in the text and
    :class:`OptionError` for unknown parameters. The language: docs/dsl.md.

    >>> topo = load_topology("topologies/localhost.topo", {"devices": 4})
    >>> len(topo.compute_devices), topo.compute_devices[0].kind.name
    (4, 'cpu_share')
    >>> len(load_topology("gb200_nvl72").compute_devices)
    72
    """
    from shardc.topology import load_topology as _load

    return _load(path_or_text, overrides, include_path=include_path)


def verify(
    plan: Plan | str | os.PathLike[str],
    inputs: str | os.PathLike[str] | Mapping[str, object] | None = None,
    *,
    procs: bool = False,
    **options: object,
) -> VerifyReport:
    """Run a plan and the original model on the same inputs; compare every output.

    ``plan`` is a :class:`Plan` or a plan folder. ``inputs`` is an ``.npz`` file or a
    dict of arrays holding one micro-batch or several stacked along the first dimension
    (seeded random ones when None). ``procs=True`` runs one process per rank over
    torch.distributed, else all ranks run in this process. ``options``: ``model`` (the
    original, if not where plan.json says), ``rtol``, ``seed``, ``timeout``. The report
    has ``.ok``, per-output errors and per-rank times beside the schedule's estimates;
    a failed rank raises :class:`ExecutionError` naming the rank and the op.

    >>> plan = compile("examples/models/tiny_gpt2.onnx", "topologies/localhost.topo",
    ...                devices=2, pins="tp=2", mode="inference", quiet=True)
    >>> report = verify(plan)
    >>> report.ok, report.outputs[0].max_rel < 1e-5
    (True, True)
    """
    if isinstance(plan, Plan):
        return plan.verify(inputs, procs=procs, **options)
    from shardc.runtime.verify import verify as _verify

    return _verify(plan, inputs, procs=procs, **options)  # type: ignore[arg-type]
