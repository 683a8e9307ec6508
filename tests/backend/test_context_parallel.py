"""Context-parallel programs reproduce the original model, with exactly the traffic listed.

Context parallelism splits the sequence of every activation over a cp group; attention
gathers K and V over the group (Llama 3's all-gather variant) and each rank reads its
rows of the causal mask, positions and rotary tables. A tiny GPT-2 and a tiny Llama
exported from ``transformers`` are compiled (plain, and with tensor and pipeline
parallelism) with cp=2 and cp=4 pinned (the ``lower`` pass copies every rank per sequence
chunk, :func:`shardc.passes.lower_context.context_lowering`), emitted and run in-process:
every output-holding rank must match onnxruntime on the unsharded
model. The CP traffic must be one all-gather per K and per V per layer plus one per
output, each moving the bytes of the tensor it gathers, and priced by the cost model.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

import shardc.partition.context_pricing as pricing_module
from shardc.cli.main import cli
from shardc.compiler import build_plan, partition_model
from shardc.emit.devices import emit
from shardc.errors import OptionError
from shardc.frontend import load_model
from shardc.partition.context import ContextError, context_map
from shardc.partition.context_pricing import cp_collectives, cp_degrees
from shardc.passes.lower import chunk_nodes
from shardc.passes.partition import costing_for
from shardc.passes.strategies import build_table
from shardc.plan.lowered import is_context_comm
from shardc.runtime.inprocess import run_inprocess
from shardc.topology import load_topology

ROOT = Path(__file__).resolve().parents[2]
LAYERS = 2


def worst_error(outs: Any, want: Any) -> tuple[float, int]:
    """(the worst absolute error, outputs compared) of every rank's outputs against
    onnxruntime's ``want``, each checked to the CP tolerance (rtol = atol = 2e-4).
    """
    worst, checked = 0.0, 0
    for rank in outs:
        for name, ref in want.items():
            if name in outs[rank]:
                np.testing.assert_allclose(outs[rank][name], ref, rtol=2e-4, atol=2e-4)
                worst = max(worst, float(np.abs(outs[rank][name] - ref).max()))
                checked += 1
    return worst, checked

def _compile(path: Path, pins: str, devices: int) -> Any:
    from shardc.partition.options import PartitionOptions, parse_pins

    topo = load_topology(ROOT / "topologies/localhost.topo", {"devices": devices})
    options = PartitionOptions(pins=parse_pins([pins]))
    state = partition_model(path, topo, mode="training", partition=options).state
    return build_plan(state).state


def _reference(path: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {i.name: rng.integers(0, 256, size=i.shape).astype(np.int64)
             for i in sess.get_inputs()}
    want = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))
    return feeds, want


def check_cp_plan(path: Path, pins: str, devices: int, cp: int) -> float:
    """Compile with ``cp`` pinned (the partitioner prices and places cp copies), emit,
    run; returns the max error (printed for the report).
    """
    state = _compile(path, f"{pins},cp={cp}", cp * devices)
    assert {s.cp for s in state.partition.stages} == {cp}
    assert state.partition.devices_used == cp * devices
    models = emit(state).models
    programs = state.plan.programs.programs
    comms = {p.rank: [c for c in p.comms if is_context_comm(c.output, c.value)] for p in programs}
    assert len(models) == cp * devices
    feeds, want = _reference(path)
    outs = run_inprocess(models, feeds)
    worst, checked = worst_error(outs, want)
    assert checked >= cp  # every cp copy of the last stage holds the outputs
    # the traffic: K and V of each layer on every rank, the outputs on the last stage's
    graph = state.graph
    for rank, listed in comms.items():
        kv = [c for c in listed if c.output not in graph.outputs]
        stage_layers = LAYERS // len(state.partition.stages)
        assert len(kv) == 2 * stage_layers, (rank, kv)
        for c in listed:
            assert c.op == "AllGather" and len(c.group) == cp and rank in c.group
            assert c.nbytes > 0
            # priced by the cost model on the group's devices, which are distinct
            assert c.seconds > 0.0 and c.links
            assert len({programs[k].device for k in c.group}) == cp
    _charged_as_emitted(state, comms, cp)
    print(f"{path.stem} {pins} cp={cp}: max |error| {worst:.3g}")
    return worst


def _charged_as_emitted(state: Any, comms: Any, cp: int) -> None:
    """Each rank's emitted CP collectives are the forward ones the partitioner charged to
    its stage's nodes: same ops, same bytes (:func:`cp_collectives`, forward only).
    """
    costing = costing_for(state)
    cmap = costing.context(cp)
    nodes = [tuple(n for chunk in chunks for n in chunk) for chunks in chunk_nodes(state)]
    programs = state.plan.programs.programs
    for rank, listed in comms.items():
        prog = programs[rank]
        tp = state.partition.stages[prog.stage].tp
        ch, sizes = costing.choice(tp), {"tp": tp}
        charged = cp_collectives(nodes[prog.stage], cmap,
                                 lambda nd, i, ch=ch, sizes=sizes: costing.operand_bytes(
                                     nd, i, ch, sizes),
                                 costing._nbytes, training=False, recompute="none")
        assert Counter(charged) == Counter(("all_gather", c.nbytes) for c in listed), rank


CASES = [
    ("tp=1,pp=1,dp=1", 1, 2),
    ("tp=1,pp=1,dp=1", 1, 4),
    ("tp=2,pp=1,dp=1", 2, 2),
    pytest.param("tp=2,pp=2,dp=1", 4, 2, marks=pytest.mark.slow),  # 8 ranks, pipelined
    pytest.param("tp=1,pp=1,dp=2", 2, 2, marks=pytest.mark.slow),  # cp beside dp
]


@pytest.mark.parametrize("pins,devices,cp", CASES)
def test_gpt2_context_parallel(gpt2_path: Path, pins: str, devices: int, cp: int) -> None:
    check_cp_plan(gpt2_path, pins, devices, cp)


@pytest.mark.parametrize("pins,devices,cp", CASES)
def test_llama_context_parallel(llama_path: Path, pins: str, devices: int, cp: int) -> None:
    check_cp_plan(llama_path, pins, devices, cp)


def test_the_mask_offset_is_what_makes_it_right(gpt2_path: Path) -> None:
    """Negative control: every rank reading rows 0.. of the mask and positions (no offset)
    must give wrong outputs, so the tests above cannot pass by accident.
    """
    state = _compile(gpt2_path, "tp=1,pp=1,dp=1,cp=2", 2)
    models = emit(state).models
    feeds, want = _reference(gpt2_path)
    for m in models.values():  # move rank 1's row slices to rank 0's rows
        for init in m.graph.initializer:
            if "__cprows" in init.name and init.name.endswith(("_s", "_e")):
                arr = onnx.numpy_helper.to_array(init).copy()
                arr[...] = 0 if init.name.endswith("_s") else 8
                init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    outs = run_inprocess(models, feeds)
    name = next(iter(want))
    assert float(np.abs(outs[1][name] - want[name]).max()) > 1e-2


# -- bad input ---------------------------------------------------------------------------
def _no_sequence(tmp_path: Path) -> Path:
    """A two-layer MLP on [batch, features]: no sequence dim to split."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])
    w = onnx.numpy_helper.from_array(np.ones((8, 8), np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["h"]),
                           helper.make_node("Relu", ["h"], ["y"])], "mlp", [x], [y], [w])
    path = tmp_path / "mlp.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


