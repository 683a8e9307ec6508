"""Options shared by several commands: ``NAME=VALUE`` forms, ``--include-path``, the console.

Bad forms are :class:`shardc.errors.OptionError`, so they print as one line and exit 2.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from shardc.errors import OptionError
from shardc.vocabulary import OPTIONS, Option


def _pairs(items: Iterable[str], flag: str) -> list[tuple[str, str]]:
    out = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise OptionError(f"{flag} {item!r}: expected NAME=VALUE")
        out.append((name.strip(), value.strip()))
    return out


def parse_dims(items: Iterable[str]) -> dict[str, int]:
    """``--dim batch=8`` -> ``{"batch": 8}``; values must be positive integers."""
    dims: dict[str, int] = {}
    for name, value in _pairs(items, "--dim"):
        try:
            n = int(value.replace("_", ""))
        except ValueError:
            raise OptionError(f"--dim {name}={value}: not an integer") from None
        if n <= 0:
            raise OptionError(f"--dim {name}={value}: must be positive")
        dims[name] = n
    return dims


def parse_sets(items: Iterable[str]) -> dict[str, int | float | str]:
    """``--set nodes=4`` -> ``{"nodes": 4}``: ints, then floats, else the string."""
    out: dict[str, int | float | str] = {}
    for name, value in _pairs(items, "--set"):
        try:
            out[name] = int(value)
        except ValueError:
            try:
                out[name] = float(value)
            except ValueError:
                out[name] = value
    return out


def parse_op_costs(items: Iterable[str]) -> dict[str, float]:
    """``--op-cost com.acme::Fused=12`` -> FLOPs per output element for that op."""
    out: dict[str, float] = {}
    for name, value in _pairs(items, "--op-cost"):
        try:
            out[name] = float(value)
        except ValueError:
            raise OptionError(f"--op-cost {name}={value}: not a number") from None
        if out[name] < 0:
            raise OptionError(f"--op-cost {name}={value}: must not be negative")
    return out


WIDE = 200
"""Columns when stdout is not a terminal (pipes, CI logs, tests): wide enough that no
table drops or folds a number, and fixed so the output does not depend on the caller."""


def console() -> Console:
    """The console commands print tables on: the terminal's width, else :data:`WIDE`.

    Rich falls back to 80 columns when stdout is not a terminal, which cut the last
    columns of the plan tables in CI logs.
    """
    return Console(highlight=False, width=None if sys.stdout.isatty() else WIDE)


def include_path_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--include-path DIR`` (repeatable) for every command that reads a topology."""
    return click.option(
        "--include-path",
        "include_path",
        multiple=True,
        type=click.Path(file_okay=False, path_type=Path),
        metavar="DIR",
        help="Folder to look in for `include`d files and topology names, before "
        "$SHARDC_TOPOLOGY_PATH and the stock topologies (repeatable).",
    )(f)


def _click_option(o: Option) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """One :data:`~shardc.vocabulary.OPTIONS` entry as a click flag."""
    kw: dict[str, Any] = {"help": o.help, "metavar": o.metavar}
    if o.name == "pins":
        kw["multiple"] = True
    elif o.name == "warm_start":
        kw["type"] = click.Path(dir_okay=False, path_type=Path)
    elif o.choices:
        kw["type"] = click.Choice(o.choices)
    elif o.low is not None and o.high is not None:
        kw["type"] = click.IntRange(o.low, o.high)
    else:
        kw["type"] = o.type
    if o.default is not None and o.name != "pins":
        kw.update(default=o.default, show_default=True)
    return click.option(o.flag, o.name, **kw)


def compile_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Every compile option (:data:`shardc.vocabulary.OPTIONS`) as a flag, in the table's
    order: the command receives them as keywords of the same names.
    """
    for o in reversed(list(OPTIONS.values())):
        f = _click_option(o)(f)
    return f
