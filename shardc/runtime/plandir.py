"""A plan folder as the runtime sees it: ranks, their files, the micro-batch order the
schedule gives each rank, and the estimates to compare measured times with.

Why separate from the runners: the in-process runner, the worker processes and a user's
``torchrun`` script all read the same folder the same way, and only what they need (a
worker loads its own ``device_<rank>.onnx``, never the others').
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

from shardc.plan.folder import (
    MAX_SIDE_BYTES,
    PLAN_FORMAT,
    PlanFolderError,
    read_plan_folder,
    resolve_input,
)
from shardc.plan.model import PlanData
from shardc.plan.records import Rank
from shardc.plan.timeline import Event
from shardc.runtime.program import attr

__all__ = ["PLAN_FORMAT", "Estimate", "InputSpec", "PlanDir", "PlanFolderError"]


@dataclass(frozen=True)
class InputSpec:
    """A graph input of the plan's first stage: what one micro-batch looks like."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Estimate:
    """What the schedule predicts for one rank's forward passes in one step."""

    compute_seconds: float
    comm_seconds: float
    microbatches: int


class PlanDir:
    """Read-only view of a folder written by ``shardc compile``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.folder = read_plan_folder(self.path)  # validated before anything else is read
        self.plan: dict[str, Any] = self.folder.plan
        if not self.plan.get("emission"):
            raise PlanFolderError(
                "no emission section, so no device programs to run",
                where=str(self.path / "plan.json"),
                hint="a serving plan (--mode serving) lists instances, not device programs"
                if "serving" in self.plan else "compile without --no-emit",
            )
        # validated now (the runners read the schedule in every rank's loop), and typed
        self.typed = PlanData.from_json(self.plan, self.folder.schedule())
        self.ranks: dict[int, Rank] = {r.rank: r for r in self.typed.ranks}

    @property
    def world_size(self) -> int:
        return len(self.ranks)

    @property
    def dp(self) -> int:
        return self.typed.pipeline.dp

    @property
    def microbatches(self) -> int:
        return self.typed.pipeline.microbatches or 1

    def device_model(self, rank: int) -> onnx.ModelProto:
        """Rank ``rank``'s program, its side weight file (if any) read from the folder."""
        if rank not in self.ranks:
            raise PlanFolderError(f"{self.path}: no rank {rank} (ranks 0..{self.world_size - 1})")
        f = self._member(rank)
        try:
            model = onnx.load(str(f), load_external_data=False)
            side = _side_file(model)
            if side is not None:
                self.folder.member(side, limit=MAX_SIDE_BYTES)
                onnx.load_external_data_for_model(model, str(self.path.resolve()))
            return model
        except PlanFolderError:
            raise
        except Exception as exc:  # protobuf and file errors have no common base
            raise PlanFolderError(f"{f}: cannot load ({str(exc).splitlines()[0]})") from None

    def feeding_ranks(self) -> list[int]:
        """Ranks that read graph inputs: every rank of the first stage of each replica."""
        return [r for r, info in sorted(self.ranks.items()) if info.inputs]

    def output_ranks(self) -> list[int]:
        return [r for r, info in sorted(self.ranks.items()) if info.outputs]

    @cached_property
    def input_specs(self) -> list[InputSpec]:
        """Shapes and dtypes of one micro-batch, read from a first-stage device model."""
        feeding = self.feeding_ranks()
        if not feeding:
            return []
        try:
            model = onnx.load(str(self._member(feeding[0])), load_external_data=False)
        except Exception as exc:  # protobuf decode errors have no common base
            if isinstance(exc, PlanFolderError):
                raise
            raise PlanFolderError(
                f"cannot load ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})",
                where=str(self.path / str(self.ranks[feeding[0]].file)),
            ) from None
        weights = {t.name for t in model.graph.initializer}
        specs = []
        for i in model.graph.input:
            if i.name in weights:
                continue
            t = i.type.tensor_type
            dims = tuple(d.dim_value for d in t.shape.dim)
            if any(d.dim_param or not d.HasField("dim_value") for d in t.shape.dim):
                raise PlanFolderError(f"{self.path}: input {i.name!r} has a symbolic shape")
            specs.append(
                InputSpec(i.name, np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type)), dims)
            )
        return specs

    def _member(self, rank: int) -> Path:
        return self.folder.member(str(self.ranks[rank].file))

    def _events(self, rank: int) -> list[Event]:
        """Rank ``rank``'s forward events in the Plan's timeline (none without one)."""
        timeline = self.typed.timeline
        if timeline is None:
            return []
        return [e for e in timeline.rank(rank).events if e.phase == "forward"]

    def microbatch_order(self, rank: int) -> list[int]:
        """The micro-batches rank ``rank`` runs forward, in the schedule's order."""
        order: list[int] = []
        for e in self._events(rank):
            m = e.microbatch
            if m >= 0 and m not in order:
                order.append(m)
        return order or list(range(self.microbatches))

    def check_order(self, rank: int, comm_nodes: list[onnx.NodeProto]) -> None:
        """The device program issues its comm ops in the order the schedule lists them,
        for every micro-batch; a runner that followed one while the other was edited
        would pair the wrong messages, so a disagreement stops the run first.
        """
        timeline = self.typed.timeline
        if timeline is None:
            return
        # interleaved: every chunk's events when the program holds its chunks; else the
        # program is one pass of the stage and the chunks are the timeline's
        events = list(timeline.rank(rank).program_events(
            timeline.stages, timeline.interleave, timeline.chunked_programs))
        if not events:
            return
        program = [_comm_key(n) for n in comm_nodes]
        for m in self.microbatch_order(rank):
            listed = [(e.op, e.group, e.peer) for e in events if e.is_comm and e.microbatch == m]
            if listed != program:
                at = next(
                    (i for i, (a, b) in enumerate(zip(listed, program, strict=False)) if a != b),
                    min(len(listed), len(program)),
                )
                raise PlanFolderError(
                    f"rank {rank}: schedule.json lists {len(listed)} comm ops for micro-batch "
                    f"{m}, device_{rank}.onnx has {len(program)}; they part at op {at} "
                    f"({listed[at] if at < len(listed) else None} vs "
                    f"{program[at] if at < len(program) else None})",
                    hint="the folder was edited after compile; recompile or re-emit with --plan",
                )

    def estimate(self, rank: int) -> Estimate:
        """Forward compute and comm seconds the schedule gives ``rank`` in one step."""
        events = self._events(rank)
        compute = sum(e.duration for e in events if not e.is_comm)
        comm = sum(e.duration for e in events if e.is_comm)
        return Estimate(compute, comm, len(self.microbatch_order(rank)))

    def model_path(self) -> Path | None:
        """The original model, as recorded at compile time (None if it is not on disk)."""
        return resolve_input(self.folder, "model")

    def model_sha256(self) -> str | None:
        inputs = self.typed.inputs
        return inputs.model.sha256 if inputs is not None else None

    @property
    def model_record_path(self) -> str | None:
        """The original model's path as plan.json records it."""
        inputs = self.typed.inputs
        return inputs.model.path if inputs is not None else None


def _side_file(model: onnx.ModelProto) -> str | None:
    """The one side weight file the model's initializers name (None when inline)."""
    names = {
        e.value
        for t in model.graph.initializer
        if t.data_location == onnx.TensorProto.EXTERNAL
        for e in t.external_data
        if e.key == "location"
    }
    if len(names) > 1:
        raise PlanFolderError(f"weights in {len(names)} side files; a plan writes one")
    return names.pop() if names else None


def _comm_key(node: onnx.NodeProto) -> tuple[str, tuple[int, ...], int]:
    """What pairs a comm op with its partners: the op, its group or its peer."""
    group = tuple(int(g) for g in attr(node, "group", ()))
    return node.op_type, group, int(attr(node, "peer", -1))
