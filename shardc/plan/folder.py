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

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shardc.plan.checks import (
    MAX_DEPTH,
    MAX_JSON_BYTES,
    MAX_MODEL_BYTES,
    MAX_SIDE_BYTES,
    PlanFolderError,
    check_plan,
    check_schedule,
    loads,
    plan_schema,
    validate,
)
from shardc.plan.model import PLAN_FORMAT, SERVING_FORMAT, PlanData

__all__ = [
    "MAX_DEPTH", "MAX_JSON_BYTES", "MAX_MODEL_BYTES", "MAX_SIDE_BYTES", "PLAN_FORMAT",
    "SERVING_FORMAT", "PlanFolder", "PlanFolderError", "anchor_paths", "check_plan",
    "check_schedule", "loads",
    "parse_plan", "plan_schema", "read_plan", "read_plan_folder", "resolve_input", "validate",
]


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


def read_plan(path: str | os.PathLike[str]) -> PlanData:
    """The typed Plan of folder ``path``: plan.json and schedule.json, validated."""
    folder = read_plan_folder(path)
    return PlanData.from_json(folder.plan, folder.schedule())


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
