"""``shardc check-plan``: prove an emitted plan is internally consistent before it runs.

Why a checker separate from the emitter: the files are what a cluster runs, and they
may have been edited, copied partially or produced by another version. The checks read
only the files: every device model passes ``onnx.checker``; every Send has the Recv it
pairs with (same sender, receiver and tag); every collective's members list the same
group and issue the same collectives in the same order; and in every replica each weight
of the original model is present exactly once — whole on every rank of a tensor-parallel
group that replicates it, or cut into slices that tile it without gaps or overlaps.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from shardc.emit.program import DOMAIN, node_attr
from shardc.errors import ShardcError
from shardc.frontend.read import ort_ops_aside
from shardc.frontend.shapes import checkable
from shardc.plan.folder import MAX_SIDE_BYTES, PlanFolder, PlanFolderError, read_plan_folder
from shardc.plan.model import PlanData
from shardc.plan.records import Rank


class PlanCheckError(ShardcError):
    """The output folder is not a consistent plan (what and where)."""


@dataclass
class CheckReport:
    """What was checked, with the figures; ``problems`` empty means consistent."""

    ranks: int = 0
    sends: int = 0
    collectives: int = 0
    weights: int = 0
    weight_bytes: int = 0
    """Bytes of the original weights one replica holds (each counted once)."""
    emitted_bytes: dict[int, int] = field(default_factory=dict)
    """Per replica: bytes of all its ranks' weight shards together."""
    replicated_bytes: dict[int, int] = field(default_factory=dict)
    """Per replica: bytes held more than once on purpose (replicated in a TP group, or a
    weight two stages both read)."""
    problems: list[str] = field(default_factory=list)


def check_outdir(path: str | Path) -> CheckReport:
    """Check the plan folder ``path`` (plan.json and device_<rank>.onnx files)."""
    root = Path(path)
    folder = read_plan_folder(root)  # plan.json validated before any other file is opened
    if not folder.plan.get("emission"):
        raise PlanCheckError(f"{root}: plan.json has no emission section (no device files)")
    # the schedule is validated against its schema and plan.json, when present
    plan = PlanData.from_json(folder.plan, folder.schedule())
    ranks = [r for r in plan.ranks if r.file is not None]
    report = CheckReport()
    models: dict[int, onnx.ModelProto] = {}
    for r in ranks:
        assert r.file is not None
        try:
            f = folder.member(r.file)
            model = onnx.load(str(f), load_external_data=False)
            for side in _side_files(model):
                folder.member(side, limit=MAX_SIDE_BYTES)
            aside = ort_ops_aside(model)
            if aside is model:
                onnx.checker.check_model(str(f))  # by path: side weight files are found
            else:  # onnxruntime's default-domain ops renamed; side files checked above
                onnx.checker.check_model(checkable(aside))
        except PlanFolderError as exc:
            report.problems.append(exc.render())
            continue
        except Exception as exc:  # the checker's own exception types vary by version
            report.problems.append(f"{r.file}: {exc}".splitlines()[0])
            continue
        models[r.rank] = model
    report.ranks = len(models)
    _check_comms(models, report)
    _check_weights(models, dict(plan.weights or {}), report)
    _check_onnxruntime(folder, ranks, models, report)
    return report


def _side_files(model: onnx.ModelProto) -> set[str]:
    """Side weight files the model's initializers name (checked confined before reading)."""
    return {
        e.value
        for t in model.graph.initializer
        if t.data_location == onnx.TensorProto.EXTERNAL
        for e in t.external_data
        if e.key == "location"
    }


def _check_onnxruntime(
    folder: PlanFolder, ranks: list[Rank], models: dict[int, onnx.ModelProto], report: CheckReport
) -> None:
    """Each device program loads and runs in onnxruntime (comm nodes stood in): the
    checker above does not know contrib ops or check shapes strictly. Programs whose
    weights are not on disk (a synthesised model's) cannot be loaded and are skipped;
    only files already confined to the folder and checked above are read.
    """
    from shardc.emit.standin import onnxruntime_problem

    for r in ranks:
        if r.rank not in models or r.file is None:
            continue
        try:
            model = onnx.load(str(folder.member(r.file)))
        except Exception:  # weights absent: nothing to run
            continue
        problem = onnxruntime_problem(model)
        if problem:
            report.problems.append(f"{r.file}: {problem}")


