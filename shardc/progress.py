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
is the one under way; ``done`` never decreases and the last call is
``("done", total, total)``. The steps are ``load model``, each pass by name
(``precision``, ``annotate_costs``, ``coarsen``, ``strategies``, ``partition``), then
``emit``. The partition pass, which takes most of the time, counts one step per
(data-parallel width, stage count) its search settles (``partition dp=4``): once it has
listed them, before its first solve, ``total`` grows by their number less one, and stays
fixed from then on."""


class Steps:
    """Turns a compile's steps, and the units of a step that reports its own progress,
    into one :data:`Progress` count.

    Each step counts one until it reports units of its own (``within``): then it counts
    that many, and the total grows to match, once.
    """

    def __init__(self, report: Progress | None, total: int) -> None:
        self.report = report
        self.total, self.done = total, 0
        self._width = 0  # units of the step under way (0 before the first)

    def start(self, step: str) -> None:
        """The previous step is finished and ``step`` begins."""
        self.done += self._width
        self._width = 1
        self._emit(step, self.done)

    def within(self, step: str, done: int, total: int) -> None:
        """``done`` of ``total`` units of the step under way are finished."""
        if total != self._width:
            self.total += total - self._width
            self._width = total
        self._emit(step, self.done + done)

    def finish(self) -> None:
        """The last step is finished: ``("done", total, total)``."""
        self.done += self._width
        self._width = 0
        self._emit("done", self.done)

    def _emit(self, step: str, done: int) -> None:
        if self.report is not None:
            self.report(step, done, self.total)


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
