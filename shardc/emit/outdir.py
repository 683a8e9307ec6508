"""Writing an output folder all at once or not at all.

Files go to a hidden temporary sibling folder first, which is swapped into place only
when everything is written: an interrupted run leaves no half plan behind, and a reader
never sees a mix of old and new files.

Why the temporary names carry the writer's pid and start time
(``.OUT.shardc-tmp-<pid>-<start>-<random>``): a run killed with SIGKILL cannot clean up
after itself, so the next run does it, and it must touch only folders that are provably
ours and provably abandoned. The name is the marker: it is created atomically with the
folder, and a folder whose writer is no longer alive (or whose pid now belongs to a
process started at another time) is stale.

Why an exchange and not two renames: replacing with ``--force`` by renaming the old folder
aside and the new one into place leaves no ``OUT`` at all if the process dies between the
two renames. On Linux ``renameat2(RENAME_EXCHANGE)`` swaps both names in one step; where
it is missing, the two renames remain, and the next run puts the old plan back if the new
one never arrived.

An existing folder is replaced only with force, and only when it holds a shardc plan (or
nothing): ``--force`` must never delete a folder of someone else's files.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import re
import secrets
import shutil
import signal
import stat
from collections.abc import Mapping
from pathlib import Path

from shardc.errors import OptionError
from shardc.owner import is_alive, owner_tag
from shardc.plan.folder import (
    MAX_JSON_BYTES,
    PLAN_FORMAT,
    SERVING_FORMAT,
    PlanFolderError,
    loads,
)

_FAULT_ENV = "SHARDC_OUTDIR_FAULT"
"""Test hook: ``write``, ``exchange``, ``swapped`` or ``aside`` kills this process with
SIGKILL at that point of :func:`write_outdir`, so tests can check what a kill leaves."""

_NO_EXCHANGE_ENV = "SHARDC_OUTDIR_NO_EXCHANGE"
"""Test hook: set to use the two-rename fallback even where the exchange exists."""

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def write_outdir(
    path: str | os.PathLike[str], files: Mapping[str, bytes], *, force: bool = False
) -> Path:
    """Write ``files`` (relative name -> bytes) as the folder ``path``.

    The folder and its files get the modes ordinary files get (0755 and 0644 at umask
    022). Raises :class:`OptionError` when ``path`` exists (without ``force``), is not a
    plan folder (with ``force``), or cannot be written (read-only, no such place).
    """
    dest = Path(path)
    try:
        return _write_outdir(dest, files, force)
    except OSError as exc:
        raise OptionError(
            f"cannot write the output folder {str(dest)!r}: {exc.strerror or exc}"
        ) from None


def check_target(path: str | os.PathLike[str], *, force: bool) -> None:
    """Refuse early (before a long compile) a target :func:`write_outdir` would refuse."""
    dest = Path(path)
    if os.path.lexists(dest) and not force:
        raise OptionError(
            f"output folder {str(dest)!r} already exists", hint="pass --force to replace it"
        )
    if os.path.lexists(dest):
        _check_replaceable(dest)


def _write_outdir(dest: Path, files: Mapping[str, bytes], force: bool) -> Path:
    parent = dest.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OptionError(f"cannot create {str(dest)!r}: {exc.strerror}") from None
    recover_stale(dest)
    check_target(dest, force=force)
    mode = 0o777 & ~_umask()
    tmp = _make_own(parent, dest.name, "tmp")
    try:
        root = tmp.resolve()
        for i, name in enumerate(sorted(files)):
            target = tmp / name
            if root not in target.resolve().parents:
                raise OptionError(f"refusing to write {name!r} outside the output folder")
            target.parent.mkdir(parents=True, exist_ok=True)
            data = files[name]
            if i == 0 and _fault("write"):
                target.write_bytes(data[: len(data) // 2])
                _die()
            target.write_bytes(data)
        tmp.chmod(mode)  # mkdtemp-like private mode would hide the plan from other users
        if _fault("exchange"):
            _die()
        if os.path.lexists(dest):
            _replace(tmp, dest, parent)
        else:
            os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def write_file(path: str | os.PathLike[str], data: bytes, *, force: bool = False) -> Path:
    """Write one file atomically: a temporary sibling renamed into place, with the mode an
    ordinary new file gets (0644 at umask 022).
    """
    dest = Path(path)
    if dest.exists() and not force:
        raise OptionError(f"{str(dest)!r} already exists", hint="pass --force to replace it")
    if dest.is_dir():
        raise OptionError(f"{str(dest)!r} is a folder, not a file")
    try:
        parent = dest.absolute().parent
        parent.mkdir(parents=True, exist_ok=True)
        recover_stale(dest)
        tmp = parent / f".{dest.name}.shardc-tmp-{owner_tag()}-{secrets.token_hex(4)}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise OptionError(f"cannot write {str(dest)!r}: {exc.strerror or exc}") from None
    return dest


def is_plan_folder(path: Path) -> bool:
    """Whether ``path`` is a folder with a plan.json that carries shardc's format marker."""
    plan = path / "plan.json"
    try:
        if not stat.S_ISREG(os.stat(plan, follow_symlinks=False).st_mode):
            return False
        limit = MAX_JSON_BYTES["plan.json"]
        with plan.open("rb") as f:
            head = f.read(limit + 1)
        if len(head) > limit:
            return False
        data = loads(head, str(plan))
    except (OSError, PlanFolderError):
        return False
    return isinstance(data, dict) and data.get("format") in (PLAN_FORMAT, SERVING_FORMAT)


