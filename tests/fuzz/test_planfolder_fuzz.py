"""Fuzzing plan-folder loading: a valid small plan folder whose plan.json or schedule.json
is mutated (wrong types, missing keys, NaN, huge numbers, path escapes, deep nesting,
truncation) must load or fail with a :class:`ShardcError`, never anything else.

Two runs:

* default: a few hundred deterministic examples in this process, through every reader
  (``check_outdir``, ``PlanDir``, ``Plan.load`` and what its properties read);
* ``-m slow``: at least 1,000 mutations, each run in a forked child of a fresh server
  process, bounded by ``RLIMIT_AS`` and a timeout, adding an in-process ``verify`` for
  folders that load. It prints the counts (handled error, accepted, unhandled, hang,
  memory) and fails on any unhandled error, hang or memory blow-up.

``python tests/fuzz/test_planfolder_fuzz.py --serve BASE WORK`` is that server.
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
MEMORY_HEADROOM = 6 << 30
"""Address space a case may use beyond what the server holds after its imports: an
in-process verify of the tiny plan peaks near 2.1 GiB of address space (onnxruntime
thread pools reserve it) though it touches under 200 MiB."""
CASE_SECONDS = 60.0

HOSTILE_VALUES: list[Any] = [
    None,
    True,
    -1,
    0,
    1,
    2.0,
    1e9,
    10**9,
    10**30,
    -(10**30),
    math.nan,
    math.inf,
    "",
    "x",
    "[/]",
    "\x1b]0;t\x07",
    "/etc/passwd",
    "/dev/zero",
    "../plan.json",
    "../../../../../etc/shadow",
    "device_0.onnx",
    "schedule.json",
    [],
    [0],
    [[[[[]]]]],
    {},
    {"a": 1},
    "9" * 5000,
]
NAMES = ["plan.json", "schedule.json"]


# ------------------------------------------------------------------- mutations (pure)
def _paths(node: Any, prefix: tuple[Any, ...] = (), limit: int = 4000) -> list[tuple[Any, ...]]:
    """Every path into a JSON tree (breadth-first; long event lists sampled)."""
    out: list[tuple[Any, ...]] = [prefix]
    queue = [(prefix, node)]
    while queue and len(out) < limit:
        path, value = queue.pop(0)
        items: list[tuple[Any, Any]] = []
        if isinstance(value, dict):
            items = sorted(value.items())
        elif isinstance(value, list):
            items = list(enumerate(value))[:3] + list(enumerate(value))[-1:]
        for key, child in items:
            out.append((*path, key))
            queue.append(((*path, key), child))
    return out


def mutate(text: str, op: str, path: tuple[Any, ...], value: Any, cut: float) -> str:
    """``text`` (a JSON document) with one mutation applied."""
    if op == "truncate":
        return text[: int(len(text) * cut)]
    if op == "nest":
        depth = 10 + int(cut * 200_000)
        return "[" * depth + text + "]" * depth
    data = json.loads(text)
    if not path:
        data = value
    else:
        parent = data
        for key in path[:-1]:
            parent = parent[key]
        key = path[-1]
        if op == "delete":
            del parent[key]
        elif op == "replace":
            parent[key] = value
        elif op == "wrap":
            parent[key] = [parent[key]]
    return json.dumps(data, allow_nan=True)


# ------------------------------------------------------------------- what every reader does
def exercise(folder: Path, *, run: bool = False) -> None:
    """Everything that reads a plan folder, as the CLI commands and the API do."""
    import shardc
    from shardc.emit.check import check_outdir
    from shardc.runtime.plandir import PlanDir

    check_outdir(folder)
    plan_dir = PlanDir(folder)
    _ = plan_dir.input_specs
    for rank in plan_dir.ranks:
        plan_dir.microbatch_order(rank)
        plan_dir.estimate(rank)
    plan_dir.model_path()
    plan_dir.device_model(0)
    plan = shardc.Plan.load(folder)
    repr(plan)
    _ = (plan.devices, plan.memory, plan.schedule, plan.analysis, plan.file_names)
    str(plan.summary())
    plan.device_model(plan.world_size - 1)
    for name in [*sorted(plan.data["partition"].get("strategies", {}))[:1], "embedding_1"]:
        str(plan.explain(name))
    if run:
        from shardc.runtime.verify import verify

        verify(folder, timeout=CASE_SECONDS)


# ------------------------------------------------------------------- the bounded server
def serve(base: Path, work: Path) -> None:
    """Read cases (JSON lines) on stdin; run each in a forked child under RLIMIT_AS and a
    timeout; answer one JSON line each: outcome and detail.
    """
    import shardc
    import shardc.emit.check
    import shardc.runtime.verify  # noqa: F401

    _reset(base, work)
    vm = _vm_bytes()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        case = json.loads(line)
        _reset(base, work)
        for name in NAMES:
            if name in case:
                (work / name).write_bytes(case[name].encode("utf-8", "surrogatepass"))
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: bounded, exits with a code saying what happened
            os.close(read_fd)
            resource.setrlimit(resource.RLIMIT_AS, (vm + MEMORY_HEADROOM,) * 2)
            code, detail = 0, ""
            try:
                exercise(work, run=True)
            except MemoryError:
                code, detail = 12, "MemoryError"
            except Exception as exc:
                from shardc.errors import ShardcError

                if isinstance(exc, ShardcError):
                    code, detail = 10, str(exc)[:300]
                else:
                    code, detail = 11, traceback.format_exc()[-2000:]
            os.write(write_fd, detail.encode("utf-8", "replace")[:4000])
            os._exit(code)
        os.close(write_fd)
        outcome, detail = _wait_child(pid, read_fd)
        print(json.dumps({"outcome": outcome, "detail": detail}), flush=True)


def _wait_child(pid: int, read_fd: int) -> tuple[str, str]:
    deadline = time.monotonic() + CASE_SECONDS
    status = None
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.01)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(read_fd)
        return "hang", f"over {CASE_SECONDS:g} s"
    with os.fdopen(read_fd, "rb") as f:
        detail = f.read().decode("utf-8", "replace")
    assert status is not None
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return ("memory" if sig in (signal.SIGKILL, signal.SIGSEGV) else "unhandled"), (
            f"killed by {signal.Signals(sig).name}"
        )
    code = os.WEXITSTATUS(status)
    return {0: "accepted", 10: "handled", 12: "memory"}.get(code, "unhandled"), detail


def _vm_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 4 << 30


def _reset(base: Path, work: Path) -> None:
    """``work`` made a fresh copy of ``base`` (device files copied once, JSON restored)."""
    if not (work / "device_0.onnx").is_file():
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(base, work)
    for entry in work.iterdir():
        if not (base / entry.name).is_file() or entry.is_symlink() or not entry.is_file():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    for name in sorted(p.name for p in base.iterdir()):
        if name in NAMES or not (work / name).is_file():
            shutil.copyfile(base / name, work / name)


# ------------------------------------------------------------------- pytest side
@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny GPT-2, tp=2 and pp=2 on 4 local devices: every kind of comm op and a schedule."""
    import shardc

    out = tmp_path_factory.mktemp("fuzz") / "base"
    shardc.compile(
        str(ROOT / "examples/models/tiny_gpt2.onnx"),
        str(ROOT / "topologies/localhost.topo"),
        devices=4,
        pins="tp=2,pp=2",
        quiet=True,
    ).save(out)
    return out


