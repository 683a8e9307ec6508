"""The half of :class:`shardc.Plan` that opens and runs the device programs.

Why apart from :mod:`shardc.handle`: asking a plan what it decided (stages, ranks,
comms, the timeline) needs only plan.json and the typed records; loading a rank's ONNX
program, running every rank against the original model, or joining a ``torchrun`` job
needs protobuf, onnxruntime and torch.distributed. Keeping those here keeps the
question-answering half small and its imports light; :class:`~shardc.handle.Plan`
inherits both.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from shardc.errors import OptionError, ShardcError

if TYPE_CHECKING:
    import os


class PlanError(ShardcError):
    """A plan folder is missing, unreadable, or lacks what was asked of it."""


class Running:
    """Device programs and running them, over what :class:`~shardc.handle.Plan` holds:
    ``data`` (plan.json), ``path``, ``source``, ``file_names``, ``_read`` and ``save``.
    """

    data: dict[str, Any]
    path: Path | None
    source: onnx.ModelProto | None

    if TYPE_CHECKING:  # what Plan provides

        @property
        def file_names(self) -> list[str]: ...

        def _read(self, name: str) -> bytes: ...

        def save(self, path: str | os.PathLike[str], *, force: bool = False) -> Path: ...

    def device_model(self, rank: int) -> onnx.ModelProto:
        """Rank ``rank``'s program (``device_<rank>.onnx``), its weights loaded."""
        ranks = {r["rank"]: r for r in self.data.get("emission", {}).get("ranks", [])}
        if not ranks:
            raise PlanError(
                "the plan has no device files (the model's weights were not readable)",
                hint="compile a model with its weights, or pass emit=True",
            )
        if rank not in ranks:
            raise OptionError(f"no rank {rank}: the plan has ranks 0..{len(ranks) - 1}")
        name = ranks[rank]["file"]
        try:
            model = onnx.load_from_string(self._read(name))
            side = Path(name).with_suffix(".weights").name
            if side in self.file_names:
                _inline_external(model, self._read(side))
        except ShardcError:
            raise
        except Exception as exc:  # protobuf decode errors have no common base
            raise PlanError(f"{name}: cannot load ({type(exc).__name__}: {exc})") from None
        return model

    def verify(self, inputs: Any = None, *, procs: bool = False, **options: Any) -> Any:
        """Run the plan and the original model on ``inputs`` and compare every output.

        ``inputs`` maps graph input names to arrays (random ones of the right shape when
        None); ``procs=True`` runs one process per rank over torch.distributed (gloo),
        otherwise all ranks run in this process. Returns the runtime's
        :class:`~shardc.runtime.verify.VerifyReport` (per-output errors, ``.ok``, per-rank
        times; rich-renderable); ``options`` go to :func:`shardc.runtime.verify.verify`
        (``rtol``, ``seed``, ``timeout``, ``model``). The reference is the model compiled:
        a file by the path plan.json records, a ModelProto or torch module as exported.
        """
        from shardc.runtime.verify import verify

        if self.source is not None:
            options.setdefault("model", self.source)
        return verify(self.folder(), inputs, procs=procs, **options)

    def runner(self, **options: Any) -> Any:
        """The rank of the plan this process runs, in a script launched by ``torchrun``.

        Reads ``RANK`` and ``WORLD_SIZE`` from the environment and joins the process
        group (NCCL next to a GPU, HCCL next to an Ascend NPU, gloo otherwise) unless the
        script already did; ``runner.run(feeds)`` runs one micro-batch of the rank's
        device program and returns the graph outputs it produces (``{}`` before the last
        stage), ``runner.run_step(feeds_by_microbatch)`` a whole step in the schedule's
        order. Every rank of the job calls this with the same plan. ``options`` go to
        :class:`~shardc.runtime.distributed.RankRunner`: ``backend``, ``timeout``
        (seconds before a hung collective fails) and ``check_shapes`` (exchange a small
        shape header before each comm op, so a wrong shape names its rank and op).
        """
        from shardc.runtime.distributed import runner_from_env

        return runner_from_env(self.folder(), **options)

    def folder(self) -> Path:
        """A folder holding this plan: where it was loaded or saved, else a fresh temporary
        copy (same bytes on every process, so each rank of a job may make its own),
        removed when the process exits.
        """
        if self.path is None:
            tmp = tempfile.mkdtemp(prefix="shardc-plan-")
            atexit.register(shutil.rmtree, tmp, ignore_errors=True)
            self.save(Path(tmp) / "plan", force=True)
        assert self.path is not None
        return self.path


def _inline_external(model: onnx.ModelProto, blob: bytes) -> None:
    """Fill tensors stored in the side weight file with their bytes from ``blob``."""
    for t in model.graph.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        offset, length = int(info.get("offset", 0)), int(info["length"])
        t.raw_data = blob[offset : offset + length]
        del t.external_data[:]
        t.data_location = onnx.TensorProto.DEFAULT