def _check_replaceable(dest: Path) -> None:
    """With force: only a real folder holding a shardc plan (or nothing) is replaced."""
    if dest.is_symlink() or not dest.is_dir():
        raise OptionError(
            f"output path {str(dest)!r} exists and is not a folder",
            hint="choose another output folder",
        )
    try:
        empty = not any(dest.iterdir())
    except OSError as exc:
        raise OptionError(f"cannot read {str(dest)!r}: {exc.strerror}") from None
    if not empty and not is_plan_folder(dest):
        raise OptionError(
            f"{str(dest)!r} is not a shardc plan folder (no plan.json of format "
            f"{PLAN_FORMAT!r}); --force replaces only plan folders",
            hint="choose another output folder, or remove this one yourself",
        )


def _replace(tmp: Path, dest: Path, parent: Path) -> None:
    """Put ``tmp`` at ``dest`` in one step where the kernel can, and drop the old plan."""
    if not os.environ.get(_NO_EXCHANGE_ENV) and _exchange(tmp, dest):
        if _fault("swapped"):
            _die()
        shutil.rmtree(tmp, ignore_errors=True)  # tmp's name now holds the old plan
        return
    old = _own_name(parent, dest.name, "old")
    os.rename(dest, old)
    if _fault("aside"):
        _die()
    os.rename(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with Linux ``renameat2``; False where unavailable."""
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return False
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: no exchange on this filesystem
        return False
    raise OSError(err, os.strerror(err), str(b))


# ---------------------------------------------------------------- stale folders of dead runs
_OWN = re.compile(
    r"^\.(?P<name>.+)\.shardc-(?P<kind>tmp|old)-(?P<pid>\d+)-(?P<start>\d+)-[0-9a-f]+$"
)


def recover_stale(dest: Path) -> list[Path]:
    """Tidy what killed runs writing ``dest`` left: remove their temporary folders, and
    put an old plan back at ``dest`` if a replacement died between its two renames.

    Only siblings named by :func:`_own_name` whose writer is gone are touched. Returns the
    paths removed or restored.
    """
    parent = dest.absolute().parent
    try:
        entries = sorted(parent.iterdir())
    except OSError:
        return []
    done: list[Path] = []
    for entry in entries:
        m = _OWN.match(entry.name)
        if not m or m["name"] != dest.name or is_alive(int(m["pid"]), int(m["start"])):
            continue
        if m["kind"] == "old" and not os.path.lexists(dest):
            with contextlib.suppress(OSError):
                os.rename(entry, dest)
                done.append(entry)
                continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()
        done.append(entry)
    return done


def _make_own(parent: Path, name: str, kind: str) -> Path:
    path = _own_name(parent, name, kind)
    path.mkdir(mode=0o700)
    return path


def _own_name(parent: Path, name: str, kind: str) -> Path:
    return parent / f".{name}.shardc-{kind}-{owner_tag()}-{secrets.token_hex(4)}"


def _umask() -> int:
    """The process umask (read by setting and restoring it: there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fault(point: str) -> bool:
    return os.environ.get(_FAULT_ENV) == point


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
