"""What a topology may ask for, and the checks that refuse more before it is allocated.

A topology file is user input, and a short one can ask for a lot: ``gpu[0..1e9]`` is ten
characters and a billion devices, ``let x = 1e999999999`` a number with a billion digits,
500 ``+`` terms a parse tree deep enough to exhaust Python's stack. Every such request is
refused here with a located :class:`~shardc.errors.TopologyError` that names the limit,
*before* the memory or time is spent. The limits are far above any real cluster (the
largest today are a few hundred thousand accelerators) and are listed in ``docs/dsl.md``.

Numbers are exact fractions, so "too large" is a choice, not an overflow: every literal,
parameter and intermediate result stays below :data:`MAX_MAGNITUDE` and within
:data:`MAX_DENOMINATOR_BITS` of precision, which keeps each value a few dozen bytes and
every unit conversion to ``float`` finite.
"""

from __future__ import annotations

import os
import stat
from decimal import Decimal, InvalidOperation
from fractions import Fraction

from lark import Token, Tree

MAX_SOURCE_BYTES = 16 * 2**20
"""Largest topology text (one file): 16 MiB, several times a 100k-device canonical export."""

MAX_INCLUDE_DEPTH = 32
"""Includes nested deeper than this (a includes b includes c ...) are refused."""

MAX_BLOCK_NESTING = 32
"""Groups, kinds, fabrics and links nested inside one another, at most this deep."""

MAX_EXPRESSION_DEPTH = 100
"""Operators, selectors and paths nested inside one expression, at most this deep."""

MAX_LITERAL_CHARS = 64
"""Characters in one numeric literal (digits, point, exponent, underscores)."""

MAX_EXPONENT = 30
MAX_MAGNITUDE = Fraction(10) ** MAX_EXPONENT
"""Every number, literal or computed, is below 1e30 in magnitude (and, if not zero, a
literal is at least 1e-30)."""

MAX_DENOMINATOR_BITS = 256
"""A computed fraction's denominator stays below 2**256 (``1/3/3/3...`` 160 times)."""

MAX_DEVICES = 1_000_000
"""Devices in one topology."""

MAX_SWITCHES = 1_000_000
"""Switches (including leaf and spine switches of networks) in one topology."""

MAX_LINKS = 4_000_000
"""Links in one topology."""

MAX_GROUP_INSTANCES = 1_000_000
"""Group instances (``node[0..47] { ... }`` is 48), nested ones included."""

MAX_SELECTED = 50_000_000
"""Members selected by all patterns together (``members ...``, link endpoints): bounds
the elaboration time of files that repeat a pattern over a large cluster."""

_BLOCK_RULES = frozenset({"group_decl", "kind_def", "link_stmt", "fabric_stmt"})
_EXPRESSION_RULES = frozenset({
    "add", "sub", "mul", "div", "floordiv", "mod",
    "path", "seg", "selector", "sel_range", "sel_index",
})


