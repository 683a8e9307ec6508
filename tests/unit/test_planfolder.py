"""Reading a plan folder someone else may have written: confined, validated first, and
every mistake one line with exit 2 naming the file and the field.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

import shardc
from shardc.cli.main import cli
from shardc.emit.check import check_outdir
from shardc.errors import ShardcError
from shardc.plan.folder import PlanFolderError, loads, plan_schema
from shardc.runtime.plandir import PlanDir

ROOT = Path(__file__).resolve().parents[2]
GPT2 = ROOT / "examples/models/tiny_gpt2.onnx"
LOCAL = ROOT / "topologies/localhost.topo"


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny GPT-2 with tp=2 and pp=2 on 4 local devices: Send/Recv and collectives."""
    out = tmp_path_factory.mktemp("plans") / "good"
    shardc.compile(str(GPT2), str(LOCAL), devices=4, pins="tp=2,pp=2", quiet=True).save(out)
    return out


def _copy(good: Path, tmp: Path, edit: Callable[[dict[str, Any]], None] | None = None) -> Path:
    out = tmp / "plan"
    shutil.copytree(good, out)
    if edit is not None:
        data = json.loads((out / "plan.json").read_text())
        edit(data)
        (out / "plan.json").write_text(json.dumps(data))
    return out


def _all_readers_refuse(folder: Path, match: str) -> None:
    """check-plan, verify (its reader) and Plan.load: the same one-line error."""
    for read in (check_outdir, PlanDir, shardc.Plan.load):
        with pytest.raises(ShardcError, match=match):
            read(folder)
    for cmd in (["check-plan", str(folder)], ["verify", str(folder)]):
        r = CliRunner().invoke(cli, cmd)
        assert r.exit_code == 2, (cmd, r.output)
        assert "Traceback" not in r.output


def _device_file_refused(folder: Path, match: str) -> None:
    """A bad device file: check-plan reports it, the readers refuse to load it."""
    assert any(match in p for p in check_outdir(folder).problems)
    for read in (PlanDir(folder).device_model, shardc.Plan.load(folder).device_model):
        with pytest.raises(ShardcError, match=match):
            read(0)
    for cmd in (["check-plan", str(folder)], ["verify", str(folder)]):
        r = CliRunner().invoke(cli, cmd)
        assert r.exit_code == 2 and match in r.output, (cmd, r.output)


