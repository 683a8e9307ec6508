"""Progress reporting: the callback's contract and the CLI's bar (only on a terminal)."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner

from shardc.cli.main import cli
from shardc.progress import Progress, Steps, progress_bar, progress_for

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


def test_steps_widen_once_for_a_step_with_units_of_its_own() -> None:
    calls: list[tuple[str, int, int]] = []
    steps = Steps(lambda *a: calls.append(a), 3)
    steps.start("a")
    steps.start("b")
    for i in range(5):
        steps.within("b x", i, 4)
    steps.start("c")
    steps.finish()
    assert calls == [
        ("a", 0, 3),
        ("b", 1, 3),
        *[("b x", 1 + i, 6) for i in range(5)],
        ("c", 5, 6),
        ("done", 6, 6),
    ]
    Steps(None, 2).start("quiet")  # no callback: nothing to call


def test_api_callback_advances_per_search_solve() -> None:
    """One call per (data-parallel width, stage count) the search settles, all counted up
    front; and progress changes no byte of the plan.
    """
    import shardc

    calls: list[tuple[str, int, int]] = []
    plan = shardc.compile(
        "examples/models/tiny_gpt2.onnx",
        "topologies/localhost.topo",
        devices=4,
        progress=lambda *a: calls.append(a),
        quiet=True,
    )
    quiet = shardc.compile(
        "examples/models/tiny_gpt2.onnx", "topologies/localhost.topo", devices=4, quiet=True
    )
    assert plan._read("plan.json") == quiet._read("plan.json")
    assert plan.file_names == quiet.file_names
    assert all(plan._read(n) == quiet._read(n) for n in plan.file_names)

    part = plan.to_json()["partition"]
    # stage counts each width may try: up to the blocks and to the devices left per replica
    widths = [c["dp"] for c in part["solver"]["candidates"] if c["outcome"] != "no configuration"]
    units = sum(min(16, part["blocks"], max(1, 4 // dp)) for dp in widths)
    assert len(widths) == 3 and units == 5

    search = [c for c in calls if c[0].startswith("partition dp=")]
    assert list(dict.fromkeys(c[0] for c in search)) == [f"partition dp={dp}" for dp in widths]
    start = next(c[1] for c in calls if c[0] == "partition")
    passes = 11  # load model, nine passes (five deciding, four building the Plan), emit
    assert {c[2] for c in search} == {passes - 1 + units}  # known before the first solve
    assert sorted({c[1] for c in search}) == list(range(start, start + units + 1))
    done = [c[1] for c in calls]
    assert done == sorted(done)
    plan_passes = 4  # lower, price, timeline, plan: after the search, before emit
    last = start + units + plan_passes
    assert calls[-2:] == [("emit", last, last + 1), ("done",) + (last + 1,) * 2]


def test_cli_bar_runs_through_the_search(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The CLI's bar gets the search's steps too, and drawing it changes no byte."""
    import shardc.cli.compile as compile_mod

    seen: list[tuple[str, int, int]] = []

    @contextmanager
    def bar(quiet: bool = False) -> Iterator[Progress]:
        with progress_bar() as report:

            def both(step: str, done: int, total: int) -> None:
                seen.append((step, done, total))
                report(step, done, total)

            yield both

    monkeypatch.setattr(compile_mod, "progress_for", bar)
    r = CliRunner().invoke(cli, [*ARGS, "-o", str(tmp_path / "bar"), "-q"])
    assert r.exit_code == 0, r.output
    assert any(s.startswith("partition dp=") for s, _, _ in seen) and seen[-1][0] == "done"
    monkeypatch.undo()
    q = CliRunner().invoke(cli, [*ARGS, "-o", str(tmp_path / "plain"), "-q"])
    assert q.exit_code == 0
    for name in ("plan.json", "schedule.json", "device_0.onnx"):
        assert (tmp_path / "bar" / name).read_bytes() == (tmp_path / "plain" / name).read_bytes()