def _check_comms(models: dict[int, onnx.ModelProto], report: CheckReport) -> None:
    sends: dict[tuple[int, int, int], int] = defaultdict(int)
    recvs: dict[tuple[int, int, int], int] = defaultdict(int)
    sequences: dict[tuple[int, tuple[int, ...]], list[tuple[str, int]]] = defaultdict(list)
    for rank, model in sorted(models.items()):
        for node in model.graph.node:
            if node.domain != DOMAIN:
                continue
            if node.op_type == "Send":
                sends[(rank, int(node_attr(node, "peer")), int(node_attr(node, "tag")))] += 1
            elif node.op_type == "Recv":
                recvs[(int(node_attr(node, "peer")), rank, int(node_attr(node, "tag")))] += 1
            else:
                group = tuple(int(g) for g in node_attr(node, "group", []))
                if rank not in group:
                    report.problems.append(f"rank {rank}: {node.name} group {list(group)} lacks it")
                sequences[(rank, group)].append((node.op_type, int(node_attr(node, "axis", -1))))
                report.collectives += 1
    report.sends = sum(sends.values())
    for key in sorted(set(sends) | set(recvs)):
        if sends.get(key, 0) != recvs.get(key, 0):
            s, r, tag = key
            report.problems.append(
                f"rank {s} -> rank {r} tag {tag}: {sends.get(key, 0)} Send, "
                f"{recvs.get(key, 0)} Recv"
            )
    for (rank, group), ops in sorted(sequences.items()):
        for member in group:
            theirs = sequences.get((member, group))
            if member in models and theirs != ops:
                report.problems.append(
                    f"group {list(group)}: rank {rank} issues {len(ops)} collectives "
                    f"{ops[:3]}…, rank {member} {len(theirs or [])}"
                )
                break


def _check_weights(
    models: dict[int, onnx.ModelProto], original: dict[str, int], report: CheckReport
) -> None:
    """Per replica: each original weight whole on every rank of its group, or tiled."""
    by_replica: dict[int, list[tuple[int, onnx.ModelProto]]] = defaultdict(list)
    for rank, model in sorted(models.items()):
        meta = {p.key: p.value for p in model.metadata_props}
        try:
            int(meta["shardc.replica"])
            json.loads(meta["shardc.tp_group"])
            slices = json.loads(meta["shardc.slices"])
            if not isinstance(slices, dict):
                raise ValueError("shardc.slices is not an object")
        except (KeyError, ValueError) as exc:
            report.problems.append(f"rank {rank}: no readable shardc metadata ({exc})")
            continue
        # a context-parallel copy holds every weight again: checked as a replica of its own
        cp, copy = int(meta.get("shardc.cp", "1")), int(meta.get("shardc.cp_copy", "0"))
        by_replica[int(meta["shardc.replica"]) * cp + copy].append((rank, model))
    report.weights = len(original)
    report.weight_bytes = sum(original.values())
    for replica, members in sorted(by_replica.items()):
        cover: dict[str, list[tuple[int, dict[str, Any]]]] = defaultdict(list)
        groups: dict[str, set[tuple[int, ...]]] = defaultdict(set)
        emitted = 0
        for rank, model in members:
            meta = {p.key: p.value for p in model.metadata_props}
            group = tuple(json.loads(meta["shardc.tp_group"]))
            sizes = {t.name: _tensor_bytes(t) for t in model.graph.initializer}
            for local, rec in json.loads(meta["shardc.slices"]).items():
                cover[rec["source"]].append((rank, rec))
                groups[rec["source"]].add(group)
                emitted += sizes.get(local, 0)
        report.emitted_bytes[replica] = emitted
        expected = 0
        for name, recs in cover.items():
            whole = sum(1 for _, rec in recs if rec["dim"] < 0)
            tiled = sum(
                1 for g in groups[name] if any(rec["dim"] >= 0 for r, rec in recs if r in g)
            )
            copies = whole + tiled
            expected += copies * original.get(name, 0)
            if copies > 1:
                report.replicated_bytes[replica] = report.replicated_bytes.get(replica, 0) + (
                    copies - 1
                ) * original.get(name, 0)
        if emitted != expected:
            report.problems.append(
                f"replica {replica}: shards hold {emitted} B, the weights they come from "
                f"{expected} B (counting intended copies): bytes lost or duplicated"
            )
        for name in sorted(original):
            if name not in cover:
                report.problems.append(f"replica {replica}: weight {name!r} is on no rank")
                continue
            for group in sorted(groups[name]):
                group_recs = [rec for rank, rec in cover[name] if rank in group]
                report.problems += _tiles(name, replica, group, group_recs)
        for name in sorted(set(cover) - set(original)):
            report.problems.append(f"replica {replica}: {name!r} is not a weight of the model")


def _tiles(name: str, replica: int, group: tuple[int, ...], recs: list[dict]) -> list[str]:
    where = f"replica {replica} group {list(group)}: {name!r}"
    whole = [r for r in recs if r["dim"] < 0]
    cut = [r for r in recs if r["dim"] >= 0]
    out = []
    if whole and len(whole) % len(group):
        out.append(f"{where} is whole on {len(whole)} of {len(group)} ranks")
    by_layout: dict[tuple[int, int, int], list[tuple[int, int]]] = defaultdict(list)
    for r in cut:
        by_layout[(r["dim"], r["pieces"], r["size"])].append((r["start"], r["stop"]))
    for (dim, pieces, size), spans in by_layout.items():
        spans = sorted(spans)
        edge = 0
        for lo, hi in spans:
            if lo != edge:
                out.append(f"{where} dim {dim}: rows {edge}..{lo} gap or overlap")
            edge = hi
        if edge * pieces != size:
            out.append(f"{where} dim {dim}: slices cover {edge * pieces} of {size}")
    return out


def _tensor_bytes(t: onnx.TensorProto) -> int:
    import numpy as np

    count = int(np.prod(t.dims, dtype=np.int64)) if t.dims else 1
    return count * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
