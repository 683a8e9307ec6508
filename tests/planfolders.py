"""Helpers for tests that write plan folders by hand (emit tests, the plan-folder fuzzer)."""

from __future__ import annotations

import json
from typing import Any


def plan_json(state: Any, emission: dict[str, Any]) -> bytes:
    """A plan.json that passes the plan-folder reader's checks, around ``emission`` and the
    partition of compile state ``state`` (what a test's hand-made folder needs).
    """
    plan = {
        "format": "shardc-plan/1",
        "shardc": "test",
        "inputs": {"model": {"path": "<test>"}, "topology": {"path": "<test>"}},
        "options": {},
        "partition": state.partition.to_json(),
        "emission": emission,
    }
    return json.dumps(plan, sort_keys=True).encode()
