"""Which blocks an interleaved stage holds: one answer, recorded once, read by everyone.

The layout (chunk c of stage j is the chain's chunk ``c·pp + j``, Megatron-LM's and
torch.distributed.pipelining's order) is computed by
:func:`shardc.partition.chunks.chunk_blocks`, written to plan.json, checked by
``check-plan`` and read back by training; these tests pin each of those on a small
synth GPT (seconds).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from shardc.cli.main import cli
from shardc.partition.chunks import ChunkError, chunk_blocks, chunk_order

ROOT = Path(__file__).resolve().parents[2]


def test_megatron_layout_even_and_uneven() -> None:
    assert chunk_blocks([2, 2], 2) == (((0, 0), (2, 2)), ((1, 1), (3, 3)))
    # uneven stages stay uneven in every round of the ring
    assert chunk_blocks([4, 2], 2) == (((0, 1), (3, 4)), ((2, 2), (5, 5)))
    assert chunk_blocks([3, 5], 1) == (((0, 2),), ((3, 7),))
    layout = chunk_blocks([2, 2, 2, 2], 2)
    assert chunk_order(layout) == [(j, c) for c in range(2) for j in range(4)]
    with pytest.raises(ChunkError, match="do not split into 2"):
        chunk_blocks([3, 2], 2)
    with pytest.raises(ChunkError, match="two pipeline stages"):
        chunk_blocks([4], 2)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("ichunks")
    model, out = tmp / "g.onnx", tmp / "out"
    runner = CliRunner()
    r = runner.invoke(cli, ["synth", "gpt", "--layers", "8", "--hidden", "64", "--heads", "2",
                            "--vocab", "128", "--seq", "16", "--batch", "1", "--dtype", "fp32",
                            "--with-weights", "-o", str(model)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["compile", str(model), "--topology",
                            str(ROOT / "topologies/localhost.topo"), "--set", "devices=4",
                            "--mode", "training", "--pin", "pp=4,tp=1,dp=1,v=2", "-o", str(out)])
    assert r.exit_code == 0, r.output
    return out


def test_plan_records_the_chunks_and_training_reads_them(folder: Path) -> None:
    from shardc.train.parallel import _virtual_ranges
    from shardc.train.planview import plan_view

    stages = json.loads((folder / "plan.json").read_text())["partition"]["stages"]
    assert [s["chunks"] for s in stages] == [[[j, j], [4 + j, 4 + j]] for j in range(4)]
    view = plan_view(folder)
    for j in range(4):
        assert _virtual_ranges(view, j) == [(j, range(j, j + 1)), (4 + j, range(4 + j, 5 + j))]
    # training follows the recorded runs, not a layout of its own
    moved = replace(view, stages=tuple(
        replace(s, chunks=((s.index, s.index), (7 - s.index, 7 - s.index))) for s in view.stages
    ))
    assert _virtual_ranges(moved, 1) == [(1, range(1, 2)), (5, range(6, 7))]


def test_check_plan_refuses_chunks_out_of_order(folder: Path, tmp_path: Path) -> None:
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    plan = json.loads((bad / "plan.json").read_text())
    stages = plan["partition"]["stages"]
    stages[0]["chunks"], stages[1]["chunks"] = stages[1]["chunks"], stages[0]["chunks"]
    (bad / "plan.json").write_text(json.dumps(plan))
    r = CliRunner().invoke(cli, ["check-plan", str(bad)])
    assert r.exit_code == 2, r.output
    assert "chunks[0]" in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) <= 2


def test_check_plan_refuses_chunked_programs_without_recorded_chunks(
    folder: Path, tmp_path: Path
) -> None:
    """The schedule says the programs hold their chunks; plan.json must say which."""
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    plan = json.loads((bad / "plan.json").read_text())
    for st in plan["partition"]["stages"]:
        del st["chunks"]
    (bad / "plan.json").write_text(json.dumps(plan))
    r = CliRunner().invoke(cli, ["check-plan", str(bad)])
    assert r.exit_code == 2, r.output
    assert "chunked_programs disagree" in r.output and "Traceback" not in r.output
