"""Reading topology files: the path-or-text rule, includes and the search path.

``include "x.topo"`` is resolved relative to the including file and must stay inside the
search path — by default the directory of the top-level file, so a topology cannot reach
out to arbitrary files on the machine (a stock file shared by others may be included by
anyone's build). A file already included is not included again, so two files may both
include a common kinds library; a file that includes itself (directly or not) is an
error.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from shardc.errors import TopologyError
from shardc.topology import limits
from shardc.topology.diagnostics import error_at
from shardc.topology.elaborate import Elaborator, Override
from shardc.topology.model import Topology
from shardc.topology.parser import parse
from shardc.topology.syntax import Include, Module, Stmt

TEXT_FILE = "<text>"


def load_topology(
    path_or_text: str | os.PathLike[str],
    overrides: Mapping[str, Override] | None = None,
    *,
    search_path: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | None = None,
) -> Topology:
    """Parse, check and build a topology.

    ``path_or_text`` is **text if it is a str containing a newline**, and a file path
    otherwise (a :class:`os.PathLike` is always a path). So a one-line program must end
    with a newline; a mistyped path is reported as a missing file, never parsed as text.

    ``overrides`` replace the values of ``let`` parameters (``{"nodes": 4}``); an unknown
    name raises :class:`shardc.errors.OptionError`. ``search_path`` lists the directories
    includes may come from; by default the top-level file's directory (the current
    directory for text).
    """
    is_text = isinstance(path_or_text, str) and "\n" in path_or_text
    if is_text:
        text, file, name = str(path_or_text), TEXT_FILE, "topology"
        base = Path.cwd()
    else:
        path = Path(path_or_text)
        text = _read(path, None)
        file, name, base = str(path_or_text), path.stem, path.resolve().parent
    roots = _roots(search_path, base)
    sources: dict[str, str] = {file: text}
    module = parse(text, file=file)
    stmts = _splice(module, base, roots, sources, [_identity(file, base)], set())
    return Elaborator(sources, overrides or {}).run(stmts, name, None if is_text else file)


def _roots(search_path, base: Path) -> list[Path]:
    if search_path is None:
        return [base]
    if isinstance(search_path, str | os.PathLike):
        search_path = [search_path]
    return [Path(p).resolve() for p in search_path]


def _identity(file: str, base: Path) -> str:
    return file if file == TEXT_FILE else str((base / Path(file).name).resolve())


def _read(path: Path, include: tuple[Include, Mapping[str, str]] | None) -> str:
    try:
        limits.check_file(path)  # a FIFO or /dev/zero would block or fill memory
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError, limits.LimitError) as exc:
        reason = "no such file" if isinstance(exc, FileNotFoundError) else str(exc)
        hint = None
        if include is None and not path.suffix:
            hint = "to pass source text instead of a path, include a newline in it"
        if include is not None:
            stmt, sources = include
            raise error_at(f"cannot include '{stmt.path}': {reason}", stmt.path_pos, sources,
                           hint) from None
        raise TopologyError(f"cannot read topology: {reason}", file=str(path), hint=hint) from None


def _display(path: Path) -> str:
    """How messages name an included file: relative to the current directory if inside it."""
    rel = os.path.relpath(path)
    return path.as_posix() if rel.startswith("..") else rel


def _splice(
    module: Module,
    base: Path,
    roots: list[Path],
    sources: dict[str, str],
    stack: list[str],
    done: set[str],
) -> list[Stmt]:
    """The module's statements with every top-level include replaced by its statements."""
    out: list[Stmt] = []
    for stmt in module.stmts:
        if not isinstance(stmt, Include):
            out.append(stmt)
            continue
        target = (base / stmt.path).resolve()
        if not any(target.is_relative_to(root) for root in roots):
            shown = ", ".join(str(r) for r in roots)
            raise error_at(f"'{stmt.path}' is outside the topology search path", stmt.path_pos,
                           sources, f"includes must stay under {shown}; pass search_path= "
                           "to allow another directory")
        key = str(target)
        if key in stack:
            chain = " -> ".join(Path(s).name for s in [*stack[stack.index(key):], key])
            raise error_at(f"include cycle: {chain}", stmt.path_pos, sources)
        if key in done:
            continue
        if len(stack) > limits.MAX_INCLUDE_DEPTH:
            raise error_at(f"includes nested more than {limits.MAX_INCLUDE_DEPTH} deep",
                           stmt.path_pos, sources, "include the shared files from one place")
        text = _read(target, (stmt, sources))
        shown = _display(target)
        sources[shown] = text
        sub = parse(text, file=shown)
        out.extend(_splice(sub, target.parent, roots, sources, [*stack, key], done))
        done.add(key)
    return out
