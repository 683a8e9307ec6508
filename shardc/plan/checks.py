"""The checks every plan folder's JSON passes before anything trusts it.

Why apart from the reader (:mod:`shardc.plan.folder`): these are the rules (JSON without
NaN, infinities or deep nesting; plan.json and schedule.json against their published
schemas, ``plan.schema.json`` and ``schedule.schema.json`` next to this module; what ties
their sections together), the reader is the gate that applies them in order. Every
failure is a :class:`PlanFolderError` naming the file and the field.
"""

from __future__ import annotations

import functools
import json
import math
from importlib import resources
from typing import Any

from shardc.errors import ShardcError
from shardc.plan.program import COMM_OPS

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
    text = resources.files("shardc.plan").joinpath("plan.schema.json").read_text("utf-8")
    return dict(json.loads(text))


@functools.cache
def _validator(which: str) -> Any:
    import jsonschema

    if which == "plan":
        schema = plan_schema()
    else:
        from shardc.plan.timeline import schedule_schema  # only schedule.json needs it

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
    _check_format(data, where)
    if "serving" in data:
        from shardc.plan.serving import check_serving

        problem = check_serving(data["serving"])
        if problem:
            raise PlanFolderError(problem, where=where)
        return dict(data)
    part = data["partition"]
    stages = part["stages"]
    if [st["index"] for st in stages] != list(range(len(stages))):
        raise PlanFolderError("partition.stages: indices are not 0..n-1 in order", where=where)
    if part["pp"] != len(stages):
        raise PlanFolderError(
            f"partition.pp is {part['pp']} but there are {len(stages)} stages", where=where
        )
    for j, st in enumerate(stages):
        width = st["tp"] * st.get("cp", 1)  # context parallelism: cp TP groups side by side
        if len(st["groups"]) != part["dp"] or any(len(g) != width for g in st["groups"]):
            cp = f" × cp={st['cp']}" if "cp" in st else ""
            raise PlanFolderError(
                f"partition.stages[{j}].groups: not dp={part['dp']} groups of tp={st['tp']}{cp}",
                where=where,
            )
        if st["blocks"][0] > st["blocks"][1]:
            raise PlanFolderError(f"partition.stages[{j}].blocks: first > last", where=where)
    _check_chunks(part, where)
    used = part["dp"] * sum(st["tp"] * st.get("cp", 1) for st in stages)
    if part["devices_used"] != used:
        raise PlanFolderError(
            f"partition.devices_used is {part['devices_used']}, dp × Σ tp·cp is {used}",
            where=where
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


def _check_format(data: dict[str, Any], where: str) -> None:
    """A pipeline plan (``partition``, shardc-plan/1) or a serving plan (``serving``,
    shardc-plan/2): exactly one, under its own format.
    """
    serving, fmt = "serving" in data, data["format"]
    if serving and "partition" in data:
        raise PlanFolderError("the top level: has both partition and serving", where=where)
    if not serving and "partition" not in data:
        raise PlanFolderError("partition: required (or serving, for a serving plan)",
                              where=where)
    want = "shardc-plan/2" if serving else "shardc-plan/1"
    if fmt != want:
        what = "a serving plan" if serving else "a pipeline plan (partition)"
        raise PlanFolderError(f"format: {fmt!r} is not {what}'s format {want!r}", where=where)


def check_schedule(data: Any, plan: dict[str, Any], where: str = "schedule.json") -> dict[str, Any]:
    """schedule.json as data, validated against its schema and against plan.json."""
    validate(data, "schedule", where)
    if "partition" not in plan:
        raise PlanFolderError("a serving plan has no pipeline schedule", where=where)
    part = plan["partition"]
    if data["microbatches"] != part["microbatches"] or data["dp"] != part["dp"]:
        raise PlanFolderError(
            f"microbatches/dp ({data['microbatches']}/{data['dp']}) disagree with plan.json "
            f"({part['microbatches']}/{part['dp']})",
            where=where,
        )
    chunked = all(st.get("chunks") is not None for st in part["stages"])
    if bool(data.get("chunked_programs")) != chunked or data.get("interleave", 1) != (
        part.get("interleave") or 1
    ):
        raise PlanFolderError(
            "interleave/chunked_programs disagree with plan.json's interleave and its "
            "stages' chunks",
            where=where,
        )
    ranks = [d["rank"] for d in data["devices"]]
    if ranks != list(range(part["devices_used"])):
        raise PlanFolderError(
            f"devices: ranks {ranks[:8]}{'…' if len(ranks) > 8 else ''} are not "
            f"0..{part['devices_used'] - 1} in order, as plan.json's devices_used says",
            where=where,
        )
    for i, device in enumerate(data["devices"]):
        for j, event in enumerate(device["events"]):
            problem = _event_problem(event, data["microbatches"])
            if problem:
                raise PlanFolderError(f"devices[{i}].events[{j}]: {problem}", where=where)
    return dict(data)


_PHASES = {"compute": ("forward", "backward"), "comm": ("forward", "backward", "sync")}
_COMM_OPS = COMM_OPS
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


def _check_chunks(part: dict[str, Any], where: str) -> None:
    """Interleaved stages: each holds ``interleave`` runs of ``blocks``' count, and
    together the runs tile the chain in Megatron's order (chunk c of stage j is the
    chain's chunk ``c·pp + j``), which the device programs and training rely on. A plan
    whose stages list no chunks (written before they were recorded) ran each stage as one
    pass and is read as such.
    """
    stages = part["stages"]
    v = part.get("interleave") or 1
    has = [st.get("chunks") is not None for st in stages]
    if not any(has):
        return
    if not all(has):
        raise PlanFolderError("partition: some stages list their chunks, others not", where=where)
    start = 0
    for c in range(v):
        for j, st in enumerate(stages):
            runs = st["chunks"]
            n = st["blocks"][1] - st["blocks"][0] + 1
            if len(runs) != v:
                raise PlanFolderError(
                    f"partition.stages[{j}].chunks: {len(runs)} runs, interleave is {v}",
                    where=where,
                )
            lo, hi = runs[c]
            if lo != start or (hi - lo + 1) * v != n:
                raise PlanFolderError(
                    f"partition.stages[{j}].chunks[{c}]: [{lo}, {hi}] is not the chain's chunk "
                    f"{c * len(stages) + j} of {n // v} blocks from block {start}",
                    where=where,
                )
            start = hi + 1
