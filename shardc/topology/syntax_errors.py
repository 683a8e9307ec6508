"""Friendly syntax errors: classify lark's error by example, check braces by indentation.

LALR parsers stop at the first token that cannot continue a program, and that token's
parser state says a lot about what the writer meant. Following lark's
``examples/advanced/error_reporting_lalr.py``, we keep a table of small broken programs,
each labelled with the message and hint it deserves; an error that stops the parser in
the same state as one of the examples gets that example's message.

A forgotten ``}`` is the one mistake the parser reports far from its cause (usually at the
end of the file), so when the braces do not balance we also look at indentation: the
``{`` whose closing brace is indented like an outer block is the one left open.
"""

from __future__ import annotations

import functools

from lark import Lark
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken

from shardc.errors import TopologyError
from shardc.topology.diagnostics import caret_context

# (message, hint, examples). Order matters only when two examples share a parser state.
_EXAMPLES: list[tuple[str, str | None, list[str]]] = [
    (
        "a device declaration needs a kind name after ':'",
        "write e.g. 'gpu[0..7]: h100', where h100 is a kind defined with 'kind h100 { ... }'",
        ["gpu[0..7]:\n", "gpu:\n", "gpu: 3\n", "gpu: {}\n"],
    ),
    (
        "names may not contain '-'",
        "use '_' instead, e.g. 'nvlink_c2c'",
        ["gpu: a-b\n", "switch s-x: nvlink {}\n", "link a <-> b: c-d {}\n"],
    ),
    (
        "a declaration needs ': KIND' (a device) or a '{ ... }' body (a group)",
        "write 'gpu[0..7]: h100' or 'node[0..3] { ... }'",
        ["gpu[0..7]\n", "gpu[0..7] a100\n", "gpu[0..7] 3\n", "gpu[0] = 1\n"],
    ),
    (
        "unclosed selector: expected ']'",
        "selectors look like [3], [0..7], [0..3, 8] or [*]",
        ["gpu[0..7: a\n", "gpu[0..7\n", "gpu[0 1]: a\n", "x y[0\n", "gpu[0..7 {\n"],
    ),
    (
        "a range needs both ends, as in [0..7]",
        None,
        ["gpu[0..]: a\n", "gpu[..3]: a\n", "x y[1..]\n"],
    ),
    (
        "'let' needs a name, '=' and a value",
        "write e.g. 'let nodes = 48'",
        ["let x 4\n", "let = 4\n", "let x =\n", "let\n", "let 3 = 4\n", "let x = 4 5\n"],
    ),
    (
        "'include' needs a quoted path",
        'write e.g. include "kinds/nvidia.topo"',
        ["include foo\n", "include\n", "include 3\n"],
    ),
    (
        "a kind needs a name and a '{ ... }' body",
        "write e.g. 'kind h100 { compute bf16 989.4 TFLOPS ... }'",
        ["kind a100\n", "kind {\n}\n", "kind a100 b {\n}\n", "kind a extends {\n}\n",
         "kind 3 {}\n"],
    ),
    (
        "a link is written 'link A <-> B: KIND { ... }'",
        "e.g. 'link cpu0 <-> gpu0: c2c { bandwidth 450 GB/s }'",
        ["link a b: x\n", "link a <-> b\n", "link a <-> b:\n", "link\n",
         "link a <-> b: x y\n", "link a <-> : x\n"],
    ),
    (
        "a fabric is written 'switch|mesh|network NAME: KIND { ... }'",
        "e.g. 'switch nvswitch: nvlink { members gpu[*]; bandwidth 450 GB/s }'",
        ["switch s {\n}\n", "switch s\n", "switch: nvlink {\n}\n", "mesh {\n}\n", "network n:\n",
         "switch s: nvlink x\n"],
    ),
    (
        "properties are written 'NAME VALUE ...', without '=' or ':'",
        "e.g. 'memory 80 GB'",
        ["memory = 80\n", "x { memory = 80 }\n"],
    ),
    (
        "a statement cannot start here",
        "statements start with a name or a keyword (let, include, kind, link, switch, mesh, "
        "network)",
        ["80 GB\n", "x { 80 GB }\n", ". x\n", "[x]\n", "<-> a\n", "\"s\"\n", "x {\n 3 \n}\n"],
    ),
    (
        "an incomplete expression",
        "operators need a value on both sides, e.g. nodes * 8",
        ["let x = 3 +\n", "let x = (3\n", "x 3 *\n", "x (\n", "x 3 + *\n"],
    ),
    (
        "'}' without a matching '{'",
        None,
        ["}\n", "x: a\n}\n"],
    ),
]

_NAMES = {
    "NAME": "a name",
    "NUMBER": "a number",
    "STRING": 'a "string"',
    "UNIT": "a unit",
    "_NL": "end of line",
    "$END": "end of file",
}


def _describe(token_type: str, parser: Lark) -> str:
    if token_type in _NAMES:
        return _NAMES[token_type]
    try:
        pattern = parser.get_terminal(token_type).pattern
    except KeyError:
        return token_type
    return repr(pattern.value) if pattern.type == "str" else token_type


