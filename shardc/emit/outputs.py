"""The one writer of a plan folder: the Plan (and the lowered device nodes) to file bytes.

Why bytes and not writes: :func:`shardc.emit.outdir.write_outdir` writes a folder all at
once or not at all, so every file is built in memory first; and bytes are what the
determinism tests compare. Each file is a function of the Plan: plan.json of
:meth:`~shardc.plan.model.PlanData.to_json`, schedule.json of its timeline, trace.json of
schedule.json, and the device files of its programs and the lowered templates. The one
reader is :mod:`shardc.plan.folder`.
"""

from __future__ import annotations

from typing import Any

import onnx

from shardc import jsonutil
from shardc.emit.devices import device_models
from shardc.emit.trace import chrome_trace
from shardc.plan.lowered import Lowering
from shardc.plan.model import PlanData

EXTERNAL_THRESHOLD = 256 * 2**20
"""Device models whose weights exceed this keep them in ``device_<rank>.weights``
(protobuf cannot hold more than 2 GB, and Netron opens the graph without them)."""


def device_files(rank: int, model: onnx.ModelProto, threshold: int) -> dict[str, bytes]:
    """``device_<rank>.onnx``, plus its external weight file when the weights are large.

    Tensors of 1 KiB and more move to the side file, 64-byte aligned so a runtime can
    map them; the layout is a pure function of the model, so the bytes are deterministic.
    """
    name = f"device_{rank}.onnx"
    total = sum(len(t.raw_data) for t in model.graph.initializer)
    if total <= threshold:
        return {name: model.SerializeToString(deterministic=True)}
    side = f"device_{rank}.weights"
    out = onnx.ModelProto()
    out.CopyFrom(model)
    blob = bytearray()
    for t in out.graph.initializer:
        if len(t.raw_data) < 1024:
            continue
        blob.extend(b"\0" * (-len(blob) % 64))
        offset, length = len(blob), len(t.raw_data)
        blob.extend(t.raw_data)
        t.ClearField("raw_data")
        t.data_location = onnx.TensorProto.EXTERNAL
        del t.external_data[:]
        for k, v in (("location", side), ("offset", str(offset)), ("length", str(length))):
            entry = t.external_data.add()
            entry.key, entry.value = k, v
    return {name: out.SerializeToString(deterministic=True), side: bytes(blob)}


def plan_files(
    plan: PlanData,
    lowering: Lowering | None = None,
    model: Any = None,
    *,
    extra: dict[str, bytes] | None = None,
    external_threshold: int = EXTERNAL_THRESHOLD,
) -> dict[str, bytes]:
    """Every file of ``plan``'s folder: plan.json, schedule.json and trace.json when the
    plan has a timeline, ``device_<rank>.onnx`` (and ``.weights``) when it has device
    files (which need ``lowering`` and the IR ``model``), plus ``extra`` (analysis.json).
    """
    files: dict[str, bytes] = dict(extra or {})
    if plan.device_files:
        assert lowering is not None and model is not None, "device files need the lowering"
        for rank, proto in sorted(device_models(plan, lowering, model).items()):
            files.update(device_files(rank, proto, external_threshold))
    if plan.timeline is not None:
        schedule = plan.timeline.to_json()
        files["schedule.json"] = jsonutil.dumps(schedule).encode()
        files["trace.json"] = jsonutil.dumps(chrome_trace(schedule), indent=None).encode()
    files["plan.json"] = jsonutil.dumps(plan.to_json()).encode()
    return files


def state_files(state: Any, external_threshold: int = EXTERNAL_THRESHOLD) -> dict[str, bytes]:
    """The folder's files of a compiled state whose Plan has no records yet (tests of single
    graphs): the Plan is given placeholder inputs and options.
    """
    from dataclasses import replace

    from shardc.plan.records import InputRecord, Inputs, Options

    plan = state.plan
    if plan.inputs is None:
        test = InputRecord("<test>")
        plan = replace(plan, inputs=Inputs(test, test), options=Options({}), shardc="test")
    return plan_files(plan, state.lowering, state.model, external_threshold=external_threshold)


SERVING_PROGRAMS = "programs.json"
"""The index of a serving plan's program folder (see :func:`serving_files`)."""


def serving_files(phases: dict[str, dict[str, bytes]], index: dict[str, Any]) -> dict[str, bytes]:
    """The files of a serving plan's ``programs/`` folder: ``programs.json`` (``index``)
    and one plan folder per phase (``prefill/``, ``decode/``: each the folder
    :func:`plan_files` writes, ``device_<rank>.onnx`` the rank's program).

    Why a plan folder per phase: each phase's programs are an inference plan of its own
    graph, so check-plan and explain read them unchanged; the index adds what joins them
    (the KV cache entries, their layout on each phase's ranks, the hand-off).
    """
    files = {f"{phase}/{name}": data for phase, got in sorted(phases.items())
             for name, data in got.items()}
    files[SERVING_PROGRAMS] = jsonutil.dumps(index).encode()
    return files
