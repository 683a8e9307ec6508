"""Canonical JSON: sorted keys, fixed separators, a trailing newline.

Every JSON file and ``--json`` output goes through here, which is what makes two runs
with the same inputs byte-identical.
"""

from __future__ import annotations

import json
from typing import Any


def dumps(obj: Any, *, indent: int | None = 2) -> str:
    """Serialise ``obj`` canonically (deterministic across runs and machines)."""
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
