"""The one reader of a plan folder's JSON and the one gate to its other files.

Why one reader: ``Plan.load``, the runtime's ``PlanDir`` and ``shardc check-plan`` each
used to open plan.json their own way, and each trusted it: a ``ranks[].file`` of
``/etc/passwd`` was opened, ``/dev/zero`` read until the OOM killer came, and
``"microbatches": 1e9`` passed check-plan and then sent verify to the OOM killer. A plan
folder may come from anywhere (copied, edited, produced by another version), so every
reader goes through here, which

* reads JSON with a size bound, without NaN or infinities, and no deeper than
  :data:`MAX_DEPTH` (Python's parser would recurse into a 100k-deep array);
* validates plan.json against ``plan.schema.json`` (shipped next to this module; limits
  such as ``microbatches <= 4096`` bound the work a folder can ask for) and checks what a
  schema cannot say (ranks 0..n-1, one file per rank, ``devices_used`` agreeing) *before*
  any other file is opened;
* opens other files only by :func:`PlanFolder.member`: a plain name inside the folder,
  resolved (no symlink leads out), a regular file (no ``/dev/zero``, no FIFO), and within
  a size bound.

Every failure is a :class:`PlanFolderError` naming the file and the field.
"""

from __future__ import annotations

import functools
import json
import math
import os
import stat
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from shardc.errors import ShardcError

PLAN_FORMAT = "shardc-plan/1"
MAX_DEPTH = 64
"""Deepest nesting of arrays and objects accepted (the files nest about 6 deep)."""
MAX_JSON_BYTES = {"plan.json": 64 << 20, "schedule.json": 1 << 30}
"""Size bounds of the folder's JSON files (the largest plans are far below them)."""
MAX_MODEL_BYTES = 2 << 30
"""A device program: protobuf's own 2 GiB limit (larger weights go to a side file)."""
MAX_SIDE_BYTES = 1 << 40
"""A side weight file (``device_<rank>.weights``)."""


class PlanFolderError(ShardcError):
    """The folder is not an emitted plan shardc can read (what is wrong, and where)."""