def _rank0(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(d: dict[str, Any]) -> None:
        d["emission"]["ranks"][0][key] = value

    return edit


@pytest.mark.parametrize("name", ["/etc/passwd", "/dev/zero", "../plan.json", "a/../../x"])
def test_rank_files_outside_the_folder_are_refused(good: Path, tmp_path: Path, name: str) -> None:
    _all_readers_refuse(_copy(good, tmp_path, _rank0("file", name)), r"emission.ranks\[0\].file")


def test_symlinks_out_and_special_files_are_refused(good: Path, tmp_path: Path) -> None:
    folder = _copy(good, tmp_path)
    (folder / "device_0.onnx").unlink()
    (folder / "device_0.onnx").symlink_to("/dev/zero")
    _device_file_refused(folder, "outside the plan folder")
    (folder / "device_0.onnx").unlink()
    os.mkfifo(folder / "device_0.onnx")  # inside, but reading it would block forever
    _device_file_refused(folder, "not a regular file")
    (folder / "device_0.onnx").unlink()
    (folder / "plan.json").rename(folder / "real.json")
    (folder / "plan.json").symlink_to("/proc/self/environ")
    _all_readers_refuse(folder, "outside the plan folder")


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(d: dict[str, Any]) -> None:
        *head, last = path.split(".")
        for part in head:
            d = d[int(part)] if isinstance(d, list) else d[part]
        key: Any = int(last) if isinstance(d, list) else last
        if value is KeyError:
            del d[key]
        else:
            d[key] = value

    return edit


@pytest.mark.parametrize(
    "path, value, match",
    [
        ("partition.microbatches", 1e9, r"partition.microbatches"),
        ("partition.microbatches", 10**9, r"partition.microbatches"),
        ("partition.dp", "2", r"partition.dp"),
        ("partition.stages", KeyError, r"'stages' is a required property"),
        ("partition.stages.0.tp", 2.0, r"partition.stages\[0\].tp"),
        ("emission.ranks.0.rank", 7, r"ranks are not 0..n-1"),
        ("emission.ranks.0.rank", -1, r"emission.ranks\[0\].rank"),
        ("emission.ranks.1.file", "device_0.onnx", "not distinct"),
        ("emission.ranks.0", "rank0", r"emission.ranks\[0\]"),
        ("format", "shardc-plan/2", "format"),
        ("partition.devices_used", 8, "devices_used"),
    ],
)
def test_malformed_plan_json_names_the_field(
    good: Path, tmp_path: Path, path: str, value: Any, match: str
) -> None:
    _all_readers_refuse(_copy(good, tmp_path, _set(path, value)), match)


@pytest.mark.parametrize(
    "text, match",
    [
        ('{"format": NaN}', "NaN is not a finite number"),
        ('{"format": 1e999}', "not a finite number"),
        ("[" * 100_000 + "]" * 100_000, "nested deeper"),
        ('{"format": "shardc-plan/1"', "not JSON"),
        ("\xff\xfe", "not JSON"),
    ],
)
def test_unreadable_plan_json_is_a_user_error(
    good: Path, tmp_path: Path, text: str, match: str
) -> None:
    folder = _copy(good, tmp_path)
    (folder / "plan.json").write_bytes(text.encode("latin-1"))
    _all_readers_refuse(folder, match)


def test_malformed_schedule_json_names_the_field(good: Path, tmp_path: Path) -> None:
    folder = _copy(good, tmp_path)
    sched = json.loads((folder / "schedule.json").read_text())
    sched["devices"][1]["events"][0]["microbatch"] = 10**9
    (folder / "schedule.json").write_text(json.dumps(sched))
    with pytest.raises(PlanFolderError, match=r"devices\[1\].events\[0\]: microbatch"):
        check_outdir(folder)
    assert CliRunner().invoke(cli, ["verify", str(folder)]).exit_code == 2
    del sched["devices"][1]["events"]
    (folder / "schedule.json").write_text(json.dumps(sched))
    with pytest.raises(PlanFolderError, match=r"devices\[1\]: 'events' is a required"):
        shardc.Plan.load(folder).schedule  # noqa: B018
    mismatch = _copy(good, tmp_path / "m", _set("partition.microbatches", 2))
    for read in (check_outdir, PlanDir, lambda f: shardc.Plan.load(f).schedule):
        with pytest.raises(PlanFolderError, match=r"disagree with plan\.json"):
            read(mismatch)  # schedule.json says 8


def test_the_schema_ships_and_accepts_what_compile_writes(good: Path) -> None:
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(plan_schema())
    jsonschema.Draft202012Validator(plan_schema()).validate(
        loads((good / "plan.json").read_bytes(), "plan.json")
    )


def test_plan_verifies_from_any_directory(tmp_path: Path) -> None:
    """Compile with relative paths, then verify from elsewhere: paths are anchored."""
    out = tmp_path / "plan"
    rel_model = os.path.relpath(GPT2, ROOT)
    r = subprocess.run(
        [sys.executable, "-m", "shardc", "compile", rel_model, "--topology",
         "topologies/localhost.topo", "--set", "devices=2", "--pin", "tp=2", "-o", str(out),
         "--quiet"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    recorded = json.loads((out / "plan.json").read_text())["inputs"]["model"]["path"]
    assert (out / recorded).resolve() == GPT2
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    v = subprocess.run(
        [sys.executable, "-m", "shardc", "verify", str(out), "--json"],
        cwd=elsewhere, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert v.returncode == 0, v.stderr
    assert json.loads(v.stdout)["ok"]


def test_bad_inputs_files_are_user_errors(good: Path, tmp_path: Path) -> None:
    text = tmp_path / "notes.npz"
    text.write_text("hello")
    single = tmp_path / "single.npz"
    with single.open("wb") as f:
        np.save(f, np.zeros((2, 8), np.int64))
    far = tmp_path / "far.npz"
    (spec,) = PlanDir(good).input_specs
    np.savez(far, **{spec.name: np.full(spec.shape, 10**6, spec.dtype)})
    for path, match in ((text, "not an .npz"), (single, "a single array"), (far, "indexes")):
        r = CliRunner().invoke(cli, ["verify", str(good), "--inputs", str(path)])
        assert r.exit_code == 2 and match in r.output, r.output
