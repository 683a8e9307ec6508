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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from shardc.emit.program import cpu_session
from shardc.errors import ExecutionError, ModelError, OptionError
from shardc.runtime.inprocess import run_programs
from shardc.runtime.plandir import InputSpec, PlanDir
from shardc.runtime.program import RankProgram

RTOL = {
    np.dtype("float64"): 1e-9,
    np.dtype("float32"): 1e-5,
    np.dtype("float16"): 1e-2,
}
"""Default tolerance per dtype, relative to the reference output's largest magnitude."""


@dataclass(frozen=True)
class OutputCheck:
    """The worst error of one output over every rank and micro-batch that holds it."""

    name: str
    """The graph output's name (the same in the model and the device programs)."""
    dtype: str
    shape: tuple[int, ...]
    compared: int
    """How many (rank, micro-batch) copies of the output were compared."""
    max_abs: float
    """Largest absolute difference from the reference, over all copies."""
    max_rel: float
    """``max_abs`` over the reference's largest magnitude (what ``rtol`` bounds)."""
    rtol: float
    """The tolerance applied (0: must be equal)."""
    worst: str
    """Where the largest error is: ``rank R, micro-batch M``."""
    ok: bool


@dataclass(frozen=True)
class RankTiming:
    """Measured seconds per step next to the schedule's estimate, for one rank."""

    rank: int
    device: str
    """The topology device the rank stands for."""
    stage: int
    replica: int
    microbatches: int
    """Forward passes the rank ran in the step."""
    compute: float
    """Seconds in onnxruntime (sessions built before timing)."""
    comm: float | None
    """Seconds in communication, waits included (None in-process: ranks take turns)."""
    est_compute: float
    """The schedule's forward compute seconds for the rank's step."""
    est_comm: float
    """The schedule's forward communication seconds for the rank's step."""


@dataclass
class VerifyReport:
    """What ``verify`` compared and measured; ``ok`` says whether the plan is right."""

    plan: str
    """The plan folder."""
    runner: str
    """``in-process`` or ``N processes, torch.distributed``."""
    slots: int
    """(replica, micro-batch) pairs run: ``dp × microbatches``."""
    outputs: list[OutputCheck] = field(default_factory=list)
    timings: list[RankTiming] = field(default_factory=list)
    wall_seconds: float = 0.0
    """Wall time of the plan's run (not the reference's)."""

    @property
    def ok(self) -> bool:
        return bool(self.outputs) and all(o.ok for o in self.outputs)

    def to_json(self) -> dict[str, Any]:
        return {
            "plan": self.plan,
            "runner": self.runner,
            "slots": self.slots,
            "ok": self.ok,
            "outputs": [o.__dict__ | {"shape": list(o.shape)} for o in self.outputs],
            "ranks": [t.__dict__ for t in self.timings],
            "wall_seconds": self.wall_seconds,
        }

    def __rich__(self) -> Any:
        from rich.console import Group

        return Group(*self.tables())

    def tables(self) -> list[Any]:
        """The per-output error table and the per-rank timing table (rich)."""
        from rich.table import Table

        from shardc.report.text import markup_safe

        out = Table(title=f"outputs ({self.slots} micro-batch slots, {self.runner})")
        for col in ("output", "dtype", "shape", "compared", "max abs", "max rel"):
            out.add_column(col, justify="left" if col in ("output", "dtype") else "right")
        out.add_column("rtol", justify="right")
        out.add_column("", justify="left")
        for o in self.outputs:
            out.add_row(
                markup_safe(o.name),
                o.dtype,
                "×".join(map(str, o.shape)),
                str(o.compared),
                f"{o.max_abs:.3g}",
                f"{o.max_rel:.3g}",
                f"{o.rtol:.0e}" if o.rtol else "exact",
                "[green]ok[/]" if o.ok else f"[red]MISMATCH[/] ({markup_safe(o.worst)})",
            )
        ranks = Table(title="ranks: measured ms per step vs the schedule's estimate (forward)")
        for col in ("rank", "device", "stage", "replica", "µb"):
            ranks.add_column(col, justify="right" if col != "device" else "left")
        for col in ("compute", "comm+wait", "est compute", "est comm"):
            ranks.add_column(col, justify="right")
        for t in self.timings:
            ranks.add_row(
                str(t.rank),
                markup_safe(t.device),
                str(t.stage),
                str(t.replica),
                str(t.microbatches),
                _ms(t.compute),
                "n/a" if t.comm is None else _ms(t.comm),
                _ms(t.est_compute),
                _ms(t.est_comm),
            )
        return [out, ranks]


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


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
    feeds = _slot_feeds(specs, slots, inputs, original, seed)
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
                str(info["device"]),
                int(info["stage"]),
                int(info["replica"]),
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
        recorded = folder.plan.get("inputs", {}).get("model", {}).get("path")
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


def _slot_feeds(
    specs: list[InputSpec],
    slots: list[tuple[int, int]],
    inputs: str | Path | Mapping[str, np.ndarray] | None,
    original: onnx.ModelProto,
    seed: int,
) -> dict[tuple[int, int], dict[str, np.ndarray]]:
    if inputs is None:
        rng = np.random.default_rng(seed)
        # ids over the whole table (traced through reshapes to the input): ids from 0..1
        # alone would never reach a vocab-parallel embedding's other shards
        highs = _input_index_bounds(original)
        return {slot: {s.name: _random(rng, s, highs.get(s.name)) for s in specs} for slot in slots}
    given = _load_inputs(inputs)
    batches = _microbatches(specs, given)
    _check_indices(batches, _input_index_bounds(original))
    return {slot: batches[i % len(batches)] for i, slot in enumerate(slots)}


