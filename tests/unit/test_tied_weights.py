"""A tied embedding / LM head is one weight: a one-stage plan holds and syncs it once.

Why a test: the prologue (embedding lookup) and the epilogue (LM head) were priced apart,
each with the whole table, so the data-parallel sync of a one-stage GPT reduced the
embedding's gradient twice (~3 % of the sync) and counted its optimizer state twice.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from shardc.compiler import analyse
from shardc.cost.grid import GridConfig
from shardc.partition.grid import grid_problem, price_grid
from shardc.partition.options import PartitionOptions
from shardc.partition.problem import stage_bytes, stage_sync
from shardc.passes import annotate_costs, coarsen, strategies
from shardc.passes.partition import costing_for
from shardc.synth import SynthConfig, build
from shardc.topology import load_topology

ROOT = Path(__file__).resolve().parents[2]
CFG = SynthConfig(layers=4, hidden=512, heads=8, vocab=8192, seq=256, batch=1, dtype="bf16",
                  max_positions=256)


def _costing(tied: bool):
    topo = load_topology(ROOT / "topologies" / "dgx_a100_superpod.topo", {"nodes": 1})
    state = analyse(build("gpt", replace(CFG, tie_embeddings=tied)), topology=topo,
                    mode="training", partition=PartitionOptions(global_batch=16, zero=0),
                    passes=[annotate_costs.PASS, coarsen.PASS, strategies.PASS]).state
    return costing_for(state)


@pytest.fixture(scope="module")
def tied():
    return _costing(True)


def test_tied_weight_is_found(tied) -> None:
    assert len(tied.tied) == 1
    assert not _costing(False).tied


def test_one_stage_syncs_and_holds_the_tied_weight_once(tied) -> None:
    cfg = GridConfig(1, 1, 8, 1, 16, recompute="none")
    problem, stages = grid_problem(tied, cfg)
    c = problem.config(stages[0].config)
    pro, _, epi, _ = tied.sections
    table = tied.graph.values[next(iter(tied.tied))].nbytes
    assert table
    # the ends apart count the table twice; together once
    p = tied.part(pro, c.kind, 1, "none")
    e = tied.part(epi, c.kind, 1, "none")
    both = tied.part(pro + epi, c.kind, 1, "none")
    assert p.grad_bytes + e.grad_bytes - both.grad_bytes == pytest.approx(table)
    assert tied.sync_bytes(both, 8) == pytest.approx(p.grad_bytes + e.grad_bytes - table)
    assert c.tied_sync > 0 and c.tied_bytes > 0
    n = stages[0].blocks
    assert stage_sync(problem, stages, 0) == pytest.approx(
        n * c.sync_seconds + c.prologue_sync + c.epilogue_sync - c.tied_sync)
    # weights + gradients + Adam state of the table, no ZeRO: 2 + 2 + 12 bytes per param
    assert c.tied_bytes == pytest.approx(table / 2 * 16, rel=1e-6)
    assert stage_bytes(problem, stages, 0) < n * (
        c.block_static_bytes + c.block_activation_bytes) + c.prologue_bytes + c.epilogue_bytes


def test_two_stages_keep_a_copy_each(tied) -> None:
    one = price_grid(tied, GridConfig(1, 2, 4, 1, 16, recompute="none"))
    problem, stages = grid_problem(tied, GridConfig(1, 2, 4, 1, 16, recompute="none"))
    c = problem.config(stages[0].config)
    assert stage_sync(problem, stages, 0) == pytest.approx(
        stages[0].blocks * c.sync_seconds + c.prologue_sync)
    assert one.seconds > 0
