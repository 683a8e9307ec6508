"""The long fuzz run: 10,000 topology texts and 2,000 ONNX mutations, bounded and counted.

Each case runs in a worker process capped at 1.5 GiB of address space and 20 s (see
:mod:`pool`), so a hang or a memory bomb is counted, not suffered. The run prints the
counts table (handled error, accepted, unhandled, hang, memory per input kind) and fails
on any unhandled, hang or memory outcome, listing the seeds to replay with
``hostile.dsl_case(random.Random(seed))`` or ``hostile.onnx_case(...)``.

Opt in with ``pytest tests/fuzz -m slow -s``, or run ``python tests/fuzz/test_fuzz_long.py
[DSL_CASES ONNX_CASES]`` for the table alone. Seeds are fixed: every run makes the same
inputs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pool

DSL_CASES = 10_000
ONNX_CASES = 2_000
SEED_BASE = 1_000_000  # apart from the seeds small runs tend to try first


def cases(dsl: int = DSL_CASES, onnx: int = ONNX_CASES) -> list[tuple[str, int]]:
    """The fixed case list, interleaved so both kinds make progress together."""
    out = [("dsl", SEED_BASE + i) for i in range(dsl)]
    step = max(1, dsl // max(onnx, 1))
    for i in range(onnx):
        out.insert(min(len(out), i * (step + 1)), ("onnx", SEED_BASE + i))
    return out


@pytest.mark.slow
def test_long_fuzz_run_has_no_unhandled_hang_or_memory_outcome() -> None:
    tally = pool.run(cases(), progress=True)
    print("\n" + tally.table())
    assert tally.counts["dsl"].total() >= 10_000 and tally.counts["onnx"].total() >= 1_000
    assert tally.failed() == 0, tally.table()


def main() -> int:
    """Run the cases (counts from the command line, if given) and print the table."""
    dsl, onnx = (int(a) for a in sys.argv[1:3]) if len(sys.argv) > 2 else (DSL_CASES, ONNX_CASES)
    tally = pool.run(cases(dsl, onnx), progress=True)
    print(tally.table())
    return 1 if tally.failed() else 0


if __name__ == "__main__":
    sys.exit(main())
