"""Per-op rule tables: one decorator factory for every table keyed by op name."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable[..., object])


def registrar(table: dict[str, F]) -> Callable[..., Callable[[F], F]]:
    """A decorator factory that files a function under each op key it is given.

    Keys are ``op`` for the default ONNX domain and ``domain::op`` otherwise, the form
    :attr:`shardc.ir.Node.qualified_op` produces.
    """

    def register(*ops: str) -> Callable[[F], F]:
        def deco(fn: F) -> F:
            for op in ops:
                table[op] = fn
            return fn

        return deco

    return register
