"""From a model, a topology and options to the bytes of a plan folder.

Why one module: ``shardc compile`` and :func:`shardc.compile` must write the same
folder for the same inputs, byte for byte. Both normalise their inputs into
:class:`Inputs` and :class:`PlanOptions` and call :func:`build`; only the reading of
arguments (click or keywords) and what happens to the result (print and write, or a
:class:`shardc.plan.Plan`) differ.

plan.json records *what* was compiled: each input's path as given (or ``<ModelProto>``,
``<text>``...) with a SHA-256 of its bytes, the topology's ``--set`` overrides, the bound
dims, the options, then the partitioner's answer and the emission's rank table. Nothing
wall-clock goes into any file, so two runs give identical bytes; timings travel beside
the files in :class:`Built`.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from shardc import jsonutil
from shardc.emit.outputs import plan_files
from shardc.errors import OptionError
from shardc.options import PlanOptions, complete_pins, read_json, warm_start_section
from shardc.partition.options import PartitionOptions
from shardc.pipeline import PipelineResult
from shardc.plan.model import PLAN_FORMAT, PlanData
from shardc.plan.records import Inputs as Record
from shardc.plan.records import Options, Partition
from shardc.progress import Progress, Steps

__all__ = [
    "PLAN_FORMAT",
    "Built",
    "Inputs",
    "PlanOptions",
    "build",
    "complete_pins",
    "read_json",
    "read_plan",
    "sha256_bytes",
    "sha256_file",
    "warm_start_section",
]
"""``PlanOptions``, ``complete_pins``, ``read_json`` and ``warm_start_section`` are
re-exported: their home is :mod:`shardc.options`, next to the option table."""


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hash of a file as given (for ONNX: the graph file, not its external weights)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as exc:
        raise OptionError(f"{path}: {exc.strerror}") from None
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """Hash of in-memory input (a serialised ModelProto, topology text)."""
    return hashlib.sha256(data).hexdigest()


def read_plan(path: Path, records: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """An earlier plan.json, checked to be for the inputs in ``records``
    (``{"model": {"path", "sha256"}, "topology": {...}}``).
    """
    data = read_json(path, "--plan")
    if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
        raise OptionError(f"--plan {path}: not a {PLAN_FORMAT} file")
    for what, record in records.items():
        if data["inputs"][what]["sha256"] != record["sha256"]:
            raise OptionError(
                f"--plan {path}: it was made for another {what} than {record['path']}",
                hint=f"it names {data['inputs'][what]['path']}",
            )
    return data


@dataclass(frozen=True)
class Inputs:
    """A model and a topology, loaded or loadable, with how plan.json names them."""

    model: Any
    """A path or an ``onnx.ModelProto`` (a torch module is exported before it gets here)."""
    model_record: Mapping[str, Any]
    """``{"path": ..., "sha256": ...}``; without ``sha256`` the file at ``model`` is hashed
    once it has loaded (so a missing or broken file is reported by the frontend)."""
    topology: Any
    """The built :class:`shardc.topology.Topology`."""
    topology_record: Mapping[str, Any]
    """``{"path": ..., "sha256": ..., "set": {...}}``."""
    dims: Mapping[str, int] = field(default_factory=dict)
    custom_flops: Mapping[str, float] = field(default_factory=dict)


@dataclass
class Built:
    """A compiled plan: the folder's files as bytes, plus what the caller may print."""

    files: dict[str, bytes]
    plan: dict[str, Any]
    """plan.json as data (the same content as ``files["plan.json"]``)."""
    schedule: dict[str, Any] | None
    """schedule.json as data, or None when it was not written (``--no-emit``)."""
    result: Any
    """The :class:`shardc.pipeline.PipelineResult` (state, pass timings, dumps)."""
    warnings: tuple[str, ...]
    seconds: float
    """Wall time of the whole build."""
    typed: PlanData | None = None
    """The Plan the files were written from."""

    @property
    def timings(self) -> dict[str, float]:
        """Seconds per pass, in run order."""
        return {t.name: round(t.seconds, 6) for t in self.result.timings}


SCHEDULE_ONLY_BUDGET = 50_000
"""Graph nodes times data-parallel replicas up to which a model whose weights are declared
only still gets schedule.json and trace.json by default: laying out the programs costs
about 0.1 ms per node and replica, so larger plans ask for it with ``--emit``."""


