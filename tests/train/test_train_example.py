"""examples/train_with_plan.py: under ``shardc launch`` with a saved plan (and the profile
table), and ``shardc.parallelize`` in a one-process world.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import train_harness as H

import shardc

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train_with_plan.py"
FIRST_LOSS = 4.8379  # the seeded model and batch in one process (train_harness.reference)


def test_example_trains_under_shardc_launch(exports: dict[str, Path], tmp_path: Path) -> None:
    plan = shardc.compile(str(exports["llama"]), "topologies/localhost.topo", devices=2,
                          pins="tp=2", microbatches=2, quiet=True)  # fmt: skip
    plan.save(tmp_path / "plan")
    r = subprocess.run(
        [sys.executable, "-m", "shardc", "launch", str(tmp_path / "plan"), "--",
         str(EXAMPLE), "--steps", "3", "--profile"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    losses = [float(x) for x in re.findall(r"step \d+: loss (\S+)", r.stdout)]
    assert len(losses) == 3, r.stdout
    assert losses[0] == pytest.approx(FIRST_LOSS, abs=1e-4) and losses[2] < losses[0]
    assert re.search(r"tp comm\s+│\s+[\d.]+ │\s+[\d.]+ │", r.stdout), r.stdout
    assert "measured ms" in r.stdout and "estimated ms" in r.stdout


def test_parallelize_compiles_and_applies(tmp_path: Path) -> None:
    """One rank, one device: the plan is the whole model, trained through its forward."""
    dist.init_process_group(
        "gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1
    )
    try:
        model = H.build("llama")
        x, y = H.batch()
        pm = shardc.parallelize(model, "topologies/localhost.topo", example_inputs=(x[:2],),
                                devices=1, microbatches=2)  # fmt: skip
        assert pm.view.world_size == 1 and pm.module is model and model.training
        opt = torch.optim.SGD(list(pm.parameters()), lr=H.LR)
        assert pm.step(x, y, opt) == pytest.approx(H.reference("llama")["losses"][0], rel=1e-6)
    finally:
        dist.destroy_process_group()