def _cmap(path: Path, cp: int) -> Any:
    model = load_model(path)
    table, _ = build_table(model.graph, model.opset() or 18)
    inits = set(model.graph.initializers)
    return context_map(model.graph, table.labels, cp,
                       lambda v: model.weights.array(v) if v in inits else None)


def test_cp_without_a_sequence_is_a_one_line_error(tmp_path: Path) -> None:
    path = _no_sequence(tmp_path)
    with pytest.raises(ContextError) as err:
        _cmap(path, 2)
    assert isinstance(err.value, OptionError)  # the CLI's exit 2
    text = str(err.value)
    assert len(text.splitlines()) == 1 and "cp" in text and "sequence" in text
    out = tmp_path / "plan"
    r = CliRunner().invoke(cli, ["compile", str(path), "--topology",
                                 str(ROOT / "topologies/localhost.topo"), "--set", "devices=2",
                                 "--pin", "cp=2", "-o", str(out)])
    err_line = r.stderr.strip()
    assert r.exit_code == 2 and len(err_line.splitlines()) == 1, (r.output, err_line)
    assert "no sequence" in err_line and not out.exists()


def test_cp_that_does_not_divide_the_sequence_is_a_one_line_error(gpt2_path: Path) -> None:
    with pytest.raises(ContextError) as err:
        _cmap(gpt2_path, 3)
    text = str(err.value)
    assert len(text.splitlines()) == 1 and "cp=3" in text and "length 16" in text
    assert _cmap(gpt2_path, 4).length == 16  # 16 splits 4 ways


# -- the decision ------------------------------------------------------------------------
def _partition(path: Path, pins: str, devices: int, **sets: Any) -> Any:
    from shardc.partition.options import PartitionOptions, parse_pins

    topo = load_topology(ROOT / "topologies/localhost.topo", {"devices": devices, **sets})
    options = PartitionOptions(pins=parse_pins([pins] if pins else []))
    return partition_model(path, topo, mode="training", partition=options).state


