"""What a new user tripped on, one test each (issue #15, point 6): small synth graphs, CLI.

Each test failed before its fix; they run in a few seconds each on tiny graphs.
"""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from shardc.cli.main import cli

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "models" / "tiny_gpt2.onnx"


def shardc(*args: str, code: int = 0) -> str:
    """Run the CLI in-process; return stdout (stderr on failure is in the message)."""
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == code, f"{args}: {result.output}\n{result.stderr}"
    return result.stdout if code == 0 else result.stderr


def synth(tmp_path: Path, *extra: str, name: str = "g.onnx") -> Path:
    out = tmp_path / name
    shardc("synth", "gpt", "--layers", "2", "--hidden", "64", "--heads", "4", "--vocab", "128",
           "--seq", "16", "--batch", "2", "--dtype", "fp32", "-o", str(out), *extra)
    return out


def test_synth_with_weights_runs_as_a_pipeline(tmp_path: Path) -> None:
    """A scalar crossing stages made its Recv's empty ``shape`` attribute untypeable."""
    model = synth(tmp_path, "--with-weights")
    plan = tmp_path / "plan"
    shardc("compile", str(model), "--topology", "localhost", "--set", "devices=2",
           "--pin", "pp=2", "-o", str(plan), "-q")
    shardc("check-plan", str(plan))
    assert json.loads(shardc("verify", str(plan), "--json"))["ok"] is True


def test_declared_weights_still_get_schedule_trace_and_report(tmp_path: Path) -> None:
    """None of schedule.json, trace.json or the report needs weights; only device models do."""
    model = synth(tmp_path)  # weights declared, never written
    plan, page = tmp_path / "plan", tmp_path / "report.html"
    result = CliRunner().invoke(cli, ["compile", str(model), "--topology", "localhost",
                                      "--set", "devices=2", "--pin", "pp=2", "-o", str(plan),
                                      "--report", str(page)])
    assert result.exit_code == 0, result.output
    assert "no device models" in result.output
    names = sorted(p.name for p in plan.iterdir())
    assert names == ["analysis.json", "plan.json", "schedule.json", "trace.json"]
    schedule = json.loads((plan / "schedule.json").read_text())
    assert len(schedule["devices"]) == 2 and schedule["step_seconds"] > 0
    assert "emission" not in json.loads((plan / "plan.json").read_text())
    assert page.stat().st_size > 0
    none = tmp_path / "none"
    shardc("compile", str(model), "--topology", "localhost", "--set", "devices=2", "-o",
           str(none), "--no-emit", "-q")
    assert sorted(p.name for p in none.iterdir()) == ["analysis.json", "plan.json"]


def test_declared_weights_skip_the_schedule_when_micro_batches_make_it_long(
    tmp_path: Path,
) -> None:
    """The budget counted nodes x replicas only: a what-if of 64 micro-batches per replica
    wrote 790 MB of schedule and trace by default. Each micro-batch is laid out again.
    """
    model, plan = synth(tmp_path), tmp_path / "plan"
    # ~150 nodes x 1 replica x 512 micro-batches: over the budget, though nodes x dp is not
    result = CliRunner().invoke(cli, ["compile", str(model), "--topology", "localhost",
                                      "--set", "devices=2", "--pin", "dp=1,pp=2",
                                      "--global-batch", "1024", "-o", str(plan)])
    assert result.exit_code == 0, result.output
    assert "1 replicas of 512 micro-batches" in result.output
    assert sorted(p.name for p in plan.iterdir()) == ["analysis.json", "plan.json"]


def test_link_bytes_and_busy_time_agree_with_the_bandwidth(tmp_path: Path) -> None:
    """A tp=8 all-reduce was credited once per member on every ring link: 8x the bytes."""
    from shardc.topology import load_topology

    model = tmp_path / "m.onnx"
    shardc("synth", "llama", "--layers", "1", "--hidden", "512", "--heads", "8", "--kv-heads",
           "8", "--vocab", "1024", "--seq", "256", "--batch", "8", "-o", str(model))
    plan = tmp_path / "plan"
    shardc("compile", str(model), "--topology", "dgx_h100", "--pin", "tp=8", "--mode",
           "inference", "-o", str(plan), "-q")
    bandwidth = {}
    for link in load_topology("dgx_h100").links:
        bandwidth[f"{link.a}<->{link.b}"] = bandwidth[f"{link.b}<->{link.a}"] = link.bandwidth
    schedule = json.loads((plan / "schedule.json").read_text())
    assert schedule["links"]
    for entry in schedule["links"]:
        assert entry["busy_seconds"] <= schedule["step_seconds"]
        assert entry["bytes"] / entry["busy_seconds"] <= bandwidth[entry["link"]] * (1 + 1e-9)


TWO_NODES = """\
# Two one-GPU nodes joined by InfiniBand only: a data-parallel pair must cross the fabric.
include "kinds/nvidia.topo"

node[0..1] {
    gpu0: h100_sxm
}

network ib: ib {
    members node[*].gpu0
    bandwidth 400 Gb/s
    latency 1 us
}
"""


