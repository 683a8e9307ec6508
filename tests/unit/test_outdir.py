"""Output folders survive SIGKILL, replace atomically, never eat foreign folders, honour
the umask, and say in one line (exit 2) when the target cannot be written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shardc.emit.outdir import is_plan_folder, recover_stale, write_file, write_outdir
from shardc.errors import OptionError

ROOT = Path(__file__).resolve().parents[2]
PLAN = json.dumps({"format": "shardc-plan/1"}).encode()


def _files(tag: str) -> dict[str, bytes]:
    return {"plan.json": PLAN, "device_0.onnx": tag.encode() * 100_000, "z.json": b"{}"}


def _write_killed(dest: Path, point: str, tag: str, *, exchange: bool = True) -> int:
    """Run write_outdir in a child killed by SIGKILL at ``point``; its return code."""
    code = (
        "import sys; from shardc.emit.outdir import write_outdir\n"
        f"write_outdir(sys.argv[1], {_files(tag)!r}, force=True)\n"
    )
    env = {**os.environ, "SHARDC_OUTDIR_FAULT": point}
    if not exchange:
        env["SHARDC_OUTDIR_NO_EXCHANGE"] = "1"
    r = subprocess.run([sys.executable, "-c", code, str(dest)], env=env, timeout=60)
    return r.returncode


def _siblings(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.parent.iterdir() if p.name != dest.name)


@pytest.mark.parametrize("point", ["write", "exchange"])
def test_kill_while_writing_leaves_a_stale_temp_that_the_next_run_removes(
    tmp_path: Path, point: str
) -> None:
    dest = tmp_path / "out"
    assert _write_killed(dest, point, "a") == -9
    assert not dest.exists()
    left = _siblings(dest)
    assert len(left) == 1 and left[0].startswith(".out.shardc-tmp-")
    write_outdir(dest, _files("b"))
    assert _siblings(dest) == [] and (dest / "device_0.onnx").read_bytes()[:1] == b"b"


def test_kill_after_the_exchange_keeps_the_new_plan_and_cleans_the_old(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    write_outdir(dest, _files("a"))
    assert _write_killed(dest, "swapped", "b") == -9
    assert (dest / "device_0.onnx").read_bytes()[:1] == b"b"
    assert len(_siblings(dest)) == 1  # the old plan, under the temporary name
    assert recover_stale(dest) and _siblings(dest) == []


def test_kill_between_fallback_renames_puts_the_old_plan_back(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    write_outdir(dest, _files("a"))
    assert _write_killed(dest, "aside", "b", exchange=False) == -9
    assert not dest.exists()  # what the two-rename fallback can leave
    recover_stale(dest)
    assert (dest / "device_0.onnx").read_bytes()[:1] == b"a"
    assert _siblings(dest) == []


def test_force_replaces_a_plan_in_one_step(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    write_outdir(dest, _files("a"))
    write_outdir(dest, _files("b"), force=True)
    assert (dest / "device_0.onnx").read_bytes()[:1] == b"b" and _siblings(dest) == []


def test_a_live_writers_temp_is_left_alone(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    mine = tmp_path / f".out.shardc-tmp-{os.getpid()}-0-abcd"
    mine.mkdir()
    foreign = tmp_path / ".out.tmp-12345"  # not our marker: never touched
    foreign.mkdir()
    write_outdir(dest, _files("a"))
    assert mine.is_dir() and foreign.is_dir()


def test_force_refuses_a_folder_that_is_not_a_plan(tmp_path: Path) -> None:
    dest = tmp_path / "photos"
    dest.mkdir()
    (dest / "holiday.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(OptionError, match="not a shardc plan folder"):
        write_outdir(dest, _files("a"), force=True)
    assert (dest / "holiday.jpg").exists()
    (dest / "holiday.jpg").unlink()
    (dest / "plan.json").write_text('{"format": "something-else"}')
    with pytest.raises(OptionError, match="not a shardc plan folder"):
        write_outdir(dest, _files("a"), force=True)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(OptionError, match="not a folder"):
        write_outdir(a_file, _files("a"), force=True)
    assert is_plan_folder(write_outdir(tmp_path / "empty-ok", _files("a")))


def test_force_recognises_a_large_plan(tmp_path: Path) -> None:
    """A big model's plan.json runs to megabytes (a strategy per node); still a plan."""
    dest = tmp_path / "out"
    big = json.dumps({"emission": {"pad": "x" * (3 << 20)}, "format": "shardc-plan/1"})
    write_outdir(dest, {"plan.json": big.encode()})
    write_outdir(dest, _files("b"), force=True)
    assert (dest / "device_0.onnx").read_bytes()[:1] == b"b"


def test_modes_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        out = write_outdir(tmp_path / "out", _files("a"))
        page = write_file(tmp_path / "r.html", b"<html>")
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o755
    assert (out / "plan.json").stat().st_mode & 0o777 == 0o644
    assert page.stat().st_mode & 0o777 == 0o644


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_read_only_parent_is_a_user_error(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    with pytest.raises(OptionError, match="cannot"):
        write_outdir(ro / "out", _files("a"))


def test_unwritable_places_exit_2_in_one_line(tmp_path: Path) -> None:
    model = ROOT / "examples/models/tiny_gpt2.onnx"
    topo = ROOT / "topologies/localhost.topo"
    for target in ("/proc/shardc-out",):
        r = subprocess.run(
            [sys.executable, "-m", "shardc", "compile", str(model), "--topology", str(topo),
             "--set", "devices=2", "-o", target, "--quiet"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert r.returncode == 2, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_compile_killed_mid_write_then_rerun_is_clean(tmp_path: Path) -> None:
    """The real command, SIGKILLed while writing its device files, then run again."""
    out = tmp_path / "plan"
    cmd = [
        sys.executable, "-m", "shardc", "compile", str(ROOT / "examples/models/tiny_gpt2.onnx"),
        "--topology", str(ROOT / "topologies/localhost.topo"), "--set", "devices=2",
        "-o", str(out), "--quiet", "--force",
    ]  # fmt: skip
    env = {**os.environ, "SHARDC_OUTDIR_FAULT": "write"}
    assert subprocess.run(cmd, env=env, timeout=120).returncode == -9
    assert not out.exists() and len(_siblings(out)) == 1
    assert subprocess.run(cmd, timeout=120).returncode == 0
    assert is_plan_folder(out) and _siblings(out) == []
