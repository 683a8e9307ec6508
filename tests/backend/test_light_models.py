"""The small real models of ``onnx/backend/test/data/light`` as four-device plans.

AlexNet, DenseNet-121, Inception v1/v2, ResNet-50, ShuffleNet, SqueezeNet, VGG-19 and
ZFNet-512 with constant weights (made by ConstantOfShape nodes), compiled onto
``topologies/localhost.topo`` with four devices under ``rule=split`` (every conv, pool
and product split by channels where it divides), emitted and run in-process. Their
outputs are uniform (a softmax over equal logits), so they prove execution and wiring
(every rank runs, the shapes and the gathered outputs are right), not numerics; the
check is against onnxruntime on the unsharded model and against the reference output
stored beside each model, fed the backend runner's dummy input. The quick ones run by
default, the rest (and ResNet-50 on a two-stage pipeline) under ``pytest -m slow``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from shardc.compiler import build_plan, partition_model
from shardc.emit.devices import emit
from shardc.partition.options import PartitionOptions, parse_pins
from shardc.partition.split import tp_rule
from shardc.runtime.inprocess import run_inprocess
from shardc.topology import load_topology

ROOT = Path(__file__).resolve().parents[2]
LIGHT = Path(onnx.__file__).parent / "backend/test/data/light"
QUICK = ["bvlc_alexnet", "shufflenet", "squeezenet", "zfnet512"]
SLOW = ["densenet121", "inception_v1", "inception_v2", "resnet50", "vgg19"]
TP4 = "tp=4,pp=1,dp=1,rule=split"


def _dummy(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The backend runner's input for light models: ``arange(n) / n`` in the input's shape."""
    weights = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name not in weights:
            shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
            n = int(np.prod(shape))
            feeds[vi.name] = (np.arange(n).reshape(shape) / n).astype(np.float32)
    return feeds


def run_light(name: str, pins: str = TP4, devices: int = 4) -> None:
    """Compile, emit and run one light model; compare with onnxruntime and the reference."""
    path = LIGHT / f"light_{name}.onnx"
    model = onnx.load(str(path))
    feeds = _dummy(model)
    topo = load_topology(ROOT / "topologies/localhost.topo", {"devices": devices})
    options = PartitionOptions(pins=parse_pins([pins]))
    state = build_plan(
        partition_model(path, topo, mode="inference", partition=options).state
    ).state
    assert state.partition.devices_used == devices

    tp = state.partition.stages[0].tp
    rule = tp_rule(state.graph, state.strategies, "split")
    split = {n: s for n, s in rule.choose({"tp": tp}).items() if not s.is_replicated}
    convs = [n.name for n in state.graph.nodes if n.op_type == "Conv"]
    assert sum(c in split for c in convs) >= len(convs) // 2, "most convs run split"

    emission = emit(state)
    assert sorted(emission.models) == list(range(devices))
    for m in emission.models.values():
        onnx.checker.check_model(m)
    outs = run_inprocess(emission.models, feeds)

    names = [o.name for o in model.graph.output]
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    stored = numpy_helper.to_array(onnx.load_tensor(str(LIGHT / f"light_{name}_output_0.pb")))
    last = [p.rank for p in emission.programs.programs if p.outputs]
    assert last, "some rank returns the outputs"
    for rank in last:
        for out, ref in zip(names, want, strict=True):
            got = outs[rank][out]
            assert got.shape == ref.shape and got.dtype == ref.dtype
            np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-7)
        np.testing.assert_allclose(outs[rank][names[0]], stored, rtol=1e-3, atol=1e-7)


@pytest.mark.parametrize("name", QUICK)
def test_light_model_on_four_devices(name: str) -> None:
    run_light(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_large_light_model_on_four_devices(name: str) -> None:
    run_light(name)


@pytest.mark.slow
def test_resnet50_on_two_stages_of_two() -> None:
    """Pipeline and split together: the stage boundary carries a whole activation."""
    run_light("resnet50", "tp=2,pp=2,dp=1,rule=split")
