"""The one error hierarchy of shardc.

Every failure a user can cause (a bad file, a typo in a topology, a model that cannot fit)
is a :class:`ShardcError` subclass whose message says *what* went wrong, *where* (file,
line and column, or node name) and, when we know it, *how to fix it*. The CLI prints such
errors as one line and exits 2; anything else is a bug in shardc and exits 1 with a
traceback only under ``--debug``.

The hierarchy (catch :class:`ShardcError` to catch every user-facing failure)::

    ShardcError          .message, .where, .hint; str() is the one line the CLI prints
    ├── ModelError       the model is unreadable, invalid, or torch.onnx.export failed
    ├── TopologyError    a topology file is wrong: .file, .line, .column (1-based), .context
    ├── OptionError      an option has a wrong form or value (also unknown --set names)
    ├── InfeasibleError  no plan fits the devices; .reason says what conflicts
    ├── SolverTimeout    the solver found no plan within the time limit
    └── ExecutionError   running a plan failed; names the rank and the op

Modules add narrower kinds under these (``PlanCheckError`` from ``shardc check-plan``).
Warnings that do not stop a compile are :class:`ShardcWarning`.

>>> err = InfeasibleError("one block needs 95 GB, a device holds 80 GB", hint="pin tp=2")
>>> str(err)
'one block needs 95 GB, a device holds 80 GB (hint: pin tp=2)'
>>> err.reason
'one block needs 95 GB, a device holds 80 GB'
>>> isinstance(err, ShardcError)
True
"""

from __future__ import annotations


class ShardcError(Exception):
    """A problem with the user's input or request, reported without a traceback.

    ``where`` is a location prefix such as ``model.onnx`` or ``node 'MatMul_3'``;
    ``hint`` is an optional suggestion appended to the message.
    """

    exit_code: int = 2

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None):
        self.message = message
        self.where = where
        self.hint = hint
        super().__init__(self.render())

    def render(self) -> str:
        """The one-line form the CLI prints."""
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.hint:
            text += f" (hint: {self.hint})"
        return text


class ModelError(ShardcError):
    """The model file or graph is unreadable, invalid, or cannot be analysed."""


class TopologyError(ShardcError):
    """A topology file is malformed; carries ``file``, ``line`` and ``column`` (1-based)."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        column: int | None = None,
        hint: str | None = None,
        context: str | None = None,
    ):
        self.file = file
        self.line = line
        self.column = column
        self.context = context
        where = None
        if file is not None:
            where = file if line is None else f"{file}:{line}:{column or 1}"
        super().__init__(message, where=where, hint=hint)


class OptionError(ShardcError):
    """A command-line or API option has a wrong form or value (e.g. ``--dim batch=x``)."""


class InfeasibleError(ShardcError):
    """No plan satisfies the constraints; ``reason`` says which ones conflict.

    ``reason`` is the conflict alone (``"one block needs 95 GB at tp=1, the devices hold
    80 GB"``), without the location or the hint, so a script can log or match it; it
    defaults to the message.
    """

    def __init__(
        self,
        message: str,
        *,
        where: str | None = None,
        hint: str | None = None,
        reason: str | None = None,
    ):
        self.reason = reason if reason is not None else message
        super().__init__(message, where=where, hint=hint)


class SolverTimeout(ShardcError):
    """The solver found no plan within the time limit."""


class ExecutionError(ShardcError):
    """Running a plan failed: a rank died, hung, or produced a value of the wrong shape.

    The message names the rank and the op (``rank 2: AllReduce 'x' on group [2, 3]``).
    """


class PipelineError(Exception):
    """A pass failed or broke the pipeline contract: an internal error, not a user one."""


class ShardcWarning(UserWarning):
    """Something the user should know that does not stop the compile (an op shardc has
    no rule for, a solver stopped at its limit, weights not readable so no device files).

    :func:`shardc.compile` issues pass warnings with :func:`warnings.warn` in this
    category (unless ``quiet``), so scripts can filter them or turn them into errors.
    """