def _check_indices(batches: list[dict[str, np.ndarray]], bounds: Mapping[str, int]) -> None:
    """Token ids outside the table they index would fail inside onnxruntime, as a crash
    of the run rather than a mistake in the inputs: say which input and which bound.
    """
    for batch in batches:
        for name, rows in sorted(bounds.items()):
            a = batch.get(name)
            if a is None or a.size == 0 or a.dtype.kind not in "iu":
                continue
            lo, hi = int(a.min()), int(a.max())
            if lo < -rows or hi >= rows:
                raise OptionError(
                    f"input {name!r} holds ids {lo}..{hi}; it indexes {rows} rows",
                    hint=f"use ids in 0..{rows - 1}",
                )


def _load_inputs(inputs: str | Path | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    if isinstance(inputs, Mapping):
        return {k: np.asarray(v) for k, v in inputs.items()}
    path = Path(inputs)
    try:
        data = np.load(path, allow_pickle=False)
    except OSError as exc:
        raise OptionError(f"cannot read inputs ({exc.strerror or exc})", where=str(path)) from None
    except Exception as exc:  # numpy raises ValueError, EOFError, zip errors…
        raise OptionError(
            f"cannot read inputs: not an .npz archive of arrays "
            f"({type(exc).__name__}: {str(exc)[:200]})",
            where=str(path),
        ) from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise OptionError(
            "cannot read inputs: a single array, not an .npz archive naming the inputs",
            where=str(path),
            hint="save with numpy.savez(path, input_ids=...)",
        )
    try:
        with data:
            return {k: data[k] for k in data.files}
    except Exception as exc:  # a member that is not an array, a truncated archive…
        raise OptionError(
            f"cannot read inputs: bad arrays in it ({type(exc).__name__}: {str(exc)[:200]})",
            where=str(path),
        ) from None


def _microbatches(
    specs: list[InputSpec], given: Mapping[str, np.ndarray]
) -> list[dict[str, np.ndarray]]:
    """One micro-batch, or ``k`` stacked along the first dimension, cut apart."""
    missing = [s.name for s in specs if s.name not in given]
    if missing:
        raise OptionError(
            f"inputs lack {missing}", hint=f"the plan reads {[s.name for s in specs]}"
        )
    counts = set()
    for s in specs:
        a = given[s.name]
        if tuple(a.shape) == s.shape:
            counts.add(1)
        elif (
            a.ndim == len(s.shape)
            and a.ndim
            and a.shape[1:] == s.shape[1:]
            and s.shape[0]
            and a.shape[0] % s.shape[0] == 0
        ):
            counts.add(a.shape[0] // s.shape[0])
        else:
            raise OptionError(
                f"input {s.name!r} has shape {list(a.shape)}; the plan runs micro-batches of "
                f"{list(s.shape)} (give one, or several stacked along the first dimension)"
            )
    if len(counts) != 1:
        raise OptionError(f"inputs hold different numbers of micro-batches: {sorted(counts)}")
    k = counts.pop()
    out = []
    for i in range(k):
        batch = {}
        for s in specs:
            a = given[s.name]
            b = s.shape[0] if s.shape else 1
            part = a if k == 1 else a[i * b : (i + 1) * b]
            try:
                batch[s.name] = np.ascontiguousarray(part.astype(s.dtype, copy=False))
            except (TypeError, ValueError) as exc:
                raise OptionError(
                    f"input {s.name!r} of dtype {a.dtype} cannot be read as {s.dtype} ({exc})"
                ) from None
        out.append(batch)
    return out


def _index_bounds(model: onnx.ModelProto) -> dict[str, int]:
    """For integer inputs used as Gather indices: the rows of what they index."""
    dims = {t.name: list(t.dims) for t in model.graph.initializer}
    bounds: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) > 1 and node.input[0] in dims:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            rows = dims[node.input[0]][axis]
            name = node.input[1]
            bounds[name] = min(bounds.get(name, rows), rows)
    return bounds


_RESHAPING = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Expand"})


def _input_index_bounds(model: onnx.ModelProto) -> dict[str, int]:
    """:func:`_index_bounds` traced back to the graph inputs through ops that only
    reshape (``input_ids`` reshaped into ``view``, then gathered).
    """
    producer = {out: node for node in model.graph.node for out in node.output}
    inputs = {i.name for i in model.graph.input}
    bounds: dict[str, int] = {}
    for name, rows in _index_bounds(model).items():
        seen = 0
        while name not in inputs and name in producer and seen < 64:
            node = producer[name]
            if node.op_type not in _RESHAPING or not node.input:
                break
            name, seen = node.input[0], seen + 1
        if name in inputs:
            bounds[name] = min(bounds.get(name, rows), rows)
    return bounds


def _random(rng: np.random.Generator, spec: InputSpec, high: int | None) -> np.ndarray:
    if spec.dtype.kind == "f":
        return rng.standard_normal(spec.shape).astype(spec.dtype)
    if spec.dtype.kind == "b":
        return rng.integers(0, 2, spec.shape).astype(bool)
    if spec.dtype.kind in "iu":
        return rng.integers(0, high or 2, spec.shape).astype(spec.dtype)
    raise OptionError(f"cannot make random values for input {spec.name!r} ({spec.dtype})")


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
    replica = {r: int(info["replica"]) for r, info in folder.ranks.items()}
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
        replica = int(folder.ranks[rank]["replica"])
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
