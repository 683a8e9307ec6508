"""Property: any topology text and any mutated ONNX model is accepted or a ShardcError.

Never another exception (an IndexError, a RecursionError, a lark VisitError): the CLI
would print that as an internal error and exit 1. The inputs come from
:mod:`hostile` (valid clusters and models, mutated); hypothesis draws the random choices,
so a failure shrinks to a small case. Deterministic (``derandomize``) and without
deadlines, so a slow shared machine cannot make it flaky. The long run with counts,
time and memory bounds is ``test_fuzz_long.py`` (``-m slow``).
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

from hostile import dsl_case, onnx_case, outcome, run_dsl, run_onnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SETTINGS = settings(max_examples=300, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@SETTINGS
@given(st.randoms(use_true_random=False))
def test_topology_text_is_accepted_or_a_shardc_error(rng: random.Random) -> None:
    text, overrides = dsl_case(rng)
    result, detail = outcome(lambda: run_dsl(text, overrides))
    assert result in ("accepted", "handled"), f"{detail}\noverrides={overrides!r}\n{text}"


@SETTINGS
@given(st.randoms(use_true_random=False))
def test_mutated_onnx_is_accepted_or_a_shardc_error(rng: random.Random) -> None:
    data = onnx_case(rng)
    with tempfile.TemporaryDirectory() as folder:
        result, detail = outcome(lambda: run_onnx(data, Path(folder)))
    assert result in ("accepted", "handled"), detail
