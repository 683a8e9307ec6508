"""The runtime: emitted plans run over torch.distributed (gloo, one process per rank) and
in-process, and reproduce the original model; failures name the rank and the op.

Reference: onnxruntime on the unsharded export. Tolerance: 1e-5 of the output's largest
magnitude (fp32), the default of ``shardc verify``. Plans are pinned onto
``topologies/localhost.topo`` so pipeline, tensor and data parallel and their mixes all
run; the 2- and 4-rank plans run as processes, the 8-rank ones in-process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from shardc.cli.main import cli
from shardc.errors import ExecutionError, OptionError
from shardc.runtime.collectives import combine
from shardc.runtime.verify import verify

ROOT = Path(__file__).resolve().parents[2]


def _compile(model: Path, out: Path, devices: int, pins: str, mode: str = "inference") -> Path:
    args = ["compile", str(model), "--topology", str(ROOT / "topologies/localhost.topo")]
    args += ["--set", f"devices={devices}", "--pin", pins, "--mode", mode, "-o", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return out


def _workers(plan: Path) -> list[str]:
    """Worker processes of ``plan`` still alive (none may outlive a run)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "shardc.runtime.worker" in cmd and str(plan) in cmd:
                found.append(cmd)
    return found


def _case(fixture: str, devices: int, pins: str, mode: str, *marks):
    return pytest.param(fixture, devices, pins, mode, marks=marks, id=f"{fixture[:-5]}-{pins}")


PROCS = [
    _case("gpt2_path", 2, "tp=1,pp=2,dp=1", "inference"),
    _case("llama_path", 2, "tp=2,pp=1,dp=1", "inference"),
    _case("gpt2_path", 4, "tp=2,pp=2,dp=1", "training"),
    _case("llama_path", 4, "tp=1,pp=2,dp=2", "training"),
    _case("llama_path", 8, "tp=2,pp=2,dp=2", "training", pytest.mark.slow),  # 8 processes
]


@pytest.mark.parametrize("fixture, devices, pins, mode", PROCS)
def test_processes_over_gloo_match_the_model(
    request, tmp_path: Path, fixture: str, devices: int, pins: str, mode: str
) -> None:
    plan = _compile(request.getfixturevalue(fixture), tmp_path / "plan", devices, pins, mode)
    report = verify(plan, procs=True)
    assert report.ok, report.to_json()
    assert report.runner.startswith(f"{devices} processes")
    # every slot (replica, micro-batch) of the step was checked on every output rank
    ranks = json.loads((plan / "plan.json").read_text())["emission"]["ranks"]
    last_tp = next(r["tp"] for r in ranks if r["outputs"])
    out = report.outputs[0]
    assert out.compared == report.slots * last_tp
    assert out.max_rel <= 1e-5
    assert all(t.compute > 0 and t.comm is not None for t in report.timings)
    assert not _workers(plan)


MATRIX = [
    (2, "tp=1,pp=2,dp=1"),  # pure pipeline
    (2, "tp=2,pp=1,dp=1"),  # pure tensor parallel
    (2, "tp=1,pp=1,dp=2"),  # pure data parallel
    (4, "tp=2,pp=2,dp=1"),
    (4, "tp=4,pp=1,dp=1"),
    (4, "tp=1,pp=2,dp=2"),
    (8, "tp=2,pp=2,dp=2"),
    (8, "tp=4,pp=2,dp=1"),
]


@pytest.mark.parametrize("devices, pins", MATRIX, ids=[p for _, p in MATRIX])
@pytest.mark.parametrize("fixture", ["gpt2_path", "llama_path"])
def test_every_plan_shape_matches_in_process(
    request, tmp_path: Path, fixture: str, devices: int, pins: str
) -> None:
    """A whole training step's forward passes: every replica, every micro-batch."""
    path = request.getfixturevalue(fixture)
    plan = _compile(path, tmp_path / "plan", devices, pins, "training")
    report = verify(plan)
    assert report.ok, report.to_json()
    assert max(o.max_rel for o in report.outputs) <= 1e-5
    partition = json.loads((plan / "plan.json").read_text())["partition"]
    assert report.slots == partition["dp"] * partition["microbatches"] > 1