def build(
    inputs: Inputs,
    options: PlanOptions,
    *,
    replay: Mapping[str, Any] | None = None,
    replay_label: str = "--plan",
    emit: bool | None = None,
    dump_after: Sequence[str] = (),
    progress: Progress | None = None,
) -> Built:
    """Compile ``inputs`` under ``options`` into the files of a plan folder.

    The recipe: the passes that decide (up to ``partition``), then those that build the
    Plan (``lower``, ``price``, ``timeline``, ``plan``), then the record of what was
    compiled, then the one writer (:func:`shardc.emit.outputs.plan_files`).

    ``replay`` is an earlier plan.json whose plan ``options`` pins completely (see
    :meth:`PlanOptions.replaying`): its record of the options and the solver is kept,
    and a plan that no longer prices the same is an error (named by ``replay_label``,
    e.g. ``--plan old/plan.json``). ``emit`` lowers the plan (schedule.json, trace.json,
    and the device models when the weights are readable: they need the bytes, the
    schedule only shapes). None: the same, except that a model whose weights are declared
    only is lowered only up to :data:`SCHEDULE_ONLY_BUDGET`.
    """
    from shardc.compiler import analyse, partition_passes, plan_passes
    from shardc.pipeline import Pipeline, filled

    start = time.perf_counter()
    deciding = partition_passes()
    names = [p.name for p in deciding + plan_passes()]
    unknown = [d for d in dump_after if d not in names]
    if unknown:
        raise OptionError(f"--dump-after {unknown[0]}: no such pass",
                          hint=f"passes are: {', '.join(names)}")
    steps = Steps(progress, len(names) + 2)  # load, the passes, writing the files
    partition = options.partition_options()
    steps.start("load model")
    result = analyse(
        inputs.model,
        dims=inputs.dims,
        custom_flops=inputs.custom_flops,
        topology=inputs.topology,
        dump_after=[d for d in dump_after if d in {p.name for p in deciding}],
        mode=options.mode,
        dtype=options.dtype,
        partition=partition,
        passes=deciding,
        on_pass=lambda name, _index, _n: steps.start(name),
        on_step=lambda name, step, done, n: steps.within(f"{name} {step}", done, n),
    )
    state = result.state
    assert state.costs is not None and state.partition is not None
    lowered, note = _lowering_wanted(state, emit)
    building = plan_passes(lowered=lowered)
    rest = Pipeline(building, given=filled(state)).run(
        state.warn(*note),
        dump_after=[d for d in dump_after if d in {p.name for p in building}],
        on_pass=lambda name, _index, _n: steps.start(name),
    )
    result = PipelineResult(rest.state, result.timings + rest.timings,
                            {**result.dumps, **rest.dumps})
    state = result.state
    assert state.plan is not None
    plan = _recorded(state.plan, inputs, options, partition, state.model.dims)
    if replay is not None:
        plan = _replayed(plan, replay, replay_label)
    state = state.with_(plan=plan)
    result.state = state
    steps.start("emit")
    files = plan_files(plan, state.lowering, state.model, extra={"analysis.json": _analysis(state)})
    steps.finish()
    return Built(
        files=files,
        plan=plan.to_json(),
        schedule=plan.timeline.to_json() if plan.timeline is not None else None,
        result=result,
        warnings=tuple(state.warnings),
        seconds=time.perf_counter() - start,
        typed=plan,
    )


def _lowering_wanted(state: Any, emit: bool | None) -> tuple[bool, tuple[str, ...]]:
    """Whether to lower the plan, and the warning that says what is not written."""
    from shardc.passes.lower_weights import weights_available

    if emit is False:
        return False, ()
    if weights_available(state):
        return True, ()
    lowered = True
    if emit is None:
        work = len(state.graph.nodes) * state.partition.dp
        lowered = work <= SCHEDULE_ONLY_BUDGET
    note = "the model's weights are not readable (declared only): no device models; " + (
        "schedule.json and trace.json written" if lowered else
        f"schedule.json and trace.json skipped too ({state.partition.dp} replicas of "
        f"{len(state.graph.nodes)} nodes take about {work / 1e4:.0f} s or more to "
        "lay out; --emit writes them)"
    )
    return lowered, (note,)


def _recorded(
    plan: PlanData,
    inputs: Inputs,
    options: PlanOptions,
    partition: PartitionOptions,
    dims: Mapping[str, int],
) -> PlanData:
    """``plan`` with the record of what was compiled and how the user asked for it."""
    from shardc.version import __version__

    model_record = dict(inputs.model_record)
    if "sha256" not in model_record:
        model_record["sha256"] = sha256_file(inputs.model)
    topology = {
        **inputs.topology_record,
        "set": dict(sorted(inputs.topology_record.get("set", {}).items())),
    }
    record = Record.from_json(
        {"model": model_record, "topology": topology, "dims": dict(sorted(dims.items()))}
    )
    return replace(
        plan,
        inputs=record,
        options=Options.from_json(options.to_json(partition)),
        shardc=__version__,
        format=PLAN_FORMAT,
    )


def _replayed(plan: PlanData, replay: Mapping[str, Any], label: str) -> PlanData:
    """``plan`` with the original's record of the options and the solver; an error when
    the plan no longer prices the same.
    """
    part = plan.partition
    if [s.to_json() for s in part.stages] != replay["partition"]["stages"]:
        raise OptionError(
            f"{label}: the plan no longer prices the same on this input "
            "(the cost model or the topology changed)"
        )
    original = Partition.from_json({**part.to_json(), "solver": replay["partition"]["solver"],
                                    "pins": replay["partition"]["pins"]})
    return replace(plan, options=Options.from_json(replay["options"]), partition=original)


def _analysis(state: Any) -> bytes:
    """analysis.json: what ``shardc inspect`` reports, priced in the plan's ``--dtype``."""
    from shardc.analysis import graph_summary
    from shardc.passes.precision import priced_graph

    priced = replace(state.model, graph=priced_graph(state))
    return jsonutil.dumps(graph_summary(priced, state.costs)).encode()
