"""Model and user text made safe to print on a terminal.

Why: node names, output names, device names and paths come from files anyone can write.
Printed through rich they are markup (a node named ``[/]`` crashed ``shardc inspect``,
``[link=…]`` became a hyperlink); printed at all, raw ANSI and OSC escapes in them would
drive the user's terminal (recolour, retitle, hide text). Every such string goes through
:func:`markup_safe` before rich prints it and :func:`plain_safe` before ``click.echo``.
"""

from __future__ import annotations

import re

from rich.markup import escape

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
"""C0 and C1 controls, DEL, and the bidirectional overrides that reorder what is shown."""


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def plain_safe(text: object, *, keep_newlines: bool = False) -> str:
    """``text`` with control characters shown as hex escapes (never sent raw)."""
    s = str(text)
    if keep_newlines:
        return "\n".join(_CONTROL.sub(_visible, line) for line in s.split("\n"))
    return _CONTROL.sub(_visible, s)


def markup_safe(text: object) -> str:
    """``text`` as rich prints it literally: controls made visible, markup escaped."""
    return escape(plain_safe(text))
