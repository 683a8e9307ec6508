"""Writing an output folder all at once or not at all.

Files go to a hidden temporary sibling folder first, which is renamed into place only
when everything is written: an interrupted run leaves no half plan behind, and a reader
never sees a mix of old and new files. An existing folder is replaced only with force.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from shardc.errors import OptionError


def write_outdir(
    path: str | os.PathLike[str], files: Mapping[str, bytes], *, force: bool = False
) -> Path:
    """Write ``files`` (relative name -> bytes) as the folder ``path``."""
    dest = Path(path)
    if dest.exists() and not force:
        raise OptionError(
            f"output folder {str(dest)!r} already exists", hint="pass --force to replace it"
        )
    if dest.exists() and not dest.is_dir():
        raise OptionError(f"output path {str(dest)!r} exists and is not a folder")
    parent = dest.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OptionError(f"cannot create {str(dest)!r}: {exc.strerror}") from None
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=parent))
    try:
        for name in sorted(files):
            target = tmp / name
            if (
                target.resolve().parent != tmp.resolve()
                and tmp.resolve() not in target.resolve().parents
            ):
                raise OptionError(f"refusing to write {name!r} outside the output folder")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(files[name])
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=parent))
            old.rmdir()
            dest.rename(old)
            tmp.rename(dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def write_file(path: str | os.PathLike[str], data: bytes, *, force: bool = False) -> Path:
    """Write one file atomically: a temporary sibling renamed into place."""
    dest = Path(path)
    if dest.exists() and not force:
        raise OptionError(f"{str(dest)!r} already exists", hint="pass --force to replace it")
    try:
        dest.resolve().parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OptionError(f"cannot create {str(dest)!r}: {exc.strerror}") from None
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.tmp-", dir=dest.resolve().parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest
