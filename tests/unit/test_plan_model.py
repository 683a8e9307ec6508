"""The typed Plan: what the passes build is what the folder reader gives back.

The passes after ``partition`` build :class:`~shardc.plan.model.PlanData`; the one writer
turns it into files and the one reader turns the files back into a PlanData. Both must
agree on everything the folder records (the programs' node names and comm outputs live in
the device files, not in plan.json or schedule.json, so they are compared without them).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

import shardc
from shardc.plan import Comm, Compute, Link, PlanData
from shardc.plan.folder import read_plan
from shardc.plan.timeline import Timeline

ROOT = Path(__file__).resolve().parents[2]
GPT2 = ROOT / "examples/models/tiny_gpt2.onnx"
LOCAL = ROOT / "topologies/localhost.topo"


def _outline(plan: PlanData) -> list[list[Comm | Compute]]:
    assert plan.programs is not None
    return [
        [replace(s, nodes=()) if isinstance(s, Compute) else replace(s, output="") for s in p.steps]
        for p in plan.programs.programs
    ]


@pytest.mark.parametrize("pins", ["tp=2,pp=2", "tp=2,pp=1,dp=2"])
def test_folder_reads_back_the_plan_compile_built(pins: str, tmp_path: Path) -> None:
    plan = shardc.compile(GPT2, LOCAL, devices=4, pins=pins, quiet=True)
    built = plan.typed
    folder = plan.save(tmp_path / "plan")
    read = read_plan(folder)
    assert read.partition == built.partition and read.ranks == built.ranks
    assert read.timeline == built.timeline and isinstance(read.timeline, Timeline)
    assert _outline(read) == _outline(built)
    assert read.syncs == built.syncs
    assert read.estimate == built.estimate
    assert read.to_json() == shardc.Plan.load(folder).data


def test_every_comm_is_priced_with_links(tmp_path: Path) -> None:
    plan = shardc.compile(GPT2, LOCAL, devices=4, pins="tp=2,pp=2", quiet=True)
    comms = [c for cs in plan.comms.values() for c in cs]
    assert {"AllReduce", "Send", "Recv"} <= {c.op for c in comms}
    for c in comms:
        assert c.seconds > 0 and c.nbytes > 0 and c.algorithm
        assert c.links and all(isinstance(x, Link) and x.a and x.b for x in c.links)
    # a Send and its Recv are priced alike: the timeline's Recv lasts the Send's time
    sends = {(p.rank, c.peer, c.tag): c for p in plan.programs.programs for c in p.comms
             if c.op == "Send"}
    for p in plan.programs.programs:
        for c in p.comms:
            if c.op == "Recv":
                assert sends[(c.peer, p.rank, c.tag)].seconds == c.seconds


def test_link_names_round_trip() -> None:
    assert str(Link.parse("a.gpu0<->sw")) == "a.gpu0<->sw"
    assert Link.parse("a.gpu0<->sw") == Link("a.gpu0", "sw")
    assert str(Link.parse("nvlink0")) == "nvlink0"


def test_the_plan_passes_dump_what_they_add(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from shardc.cli.main import cli

    args = ["compile", str(GPT2), "--topology", str(LOCAL), "--set", "devices=4",
            "--pin", "tp=2,pp=2", "-o", str(tmp_path / "p")]
    for name in ("lower", "price", "timeline", "plan"):
        args += ["--dump-after", name]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    lower, rest = r.stderr.split("--- after price ---")
    price, rest = rest.split("--- after timeline ---")
    timeline, plan = rest.split("--- after plan ---")
    assert "Send add_8 8192 B peer 2 tag 1" in lower and " ms" not in lower  # unpriced
    assert "p2p" in price and "direct" in price and "dp sync" in price
    assert timeline.startswith("\nstep ") and "link cpu0<->loopback" in timeline
    assert '"ranks"' in plan and '"step_seconds"' in plan


def test_price_uses_the_cost_models_own_functions() -> None:
    """Every comm's seconds is what :mod:`shardc.cost.network` says for its devices: the
    ``price`` pass carries no formula of its own.
    """
    from shardc.cost.network import group_collective, point_to_point
    from shardc.passes.price import COST_OP

    plan = shardc.compile(GPT2, LOCAL, devices=4, pins="tp=2,pp=2", quiet=True)
    topo = plan.topology
    device = {r.rank: r.device for r in plan.ranks}
    for p in plan.programs.programs:
        for c in p.comms:
            if c.op == "Send":
                want = point_to_point(topo, p.device, device[c.peer], c.nbytes)
            elif c.op == "Recv":
                want = point_to_point(topo, device[c.peer], p.device, c.nbytes)
            else:
                members = [device[r] for r in c.group]
                want = group_collective(topo, COST_OP[c.op], c.nbytes, members)
                assert c.algorithm == want.algorithm
            assert c.seconds == want.seconds


def test_partition_model_decides_without_lowering() -> None:
    """partition_model stops at the partition: scripts that explore configurations do not
    pay for every rank's program (a 70 B model on 32 devices took minutes and 10 GB when
    it lowered); build_plan carries the state on when the Plan is wanted.
    """
    from shardc.compiler import build_plan, partition_model
    from shardc.partition.options import PartitionOptions, parse_pins
    from shardc.topology import load_topology

    root = Path(__file__).resolve().parents[2]
    topo = load_topology(root / "topologies/localhost.topo", {"devices": 2})
    options = PartitionOptions(pins=parse_pins(["tp=2"]))
    state = partition_model(root / "examples/models/tiny_gpt2.onnx", topo, partition=options).state
    assert state.partition is not None and state.programs is None and state.plan is None
    assert build_plan(state).state.plan is not None