def _position(exc: UnexpectedInput, text: str) -> tuple[int, int, str]:
    """Line, column and the text found there (end of file counts as its own place)."""
    if isinstance(exc, UnexpectedToken) and exc.token.type == "$END":
        lines = text.split("\n")
        return len(lines), len(lines[-1]) + 1, "end of file"
    if isinstance(exc, UnexpectedCharacters):
        at = exc.pos_in_stream or 0
        return exc.line, exc.column, repr(text[at : at + 1])
    token = exc.token  # type: ignore[attr-defined]
    if token.type == "_NL":
        found = "end of line" if token.value[:1] != ";" else "';'"
    else:
        found = repr(str(token))
    return token.line, token.column, found


def explain_syntax_error(exc: UnexpectedInput, text: str, file: str, parser: Lark) -> TopologyError:
    """The :class:`TopologyError` to raise for a lark parse error in ``text``."""
    line, column, found = _position(exc, text)
    brace = _brace_problem(text)
    if brace is not None and (brace[0], brace[1]) < (line, column):
        bline, bcol, bmessage, bhint = brace
        return TopologyError(
            bmessage, file=file, line=bline, column=bcol, hint=bhint,
            context=caret_context(text, bline, bcol),
        )
    label = _classify(exc, parser)
    hint: str | None
    if label is not None:
        message, hint = label
        message = f"{message} (found {found})"
    else:
        message, hint = f"unexpected {found}", _expected_hint(exc, parser)
    if brace is not None and hint is None:
        hint = brace[2]
    return TopologyError(
        message, file=file, line=line, column=column, hint=hint,
        context=caret_context(text, line, column),
    )


def _classify(exc: UnexpectedInput, parser: Lark) -> tuple[str, str | None] | None:
    """The label of the example that stopped the parser in the same state, if any.

    Compared on the LALR state alone (lark's own ``match_examples`` also compares the
    stack depth, so an example would only match at the same nesting level).
    """
    if isinstance(exc, UnexpectedCharacters):
        return ("unexpected character", "names are letters, digits and '_'; comments start "
                "with '#'")
    exact, by_state = _example_table(parser)
    state = _state(exc)
    token_type = getattr(getattr(exc, "token", None), "type", None)
    return exact.get((state, token_type)) or by_state.get(state)


def _state(exc: UnexpectedInput) -> object:
    return getattr(exc.state, "position", exc.state)


@functools.lru_cache(maxsize=4)
def _example_table(parser: Lark) -> tuple[dict, dict]:
    """Parse every example once: (state, token type) -> label, and state -> label."""
    exact: dict = {}
    by_state: dict = {}
    for message, hint, examples in _EXAMPLES:
        for example in examples:
            try:
                parser.parse(example)
            except UnexpectedToken as exc:
                exact.setdefault((_state(exc), exc.token.type), (message, hint))
                by_state.setdefault(_state(exc), (message, hint))
            except UnexpectedInput:
                continue
    return exact, by_state


def _expected_hint(exc: UnexpectedInput, parser: Lark) -> str | None:
    expected = getattr(exc, "expected", None) or getattr(exc, "allowed", None)
    if not expected:
        return None
    names = sorted({_describe(t, parser) for t in expected})
    return "expected " + ", ".join(names)


def _brace_problem(text: str) -> tuple[int, int, str, str] | None:
    """``(line, col, message, hint)`` for unbalanced braces, else ``None``.

    Only consulted when the braces really do not balance, so sloppy but balanced
    indentation never produces a false alarm. A ``}`` is taken to close the block whose
    opening line is indented like it; the first ``}`` that does not is where the
    imbalance shows.
    """
    lines = text.split("\n")
    opens: list[tuple[int, int, int]] = []  # line, column, indentation of that line
    unclosed: tuple[int, int, int] | None = None  # a '{' closed by a '}' indented otherwise
    stray: tuple[int, int, int] | None = None  # the first '}' with no '{' of its indentation
    balance = 0
    for lineno, source in enumerate(lines, start=1):
        indent = len(source) - len(source.lstrip(" \t"))
        for col, ch in _code_chars(source):
            if ch == "{":
                balance += 1
                opens.append((lineno, col, indent))
            elif ch == "}":
                balance -= 1
                top = opens.pop() if opens else None
                aligned = col != indent + 1 or (top is not None and top[2] == indent)
                if top is not None and not aligned and unclosed is None:
                    unclosed = top
                if (top is None or not aligned) and stray is None:
                    stray = (lineno, col, indent)
    if balance > 0:
        line, col, _ = unclosed or opens[-1]
        return (line, col, "this '{' is never closed",
                "add the '}' that ends this block; the braces after it close outer blocks")
    if balance < 0 and stray is not None:
        return _missing_open(lines, *stray)
    return None


def _code_chars(line: str):
    """``(column, char)`` for the characters of a line outside strings and comments."""
    in_string = False
    for col, ch in enumerate(line, start=1):
        if ch == '"':
            in_string = not in_string
        elif not in_string:
            if ch == "#":
                return
            yield col, ch


def _missing_open(lines: list[str], line: int, col: int, indent: int) -> tuple[int, int, str, str]:
    """The block a stray ``}`` closes: the nearest line above indented like it."""
    for k in range(line - 1, 0, -1):
        source = lines[k - 1]
        code = "".join(ch for _, ch in _code_chars(source)).rstrip()
        if not code.strip():
            continue
        if len(source) - len(source.lstrip(" \t")) == indent:
            if not code.endswith("{"):
                return (k, len(code) + 2, "this block has no '{'",
                        f"add '{{' here; the '}}' on line {line} closes it")
            break
    return line, col, "'}' without a matching '{'", "remove it or add the '{' it closes"