def test_the_search_picks_cp_where_it_pays_and_not_where_it_does_not(
    gpt2_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The search offers cp from :data:`CP_MIN_SEQUENCE` on (lowered here to the tiny
    model's 16 tokens) and CP-SAT decides by price. One sequence per step on two devices
    (dp=1, tp=1, pp=1 pinned): the two halves of the sequence on two devices beat one
    device doing it all, so cp=2. Two sequences per step, nothing pinned: data
    parallelism halves the work without the K/V all-gathers, so dp=2 and cp=1, though
    cp=2 was offered.
    """
    monkeypatch.setattr(pricing_module, "CP_MIN_SEQUENCE", 16)
    one = _partition(gpt2_path, "tp=1,pp=1,dp=1", 2)
    assert [s.cp for s in one.partition.stages] == [2]
    alone = _partition(gpt2_path, "tp=1,pp=1,dp=1,cp=1", 2).partition
    assert one.partition.step_seconds < alone.step_seconds
    two = _partition(gpt2_path, "", 2)
    assert cp_degrees(costing_for(two), two.options.partition, 2) == (1, 2)  # offered
    assert two.partition.dp == 2 and [s.cp for s in two.partition.stages] == [1]
    monkeypatch.setattr(pricing_module, "CP_MIN_SEQUENCE", 8192)
    assert cp_degrees(costing_for(two), two.options.partition, 2) == (1,)  # short: not searched


@pytest.mark.parametrize(
    "pins,needle",
    [("cp=3", "does not split over cp=3"), ("cp=2,sp=on,tp=2", "not combined with sp=on")],
)
def test_cp_pins_that_cannot_run_exit_2_in_one_line(
    gpt2_path: Path, tmp_path: Path, pins: str, needle: str
) -> None:
    out = tmp_path / "plan"
    r = CliRunner().invoke(cli, ["compile", str(gpt2_path), "--topology",
                                 str(ROOT / "topologies/localhost.topo"), "--set", "devices=4",
                                 "--pin", pins, "-o", str(out)])
    err = r.stderr.strip()
    assert r.exit_code == 2, (r.output, err)
    assert len(err.splitlines()) == 1 and needle in err, err
    assert "Traceback" not in r.output + err and not out.exists()


def test_the_search_picks_cp_when_nothing_else_fits(
    gpt2_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two sequences per step on two devices with tp=1, pp=1: data parallelism is faster
    (above) but each replica keeps a whole sequence's activations; with device memory
    between the two plans' least needs (any recomputation), only cp=2 (half the
    activations, plus the gathered K/V) fits, and the search takes it. The capacity is set from the priced plans, so the test
    holds whatever the memory model charges, as long as cp saves memory.
    """
    monkeypatch.setattr(pricing_module, "CP_MIN_SEQUENCE", 16)
    def need(pins: str) -> float:  # full recomputation keeps the least
        return float(_partition(gpt2_path, f"{pins},recompute=full", 2).partition.stages[0]
                     .memory_bytes)

    dp_need, cp_need = need("tp=1,pp=1,dp=2,cp=1"), need("tp=1,pp=1,dp=1,cp=2")
    assert cp_need < dp_need
    per_device = (cp_need + dp_need) / 2
    tight = _partition(gpt2_path, "tp=1,pp=1", 2, memory_gib=2 * per_device / 2**30).partition
    assert [s.cp for s in tight.stages] == [2] and tight.dp == 1


def test_cp_memory_is_the_chunk_plus_the_gathered_kv(llama_path: Path) -> None:
    """Per device under cp=2, a block keeps half of every activation that carries the
    sequence, all of those that do not (mask, rotary tables), and the other half of each
    gathered K and V (backward reads them whole); its compute is at most half plus the
    whole-sequence arithmetic every rank repeats.
    """
    from shardc.cost import activations as acts

    state = _partition(llama_path, "tp=1,pp=1,dp=1,cp=2", 2)
    costing = costing_for(state)
    _, block, _, _ = costing.sections
    kind = state.partition.stages[0].kind
    one, two = (costing.part(block, kind, 1, "none", False, cp) for cp in (1, 2))
    cmap = costing.context(2)
    saved = acts.saved_tensors(costing.graph, block, costing.gradient_values,
                               dropout=costing.dropout)
    chunked = sum(t.nbytes for t in saved if t.value.split("#", 1)[0] in cmap.dims)
    whole = sum(t.nbytes for t in saved) - chunked
    kv = sum(costing.operand_bytes(n, i, costing.choice(1), {"tp": 1})
             for n, i, _ in cmap.gathers if n in set(block))
    assert kv > 0 and chunked > 0
    assert one.activation == pytest.approx(chunked + whole)
    assert two.activation == pytest.approx(chunked / 2 + whole + kv / 2)
    assert two.compute < one.compute and two.static == one.static  # weights are not split
