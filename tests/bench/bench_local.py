"""Local reality check: predicted vs measured forward time in onnxruntime on this CPU.

The cost model is asked, through ``topologies/localhost.topo --set devices=1``, how long
one forward pass takes (the roofline of every node, one after another:
:func:`shardc.cost.phases.prefill_time`); onnxruntime then runs the same model here
(2 intra-op threads, warm-up, the lowest of three medians of 9 runs: the VM has
bursts of steal time). Two models:

* ``examples/models/tiny_gpt2.onnx`` (2 layers, hidden 64, batch 2 × seq 16): ~80 tiny
  kernels, each a few microseconds of roofline work;
* a synth GPT with real fp32 weights, sized so that one forward takes ~0.1–0.5 s here.

Each model is also timed with onnxruntime's graph optimizations (its kernel fusions) off,
and onnxruntime's own per-kernel dispatch cost is measured on a chain of tiny Adds, so
the notes can say what the roofline lacks: it has no per-kernel overhead term and it
costs every ONNX node as its own kernel, reading and writing DRAM. Run
``python tests/bench/bench_local.py`` or ``pytest tests/bench/bench_local.py -m bench``.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from shardc.cost.compute import node_time
from shardc.cost.phases import prefill_time
from shardc.frontend import load_model
from shardc.passes.annotate_costs import graph_costs
from shardc.synth import SynthConfig, build
from shardc.topology import load_topology

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "examples" / "models" / "tiny_gpt2.onnx"
TOPOLOGY = ROOT / "topologies" / "localhost.topo"
THREADS, WARMUP, RUNS, BLOCKS = 2, 3, 9, 3
SYNTH = SynthConfig(layers=4, hidden=512, heads=8, vocab=8192, seq=256, batch=4,
                    dtype="fp32", max_positions=256)


@dataclass(frozen=True)
class Check:
    """One model: predicted and measured forward seconds, and what the model holds."""

    name: str
    predicted: float
    measured: float
    unfused: float
    """Measured with onnxruntime's graph optimizations off (no fusion)."""
    nodes: int
    flops: float
    bound: dict[str, float]
    """Predicted seconds of compute-bound and memory-bound nodes."""

    @property
    def ratio(self) -> float:
        """Measured over predicted."""
        return self.measured / self.predicted



def _measure(model: onnx.ModelProto, feeds: dict[str, np.ndarray], fuse: bool = True) -> float:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    opts.inter_op_num_threads = 1
    if not fuse:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    for _ in range(WARMUP):
        sess.run(None, feeds)
    medians = []
    for _ in range(BLOCKS):  # this VM sees bursts of steal time lasting seconds
        times = []
        for _ in range(RUNS):
            start = time.perf_counter()
            sess.run(None, feeds)
            times.append(time.perf_counter() - start)
        medians.append(statistics.median(times))
    return min(medians)


def check(name: str, model: onnx.ModelProto) -> Check:
    """Predict ``model``'s forward on one localhost device, then time it in onnxruntime."""
    kind = load_topology(TOPOLOGY, {"devices": 1}).kinds["cpu_share"]
    ir = load_model(model)
    costs = graph_costs(ir.graph, where=name)
    est = prefill_time(list(costs.nodes.values()), kind)
    bound = {"compute": 0.0, "memory": 0.0}
    for c in costs.nodes.values():
        t = node_time(c, kind)
        bound[t.bound] += t.seconds
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    ids = np.random.default_rng(0).integers(0, 64, size=dims, dtype=np.int64)
    feeds = {model.graph.input[0].name: ids}
    return Check(name, est.seconds, _measure(model, feeds), _measure(model, feeds, fuse=False),
                 len(costs.nodes), costs.flops, bound)


def dispatch_overhead(chain: int = 200) -> tuple[float, float]:
    """Dispatch cost of onnxruntime: (s per run, s per node), from chains of 1 and ``chain`` Adds.

    The Adds work on 16 floats, so what is timed is dispatch, not arithmetic.
    """
    def model(k: int) -> onnx.ModelProto:
        nodes, prev = [], "x"
        for i in range(k):
            nodes.append(helper.make_node("Add", [prev, "x"], [f"y{i}"]))
            prev = f"y{i}"
        graph = helper.make_graph(
            nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [16])],
            [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [16])])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])

    feeds = {"x": np.ones(16, np.float32)}
    one, many = _measure(model(1), feeds), _measure(model(chain), feeds)
    per_node = (many - one) / (chain - 1)
    return one - per_node, per_node


def checks() -> list[Check]:
    """Both models, predicted and measured."""
    return [check("tiny_gpt2.onnx", onnx.load(str(TINY))),
            check("synth gpt 4x512 fp32 (b4 s256)", build("gpt", SYNTH, with_weights=True))]


def table(results: list[Check], overhead: tuple[float, float]) -> str:
    """Predicted vs measured, and the notes that say what the gap is."""
    kind = load_topology(TOPOLOGY, {"devices": 1}).kinds["cpu_share"]
    lines = [f"localhost.topo devices=1: fp32 {kind.peak_flops['fp32'] / 1e9:.4g} GFLOPS x "
             f"{kind.compute_efficiency:g}, {kind.memory_bandwidth / 1e9:.4g} GB/s x "
             f"{kind.memory_efficiency:g}; onnxruntime {ort.__version__}, {THREADS} threads, "
             f"lowest of {BLOCKS} medians of {RUNS} runs",
             f"{'model':<31} {'nodes':>5} {'GFLOP':>7} {'predicted':>10} {'measured':>10} "
             f"{'meas/pred':>9} {'unfused':>10} {'GFLOP/s':>7}  predicted compute / memory-bound"]
    for r in results:
        lines.append(f"{r.name:<31} {r.nodes:>5} {r.flops / 1e9:>7.3f} "
                     f"{r.predicted * 1e3:>8.3f}ms {r.measured * 1e3:>8.3f}ms {r.ratio:>9.2f} "
                     f"{r.unfused * 1e3:>8.3f}ms {r.flops / r.measured / 1e9:>7.1f}  "
                     f"{r.bound['compute'] * 1e3:.3f} / {r.bound['memory'] * 1e3:.3f} ms")
    per_run, per_node = overhead
    lines.append(f"note: onnxruntime dispatch measured at {per_node * 1e6:.2f} us per node + "
                 f"{per_run * 1e6:.1f} us per run (chain of tiny Adds); the roofline has no "
                 f"such term.")
    effective = kind.peak_flops["fp32"] * kind.compute_efficiency
    for r in results:
        share = (per_run + per_node * r.nodes) / r.measured
        lines.append(f"note: {r.name}: measured/predicted {r.ratio:.2f}; dispatch explains "
                     f"{share:.0%} of the measured time; achieved "
                     f"{r.flops / r.measured / 1e9:.0f} GFLOP/s vs the file's effective "
                     f"{effective / 1e9:.0f} (peak x efficiency)")
    return "\n".join(lines)


@pytest.mark.bench
def test_local_forward_time() -> None:
    results = checks()
    text = table(results, dispatch_overhead())
    print("\n" + text)
    # A sanity bound, not a goal: the localhost file's CPU figures are estimates, not a
    # fit, so this only catches unit slips (bits for bytes, GB for GiB x 1000 ...).
    assert all(0.1 < r.ratio < 10.0 for r in results), text
    assert 0.02 < results[1].measured < 0.5, "resize SYNTH: one forward should take 50-500 ms here"


def main() -> int:
    """Print the comparison."""
    print(table(checks(), dispatch_overhead()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