def loads(data: bytes | str, where: str) -> Any:
    """JSON from ``data``, refusing NaN, infinities and nesting beyond :data:`MAX_DEPTH`."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes | bytearray) else data
    except UnicodeDecodeError as exc:
        raise PlanFolderError(f"not JSON (not UTF-8: {exc.reason})", where=where) from None
    _check_depth(text, where)
    try:
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except _NotFinite as exc:
        raise PlanFolderError(f"{exc} is not a finite number", where=where) from None
    except (ValueError, RecursionError) as exc:
        raise PlanFolderError(f"not JSON ({str(exc)[:200]})", where=where) from None


class _NotFinite(ValueError):
    pass


def _no_constant(name: str) -> Any:
    raise _NotFinite(name)


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotFinite(text[:40])
    return value


def _check_depth(text: str, where: str) -> None:
    """Count bracket nesting outside strings: a linear scan, before any recursion."""
    depth = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise PlanFolderError(f"nested deeper than {MAX_DEPTH} levels", where=where)
        elif ch in "]}":
            depth -= 1


@functools.cache
def plan_schema() -> dict[str, Any]:
    """The JSON Schema of plan.json, shipped with the package."""
    text = resources.files("shardc.emit").joinpath("plan.schema.json").read_text("utf-8")
    return dict(json.loads(text))


@functools.cache
def _validator(which: str) -> Any:
    import jsonschema

    if which == "plan":
        schema = plan_schema()
    else:
        from shardc.emit.schedule import schedule_schema

        # events are checked by _check_events: the schema's oneOf per event costs ~150 µs
        # each, seconds on a large schedule, for fields the readers do not use
        schema = schedule_schema()
        schema["$defs"]["device"]["properties"]["events"] = {"type": "array"}
    cls = jsonschema.Draft202012Validator
    # JSON Schema calls 2.0 an integer; range(2.0) does not: integers must be written so.
    checker = cls.TYPE_CHECKER.redefine(
        "integer", lambda _c, x: isinstance(x, int) and not isinstance(x, bool)
    )
    return jsonschema.validators.extend(cls, type_checker=checker)(schema)


def validate(data: Any, which: str, where: str) -> None:
    """Check ``data`` against the ``plan`` or ``schedule`` schema; the first error names
    its field (``partition.stages[0].tp``).
    """
    errors = sorted(_validator(which).iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        field = _field(err.absolute_path) or "the top level"
        raise PlanFolderError(f"{field}: {_short(err.message)}", where=where)


def _field(path: Any) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _short(message: str) -> str:
    return message if len(message) <= 200 else message[:200] + "…"


def check_plan(data: Any, where: str = "plan.json") -> dict[str, Any]:
    """plan.json as data, validated: the schema, then what ties its sections together."""
    validate(data, "plan", where)
    part = data["partition"]
    stages = part["stages"]
    if [st["index"] for st in stages] != list(range(len(stages))):
        raise PlanFolderError("partition.stages: indices are not 0..n-1 in order", where=where)
    if part["pp"] != len(stages):
        raise PlanFolderError(
            f"partition.pp is {part['pp']} but there are {len(stages)} stages", where=where
        )
    for j, st in enumerate(stages):
        if len(st["groups"]) != part["dp"] or any(len(g) != st["tp"] for g in st["groups"]):
            raise PlanFolderError(
                f"partition.stages[{j}].groups: not dp={part['dp']} groups of tp={st['tp']}",
                where=where,
            )
        if st["blocks"][0] > st["blocks"][1]:
            raise PlanFolderError(f"partition.stages[{j}].blocks: first > last", where=where)
    used = part["dp"] * sum(st["tp"] for st in stages)
    if part["devices_used"] != used:
        raise PlanFolderError(
            f"partition.devices_used is {part['devices_used']}, dp × Σ tp is {used}", where=where
        )
    emission = data.get("emission")
    if emission is not None:
        ranks = [r["rank"] for r in emission["ranks"]]
        if sorted(ranks) != list(range(len(ranks))):
            raise PlanFolderError("emission.ranks: ranks are not 0..n-1, once each", where=where)
        if len(ranks) != used:
            raise PlanFolderError(
                f"emission.ranks: {len(ranks)} ranks for devices_used {used}", where=where
            )
        files = [r["file"] for r in emission["ranks"]]
        if len(set(files)) != len(files) or set(files) & {"plan.json", "schedule.json"}:
            raise PlanFolderError("emission.ranks: rank files are not distinct", where=where)
        for i, r in enumerate(emission["ranks"]):
            if r["tp_rank"] >= r["tp"] or r["stage"] >= len(stages) or r["replica"] >= part["dp"]:
                raise PlanFolderError(
                    f"emission.ranks[{i}]: stage, replica or tp_rank out of range", where=where
                )
    return dict(data)


def check_schedule(data: Any, plan: dict[str, Any], where: str = "schedule.json") -> dict[str, Any]:
    """schedule.json as data, validated against its schema and against plan.json."""
    validate(data, "schedule", where)
    part = plan["partition"]
    if data["microbatches"] != part["microbatches"] or data["dp"] != part["dp"]:
        raise PlanFolderError(
            f"microbatches/dp ({data['microbatches']}/{data['dp']}) disagree with plan.json "
            f"({part['microbatches']}/{part['dp']})",
            where=where,
        )
    for i, device in enumerate(data["devices"]):
        for j, event in enumerate(device["events"]):
            problem = _event_problem(event, data["microbatches"])
            if problem:
                raise PlanFolderError(f"devices[{i}].events[{j}]: {problem}", where=where)
    return dict(data)


_PHASES = {"compute": ("forward", "backward"), "comm": ("forward", "backward", "sync")}
_COMM_OPS = ("AllReduce", "AllGather", "ReduceScatter", "AllToAll", "Send", "Recv")
_COMPUTE_FIELDS = {"name": "str", "start": "seconds", "duration": "seconds", "end": "seconds"}
_COMM_FIELDS = {
    **_COMPUTE_FIELDS,
    "value": "str",
    "bytes": "seconds",  # a non-negative number
    "peer": "int",
    "tag": "int",
    "axis": "int",
    "algorithm": "str",
    "group": "ints",
    "links": "strs",
}


def _event_problem(event: Any, microbatches: int) -> str | None:
    """What is wrong with one schedule event (None when fine): the schema's event types,
    checked by hand (see :func:`_validator`), plus micro-batches within the plan's.
    """
    if not isinstance(event, dict):
        return "not an object"
    kind = event.get("type")
    if not isinstance(kind, str) or kind not in _PHASES:
        return f"type {kind!r} is not compute or comm"
    if event.get("phase") not in _PHASES[kind]:
        return f"phase {event.get('phase')!r} is not one of {list(_PHASES[kind])}"
    m = event.get("microbatch")
    if (
        not isinstance(m, int)
        or isinstance(m, bool)
        or not -1 <= m < microbatches
        or (m == -1) != (event["phase"] == "sync")
    ):
        return f"microbatch {m!r} is not in 0..{microbatches - 1} (-1 for sync)"
    if kind == "comm" and event.get("op") not in _COMM_OPS:
        return f"op {event.get('op')!r} is not a comm op"
    for key, kind_of in (_COMM_FIELDS if kind == "comm" else _COMPUTE_FIELDS).items():
        if not _is(event.get(key), kind_of):
            return f"{key} {str(event.get(key))[:40]!r} is not {kind_of}"
    if kind == "comm" and event["peer"] < -1:
        return f"peer {event['peer']} is not a rank or -1"
    return None


def _is(value: Any, kind: str) -> bool:
    if kind == "str":
        return isinstance(value, str)
    if kind == "int":
        return _is_int(value)
    if kind == "seconds":
        return not isinstance(value, bool) and isinstance(value, int | float) and value >= 0
    if kind == "ints":
        return isinstance(value, list) and all(_is_int(v) and v >= 0 for v in value)
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass(frozen=True)
class PlanFolder:
    """A plan folder whose plan.json has been read and validated."""

    root: Path
    plan: dict[str, Any]

    def member(self, name: str, *, limit: int = MAX_MODEL_BYTES) -> Path:
        """The path of file ``name`` of the folder, confined to it: a plain name, no
        symlink leading out, a regular file of at most ``limit`` bytes.
        """
        where = str(self.root / name) if isinstance(name, str) else str(self.root)
        if not isinstance(name, str) or not name or "\0" in name or os.path.isabs(name):
            raise PlanFolderError(f"{name!r} is not a file name inside the folder", where=where)
        path = (self.root / name).resolve()
        if self.root.resolve() not in path.parents:
            raise PlanFolderError("leads outside the plan folder", where=where)
        try:
            st = os.stat(path)
        except OSError as exc:
            raise PlanFolderError(exc.strerror or "cannot stat", where=where) from None
        if not stat.S_ISREG(st.st_mode):
            raise PlanFolderError("is not a regular file", where=where)
        if st.st_size > limit:
            raise PlanFolderError(f"is {st.st_size} bytes, more than {limit}", where=where)
        return path

    def read(self, name: str, *, limit: int = MAX_MODEL_BYTES) -> bytes:
        """The bytes of file ``name`` (see :meth:`member`)."""
        path = self.member(name, limit=limit)
        try:
            with path.open("rb") as f:
                data = f.read(limit + 1)
        except OSError as exc:
            raise PlanFolderError(exc.strerror or "unreadable", where=str(path)) from None
        if len(data) > limit:
            raise PlanFolderError(f"more than {limit} bytes", where=str(path))
        return data

    def has(self, name: str) -> bool:
        """Whether the folder holds ``name`` as a regular file (a symlink inside counts)."""
        try:
            self.member(name)
        except PlanFolderError:
            return False
        return True

    def schedule(self) -> dict[str, Any] | None:
        """schedule.json, validated (None when the plan has none)."""
        if not os.path.lexists(self.root / "schedule.json"):
            return None
        name = "schedule.json"
        data = loads(self.read(name, limit=MAX_JSON_BYTES[name]), str(self.root / name))
        return check_schedule(data, self.plan, str(self.root / name))

    def ranks(self) -> dict[int, dict[str, Any]]:
        """emission.ranks by rank (empty when no device files were written)."""
        emission = self.plan.get("emission") or {}
        return {int(r["rank"]): r for r in emission.get("ranks", [])}


def read_plan_folder(path: str | os.PathLike[str]) -> PlanFolder:
    """The folder ``path`` with its plan.json read and validated, nothing else opened."""
    root = Path(path)
    if not root.is_dir():
        raise PlanFolderError(
            "no such folder" if not root.exists() else "not a folder",
            where=str(root),
            hint="pass a folder written by shardc compile",
        )
    folder = PlanFolder(root, {})
    plan_file = root / "plan.json"
    if not os.path.lexists(plan_file):
        raise PlanFolderError(
            "no plan.json", where=str(root), hint="pass a folder written by shardc compile"
        )
    data = loads(folder.read("plan.json", limit=MAX_JSON_BYTES["plan.json"]), str(plan_file))
    return PlanFolder(root, check_plan(data, str(plan_file)))


def parse_plan(data: bytes, where: str = "plan.json") -> dict[str, Any]:
    """plan.json bytes held in memory (a compiled, unsaved plan), validated."""
    return check_plan(loads(data, where), where)


def anchor_paths(
    plan_json: bytes,
    folder: str | os.PathLike[str],
    origin: str | os.PathLike[str] | None = None,
) -> bytes:
    """plan.json with the model's and topology's paths relative to ``folder``; the paths
    recorded are relative to ``origin`` (a folder the plan was loaded from), else to the
    current directory.

    Why: paths as given are relative to where compile ran, so ``shardc verify`` from any
    other directory could not find the model. Relative to the plan folder, a plan verifies
    from anywhere (and still does when the folder and the model move together). Names in
    angle brackets (``<ModelProto>``) are left alone.
    """
    from shardc import jsonutil

    data = json.loads(plan_json)
    base = os.path.abspath(folder)
    changed = False
    for what in ("model", "topology"):
        record = data.get("inputs", {}).get(what)
        path = record.get("path") if isinstance(record, dict) else None
        if not isinstance(path, str) or not path or path.startswith("<"):
            continue
        absolute = os.path.join(os.path.abspath(origin) if origin else os.getcwd(), path)
        anchored = os.path.relpath(os.path.normpath(absolute), base)
        if anchored != path:
            record["path"] = anchored
            changed = True
    return jsonutil.dumps(data).encode() if changed else plan_json


def resolve_input(plan: PlanFolder, what: str) -> Path | None:
    """The recorded model or topology file, if on disk: relative to the plan folder (how
    compile records it), else as recorded from the current directory or the folder's
    parent (plans from before paths were anchored).
    """
    record = plan.plan.get("inputs", {}).get(what, {})
    recorded = record.get("path") if isinstance(record, dict) else None
    if not recorded or recorded.startswith("<"):
        return None
    for candidate in (plan.root / recorded, Path(recorded), plan.root.parent / recorded):
        if candidate.is_file():
            return candidate
    return None
