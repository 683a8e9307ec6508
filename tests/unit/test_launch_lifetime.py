"""``shardc verify --procs`` leaves nothing behind however the launcher ends: no worker
outlives it (even one still importing, or one hung in a collective), and no run folder
stays in the temporary directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import shardc
from shardc.runtime.launch import remove_stale_runs

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def plan2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny GPT-2 on two ranks with tp=2: the ranks talk to each other."""
    out = tmp_path_factory.mktemp("launch") / "plan"
    shardc.compile(
        str(ROOT / "examples/models/tiny_gpt2.onnx"),
        str(ROOT / "topologies/localhost.topo"),
        devices=2,
        pins="tp=2",
        quiet=True,
    ).save(out)
    return out


def _workers(tmp: Path) -> set[int]:
    """Pids of worker processes whose run folder is under ``tmp``."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"shardc.runtime.worker" in cmd and any(str(tmp).encode() in c for c in cmd):
            found.add(int(entry.name))
    return found


def _gone(pids: set[int], tmp: Path, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not (_workers(tmp) | {p for p in pids if Path(f"/proc/{p}").exists()}):
            return True
        time.sleep(0.1)
    return False


def _launch(plan: Path, tmp: Path, fault: str = "") -> subprocess.Popen[bytes]:
    env = {**os.environ, "TMPDIR": str(tmp), "SHARDC_FAULT": fault}
    return subprocess.Popen(
        [sys.executable, "-m", "shardc", "verify", str(plan), "--procs", "--timeout", "300"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _wait_for_workers(launcher: subprocess.Popen[bytes], tmp: Path, n: int) -> set[int]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and launcher.poll() is None:
        pids = _workers(tmp)
        if len(pids) >= n:
            return pids
        time.sleep(0.02)
    launcher.kill()
    pytest.fail("the workers never started")


def _reap(p: subprocess.Popen[bytes]) -> int:
    try:
        return p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize(
    "sig", [signal.SIGKILL, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)]
)
def test_launcher_killed_while_workers_import(plan2: Path, tmp_path: Path, sig: int) -> None:
    """Killed the moment the workers exist (still importing): they go with it."""
    launcher = _launch(plan2, tmp_path)
    pids = _wait_for_workers(launcher, tmp_path, 1)
    launcher.send_signal(sig)
    code = _reap(launcher)
    assert _gone(pids, tmp_path, within=10), "workers outlived the launcher"
    runs = [p for p in tmp_path.iterdir() if p.name.startswith("shardc-run-")]
    if sig == signal.SIGTERM:
        assert code == 128 + signal.SIGTERM and runs == []
    else:
        assert code == -signal.SIGKILL and len(runs) == 1
        assert remove_stale_runs(tmp_path) == runs
        assert not runs[0].exists()


def test_a_live_launchers_run_folder_is_kept(tmp_path: Path) -> None:
    mine = tmp_path / f"shardc-run-{os.getpid()}-0-abc"
    mine.mkdir()
    other = tmp_path / "shardc-run-notours"
    other.mkdir()
    dead = tmp_path / "shardc-run-999999999-1-abc"
    dead.mkdir()
    assert remove_stale_runs(tmp_path) == [dead]
    assert mine.is_dir() and other.is_dir()


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_launcher_killed_while_a_rank_hangs(plan2: Path, tmp_path: Path) -> None:
    """Rank 1 hangs in its first collective, rank 0 waits on it; SIGKILL the launcher."""
    launcher = _launch(plan2, tmp_path, fault="hang@1")
    pids = _wait_for_workers(launcher, tmp_path, 2)
    deadline = time.monotonic() + 180
    at = next(tmp_path.glob("shardc-run-*"), tmp_path) / "rank1.at"
    while time.monotonic() < deadline:  # until rank 1 is past its imports
        if at.is_file() and not at.read_bytes().startswith((b"starting", b"joining")):
            break
        time.sleep(0.2)
    launcher.kill()
    _reap(launcher)
    assert _gone(pids, tmp_path, within=10), "hung workers outlived the launcher"
