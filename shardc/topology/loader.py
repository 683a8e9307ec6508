"""Reading topology files: the path-or-text rule, stock names, includes and the search path.

``include "x.topo"`` is looked up first relative to the including file, then in each
folder of the *search path*: the caller's ``include_path`` (``--include-path`` on the
command line), then the folders in ``$SHARDC_TOPOLOGY_PATH``, then the stock folder that
ships with shardc (so ``include "kinds/nvidia.topo"`` works from anywhere). Why this
order: a file's neighbours are what its author meant; the search path is for libraries.

What an include may reach is confined, so a topology (perhaps written by someone else)
cannot make shardc read arbitrary files: the target must name a ``.topo`` file and lie
inside the top-level file's folder or a search-path folder. Topology *text* has no
folder of its own, so its includes come from the search path only, never from the
current directory. Errors show the offending line of topology files only: a file that
is not named ``*.topo`` is never echoed.

A file already included is not included again, so two files may both include a common
kinds library; a file that includes itself (directly or not) is an error.

A topology may also be named by the stem of a file on the search path
(``load_topology("gb200_nvl72")``, ``--topology cloudmatrix384``); :func:`stock_topologies`
lists the shipped ones.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from shardc.errors import TopologyError
from shardc.topology import limits
from shardc.topology.diagnostics import error_at
from shardc.topology.elaborate import Elaborator, Override
from shardc.topology.model import Topology
from shardc.topology.parser import parse
from shardc.topology.syntax import Include, Module, Stmt

TEXT_FILE = "<text>"
SUFFIX = ".topo"
ENV_VAR = "SHARDC_TOPOLOGY_PATH"
"""Extra include and name folders, separated by ``os.pathsep``, searched after
``include_path`` and before the stock folder."""

PathArg = str | os.PathLike[str]
IncludePath = PathArg | Iterable[PathArg] | None

_HINT = (
    f"add the folder with --include-path DIR (include_path= in Python, or ${ENV_VAR})"
)


def stock_dir() -> Path:
    """The folder of the topologies that ship with shardc (package ``shardc.stock``).

    In a source checkout that is the repository's ``topologies/`` folder; in an installed
    wheel, ``shardc/stock/`` in site-packages.
    """
    import shardc.stock

    return Path(shardc.stock.__file__).resolve().parent


def search_path(include_path: IncludePath = None) -> list[Path]:
    """The folders includes and topology names are looked up in, in order.

    ``include_path`` first, then ``$SHARDC_TOPOLOGY_PATH``, then :func:`stock_dir`;
    folders that do not exist are skipped, duplicates kept once.
    """
    if include_path is None:
        given: list[PathArg] = []
    elif isinstance(include_path, str | os.PathLike):
        given = [include_path]
    else:
        given = list(include_path)
    env = [p for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p]
    out: list[Path] = []
    for entry in [*given, *env]:
        path = Path(entry).resolve()
        if path.is_dir() and path not in out:
            out.append(path)
    stock = stock_dir()
    if stock not in out:
        out.append(stock)
    return out


@dataclass(frozen=True)
class StockTopology:
    """A named topology file on the search path, as ``shardc topo list`` shows it."""

    name: str
    path: Path
    description: str
    """The first sentence of the file's leading comment."""


def stock_topologies(include_path: IncludePath = None) -> list[StockTopology]:
    """The topologies addressable by name, sorted by name; the first folder wins a name."""
    found: dict[str, StockTopology] = {}
    for folder in search_path(include_path):
        for path in sorted(folder.glob(f"*{SUFFIX}")):
            if path.stem not in found:
                text = path.read_text(encoding="utf-8", errors="replace")
                found[path.stem] = StockTopology(path.stem, path, _description(text))
    return [found[name] for name in sorted(found)]


def _description(text: str) -> str:
    """First sentence of the comment block a file opens with (what the file describes)."""
    words: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped.startswith("#"):
            break
        body = stripped.lstrip("#").strip()
        if not body:
            if words:
                break
            continue
        words.append(body)
    paragraph = " ".join(words)
    end = paragraph.find(". ")
    return paragraph if end < 0 else paragraph[: end + 1]


