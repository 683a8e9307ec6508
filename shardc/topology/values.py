"""Evaluating expressions and reading property values, with located errors.

Arithmetic is exact (:class:`~fractions.Fraction`) so that parameters, ranges and unit
conversions never accumulate rounding error. :class:`Reader` is what the semantic pass
uses to interpret the generic ``NAME value value ...`` property lines: it knows what
each property expects and says so when a value does not fit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction

from shardc.errors import TopologyError
from shardc.topology import limits, units
from shardc.topology.diagnostics import did_you_mean, error_at
from shardc.topology.syntax import BinOp, Expr, Number, Path, Pos, Prop, Quantity, String, Value

ParamValue = Fraction | str


@dataclass
class Env:
    """What evaluation needs: parameter values and the source texts (for error context)."""

    params: dict[str, ParamValue]
    sources: Mapping[str, str]
    overridden: str = ""  # "--set nodes=0", named in hints of errors in expressions
    selected: int = 0  # members selected by patterns so far (limits.MAX_SELECTED)
    _lines: dict[str, list[str]] = field(default_factory=dict, repr=False)

    def error(self, message: str, pos: Pos, hint: str | None = None) -> TopologyError:
        """A located error (returned, so callers write ``raise env.error(...)``)."""
        return error_at(message, pos, self.sources, hint)

    def limit(self, exc: limits.LimitError, pos: Pos) -> TopologyError:
        """A limit exceeded at ``pos``, as a located error."""
        return error_at(exc.message, pos, self.sources, exc.hint)

    def count(self, what: str, count: int, limit: int, pos: Pos) -> None:
        """Refuse ``count`` ``what`` (devices, links ...) over ``limit``, located at ``pos``."""
        try:
            limits.check_count(what, count, limit)
        except limits.LimitError as exc:
            raise self.limit(exc, pos) from None

    def text(self, pos: Pos) -> str:
        """The source text of a one-line span (for quoting it in messages).

        Lines are split once per file: this is called for every property value, and
        splitting the whole text each time made large files quadratic.
        """
        lines = self._lines.get(pos.file)
        if lines is None:
            lines = self._lines[pos.file] = self.sources.get(pos.file, "").split("\n")
        if pos.line != pos.end_line or pos.line > len(lines):
            return "..."
        return lines[pos.line - 1][pos.column - 1 : pos.end_column - 1]

    # ---------------------------------------------------------- expressions
    def eval(self, expr: Expr) -> ParamValue:
        """The value of an expression: a number, or a string parameter."""
        if isinstance(expr, Number):
            return expr.value
        if isinstance(expr, Path):
            name = expr.bare_name
            if name is None:
                raise self.error(f"expected a number, found '{self.text(expr.pos)}'", expr.pos)
            if name not in self.params:
                hint = did_you_mean(name, self.params) or f"define it first: 'let {name} = ...'"
                raise self.error(f"unknown parameter '{name}'", expr.pos, hint)
            return self.params[name]
        left, right = self.number(expr.left), self.number(expr.right)
        try:
            return limits.check_value(self._arith(expr, left, right))
        except limits.LimitError as exc:
            raise self.limit(exc, expr.pos) from None

    def _arith(self, expr: BinOp, left: Fraction, right: Fraction) -> Fraction:
        if expr.op in ("/", "//", "%") and right == 0:
            raise self.error("division by zero", expr.pos)
        if expr.op == "+":
            return left + right
        if expr.op == "-":
            return left - right
        if expr.op == "*":
            return left * right
        if expr.op == "/":
            return left / right
        if expr.op == "//":
            return Fraction(left // right)
        return left % right

    def number(self, expr: Expr) -> Fraction:
        """An expression that must be numeric."""
        value = self.eval(expr)
        if isinstance(value, str):
            raise self.error(f"expected a number, found the string parameter {value!r}", expr.pos)
        return value

    def integer(self, expr: Expr, what: str, *, minimum: int = 0) -> int:
        """An expression that must be a whole number ``>= minimum`` (indices, counts)."""
        value = self.number(expr)
        hint = f"parameters were overridden: {self.overridden}" if self.overridden else None
        if value.denominator != 1:
            raise self.error(f"{what} must be a whole number, got {float(value):g}", expr.pos,
                             hint)
        if value < minimum:
            raise self.error(f"{what} must be at least {minimum}, got {value}", expr.pos, hint)
        return int(value)


class Reader:
    """Reads one property line's values left to right, e.g. ``compute bf16 312 TFLOPS``."""

    def __init__(self, env: Env, prop: Prop, usage: str):
        self.env = env
        self.prop = prop
        self.usage = usage
        self.i = 0
        for value in prop.values:
            if isinstance(value, Quantity):
                self._unit_needs_number(value)

    @property
    def more(self) -> bool:
        """Whether values remain."""
        return self.i < len(self.prop.values)

    def _next(self, wanted: str) -> Value:
        if not self.more:
            end = self.prop.pos
            at = Pos(end.file, end.end_line, end.end_column, end.end_line, end.end_column)
            raise self.env.error(f"'{self.prop.name}' needs {wanted}", at, self.usage)
        value = self.prop.values[self.i]
        self.i += 1
        return value

    def done(self) -> None:
        """Complain about values left over."""
        if self.more:
            extra = self.prop.values[self.i]
            raise self.env.error(
                f"unexpected '{self.env.text(extra.pos)}' after '{self.prop.name}'",
                extra.pos,
                self.usage,
            )

    def word(self, wanted: str = "a name") -> tuple[str, Pos]:
        """A bare name or a string."""
        value = self._next(wanted)
        if isinstance(value, String):
            return value.value, value.pos
        if value.unit is None and isinstance(value.expr, Path) and value.expr.bare_name:
            return value.expr.bare_name, value.pos
        raise self.env.error(
            f"'{self.prop.name}' needs {wanted}, found '{self.env.text(value.pos)}'",
            value.pos,
            self.usage,
        )

    def peek_is_word(self) -> bool:
        """True if the next value is a bare name (so it is not a number or quantity)."""
        if not self.more:
            return False
        value = self.prop.values[self.i]
        return isinstance(value, Quantity) and value.unit is None and (
            isinstance(value.expr, Path) and value.expr.bare_name is not None
            and value.expr.bare_name not in self.env.params
        )

    def path(self) -> Path:
        """A member pattern such as ``node[*].gpu[*]``."""
        value = self._next("a member pattern such as gpu[*]")
        if isinstance(value, Quantity) and value.unit is None and isinstance(value.expr, Path):
            return value.expr
        raise self.env.error(
            f"expected a member pattern such as node[*].gpu[*], found '{self.env.text(value.pos)}'",
            value.pos,
            self.usage,
        )

    def number(self, wanted: str = "a number") -> tuple[Fraction, Pos]:
        """A plain number (no unit)."""
        value = self._next(wanted)
        if isinstance(value, String):
            raise self.env.error(f"'{self.prop.name}' needs {wanted}, found a string", value.pos)
        if value.unit is not None:
            raise self.env.error(
                f"'{self.prop.name}' takes a plain number, without a unit",
                value.unit_pos or value.pos,
                self.usage,
            )
        return self.env.number(value.expr), value.pos

    def quantity(self, dim: str) -> tuple[float, Pos]:
        """A number with a unit of dimension ``dim``, converted to SI base units."""
        value = self._next(f"a {dim} such as {units.EXAMPLES[dim]}")
        if isinstance(value, String):
            raise self.env.error(f"expected a {dim} such as {units.EXAMPLES[dim]}", value.pos)
        number = self.env.number(value.expr)
        if value.unit is None and self.more:
            follower = self.prop.values[self.i]
            if isinstance(follower, Quantity) and not isinstance(follower.expr, Number):
                word = self.env.text(follower.pos)
                raise self.env.error(
                    f"unknown unit '{word}'", follower.pos, units.suggest_unit(word, dim)
                )
        try:
            si = units.to_si(number, value.unit, dim, self.prop.name)
        except units.UnitError as exc:
            at = value.unit_pos if exc.at_unit and value.unit_pos else value.pos
            raise self.env.error(exc.message, at, exc.hint) from None
        if si < 0 or (si == 0 and dim != units.TIME):
            # rates and sizes are divided by when costing: zero would crash compile later
            bound = "at least zero" if dim == units.TIME else "greater than zero"
            raise self.env.error(
                f"{self.prop.name} must be {bound}, got '{self.env.text(value.pos)}'",
                value.pos, self.usage)
        return si, value.pos

    def _unit_needs_number(self, value: Quantity) -> None:
        """``bf16 TFLOPS`` or ``memory GB``: a unit with no number in front of it."""
        text = self.env.text(value.pos)
        if value.unit is None and text in units.UNITS and text not in self.env.params:
            raise self.env.error(f"'{text}' needs a number in front of it", value.pos,
                                 self.usage)
        name = isinstance(value.expr, Path) and value.expr.bare_name
        if not name or name in self.env.params or value.unit is None:
            return  # 'let bw = 450' ... 'bandwidth bw GB/s' is fine
        raise self.env.error(f"a unit must follow a number, found '{text}'",
                             value.unit_pos or value.pos, self.usage)
