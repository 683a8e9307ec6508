"""Progress reporting: the callback's contract and the CLI's bar (only on a terminal)."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from shardc.cli.main import cli
from shardc.progress import progress_bar, progress_for

ARGS = ["compile", "examples/models/tiny_gpt2.onnx", "--topology", "topologies/localhost.topo"]


def test_no_bar_when_not_a_terminal_or_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    with progress_for() as report:
        assert report is None
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    with progress_for(quiet=True) as report:
        assert report is None
    with progress_for() as report:
        assert report is not None


def test_bar_takes_every_step() -> None:
    with progress_bar() as report:
        for i, step in enumerate(["load model", "partition", "done"]):
            report(step, i, 2)


def test_cli_prints_no_bar_into_pipes_and_nothing_when_quiet(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, [*ARGS, "-o", str(tmp_path / "a")])
    assert r.exit_code == 0 and "compiling:" not in r.output and "plan" in r.output
    q = CliRunner().invoke(cli, [*ARGS, "-o", str(tmp_path / "b"), "--quiet"])
    assert q.exit_code == 0 and q.output == ""
    assert (tmp_path / "b" / "plan.json").read_bytes() == (
        tmp_path / "a" / "plan.json"
    ).read_bytes()
