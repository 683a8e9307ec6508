"""The full sweeps here are long: tests marked ``slow`` run only when ``-m`` asks for them
(they are deselected otherwise, so the default run does not list ~1,900 skips).
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect this folder's ``slow`` tests unless the ``-m`` expression names ``slow``."""
    if "slow" in (config.getoption("-m") or ""):
        return
    slow = [i for i in items if "slow" in i.keywords and HERE in Path(i.fspath).parents]
    if slow:
        config.hook.pytest_deselected(items=slow)
        chosen = set(map(id, slow))
        items[:] = [i for i in items if id(i) not in chosen]
