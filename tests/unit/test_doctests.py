"""The examples in the API's docstrings run and print what they say.

Run from the repository root, where the docstrings' relative paths
(``examples/models/tiny_gpt2.onnx``, ``topologies/localhost.topo``) resolve.
"""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULES = ["shardc", "shardc.api", "shardc.handle", "shardc.errors"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    module = importlib.import_module(name)
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    result = doctest.testmod(module, optionflags=flags, report=True)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