class LimitError(Exception):
    """A limit was exceeded; the caller turns it into a located error.

    ``line`` and ``column`` (1-based) say where, when the check knows (tree checks).
    """

    def __init__(self, message: str, hint: str | None = None, *,
                 line: int | None = None, column: int | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.line = line
        self.column = column


def check_source_size(size: int) -> None:
    """Refuse a topology text larger than :data:`MAX_SOURCE_BYTES`."""
    if size > MAX_SOURCE_BYTES:
        raise LimitError(f"the topology text is {size:,} bytes, more than the limit of "
                         f"{MAX_SOURCE_BYTES:,}", "a topology describes a cluster in a few "
                         "lines per device kind and fabric; use ranges and groups")


def check_file(path: str | os.PathLike[str]) -> None:
    """Refuse what is not a regular file of at most :data:`MAX_SOURCE_BYTES`.

    Called before the file is opened: a FIFO blocks a reader forever and ``/dev/zero``
    never ends. Missing files are left to the reader (it says "no such file").
    """
    try:
        info = os.stat(path)
    except OSError:
        return
    if not stat.S_ISREG(info.st_mode):
        raise LimitError("not a regular file (a device, FIFO or directory)")
    check_source_size(info.st_size)


def check_tree(tree: Tree) -> None:
    """Refuse parse trees nested deeper than the block and expression limits.

    Iterative on purpose: the point is to stop trees that would overflow the recursive
    transformer and evaluator before they run.
    """
    stack: list[tuple[Tree | Token, int, int]] = [(tree, 0, 0)]
    while stack:
        node, blocks, exprs = stack.pop()
        if not isinstance(node, Tree):
            continue
        if node.data in _BLOCK_RULES:
            blocks += 1
            if blocks > MAX_BLOCK_NESTING:
                raise _at(node, f"blocks nested more than {MAX_BLOCK_NESTING} deep",
                          "groups inside groups are a cluster's hierarchy (pod, rack, node); "
                          "flatten some levels")
        elif node.data in _EXPRESSION_RULES:
            exprs += 1
            if exprs > MAX_EXPRESSION_DEPTH:
                raise _at(node, f"expression nested more than {MAX_EXPRESSION_DEPTH} deep "
                          "(operators, brackets and selectors)",
                          "compute it in steps with 'let', or simplify it")
        stack.extend((child, blocks, exprs) for child in node.children)


def _at(node: Tree, message: str, hint: str) -> LimitError:
    meta = node.meta
    line = getattr(meta, "line", None)
    column = getattr(meta, "column", None)
    return LimitError(message, hint, line=line, column=column)


def literal(text: str) -> Fraction:
    """The exact value of a numeric literal such as ``1_000``, ``2.5e-3``.

    Checked before any big number is built: ``Fraction("1e999999999")`` would take
    minutes and gigabytes, ``Decimal`` only reads the exponent. Text that is not a
    finite number is a ValueError (the grammar never produces one; overrides may).
    """
    if len(text) > MAX_LITERAL_CHARS:
        raise LimitError(f"number literal of {len(text)} characters (limit "
                         f"{MAX_LITERAL_CHARS})", "write large numbers with an exponent "
                         "(1.5e12) or a unit (TB, PFLOPS)")
    try:
        value = Decimal(text.replace("_", ""))
    except InvalidOperation:
        raise ValueError(f"not a number: {text!r}") from None
    if not value.is_finite():
        raise ValueError(f"not a finite number: {text!r}")
    if value and not -MAX_EXPONENT <= value.adjusted() < MAX_EXPONENT:
        raise LimitError(f"number {text} is out of range: numbers are between 1e-"
                         f"{MAX_EXPONENT} and 1e{MAX_EXPONENT} in magnitude",
                         "use a unit prefix instead (TB, PFLOPS, ns)")
    return Fraction(value)


def check_value(value: Fraction) -> Fraction:
    """``value`` itself, if it is within :data:`MAX_MAGNITUDE` and the precision limit."""
    if abs(value) >= MAX_MAGNITUDE:
        # no float() or str() of the value: either fails beyond 1e308 or 4300 digits
        exp10 = int((abs(value.numerator).bit_length() - value.denominator.bit_length())
                    * 0.30103)
        raise LimitError(f"a value of about 1e{exp10} is out of range: numbers stay "
                         f"below 1e{MAX_EXPONENT} in magnitude")
    if value.denominator.bit_length() > MAX_DENOMINATOR_BITS:
        raise LimitError(f"a value needs more than {MAX_DENOMINATOR_BITS} bits of precision",
                         "round it, e.g. 0.333 instead of 1/3/3/3...")
    return value


def check_count(what: str, count: int, limit: int) -> None:
    """Refuse a count over ``limit``, naming ``what`` (``"devices"``)."""
    if count > limit:
        raise LimitError(f"more than {limit:,} {what} (this asks for {count:,})",
                         f"the limit is {limit:,}; see 'Limits' in docs/dsl.md")
