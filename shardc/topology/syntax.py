"""The abstract syntax of topology files: small frozen dataclasses, each with its position.

The parser produces these; the semantic pass (:mod:`shardc.topology.elaborate`) consumes
them. Every node keeps a :class:`Pos` so that any later check, however far from the
parser, can point at the exact text that caused it. Expressions are kept unevaluated
because a group body is elaborated once per instance and a ``let`` may be overridden
from the command line after parsing.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction


@dataclass(frozen=True, slots=True)
class Pos:
    """A source span: ``file``, 1-based ``line``/``column``, exclusive end column."""

    file: str
    line: int
    column: int
    end_line: int
    end_column: int

    def where(self) -> str:
        """``file:line:col``, the prefix every message starts with."""
        return f"{self.file}:{self.line}:{self.column}"


# ---------------------------------------------------------------- expressions and values
@dataclass(frozen=True, slots=True)
class Number:
    """A numeric literal, kept exact so that ``1.6 TB/s == 1600 GB/s`` bit for bit."""

    value: Fraction
    pos: Pos


@dataclass(frozen=True, slots=True)
class BinOp:
    """``left op right`` with ``op`` one of ``+ - * / // %``."""

    op: str
    left: Expr
    right: Expr
    pos: Pos


@dataclass(frozen=True, slots=True)
class SelIndex:
    """``[expr]`` inside a selector."""

    expr: Expr
    pos: Pos


@dataclass(frozen=True, slots=True)
class SelRange:
    """``[lo..hi]``, inclusive on both ends."""

    lo: Expr
    hi: Expr
    pos: Pos


@dataclass(frozen=True, slots=True)
class SelStar:
    """``[*]``: every index."""

    pos: Pos


SelItem = SelIndex | SelRange | SelStar


@dataclass(frozen=True, slots=True)
class Segment:
    """One step of a path: a name (``None`` for ``*``) and an optional selector."""

    name: str | None
    selector: tuple[SelItem, ...] | None
    pos: Pos


@dataclass(frozen=True, slots=True)
class Path:
    """``node[*].gpu[0..3]``; a single bare name doubles as a parameter reference."""

    segments: tuple[Segment, ...]
    pos: Pos

    @property
    def bare_name(self) -> str | None:
        """The name if this path is one plain identifier (a word or a parameter)."""
        if len(self.segments) == 1 and self.segments[0].selector is None:
            return self.segments[0].name
        return None


Expr = Number | BinOp | Path


@dataclass(frozen=True, slots=True)
class Quantity:
    """A value in a property or ``let``: an expression and an optional unit."""

    expr: Expr
    unit: str | None
    unit_pos: Pos | None
    pos: Pos


@dataclass(frozen=True, slots=True)
class String:
    """A double-quoted string (include paths, free-form tag values)."""

    value: str
    pos: Pos


Value = Quantity | String


# ---------------------------------------------------------------- statements
@dataclass(frozen=True, slots=True)
class Let:
    """``let NAME = value``: a parameter, overridable from the CLI and the API."""

    name: str
    value: Value
    name_pos: Pos
    pos: Pos


@dataclass(frozen=True, slots=True)
class Include:
    """``include "file.topo"``, resolved relative to the including file."""

    path: str
    path_pos: Pos
    pos: Pos


@dataclass(frozen=True, slots=True)
class Prop:
    """A property line inside a block: ``compute bf16 312 TFLOPS``."""

    name: str
    values: tuple[Value, ...]
    name_pos: Pos
    pos: Pos


@dataclass(frozen=True, slots=True)
class KindDef:
    """``kind NAME [extends BASE] { props }``: a device kind."""

    name: str
    base: str | None
    body: tuple[Stmt, ...]
    name_pos: Pos
    base_pos: Pos | None
    pos: Pos


@dataclass(frozen=True, slots=True)
class DeviceDecl:
    """``gpu[0..7]: h100``: one device per index, named ``gpu0`` ... ``gpu7``."""

    name: str
    selector: tuple[SelItem, ...] | None
    kind: str
    name_pos: Pos
    kind_pos: Pos
    pos: Pos


@dataclass(frozen=True, slots=True)
class GroupDecl:
    """``node[0..47] { ... }``: the body is elaborated once per index."""

    name: str
    selector: tuple[SelItem, ...] | None
    body: tuple[Stmt, ...]
    name_pos: Pos
    pos: Pos


@dataclass(frozen=True, slots=True)
class LinkStmt:
    """``link a <-> b: kind { props }``: point-to-point links."""

    a: Path
    b: Path
    link_kind: str
    body: tuple[Stmt, ...]
    kind_pos: Pos
    pos: Pos


@dataclass(frozen=True, slots=True)
class FabricStmt:
    """``switch|mesh|network NAME: kind { props }``: a fabric joining members."""

    fabric: str
    name: str
    link_kind: str
    body: tuple[Stmt, ...]
    name_pos: Pos
    kind_pos: Pos
    pos: Pos


Stmt = Let | Include | Prop | KindDef | DeviceDecl | GroupDecl | LinkStmt | FabricStmt


@dataclass(frozen=True, slots=True)
class Module:
    """One parsed file: its statements and its text (kept for error context)."""

    file: str
    text: str
    stmts: tuple[Stmt, ...]
