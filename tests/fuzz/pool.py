"""Run fuzz cases in worker processes bounded in time and memory, and count what happened.

A case that hangs or allocates without end must not take the machine (or the test run)
down, so each worker is a separate ``python tests/fuzz/pool.py`` process that caps its
own address space with ``RLIMIT_AS`` and each case with ``SIGALRM``; the parent also
kills a worker that does not answer within the case limit plus a grace period (a hang
inside C code ignores the alarm) and starts a fresh one. The protocol is one line each
way: the parent writes ``"dsl 123"`` (generator and seed), the worker answers a JSON
object with the outcome.

Outcomes: ``accepted`` and ``handled`` (a ShardcError) are fine; ``unhandled`` (any
other exception), ``hang`` (over the time limit), ``memory`` (MemoryError, or the
worker died: the kernel's or the rlimit's way of saying the same) are failures.
"""

from __future__ import annotations

import json
import os
import resource
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

OUTCOMES = ("handled", "accepted", "unhandled", "hang", "memory")
FAILURES = ("unhandled", "hang", "memory")


@dataclass
class Tally:
    """Counts per generator and outcome, with the seeds of the first few failures."""

    counts: dict[str, Counter[str]] = field(default_factory=dict)
    failures: list[tuple[str, int, str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, kind: str, seed: int, outcome: str, detail: str) -> None:
        """Count one case; keep its seed and detail if it failed."""
        self.counts.setdefault(kind, Counter())[outcome] += 1
        if outcome in FAILURES:
            self.failures.append((kind, seed, outcome, detail))

    def failed(self) -> int:
        """How many cases ended in a failure outcome."""
        return sum(c[o] for c in self.counts.values() for o in FAILURES)

    def table(self) -> str:
        """The counts table, then the first failures with their seeds to replay."""
        width = max(len(o) for o in OUTCOMES)
        lines = ["input  " + "  ".join(f"{o:>{width}}" for o in OUTCOMES) + "     total"]
        for kind, c in sorted(self.counts.items()):
            cells = "  ".join(f"{c[o]:>{width},}" for o in OUTCOMES)
            lines.append(f"{kind:<5}  {cells}  {sum(c.values()):>8,}")
        lines.append(f"wall time {self.seconds:.0f} s")
        for kind, seed, outcome, detail in self.failures[:20]:
            lines.append(f"  {outcome}: {kind} seed {seed}: {detail}")
        return "\n".join(lines)


class _Worker:
    """One bounded worker process and the case it is running."""

    def __init__(self, memory_bytes: int, case_seconds: int):
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, __file__, str(memory_bytes), str(case_seconds)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, bufsize=1, env=env,
        )
        self.case: tuple[str, int] | None = None
        self.started = 0.0

    def send(self, kind: str, seed: int) -> None:
        assert self.proc.stdin is not None
        self.case, self.started = (kind, seed), time.monotonic()
        self.proc.stdin.write(f"{kind} {seed}\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def run(cases: list[tuple[str, int]], *, workers: int = 2, case_seconds: int = 20,
        memory_bytes: int = 3 * 2**29, progress: bool = False) -> Tally:
    """Run every ``(generator, seed)`` case on ``workers`` bounded processes."""
    tally, todo = Tally(), list(reversed(cases))
    start = time.monotonic()
    pool = [_Worker(memory_bytes, case_seconds) for _ in range(min(workers, len(cases)))]
    done = 0
    try:
        while todo or any(w.case for w in pool):
            for i, w in enumerate(pool):
                if w.case is None and todo:
                    case = todo.pop()
                    try:
                        w.send(*case)
                    except OSError:  # it died between cases: replace it, retry the case
                        w.stop()
                        pool[i] = _Worker(memory_bytes, case_seconds)
                        todo.append(case)
            busy = {w.proc.stdout: w for w in pool if w.case is not None}
            ready, _, _ = select.select(list(busy), [], [], 1.0)
            for stream in ready:
                w = busy[stream]
                assert w.case is not None and stream is not None
                kind, seed = w.case
                line = stream.readline()
                if not line:  # the process died: out of memory, or killed by a signal
                    tally.add(kind, seed, "memory", f"worker died ({w.proc.poll()})")
                    w.stop()
                    pool[pool.index(w)] = _Worker(memory_bytes, case_seconds)
                else:
                    answer = json.loads(line)
                    tally.add(kind, seed, answer["outcome"], answer["detail"])
                    w.case = None
                    if answer["outcome"] in ("memory", "hang"):  # its state is suspect
                        w.stop()
                        pool[pool.index(w)] = _Worker(memory_bytes, case_seconds)
                done += 1
                if progress and done % 500 == 0:
                    print(f"  {done:,} of {len(cases):,} cases, {tally.failed()} failures "
                          f"({time.monotonic() - start:.0f} s)", flush=True)
            for i, w in enumerate(pool):
                if w.case and time.monotonic() - w.started > case_seconds + 10:
                    tally.add(*w.case, "hang", f"no answer in {case_seconds + 10} s (killed)")
                    w.stop()
                    pool[i] = _Worker(memory_bytes, case_seconds)
                    done += 1
    finally:
        for w in pool:
            w.stop()
    tally.seconds = time.monotonic() - start
    return tally


# ---------------------------------------------------------------- the worker side
class _Timeout(BaseException):
    """Raised by SIGALRM; a BaseException so the outcome classifier does not catch it."""


def _alarm(signum: int, frame: object) -> None:
    raise _Timeout


def serve(memory_bytes: int, case_seconds: int) -> None:
    """Answer cases from stdin until it closes (the worker process's main loop)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import random

    import hostile

    from shardc.errors import ShardcError  # noqa: F401  (imported before the cap)

    sys.setrecursionlimit(1000)  # the default, whatever the parent had
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    signal.signal(signal.SIGALRM, _alarm)
    folder = Path(tempfile.mkdtemp(prefix="shardc-fuzz-"))
    for line in sys.stdin:
        kind, seed_text = line.split()
        seed = int(seed_text)
        started = time.monotonic()
        signal.alarm(case_seconds)
        try:
            rng = random.Random(seed)
            if kind == "dsl":
                text, overrides = hostile.dsl_case(rng)
                outcome, detail = hostile.outcome(partial(hostile.run_dsl, text, overrides))
            else:
                data = hostile.onnx_case(rng)
                outcome, detail = hostile.outcome(partial(hostile.run_onnx, data, folder))
        except _Timeout:
            outcome, detail = "hang", f"over {case_seconds} s"
        except MemoryError:
            outcome, detail = "memory", "MemoryError"
        finally:
            signal.alarm(0)
        answer = {"outcome": outcome, "detail": detail,
                  "seconds": round(time.monotonic() - started, 3)}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]))
