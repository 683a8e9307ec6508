"""Start one process per rank on this machine and bring back their results, or say
clearly which rank failed, where, and why, leaving no process behind.

Why the launcher and not ``torchrun`` for ``shardc verify --procs``: verification must
turn every failure into one message naming the rank and the op. A rank killed by a
signal leaves no message of its own; its peers then fail with "connection closed", and
a hung rank fails nobody until timeouts fire. The launcher watches every process, reads
where each one was (the workers publish their position), and ends all of them: each
worker runs in its own session so its whole process group is killed.

Why workers are tied to the launcher before they run a single instruction of their own:
a launcher killed during the seconds a worker spends importing used to leave every worker
running (and, with a hanging rank, for minutes). Each worker is started with
``PR_SET_PDEATHSIG`` = SIGKILL set between fork and exec (Linux), and holds the read end
of a pipe whose write end only the launcher has: when the launcher is gone the pipe reads
EOF and the worker leaves (any platform). The run folder is removed when the launcher ends,
by SIGTERM or SIGHUP too; one left by a launcher killed with SIGKILL is named after it
(``shardc-run-<pid>-<start>-*``) and removed by the next run once that launcher is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np

from shardc.errors import ExecutionError
from shardc.owner import is_alive, owner_tag
from shardc.runtime.plandir import PlanDir

GRACE_SECONDS = 2.0
"""After the first failure, how long peers get to report their own view of it."""

STARTUP_SECONDS = 300.0
"""How long ranks may take to start (import, join the process group) before ``timeout``
starts counting; a rank that cannot start makes its peers' rendezvous fail long before."""

_STARTING = ("start-up", "starting", "joining the process group")
"""Positions a worker publishes before its step begins (see :mod:`shardc.runtime.worker`)."""


