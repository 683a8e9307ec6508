"""The one writer of a plan folder: the Plan (and the lowered device nodes) to file bytes.

Why bytes and not writes: :func:`shardc.emit.outdir.write_outdir` writes a folder all at
once or not at all, so every file is built in memory first; and bytes are what the
determinism tests compare. Each file is a function of the Plan: plan.json of
:meth:`~shardc.plan.model.PlanData.to_json`, schedule.json of its timeline, trace.json of
schedule.json, and the device files of its programs and the lowered templates. The one
reader is :mod:`shardc.plan.folder`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, MutableMapping
from functools import cache
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


class PlanFiles(MutableMapping[str, bytes]):
    """A plan folder's files by name, some of them made when first read.

    Why lazy: schedule.json and trace.json hold every event of every rank (a pipeline of
    a hundred micro-batches has about a million), and serialising them costs far more
    than compiling; :func:`shardc.compile` returns a Plan that most callers only
    question and never save. The names are known up front, the bytes are the same
    whenever they are made, and each is made once.
    """

    def __init__(self, ready: dict[str, bytes], later: dict[str, Callable[[], bytes]]) -> None:
        self._ready = ready
        self._later = later

    def __getitem__(self, name: str) -> bytes:
        if name not in self._ready:
            self._ready[name] = self._later.pop(name)()
        return self._ready[name]

    def __setitem__(self, name: str, data: bytes) -> None:
        self._later.pop(name, None)
        self._ready[name] = data

    def __delitem__(self, name: str) -> None:
        if self._later.pop(name, None) is None:
            del self._ready[name]

    def __iter__(self) -> Iterator[str]:
        return iter([*self._ready, *self._later])

    def __len__(self) -> int:
        return len(self._ready) + len(self._later)


def plan_files(
    plan: PlanData,
    lowering: Lowering | None = None,
    model: Any = None,
    *,
    extra: dict[str, bytes] | None = None,
    external_threshold: int = EXTERNAL_THRESHOLD,
) -> PlanFiles:
    """Every file of ``plan``'s folder: plan.json, schedule.json and trace.json when the
    plan has a timeline, ``device_<rank>.onnx`` (and ``.weights``) when it has device
    files (which need ``lowering`` and the IR ``model``), plus ``extra`` (analysis.json).
    schedule.json and trace.json are serialised when first read (see :class:`PlanFiles`).
    """
    files: dict[str, bytes] = dict(extra or {})
    later: dict[str, Callable[[], bytes]] = {}
    if plan.device_files:
        assert lowering is not None and model is not None, "device files need the lowering"
        for rank, proto in sorted(device_models(plan, lowering, model).items()):
            files.update(device_files(rank, proto, external_threshold))
    timeline = plan.timeline
    if timeline is not None:
        schedule = cache(timeline.to_json)
        later["schedule.json"] = lambda: jsonutil.dumps(schedule()).encode()
        later["trace.json"] = lambda: jsonutil.dumps(
            chrome_trace(schedule()), indent=None
        ).encode()
    files["plan.json"] = jsonutil.dumps(plan.to_json()).encode()
    return PlanFiles(files, later)


def state_files(state: Any, external_threshold: int = EXTERNAL_THRESHOLD) -> PlanFiles:
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


def serving_files(
    phases: Mapping[str, Mapping[str, bytes]], index: dict[str, Any]
) -> dict[str, bytes]:
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
