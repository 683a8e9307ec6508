"""Turning a position into the error users see: ``file:line:col``, the line, a caret.

Every check in this package raises through :func:`error_at`, so all topology errors look
the same whether the parser or a semantic check found them, and the CLI can print them
without knowing where they came from.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping

from shardc.errors import TopologyError
from shardc.topology.syntax import Pos


def caret_context(text: str, line: int, column: int, end_column: int | None = None) -> str:
    """The offending source line and a caret line under the span ``column..end_column``.

    Tabs before the span are copied into the caret line so the caret stays aligned in a
    terminal whatever its tab width.
    """
    lines = text.splitlines()
    source = lines[line - 1] if 0 < line <= len(lines) else ""
    column = max(1, min(column, len(source) + 1))
    width = 1
    if end_column is not None and end_column > column:
        width = min(end_column, len(source) + 1) - column
    gutter = f"{line:>5} | "
    pad = "".join("\t" if ch == "\t" else " " for ch in source[: column - 1])
    return f"{gutter}{source}\n{' ' * (len(gutter) - 2)}| {pad}{'^' * max(width, 1)}"


def error_at(
    message: str,
    pos: Pos,
    sources: Mapping[str, str],
    hint: str | None = None,
) -> TopologyError:
    """A :class:`TopologyError` located at ``pos``, with context when the text is known."""
    text = sources.get(pos.file)
    context = None
    if text is not None:
        end = pos.end_column if pos.end_line == pos.line else None
        context = caret_context(text, pos.line, pos.column, end)
    return TopologyError(
        message, file=pos.file, line=pos.line, column=pos.column, hint=hint, context=context
    )


def did_you_mean(word: str, choices: Iterable[str], *, listing: str | None = None) -> str | None:
    """A hint naming the closest choices to ``word``, or listing them when none is close.

    ``listing`` is the noun for the fallback list (``"kinds"``); without it, no fallback.
    """
    pool = sorted(set(choices))
    close = difflib.get_close_matches(word, pool, n=3, cutoff=0.6)
    if not close:
        lowered = {c.lower(): c for c in pool}
        if word.lower() in lowered:
            close = [lowered[word.lower()]]
    if close:
        return "did you mean " + " or ".join(repr(c) for c in close) + "?"
    if listing and pool:
        shown = ", ".join(pool[:12]) + (", ..." if len(pool) > 12 else "")
        return f"known {listing}: {shown}"
    if listing:
        return f"no {listing} are defined"
    return None
