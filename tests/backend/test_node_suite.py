"""The ONNX backend node suite through shardc plans on two devices (see node_suite.py).

Every case onnxruntime passes unsharded must pass as a plan: the fixed sample runs by
default, the whole suite with ``pytest -m slow``. Sequences and optionals run too (as
lists and None). A case the compiler refuses with a clear error is skipped with that
reason; the few accepted failures are listed, each with its cause, in ``node_suite.KNOWN_FAILURES``.
"""

from __future__ import annotations

from functools import cache

import node_suite as ns
import pytest

SAMPLE = 400
"""Cases in the default run (about 20 s on two cores; the suite has ~1,900)."""


@cache
def outcome(name: str) -> ns.Outcome:
    """Each case runs once per session, however many tests ask."""
    return ns.sweep([name])[0]


def check(name: str) -> None:
    o = outcome(name)
    if o.status == ns.SKIPPED:
        pytest.skip(o.reason)
    if o.status == ns.FAILED:
        if name in ns.KNOWN_FAILURES:
            pytest.xfail(ns.KNOWN_FAILURES[name])
        pytest.fail(f"{o.reason}: {o.detail}", pytrace=False)
    assert name not in ns.KNOWN_FAILURES, f"{name} passes now: drop it from KNOWN_FAILURES"


@pytest.mark.parametrize("name", ns.sample(SAMPLE))
def test_sampled_case(name: str) -> None:
    check(name)


NOT_TENSORS = [
    "test_identity_opt",  # optional(sequence) in and out
    "test_if_seq",  # a sequence made inside a branch
    "test_loop13_seq",  # an empty sequence fed to a Loop
    "test_sequence_insert_at_back",
    "test_sequence_map_add_1_sequence_1_tensor_expanded",  # a body captures a graph input
    "test_split_to_sequence_1",
]


@pytest.mark.parametrize("name", NOT_TENSORS)
def test_sequences_and_optionals_run(name: str) -> None:
    """Values that are lists or None cross the runtime as they are, typed as declared."""
    assert ns.sweep([name])[0].status == ns.PASSED


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ns.cases()))
def test_every_case(name: str) -> None:
    check(name)


def test_the_sample_really_divides_work() -> None:
    """Forced sharding is not a no-op: a good share of the sample runs split, and every
    skip has a reason the table can group.
    """
    done = [outcome(n) for n in ns.sample(SAMPLE)]
    passed = [o for o in done if o.status == ns.PASSED]
    assert len(passed) >= 0.75 * len(done)
    assert sum(1 for o in passed if o.split) >= 0.4 * len(passed)
    assert all(o.reason for o in done if o.status != ns.PASSED)
    assert "passed" in ns.table(done)
