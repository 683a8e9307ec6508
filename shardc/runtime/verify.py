"""``shardc verify``: run a plan and the original model on the same inputs and compare.

Why a step, not one forward: a plan's ranks run ``microbatches`` forward passes per
step, and every data-parallel replica runs its own. Verification gives each
(replica, micro-batch) slot its own inputs, runs the whole step the way the schedule
orders it, and compares every output of every last-stage rank with onnxruntime on the
unsharded model for that slot's inputs. A wrong sharding that only shows on replica 1,
or on the second micro-batch through a pipeline, is caught.

Tolerance depends on the dtype: an output passes when its largest absolute error is at
most ``rtol`` times the largest magnitude of the reference output (sharding reorders
sums, so errors scale with the output, not element by element); integer and boolean
outputs must be equal.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from shardc.emit.program import cpu_session
from shardc.errors import ExecutionError, ModelError, OptionError
from shardc.runtime.feeds import slot_feeds
from shardc.runtime.inprocess import run_programs
from shardc.runtime.plandir import PlanDir
from shardc.runtime.program import RankProgram
from shardc.runtime.verify_report import RTOL, OutputCheck, RankTiming, VerifyReport

__all__ = ["RTOL", "OutputCheck", "RankTiming", "VerifyReport", "verify"]

def verify(
    plan: Any,
    inputs: str | Path | Mapping[str, np.ndarray] | None = None,
    *,
    procs: bool = False,
    model: str | Path | onnx.ModelProto | None = None,
    rtol: float | None = None,
    seed: int = 0,
    timeout: float = 120.0,
) -> VerifyReport:
    """Run ``plan`` (a plan folder, or an object with a ``path`` to one) and compare it
    with the original model.

    ``inputs`` is an ``.npz`` file or a dict of arrays: either one micro-batch (the
    shapes the plan was compiled for), given to every slot, or ``k`` micro-batches
    stacked along the first dimension, dealt to the slots in turn. Without inputs,
    seeded random ones are made per slot (token ids within the embedding's rows).
    ``procs`` runs one process per rank over torch.distributed instead of in-process.
    ``model`` overrides the original model recorded in ``plan.json``.
    """
    folder = plan if isinstance(plan, PlanDir) else PlanDir(getattr(plan, "path", plan))
    original = _original(folder, model)
    specs = folder.input_specs
    slots = [(r, m) for r in range(folder.dp) for m in range(folder.microbatches)]
    feeds = slot_feeds(specs, slots, inputs, original, seed)
    reference = _reference(original, feeds)
    start = time.perf_counter()
    if procs:
        from shardc.runtime.launch import run_processes

        result = run_processes(folder, feeds, timeout=timeout)
        outputs, compute, comm = result.outputs, result.compute, result.comm
        runner = f"{folder.world_size} processes, torch.distributed"
    else:
        outputs, compute = _inprocess(folder, feeds)
        comm = {}
        runner = "in-process"
    wall = time.perf_counter() - start
    report = VerifyReport(str(folder.path), runner, len(slots), wall_seconds=wall)
    report.outputs = _compare(folder, outputs, reference, rtol)
    for rank, info in sorted(folder.ranks.items()):
        est = folder.estimate(rank)
        report.timings.append(
            RankTiming(
                rank,
                info.device,
                info.stage,
                info.replica,
                len(compute.get(rank, [])),
                float(sum(compute.get(rank, []))),
                float(sum(comm[rank])) if rank in comm else None,
                est.compute_seconds,
                est.comm_seconds,
            )
        )
    return report


def _original(folder: PlanDir, model: str | Path | onnx.ModelProto | None) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    path = Path(model) if model is not None else folder.model_path()
    if path is None or not path.is_file():
        recorded = folder.model_record_path
        raise OptionError(
            f"{folder.path}: the original model {recorded!r} is not on disk",
            hint="pass it with --model PATH",
        )
    want = folder.model_sha256()
    if model is None and want and _sha256(path) != want:
        raise ModelError(
            "changed since the plan was compiled (sha256 differs)",
            where=str(path),
            hint="recompile, or pass the model the plan was made from with --model",
        )
    try:
        return onnx.load(str(path))
    except Exception as exc:  # protobuf decode errors have no common base
        raise ModelError(f"cannot load ({str(exc).splitlines()[0]})", where=str(path)) from None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _reference(
    model: onnx.ModelProto, feeds: Mapping[tuple[int, int], Mapping[str, np.ndarray]]
) -> dict[tuple[int, int], dict[str, np.ndarray]]:
    try:
        sess = cpu_session(model, log_level=3)
    except Exception as exc:
        raise ModelError(
            f"onnxruntime cannot run the original model: {str(exc).splitlines()[0]}"
        ) from None
    names = [o.name for o in sess.get_outputs()]
    wanted = {i.name for i in sess.get_inputs()}
    return {
        slot: dict(
            zip(names, sess.run(names, {k: v for k, v in f.items() if k in wanted}), strict=True)
        )
        for slot, f in feeds.items()
    }


def _inprocess(
    folder: PlanDir, feeds: Mapping[tuple[int, int], Mapping[str, np.ndarray]]
) -> tuple[dict[int, dict[int, dict[str, np.ndarray]]], dict[int, list[float]]]:
    programs = {r: RankProgram(folder.device_model(r), r) for r in range(folder.world_size)}
    for r, program in programs.items():
        folder.check_order(r, program.comm_nodes)
    replica = {r: info.replica for r, info in folder.ranks.items()}
    outputs: dict[int, dict[int, dict[str, np.ndarray]]] = {r: {} for r in programs}
    for m in folder.microbatch_order(0):
        got = run_programs(programs, {r: feeds[(replica[r], m)] for r in programs}, m)
        for r, outs in got.items():
            if outs:
                outputs[r][m] = outs
    return outputs, {r: p.timings.compute for r, p in programs.items()}


def _compare(
    folder: PlanDir,
    outputs: Mapping[int, Mapping[int, Mapping[str, np.ndarray]]],
    reference: Mapping[tuple[int, int], Mapping[str, np.ndarray]],
    rtol: float | None,
) -> list[OutputCheck]:
    worst: dict[str, dict[str, Any]] = {}
    for rank in folder.output_ranks():
        replica = folder.ranks[rank].replica
        got_by_mb = outputs.get(rank, {})
        if not got_by_mb:
            raise ExecutionError("produced no outputs", where=f"rank {rank}")
        for m, got in sorted(got_by_mb.items()):
            ref = reference[(replica, m)]
            for name, value in sorted(got.items()):
                if name not in ref:
                    continue
                want = ref[name]
                entry = worst.setdefault(
                    name,
                    {
                        "dtype": want.dtype,
                        "shape": want.shape,
                        "n": 0,
                        "abs": 0.0,
                        "rel": 0.0,
                        "where": "",
                        "ok": True,
                    },
                )
                entry["n"] += 1
                tol = rtol if rtol is not None else RTOL.get(want.dtype, 0.0)
                err, rel, ok = _error(value, want, tol)
                if err >= entry["abs"]:
                    entry["abs"], entry["where"] = err, f"rank {rank}, micro-batch {m}"
                entry["rel"] = max(entry["rel"], rel)
                entry["ok"] = entry["ok"] and ok
                entry["tol"] = tol
    return [
        OutputCheck(
            name,
            str(e["dtype"]),
            tuple(e["shape"]),
            e["n"],
            e["abs"],
            e["rel"],
            e["tol"],
            e["where"],
            e["ok"],
        )
        for name, e in sorted(worst.items())
    ]


def _error(got: np.ndarray, want: np.ndarray, tol: float) -> tuple[float, float, bool]:
    if got.shape != want.shape:
        return float("inf"), float("inf"), False
    if want.dtype.kind not in "fc":
        diff_i = np.abs(got.astype(np.float64) - want.astype(np.float64))
        err = float(diff_i.max(initial=0.0))
        scale = float(np.abs(want.astype(np.float64)).max(initial=0.0))
        return err, (err / scale if scale else err), err == 0.0
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    if not np.all(np.isfinite(got) == np.isfinite(want)):
        return float("inf"), float("inf"), False
    diff = np.where(np.isfinite(diff), diff, 0.0)
    err = float(diff.max(initial=0.0))
    scale = float(np.abs(want[np.isfinite(want)]).max(initial=0.0))
    rel = err / scale if scale else (0.0 if err == 0 else float("inf"))
    return err, rel, err <= tol * scale if scale else err == 0.0