def test_the_cli_prints_tables_and_json_and_fails_on_a_mismatch(
    gpt2_path: Path, tmp_path: Path
) -> None:
    plan = _compile(gpt2_path, tmp_path / "plan", 2, "tp=2,pp=1,dp=1")
    ok = CliRunner().invoke(cli, ["verify", str(plan)])
    assert ok.exit_code == 0, ok.output
    assert "max abs" in ok.output and "est compute" in ok.output and "ok: in-process" in ok.output
    as_json = CliRunner().invoke(cli, ["verify", str(plan), "--json"])
    data = json.loads(as_json.output)
    assert data["ok"] and data["outputs"][0]["max_rel"] <= 1e-5 and len(data["ranks"]) == 2

    # A weight shard scaled on rank 1: the sharded output parts from the model's.
    f = plan / "device_1.onnx"
    model = onnx.load(str(f))
    w = next(t for t in model.graph.initializer if len(t.dims) == 2)
    arr = onnx.numpy_helper.to_array(w) * 1.01
    w.CopyFrom(onnx.numpy_helper.from_array(arr.astype(np.float32), w.name))
    onnx.save(model, str(f))
    bad = CliRunner().invoke(cli, ["verify", str(plan)])
    assert bad.exit_code == 3
    assert "MISMATCH" in bad.output and "rank" in bad.output


def test_given_inputs_are_cut_into_micro_batches(gpt2_path: Path, tmp_path: Path) -> None:
    plan = _compile(gpt2_path, tmp_path / "plan", 2, "tp=1,pp=2,dp=1", "training")
    m = json.loads((plan / "plan.json").read_text())["partition"]["microbatches"]
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 256, size=(2 * 3, 16)).astype(np.int64)  # 3 micro-batches
    np.savez(tmp_path / "in.npz", input_ids=ids)
    report = verify(plan, tmp_path / "in.npz")
    assert report.ok and report.slots == m
    with pytest.raises(OptionError, match="micro-batches of \\[2, 16\\]"):
        verify(plan, {"input_ids": ids[:, :5]})
    with pytest.raises(OptionError, match="lack"):
        verify(plan, {"ids": ids})
    r = CliRunner().invoke(cli, ["verify", str(plan), "--inputs", str(tmp_path / "nope.npz")])
    assert r.exit_code == 2 and "cannot read inputs" in r.output


def test_a_changed_model_is_refused(gpt2_path: Path, tmp_path: Path) -> None:
    copy = tmp_path / "model.onnx"
    copy.write_bytes(gpt2_path.read_bytes())
    plan = _compile(copy, tmp_path / "plan", 2, "tp=2,pp=1,dp=1")
    model = onnx.load(str(copy))
    model.doc_string = "edited"
    onnx.save(model, str(copy))
    r = CliRunner().invoke(cli, ["verify", str(plan)])
    assert r.exit_code == 2 and "changed since the plan was compiled" in r.output
    assert verify(plan, model=gpt2_path).ok


# ---- faults: each ends the run with one message naming the rank and the op ----


@pytest.fixture(scope="module")
def tp2_plan(tmp_path_factory, gpt2_path: Path) -> Path:
    return _compile(gpt2_path, tmp_path_factory.mktemp("tp2") / "plan", 2, "tp=2,pp=1,dp=1")


def test_a_rank_that_dies_is_named_with_its_op(tp2_plan: Path, monkeypatch) -> None:
    monkeypatch.setenv("SHARDC_FAULT", "die@1")
    with pytest.raises(ExecutionError, match=r"rank 1 was killed by SIGKILL at AllReduce '"):
        verify(tp2_plan, procs=True)
    assert not _workers(tp2_plan)


def test_a_hung_rank_times_out_naming_where_ranks_wait(tp2_plan: Path, monkeypatch) -> None:
    monkeypatch.setenv("SHARDC_FAULT", "hang@0")
    with pytest.raises(ExecutionError, match=r"did not finish within 6 s: rank 0 at AllReduce"):
        verify(tp2_plan, procs=True, timeout=6)
    assert not _workers(tp2_plan)


def _narrow_first_comm_input(plan: Path, rank: int) -> str:
    """Rank ``rank`` computes a value of the wrong shape just before its first comm op."""
    f = plan / f"device_{rank}.onnx"
    model = onnx.load(str(f))
    nodes = list(model.graph.node)
    i, comm = next((i, n) for i, n in enumerate(nodes) if n.domain == "shardc")
    cut = onnx.helper.make_node(
        "Slice", [comm.input[0], "cut_s", "cut_e", "cut_a"], ["cut_out"], name="cut"
    )
    for name, v in (("cut_s", 0), ("cut_e", 1), ("cut_a", 0)):
        model.graph.initializer.append(onnx.numpy_helper.from_array(np.array([v]), name))
    comm.input[0] = "cut_out"
    del model.graph.node[:]
    model.graph.node.extend([*nodes[:i], cut, *nodes[i:]])
    onnx.save(model, str(f))
    return comm.name


