"""Benchmarks print figures and take seconds to minutes: run them only when asked.

The ``bench_*.py`` files are collected as test modules (pytest's default pattern is
``test_*.py``), so ``pytest -m bench`` finds them all; every run whose ``-m`` expression
does not name ``bench`` skips the tests marked ``@pytest.mark.bench``, so the default run
spends no time here. Each benchmark is also a script: ``python tests/bench/bench_X.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    """Collect ``bench_*.py`` here (a file named on the command line is collected anyway)."""
    if (file_path.suffix == ".py" and file_path.name.startswith("bench_")
            and not parent.session.isinitpath(file_path)):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``bench``-marked tests unless the ``-m`` expression asks for them."""
    if "bench" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="benchmark: run with -m bench")
    for item in items:
        if "bench" in item.keywords:
            item.add_marker(skip)