def _cases() -> Any:
    """A hypothesis strategy of (file, op, path index, value, cut)."""
    from hypothesis import strategies as st

    return st.tuples(
        st.sampled_from(NAMES),
        st.sampled_from(["replace", "replace", "replace", "delete", "wrap", "truncate", "nest"]),
        st.integers(min_value=0, max_value=10**6),
        st.sampled_from(HOSTILE_VALUES),
        st.floats(min_value=0.0, max_value=1.0),
    )


def _case_text(base: Path, case: tuple[str, str, int, Any, float]) -> dict[str, str]:
    name, op, index, value, cut = case
    text = (base / name).read_text()
    paths = _paths_cached(base, name)
    path = paths[index % len(paths)]
    if op == "delete" and not path:
        op = "replace"
    return {name: mutate(text, op, path, value, cut)}


_PATHS: dict[tuple[str, str], list[tuple[Any, ...]]] = {}


def _paths_cached(base: Path, name: str) -> list[tuple[Any, ...]]:
    key = (str(base), name)
    if key not in _PATHS:
        _PATHS[key] = _paths(json.loads((base / name).read_text()))
    return _PATHS[key]


def test_mutated_plan_folders_load_or_fail_cleanly(base: Path, tmp_path: Path) -> None:
    """Default run: 200 deterministic mutations through every reader, in this process."""
    from hypothesis import HealthCheck, Phase, given, settings

    from shardc.errors import ShardcError

    work = tmp_path / "work"
    seen = {"handled": 0, "accepted": 0}

    @settings(
        max_examples=200,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        phases=(Phase.explicit, Phase.generate),  # no shrinking: a failure stays seconds
    )
    @given(_cases())
    def one(case: tuple[str, str, int, Any, float]) -> None:
        _reset(base, work)
        for name, text in _case_text(base, case).items():
            (work / name).write_text(text)
        try:
            exercise(work)
        except ShardcError:
            seen["handled"] += 1
            return
        seen["accepted"] += 1

    one()
    assert seen["handled"] > 50, seen  # the mutations reach the validation


@pytest.mark.slow
def test_long_bounded_fuzz(base: Path, tmp_path: Path) -> None:
    """At least 1,000 mutations, each in a child bounded in memory and time."""
    from hypothesis import HealthCheck, Phase, given, settings

    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(base), str(tmp_path / "work")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert server.stdin is not None and server.stdout is not None
    assert json.loads(server.stdout.readline()).get("ready")
    counts = {"handled": 0, "accepted": 0, "unhandled": 0, "hang": 0, "memory": 0}
    failures: list[str] = []

    @settings(
        max_examples=1000,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        phases=(Phase.explicit, Phase.generate),  # no shrinking: a failure stays seconds
    )
    @given(_cases())
    def one(case: tuple[str, str, int, Any, float]) -> None:
        assert server.stdin is not None and server.stdout is not None
        server.stdin.write(json.dumps(_case_text(base, case)) + "\n")
        server.stdin.flush()
        answer = json.loads(server.stdout.readline())
        counts[answer["outcome"]] += 1
        if answer["outcome"] not in ("handled", "accepted") and len(failures) < 10:
            failures.append(f"{case[:3]} -> {answer['outcome']}: {answer['detail']}")

    try:
        one()
    finally:
        server.stdin.close()
        server.wait(timeout=60)
    total = sum(counts.values())
    print(f"\nplan-folder fuzz: {total} mutations: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    assert total >= 1000
    assert counts["unhandled"] == counts["hang"] == counts["memory"] == 0, "\n".join(failures)


if __name__ == "__main__" and sys.argv[1:2] == ["--serve"]:
    serve(Path(sys.argv[2]), Path(sys.argv[3]))
