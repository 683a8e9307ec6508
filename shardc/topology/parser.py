"""Text to :mod:`~shardc.topology.syntax` trees: the lark grammar plus a transformer.

The grammar lives in ``grammar.lark`` next to this file. Parsing is LALR(1), so it is
linear in the file size and a parse error is found at the first token that cannot
continue a valid program; :mod:`shardc.topology.syntax_errors` turns that into a message
with a hint.
"""

from __future__ import annotations

import functools
from fractions import Fraction
from pathlib import Path as FsPath

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedInput, VisitError
from lark.tree import Meta

from shardc.errors import ShardcError, TopologyError
from shardc.topology import limits
from shardc.topology import syntax as ast
from shardc.topology.diagnostics import error_at
from shardc.topology.syntax_errors import explain_syntax_error

_GRAMMAR = FsPath(__file__).with_name("grammar.lark")


@functools.lru_cache(maxsize=1)
def lark_parser() -> Lark:
    """The one LALR parser instance (building it takes ~50 ms, so it is cached)."""
    return Lark(
        _GRAMMAR.read_text(encoding="utf-8"),
        parser="lalr",
        lexer="contextual",
        propagate_positions=True,
        maybe_placeholders=False,
    )


def parse(text: str, *, file: str = "<text>") -> ast.Module:
    """Parse topology source text into a :class:`~shardc.topology.syntax.Module`.

    Raises :class:`shardc.errors.TopologyError` (never a lark exception) on bad syntax.
    Includes are not followed here; :func:`shardc.topology.load_topology` does that.
    """
    parser = lark_parser()
    try:
        limits.check_source_size(len(text.encode("utf-8", "surrogatepass")))
    except limits.LimitError as exc:
        raise TopologyError(exc.message, file=file, hint=exc.hint) from None
    try:
        tree = parser.parse(text)
    except UnexpectedInput as exc:
        raise explain_syntax_error(exc, text, file, parser) from None
    try:
        limits.check_tree(tree)  # before the recursive transformer can overflow the stack
    except limits.LimitError as exc:
        line, column = exc.line or 1, exc.column or 1
        raise error_at(exc.message, ast.Pos(file, line, column, line, column + 1),
                       {file: text}, exc.hint) from None
    try:
        stmts = _ToAst(file, text).transform(tree)
    except VisitError as exc:  # lark wraps what a rule raises; ours are user errors
        if isinstance(exc.orig_exc, ShardcError):
            raise exc.orig_exc from None
        raise
    return ast.Module(file=file, text=text, stmts=tuple(stmts))


def _pos(file: str, meta: Meta | Token) -> ast.Pos:
    return ast.Pos(file, meta.line, meta.column, meta.end_line, meta.end_column)  # type: ignore[arg-type]


def _sel(children: list) -> tuple[ast.SelItem, ...] | None:
    for child in children:
        if isinstance(child, tuple):
            return child
    return None


def _body(children: list) -> tuple[ast.Stmt, ...]:
    for child in children:
        if isinstance(child, list):
            return tuple(child)
    return ()


@v_args(meta=True)
class _ToAst(Transformer):
    """Builds the dataclass tree bottom-up; each method sees already-built children."""

    def __init__(self, file: str, text: str):
        super().__init__()
        self.file = file
        self.text = text

    def _p(self, meta: Meta | Token) -> ast.Pos:
        return _pos(self.file, meta)

    # structure
    def start(self, meta, children):
        return children

    def block(self, meta, children):
        return list(children)

    def let_stmt(self, meta, c):
        return ast.Let(str(c[0]), c[1], self._p(c[0]), self._p(meta))

    def include_stmt(self, meta, c):
        return ast.Include(str(c[0])[1:-1], self._p(c[0]), self._p(meta))

    def kind_def(self, meta, c):
        names = [x for x in c if isinstance(x, Token)]
        base = names[1] if len(names) > 1 else None
        return ast.KindDef(
            str(names[0]),
            str(base) if base is not None else None,
            _body(c),
            self._p(names[0]),
            self._p(base) if base is not None else None,
            self._p(meta),
        )

    def device_decl(self, meta, c):
        return ast.DeviceDecl(
            str(c[0]), _sel(c), str(c[-1]), self._p(c[0]), self._p(c[-1]), self._p(meta)
        )

    def group_decl(self, meta, c):
        return ast.GroupDecl(str(c[0]), _sel(c), _body(c), self._p(c[0]), self._p(meta))

    def link_stmt(self, meta, c):
        return ast.LinkStmt(c[0], c[1], str(c[2]), _body(c), self._p(c[2]), self._p(meta))

    def fabric_stmt(self, meta, c):
        return ast.FabricStmt(
            str(c[0]), str(c[1]), str(c[2]), _body(c), self._p(c[1]), self._p(c[2]), self._p(meta)
        )

    def fabric_type(self, meta, c):
        return c[0]

    def prop(self, meta, c):
        return ast.Prop(str(c[0]), tuple(c[1:]), self._p(c[0]), self._p(meta))

    # selectors and paths
    def selector(self, meta, c):
        return tuple(c)

    def sel_range(self, meta, c):
        return ast.SelRange(c[0], c[1], self._p(meta))

    def sel_index(self, meta, c):
        return ast.SelIndex(c[0], self._p(meta))

    def sel_star(self, meta, c):
        return ast.SelStar(self._p(meta))

    def path(self, meta, c):
        return ast.Path(tuple(c), self._p(meta))

    def seg(self, meta, c):
        return ast.Segment(str(c[0]), _sel(c), self._p(meta))

    def seg_star(self, meta, c):
        return ast.Segment(None, None, self._p(meta))

    # values and expressions
    def quantity(self, meta, c):
        unit = c[1] if len(c) > 1 else None
        return ast.Quantity(
            c[0],
            str(unit) if unit is not None else None,
            self._p(unit) if unit is not None else None,
            self._p(meta),
        )

    def string(self, meta, c):
        return ast.String(str(c[0])[1:-1], self._p(meta))

    def number(self, meta, c):
        pos = self._p(meta)
        try:
            value: Fraction = limits.literal(str(c[0]))
        except limits.LimitError as exc:
            raise error_at(exc.message, pos, {self.file: self.text}, exc.hint) from None
        return ast.Number(value, pos)

    def add(self, meta, c):
        return ast.BinOp("+", c[0], c[1], self._p(meta))

    def sub(self, meta, c):
        return ast.BinOp("-", c[0], c[1], self._p(meta))

    def mul(self, meta, c):
        return ast.BinOp("*", c[0], c[1], self._p(meta))

    def div(self, meta, c):
        return ast.BinOp("/", c[0], c[1], self._p(meta))

    def floordiv(self, meta, c):
        return ast.BinOp("//", c[0], c[1], self._p(meta))

    def mod(self, meta, c):
        return ast.BinOp("%", c[0], c[1], self._p(meta))