def find_topology(name_or_path: PathArg, include_path: IncludePath = None) -> Path:
    """The file a ``--topology`` argument means: an existing path, else a name.

    A name (``cloudmatrix384``, with or without ``.topo``, no folder part) is looked up
    on :func:`search_path`; a missing name raises :class:`TopologyError` listing the
    known ones. Anything with a folder part is returned as given.
    """
    path = Path(name_or_path)
    text = os.fspath(name_or_path)
    if path.exists() or path.name != text or text in ("", ".", ".."):
        return path  # a path (missing ones are reported by the reader)
    file = text if text.endswith(SUFFIX) else text + SUFFIX
    for folder in search_path(include_path):
        if (folder / file).is_file():
            return folder / file
    names = ", ".join(s.name for s in stock_topologies(include_path))
    raise TopologyError(
        f"cannot read topology: no such file, and no topology named {path.stem!r} on the "
        "search path",
        file=text,
        hint=f"known names: {names} (shardc topo list); to pass topology text instead of "
        "a path, include a newline in it",
    )


def load_topology(
    path_or_text: PathArg,
    overrides: Mapping[str, Override] | None = None,
    *,
    include_path: IncludePath = None,
) -> Topology:
    """Parse, check and build a topology.

    ``path_or_text`` is **text if it is a str containing a newline**, and otherwise a
    file path or the name of a topology on the search path (``"gb200_nvl72"``; a
    :class:`os.PathLike` is always a path). So a one-line program must end with a
    newline; a mistyped path is reported as a missing file, never parsed as text.

    ``overrides`` replace the values of ``let`` parameters (``{"nodes": 4}``); an unknown
    name raises :class:`shardc.errors.OptionError`. ``include_path`` lists folders to
    look in for includes and names before ``$SHARDC_TOPOLOGY_PATH`` and the stock folder.
    """
    is_text = isinstance(path_or_text, str) and "\n" in path_or_text
    roots = search_path(include_path)
    base: Path | None
    if is_text:
        text, file, name, base = str(path_or_text), TEXT_FILE, "topology", None
    else:
        path = find_topology(path_or_text, include_path)
        text = _read(path, None)
        file, name, base = str(path), path.stem, path.resolve().parent
    try:
        sources: dict[str, str] = {file: text}
        module = parse(text, file=file)
        stack = [file if base is None else str((base / Path(file).name).resolve())]
        stmts = _splice(module, base, [*([base] if base else []), *roots], sources, stack, set())
        return Elaborator(sources, overrides or {}).run(stmts, name, None if is_text else file)
    except TopologyError as exc:
        if is_text or file.endswith(SUFFIX) or exc.file != file:
            raise
        # not a topology file by name: say where, never what the file holds
        raise TopologyError(
            f"not a valid topology (and not named *{SUFFIX}, so its text is not shown)",
            file=exc.file, line=exc.line, column=exc.column,
        ) from None


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


def _locate(
    stmt: Include, base: Path | None, roots: list[Path], sources: Mapping[str, str]
) -> Path:
    """The file ``stmt`` includes: next to the including file, else on the search path.

    Each candidate must stay inside an allowed root (``..`` and absolute paths cannot
    leave it) and name a ``.topo`` file, so no other file is ever read or shown.
    """
    if not stmt.path.endswith(SUFFIX):
        raise error_at(f"cannot include '{stmt.path}': includes name {SUFFIX} files",
                       stmt.path_pos, sources)
    candidates = [] if base is None else [(base / stmt.path).resolve()]
    candidates += [(root / stmt.path).resolve() for root in roots]
    allowed = [c for c in candidates if any(c.is_relative_to(r) for r in roots)]
    for target in allowed:
        if target.is_file():
            return target
    if not allowed:
        raise error_at(f"'{stmt.path}' is outside the topology search path", stmt.path_pos,
                       sources, f"includes stay under the including file's folder or the "
                       f"search path; {_HINT}")
    where = "in the search path" if base is None else "next to the file or in the search path"
    shown = ", ".join(_display(r) for r in roots)
    raise error_at(f"cannot include '{stmt.path}': not found {where} ({shown})",
                   stmt.path_pos, sources, _HINT)


def _splice(
    module: Module,
    base: Path | None,
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
        target = _locate(stmt, base, roots, sources)
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