@pytest.mark.parametrize("procs", [False, True], ids=["in-process", "processes"])
def test_a_wrong_shape_is_named_with_the_rank_and_op(
    gpt2_path: Path, tmp_path: Path, procs: bool
) -> None:
    plan = _compile(gpt2_path, tmp_path / "plan", 2, "tp=2,pp=1,dp=1")
    op = _narrow_first_comm_input(plan, 1)
    with pytest.raises(ExecutionError, match=rf"AllReduce '{op}'.*disagree on the shape") as e:
        verify(plan, procs=procs)
    assert "1: [1, " in str(e.value) and "0: [2, " in str(e.value)
    assert not _workers(plan)


def test_a_recv_of_the_wrong_shape_names_both_ranks(gpt2_path: Path, tmp_path: Path) -> None:
    plan = _compile(gpt2_path, tmp_path / "plan", 2, "tp=1,pp=2,dp=1")
    op = _narrow_first_comm_input(plan, 0)  # the Send of stage 0
    with pytest.raises(ExecutionError, match=r"rank 1: Recv '.*' with rank 0.*rank 0 sent"):
        verify(plan, procs=True)
    with pytest.raises(ExecutionError, match="expected shape"):
        verify(plan)
    assert op and not _workers(plan)


# ---- the torch.distributed collectives mean what the array ones mean ----

_COLLECTIVES = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import onnx
    import torch.distributed as dist
    from shardc.runtime.distributed import TorchComm
    from shardc.runtime.program import CommRequest

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    comm = TorchComm("cpu", check_shapes=True)
    group = json.loads(sys.argv[1])
    comm.make_groups({tuple(group)})
    out = {}
    for op in ("AllReduce", "AllGather", "ReduceScatter", "AllToAll"):
        node = onnx.helper.make_node(op, ["x"], ["y"], domain="shardc", name=op,
                                     group=group, axis=1, concat_axis=0)
        value = np.arange(24, dtype=np.float32).reshape(2, 6, 2) * (rank + 1) + rank
        out[op] = comm.answer(CommRequest(rank, node, value, 0)).tolist()
    print(json.dumps(out))
    dist.destroy_process_group()
    """
)


@pytest.mark.parametrize("group", [[0, 1, 2], [2, 0, 1]], ids=["sorted", "permuted"])
def test_torch_collectives_agree_with_the_array_semantics(tmp_path: Path, group) -> None:
    script = tmp_path / "coll.py"
    script.write_text(_COLLECTIVES)
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "WORLD_SIZE": "3"}
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        env["MASTER_PORT"] = str(s.getsockname()[1])
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), json.dumps(group)],
            env={**env, "RANK": str(r)},
            stdout=subprocess.PIPE,
            text=True,
        )
        for r in range(3)
    ]
    got = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    parts = [np.arange(24, dtype=np.float32).reshape(2, 6, 2) * (r + 1) + r for r in group]
    for op in ("AllReduce", "AllGather", "ReduceScatter", "AllToAll"):
        want = combine(op, parts, axis=1, concat_axis=0)
        for position, member in enumerate(group):
            np.testing.assert_allclose(np.array(got[member][op]), want[position], err_msg=op)


def test_a_program_that_parts_from_the_schedule_is_refused(tp2_plan: Path, tmp_path: Path):
    import shutil

    from shardc.runtime.plandir import PlanFolderError

    plan = Path(shutil.copytree(tp2_plan, tmp_path / "plan"))
    f = plan / "device_1.onnx"
    model = onnx.load(str(f))
    comm = [n for n in model.graph.node if n.domain == "shardc"]
    model.graph.node.remove(comm[-1])
    for n in model.graph.node:  # keep the graph connected: read the comm's input instead
        for k, name in enumerate(n.input):
            if name == comm[-1].output[0]:
                n.input[k] = comm[-1].input[0]
    for o in model.graph.output:
        if o.name == comm[-1].output[0]:
            o.name = comm[-1].input[0]
    onnx.save(model, str(f))
    with pytest.raises(PlanFolderError, match=r"rank 1: schedule.json lists \d+ comm ops"):
        verify(plan)
