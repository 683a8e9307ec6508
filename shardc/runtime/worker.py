"""``python -m shardc.runtime.worker``: one rank started by :mod:`shardc.runtime.launch`.

Why files, not pipes, between the launcher and its workers: a rank that dies or hangs
must still leave behind where it was (``rank<R>.at``, a memory-mapped record of its
current op), and a
rank that fails cleanly what went wrong (``rank<R>.err``), for the launcher's message.
Results (``out<R>.npz``) and timings (``rank<R>.json``) are written only on success.

``SHARDC_FAULT=die@R`` or ``hang@R`` makes rank R die (SIGKILL) or hang at its first
communication op: a test hook for the launcher's fault handling, nothing else reads it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import mmap
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np


def _watch(lifeline: int | None, parent: int) -> None:
    """Leave when the launcher is gone, so no rank outlives it: the lifeline pipe reads
    EOF once the launcher's end is closed (however it died); without one, poll the parent.
    """
    if lifeline is not None:
        with contextlib.suppress(OSError):
            while os.read(lifeline, 1):
                pass
    else:
        while os.getppid() == parent:
            time.sleep(0.1)
    os._exit(70)


class _Position:
    """The rank's position in a small memory-mapped file: written at every op with no
    system call, and still there for the launcher if the process is killed.
    """

    SIZE = 1024

    def __init__(self, path: Path):
        with path.open("wb") as f:
            f.write(b"\0" * self.SIZE)
        self._file = path.open("r+b")
        self._map = mmap.mmap(self._file.fileno(), self.SIZE)
        self("starting")

    def __call__(self, text: str) -> None:
        data = text.encode()[: self.SIZE - 1]
        self._map[: len(data) + 1] = data + b"\0"


def _inject(runner, rank: int) -> None:
    fault = os.environ.get("SHARDC_FAULT", "")
    kind, _, who = fault.partition("@")
    if not fault or int(who or -1) != rank:
        return
    answer = runner.comm.answer

    def faulty(request):
        if kind == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        if kind == "hang":
            time.sleep(10**6)
        return answer(request)

    runner.comm.answer = faulty


def start(
    prog: str, folder: str, argv: list[str] | None
) -> tuple[argparse.Namespace, int, Path, _Position]:
    """What every worker does first: its arguments (``folder``, the work folder, the
    launcher's timeout, shape checks, the lifeline), the watch that ends it when the
    launcher is gone, its rank, and where it publishes what it is doing.
    """
    p = argparse.ArgumentParser(prog=prog)
    p.add_argument(folder)
    p.add_argument("workdir")
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--check-shapes", action="store_true")
    p.add_argument("--lifeline", type=int, help="fd whose EOF means the launcher is gone")
    args = p.parse_args(argv)
    threading.Thread(target=_watch, args=(args.lifeline, os.getppid()), daemon=True).start()
    rank = int(os.environ["RANK"])
    work = Path(args.workdir)
    return args, rank, work, _Position(work / f"rank{rank}.at")


def report(work: Path, rank: int, compute: list[float], comm: list[float],
           order: list[int]) -> int:
    """Write what this rank measured (``rank<N>.json``, the launcher's timing table) and
    return the worker's success code.
    """
    (work / f"rank{rank}.json").write_text(
        json.dumps({"compute": compute, "comm": comm, "order": order})
    )
    return 0


def failed(work: Path, rank: int, exc: Exception) -> int:
    """Write why this rank stopped (``rank<N>.err``, read by the launcher) and return the
    worker's exit code: 3 for a user-level :class:`~shardc.errors.ShardcError`, 1 for an
    internal error, named with the rank.
    """
    from shardc.errors import ShardcError

    if isinstance(exc, ShardcError):
        (work / f"rank{rank}.err").write_text(json.dumps({"message": exc.render()}))
        return 3
    (work / f"rank{rank}.err").write_text(
        json.dumps({"message": f"rank {rank}: internal error: {type(exc).__name__}: {exc}"})
    )
    return 1


def main(argv: list[str] | None = None) -> int:
    args, rank, work, publish = start("python -m shardc.runtime.worker", "plan", argv)
    from shardc.runtime.distributed import RankRunner

    try:
        publish("joining the process group")
        runner = RankRunner(args.plan, timeout=args.timeout, check_shapes=args.check_shapes)
        runner.program.publish = publish
        _inject(runner, rank)
        publish("reading its inputs")  # past start-up: the launcher's timeout counts now
        feeds_file = np.load(work / "feeds.npz")
        prefix = f"r{runner.replica}/"
        feeds: dict[int, dict[str, np.ndarray]] = {}
        for key in feeds_file.files:
            if key.startswith(prefix):
                m, name = key[len(prefix) :].split("/", 1)
                feeds.setdefault(int(m[1:]), {})[name] = feeds_file[key]
        outputs = runner.run_step(feeds)
        np.savez(
            work / f"out{rank}.npz",
            **{f"m{m}/{k}": v for m, outs in outputs.items() for k, v in outs.items()},  # type: ignore[arg-type]
        )
        timings = runner.program.timings
        code = report(work, rank, timings.compute, timings.comm, list(outputs))
        runner.close()
        return code
    except Exception as exc:  # reported by the launcher, named with this rank
        return failed(work, rank, exc)


if __name__ == "__main__":
    sys.exit(main())
