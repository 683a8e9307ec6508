"""Which process owns a file or folder it left behind, and whether that process is gone.

Why: a process killed with SIGKILL cannot clean up after itself (a half-written output
folder, a run folder of worker files), so the next run does it, and it must remove only
what is provably abandoned. The owner's pid and start time go into the name
(:func:`owner_tag`); with both, a reused pid is not mistaken for the owner.
"""

from __future__ import annotations

import os
from pathlib import Path


def start_time(pid: int) -> int:
    """The process's start time in clock ticks since boot (0 where /proc is missing)."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return 0
    fields = stat_line.rsplit(b")", 1)[-1].split()
    return int(fields[19]) if len(fields) > 19 else 0


def owner_tag(pid: int | None = None) -> str:
    """``<pid>-<start time>`` of this process (or ``pid``), for a name it creates."""
    pid = os.getpid() if pid is None else pid
    return f"{pid}-{start_time(pid)}"


def is_alive(pid: int, start: int) -> bool:
    """Whether the process named by ``pid`` and ``start`` (from :func:`owner_tag`) runs."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: alive
    return not start or start_time(pid) in (0, start)
