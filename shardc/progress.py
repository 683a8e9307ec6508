"""Progress of a compile: a callback any caller can pass, and a rich bar for terminals.

Why a plain callable: a training script may log progress, a notebook may draw it, a test
may record it; none of them should need rich. The CLI (and :func:`shardc.compile` on a
terminal) turns the same calls into a bar on stderr that vanishes when done, so what
stays on the screen is the plan. No bar when stderr is not a terminal (logs, CI, pipes),
with ``--json`` or with ``quiet``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

Progress = Callable[[str, int, int], None]
"""``progress(step, done, total)``: ``done`` of ``total`` steps are finished and ``step``
is the one starting now; the last call is ``("done", total, total)``. The steps are
``load model``, each pass by name (``annotate_costs``, ``coarsen``, ``strategies``,
``partition``), then ``emit``; the partition pass takes most of the time."""


@contextmanager
def progress_bar() -> Iterator[Progress]:
    """A transient rich progress bar on stderr, as a :data:`Progress` callback."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.progress import (
        Progress as Bar,
    )

    columns = (
        SpinnerColumn(),
        TextColumn("compiling: {task.description:<16}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Bar(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("start", total=None)

        def report(step: str, done: int, total: int) -> None:
            bar.update(task, description=step, completed=done, total=total)

        yield report


@contextmanager
def progress_for(quiet: bool = False) -> Iterator[Progress | None]:
    """A bar when stderr is a terminal and not ``quiet``; otherwise no callback at all."""
    if quiet or not sys.stderr.isatty():
        yield None
        return
    with progress_bar() as report:
        yield report
