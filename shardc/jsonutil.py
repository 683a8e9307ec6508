"""Canonical JSON: sorted keys, fixed separators, a trailing newline.

Every JSON file and ``--json`` output goes through here, which is what makes two runs
with the same inputs byte-identical.

Why a writer of our own for the indented form: the standard library writes indented JSON
with its pure-Python generator encoder (its C encoder only writes the compact form), and
schedule.json of a long pipeline holds a million events, which took longer to write than
to compile. :func:`_indented` writes the same bytes as ``json.dumps(obj, sort_keys=True,
indent=n, ensure_ascii=False, allow_nan=False)`` for plain data (dicts with string keys,
lists, tuples, strings, ints, finite floats, bools, None) and hands anything else back to
the standard library, so the output never depends on which path wrote it.
"""

from __future__ import annotations

import json
import math
from json.encoder import encode_basestring
from typing import Any


class _NotPlain(Exception):
    """The object holds something only the standard library's encoder knows how to write."""


def dumps(obj: Any, *, indent: int | None = 2) -> str:
    """Serialise ``obj`` canonically (deterministic across runs and machines)."""
    if indent:
        try:
            return _indented(obj, indent) + "\n"
        except (_NotPlain, RecursionError):
            pass  # the standard library writes it, or raises its own error
    return (
        json.dumps(
            obj,
            sort_keys=True,
            indent=indent,
            ensure_ascii=False,
            allow_nan=False,
            separators=(",", ": ") if indent else (",", ":"),
        )
        + "\n"
    )


def _indented(obj: Any, indent: int) -> str:
    """``obj`` as ``json.dumps(..., sort_keys=True, indent=indent)`` writes it (see the
    module docstring); raises :class:`_NotPlain` where that needs the standard library.
    """
    parts: list[str] = []
    add = parts.append
    isfinite = math.isfinite
    enc = encode_basestring
    frepr = float.__repr__
    irepr = int.__repr__

    def scalar(o: Any) -> str | None:
        """A scalar's text; None for a container."""
        t = type(o)
        if t is str:
            return enc(o)
        if t is float:
            if not isfinite(o):
                raise _NotPlain
            return frepr(o)
        if t is int:
            return irepr(o)
        if t is bool:
            return "true" if o else "false"
        if o is None:
            return "null"
        if t is dict or t is list or t is tuple:
            return None
        raise _NotPlain

    def write(o: Any, level: int) -> None:
        text = scalar(o)
        if text is not None:
            add(text)
            return
        close = "\n" + " " * (indent * level)
        inner = close + " " * indent
        if type(o) is dict:
            if not o:
                add("{}")
                return
            sep = "{" + inner
            for k in sorted(o):
                if type(k) is not str:
                    raise _NotPlain
                v = o[k]
                text = scalar(v)
                if text is not None:
                    add(sep + enc(k) + ": " + text)
                else:
                    add(sep + enc(k) + ": ")
                    write(v, level + 1)
                sep = "," + inner
            add(close + "}")
            return
        if not o:
            add("[]")
            return
        sep = "[" + inner
        for v in o:
            text = scalar(v)
            if text is not None:
                add(sep + text)
            else:
                add(sep)
                write(v, level + 1)
            sep = "," + inner
        add(close + "]")

    write(obj, 0)
    return "".join(parts)