def test_dp_sync_puts_its_gradients_on_the_inter_node_fabric(tmp_path: Path) -> None:
    """The DP sync's events carried 0 bytes and no links (issue #14, point 5), so the
    busiest-links table and the map showed the InfiniBand between the replicas idle.
    """
    model = synth(tmp_path)
    topo = tmp_path / "two.topo"
    topo.write_text(TWO_NODES)
    plan, page = tmp_path / "plan", tmp_path / "report.html"
    out = shardc("compile", str(model), "--topology", str(topo), "--pin", "dp=2,pp=1,tp=1",
                 "-o", str(plan), "--report", str(page))
    schedule = json.loads((plan / "schedule.json").read_text())
    stages = json.loads((plan / "plan.json").read_text())["partition"]["stages"]
    syncs = [d["events"][-1] for d in schedule["devices"]]
    assert len(syncs) == 2 and all(e["phase"] == "sync" for e in syncs)
    ib = {link for e in syncs for link in e["links"]}
    assert ib and all("ib." in link for link in ib)
    for e in syncs:
        assert e["bytes"] > 0 and e["duration"] == stages[0]["sync_seconds"]
        assert e["links"] == syncs[0]["links"]  # one ring, as both members list it
    # the only traffic of a one-stage, one-GPU-per-replica plan: every table lists it
    assert {entry["link"] for entry in schedule["links"]} == ib
    for entry in schedule["links"]:
        assert (entry["bytes"], entry["transfers"]) == (syncs[0]["bytes"], 1)
    html = page.read_text()
    table = html[html.index("Busiest links"):]
    assert all(link.replace("<", "&lt;").replace(">", "&gt;") in table for link in ib)
    assert all(link in out for link in ib)  # the terminal's busiest-links table


def test_a_tp_degree_that_splits_nothing_is_refused(tmp_path: Path) -> None:
    """4 heads, widths 64/256, vocabulary 128: tp=3 split nothing yet was priced as tp=3."""
    model = synth(tmp_path)
    err = shardc("compile", str(model), "--topology", "localhost", "--set", "devices=3",
                 "--pin", "tp=3", "-o", str(tmp_path / "plan"), code=2)
    assert err.count("\n") == 1 and "--pin tp=3 splits nothing" in err and "tp=2" in err
    assert not (tmp_path / "plan").exists()


def test_compile_json_is_byte_identical_and_tables_are_wide_in_logs(tmp_path: Path) -> None:
    """--json carried wall-clock timings; a pipe got 80 columns, cutting long lines."""
    out = tmp_path / "a-folder-name-long-enough-to-push-the-first-line-past-eighty-columns"
    out.mkdir()
    model = out / "model.onnx"
    model.write_bytes(EXAMPLE.read_bytes())
    run = ["compile", str(model), "--topology", "localhost", "--set", "devices=2", "-o",
           str(out / "plan"), "--force"]
    first, second = shardc(*run, "--json"), shardc(*run, "--json")
    assert first == second and "timings" not in json.loads(first)
    timed = json.loads(shardc(*run, "--json", "--timings"))["timings"]
    assert timed["compile_seconds"] > 0 and "partition" in timed["passes"]
    lines = shardc(*run).splitlines()  # stdout is not a terminal here
    assert lines[0].startswith(str(model)) and lines[0].endswith("(2 compute devices)")
    assert any(line.startswith("wrote ") and "partition" in line for line in lines)
    assert not any("…" in line for line in lines)


def _uneven_mlp(path: Path) -> Path:
    """Three residual MLP layers of different widths (32, 96, 64): nothing repeats."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i, width in enumerate((32, 96, 64)):
        w1 = numpy_helper.from_array(rng.standard_normal((16, width), np.float32) * 0.1, f"w{i}a")
        w2 = numpy_helper.from_array(rng.standard_normal((width, 16), np.float32) * 0.1, f"w{i}b")
        inits += [w1, w2]
        nodes += [helper.make_node("MatMul", [x, f"w{i}a"], [f"h{i}"]),
                  helper.make_node("Relu", [f"h{i}"], [f"r{i}"]),
                  helper.make_node("MatMul", [f"r{i}", f"w{i}b"], [f"m{i}"]),
                  helper.make_node("Add", [x, f"m{i}"], [f"y{i}"])]
        x = f"y{i}"
    graph = helper.make_graph(
        nodes, "uneven", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 16])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [8, 16])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


def test_layers_that_differ_still_pipeline(tmp_path: Path) -> None:
    """Stages could only be cut between identical blocks: 'the model has only 1 blocks'."""
    model = _uneven_mlp(tmp_path / "uneven.onnx")
    plan = tmp_path / "plan"
    data = json.loads(shardc("compile", str(model), "--topology", "localhost", "--set",
                             "devices=2", "--pin", "pp=2", "--mode", "inference", "-o",
                             str(plan), "--json"))
    stages = data["plan"]["partition"]["stages"]
    assert len(stages) == 2
    shardc("check-plan", str(plan))
    assert json.loads(shardc("verify", str(plan), "--json"))["ok"] is True
