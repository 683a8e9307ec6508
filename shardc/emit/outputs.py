"""The files of a plan folder, as bytes, from a compiled state.

Why bytes and not writes: :func:`shardc.emit.outdir.write_outdir` writes a folder all at
once or not at all, so every file is built in memory first; and bytes are what the
determinism tests compare.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from shardc import jsonutil
from shardc.emit.devices import Emission, emit

if TYPE_CHECKING:
    from shardc.pipeline import CompileState


def weights_available(state: CompileState) -> bool:
    """Whether the model's weights can be read (a synth graph declares them only)."""
    source = state.model.weights
    names = list(state.model.graph.initializers)
    if not names:
        return True
    if source is None:
        return False
    try:
        source.array(names[0])
    except Exception:
        return False
    return True


class DeclaredWeights:
    """A weight source for weights that are declared but never written (synth graphs).

    It hands out each weight's type and dims and no bytes: enough to lay out the device
    programs and so the schedule and trace, which depend on shapes only, but not to write
    device models. :func:`plan_files` uses it when the real weights cannot be read.
    """

    declared_only = True

    def __init__(self, source: Any):
        self._source = source

    def tensor_proto(self, name: str, *, with_data: bool = True) -> onnx.TensorProto:
        """``name``'s type and dims, without data or a reference to an external file."""
        t = self._source.tensor_proto(name, with_data=False)
        return onnx.TensorProto(name=t.name, data_type=t.data_type, dims=list(t.dims))

    def array(self, name: str) -> np.ndarray:
        """A zero-strided stand-in of the right shape and dtype (it holds no memory)."""
        t = self.tensor_proto(name)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
        return np.broadcast_to(np.zeros((), dtype=dtype), tuple(t.dims))


def emission_section(state: CompileState, emission: Emission) -> dict[str, Any]:
    """plan.json's ``emission``: the rank table and the original weights' sizes."""
    graph = state.graph
    used = {v for n in graph.nodes for v in n.present_inputs}
    weights = {
        name: int(graph.values[name].nbytes or 0) for name in graph.initializers if name in used
    }
    return {
        "ranks": [
            {
                "rank": p.rank,
                "file": f"device_{p.rank}.onnx",
                "device": p.device,
                "kind": p.kind,
                "stage": p.stage,
                "replica": p.replica,
                "tp_rank": p.tp_rank,
                "tp": p.tp,
                "inputs": list(p.inputs),
                "outputs": list(p.outputs),
                "weight_bytes": p.weight_bytes,
                "memory_bytes": p.memory_bytes,
            }
            for p in emission.programs.programs
        ],
        "weights": dict(sorted(weights.items())),
    }


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
    state: CompileState, external_threshold: int = EXTERNAL_THRESHOLD, *, models: bool = True
) -> tuple[dict[str, bytes], dict[str, Any] | None, Any]:
    """(files, emission section, schedule dict) for ``state``'s plan.

    ``models=False`` (weights declared only): schedule.json and trace.json, which need
    shapes only, and no device models; the emission section is then None, since plan.json
    must not list device files the folder does not hold.
    """
    from shardc.emit.schedule import build_schedule
    from shardc.emit.trace import chrome_trace

    if not models:
        model = replace(state.model, weights=DeclaredWeights(state.model.weights))
        state = replace(state, model=model)
    emission = emit(state)
    files: dict[str, bytes] = {}
    for rank, proto in sorted(emission.models.items()) if models else ():
        files.update(device_files(rank, proto, external_threshold))
    schedule = build_schedule(emission.programs)
    files["schedule.json"] = jsonutil.dumps(schedule).encode()
    files["trace.json"] = jsonutil.dumps(chrome_trace(schedule), indent=None).encode()
    return files, emission_section(state, emission) if models else None, schedule