@dataclass
class ProcessResult:
    """Each rank's outputs by micro-batch, and its measured seconds per micro-batch."""

    outputs: dict[int, dict[int, dict[str, np.ndarray]]] = field(default_factory=dict)
    compute: dict[int, list[float]] = field(default_factory=dict)
    comm: dict[int, list[float]] = field(default_factory=dict)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_processes(
    plan: PlanDir | Path,
    feeds: Mapping[tuple[int, int], Mapping[str, np.ndarray]],
    *,
    timeout: float = 120.0,
    check_shapes: bool = True,
    env: Mapping[str, str] | None = None,
    worker: str = "shardc.runtime.worker",
    world: int | None = None,
) -> ProcessResult:
    """Run the plan's step with one process per rank over torch.distributed.

    ``feeds[(replica, microbatch)]`` is what that replica's first stage reads for that
    micro-batch. Raises :class:`ExecutionError` naming the failing rank and op.
    ``worker`` is the module each rank runs (the serving programs' worker runs a prefill
    and decode steps; ``plan`` is then the programs folder, ``world`` its ranks).
    """
    if world is None:
        assert isinstance(plan, PlanDir), "a programs folder names its world size"
        world = plan.world_size
    remove_stale_runs()
    with _signals_end_the_run(), _run_folder() as work:
        np.savez(
            work / "feeds.npz",
            **{f"r{r}/m{m}/{k}": v for (r, m), f in sorted(feeds.items()) for k, v in f.items()},  # type: ignore[arg-type]
        )
        base = dict(os.environ)
        base.update(env or {})
        base.update(
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(_free_port()),
            WORLD_SIZE=str(world),
            OMP_NUM_THREADS=base.get("OMP_NUM_THREADS", "1"),
            # every rank runs on this machine: each gets its share of the cores
            SHARDC_ORT_THREADS=base.get(
                "SHARDC_ORT_THREADS", str(max(1, (os.cpu_count() or 1) // world))
            ),
        )
        path = plan if isinstance(plan, Path) else plan.path
        cmd = [sys.executable, "-m", worker, str(path), str(work)]
        # the launcher judges hangs; a worker's own timeout is the backstop, and must not
        # fire first (its message would name the waiting peer, not the hung rank)
        backstop = 2 * timeout + STARTUP_SECONDS
        cmd += ["--timeout", str(backstop)] + (["--check-shapes"] if check_shapes else [])
        procs: dict[int, subprocess.Popen] = {}
        lifeline, keep = os.pipe()  # workers hold the read end; EOF: the launcher is gone
        try:
            cmd += ["--lifeline", str(lifeline)]
            for rank in range(world):
                log = open(work / f"rank{rank}.log", "wb")  # noqa: SIM115 (closed with the proc)
                procs[rank] = subprocess.Popen(
                    cmd,
                    env={**base, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    pass_fds=(lifeline,),
                    preexec_fn=_die_with(os.getpid()),
                )
                log.close()
            _wait(procs, work, timeout)
            return _collect(work, world)
        finally:
            _kill_all(procs)
            os.close(lifeline)
            os.close(keep)


_RUN_PREFIX = "shardc-run-"
_RUN_NAME = re.compile(rf"^{_RUN_PREFIX}(?P<pid>\d+)-(?P<start>\d+)-[A-Za-z0-9_]+$")


@contextlib.contextmanager
def _run_folder() -> Iterator[Path]:
    """A private folder for the workers' files, named after this launcher, removed after."""
    work = Path(tempfile.mkdtemp(prefix=f"{_RUN_PREFIX}{owner_tag()}-"))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def remove_stale_runs(root: str | os.PathLike[str] | None = None) -> list[Path]:
    """Remove run folders whose launcher is gone (killed with SIGKILL mid-run)."""
    base = Path(root or tempfile.gettempdir())
    removed = []
    try:
        entries = sorted(base.iterdir())
    except OSError:
        return []
    for entry in entries:
        m = _RUN_NAME.match(entry.name)
        if m is None or is_alive(int(m["pid"]), int(m["start"])):
            continue
        if entry.is_dir() and not entry.is_symlink() and entry.stat().st_uid == os.getuid():
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


@contextlib.contextmanager
def _signals_end_the_run() -> Iterator[None]:
    """SIGTERM and SIGHUP end the run like an error: workers stopped, run folder removed,
    then the launcher exits with the usual 128 + signal status.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may install handlers; the default action stays
        return

    def stop(signum: int, _frame: FrameType | None) -> None:
        raise _Terminated(signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    except _Terminated as exc:
        for s, handler in previous.items():
            signal.signal(s, handler)
        raise SystemExit(128 + exc.signum) from None
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class _Terminated(BaseException):
    """Raised by the signal handler so that every ``finally`` on the way out runs."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


_PR_SET_PDEATHSIG = 1


def _libc() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
    except OSError:  # pragma: no cover - a Linux without a C library
        return None


_LIBC = _libc()


def _die_with(launcher: int) -> Callable[[], None]:
    """What runs in the worker between fork and exec: ask the kernel to SIGKILL it when
    the launcher goes, then make sure the launcher had not gone already.
    """

    def preexec() -> None:
        if _LIBC is not None:
            _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != launcher:
            os._exit(70)

    return preexec


def _wait(procs: Mapping[int, subprocess.Popen], work: Path, timeout: float) -> None:
    """Until every rank has finished; raise naming the ranks that failed or hang.

    Why ``timeout`` counts from when the last rank has started its step, not from the
    launch: starting (importing torch and onnxruntime, joining the process group) takes
    seconds on an idle machine and minutes on a loaded one, and a hang is a rank that
    stops in its step. Start-up gets :data:`STARTUP_SECONDS` of its own.
    """
    deadline = time.monotonic() + STARTUP_SECONDS + timeout
    started = False
    failed_at: float | None = None
    while True:
        codes = {r: p.poll() for r, p in procs.items()}
        if all(c == 0 for c in codes.values()):
            return
        bad = {r: c for r, c in codes.items() if c not in (None, 0)}
        now = time.monotonic()
        if bad and failed_at is None:
            failed_at = now
        running = [r for r, c in codes.items() if c is None]
        if failed_at is not None and (not running or now - failed_at > GRACE_SECONDS):
            raise ExecutionError(_failure(work, bad, running))
        if not started and all(_position(work, r) not in _STARTING for r in procs):
            started, deadline = True, now + timeout
        if now > deadline:
            where = "; ".join(f"rank {r} at {_position(work, r)}" for r in running)
            limit = f"{timeout:g} s" if started else f"{STARTUP_SECONDS + timeout:g} s of start-up"
            raise ExecutionError(
                f"{len(running)} of {len(procs)} ranks did not finish within {limit}: "
                f"{where}",
                hint="a rank waits on a peer that never sends, or is far slower than "
                "expected; raise --timeout if it is only slow",
            )
        time.sleep(0.02)


def _failure(work: Path, bad: Mapping[int, int], running: list[int]) -> str:
    """One message: the rank that failed first in cause, not in time."""
    reports = {r: _report(work, r) for r in bad}
    # A rank killed by a signal, or gone without a word, caused its peers' errors;
    # else prefer a rank whose own check failed over one that lost its peer.
    silent = [r for r in sorted(bad) if reports[r] is None]
    if silent:
        r = silent[0]
        code = bad[r]
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited {code}"
        others = sorted(set(bad) - {r}) + running
        tail = f"; ranks {others} were stopped" if others else ""
        return f"rank {r} {how} at {_position(work, r)}{tail}"
    own = [r for r in sorted(bad) if not _peer_loss(reports[r] or "")]
    r = (own or sorted(bad))[0]
    return reports[r] or f"rank {r} failed"


def _peer_loss(message: str) -> bool:
    text = message.lower()
    return any(s in text for s in ("connection closed", "connection reset", "broken pipe"))


def _report(work: Path, rank: int) -> str | None:
    f = work / f"rank{rank}.err"
    if not f.is_file():
        return None
    return str(json.loads(f.read_text())["message"])


def _position(work: Path, rank: int) -> str:
    f = work / f"rank{rank}.at"
    if not f.is_file():
        return "start-up"
    return f.read_bytes().split(b"\0", 1)[0].decode(errors="replace") or "start-up"


def _collect(work: Path, world: int) -> ProcessResult:
    result = ProcessResult()
    for rank in range(world):
        timings = json.loads((work / f"rank{rank}.json").read_text())
        result.compute[rank] = timings["compute"]
        result.comm[rank] = timings["comm"]
        outs: dict[int, dict[str, np.ndarray]] = {}
        with np.load(work / f"out{rank}.npz") as data:
            for key in data.files:
                m, name = key.split("/", 1)
                outs.setdefault(int(m[1:]), {})[name] = data[key]
        result.outputs[rank] = outs
    return result


def _kill_all(procs: Mapping[int, subprocess.Popen]) -> None:
    for p in procs.values():
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
    for p in procs.values():
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - the kernel owes us this
            p.kill()
