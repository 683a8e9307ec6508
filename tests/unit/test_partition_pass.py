"""The partition pass on real graphs: optimal, within memory, placed on fast links, pinned.

Figures in the topologies below: H100 SXM 989.4 TFLOPS bf16, 80 GB, 3.35 TB/s and
NVLink4 450 GB/s per direction (REFERENCE.md §1.1); InfiniBand NDR 400 Gb/s = 50 GB/s
per GPU (§1.5); 100 GbE = 12.5 GB/s. Memory sizes below 80 GB
are deliberately shrunk to force pipeline stages and recomputation on small graphs.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from shardc.compiler import analyse
from shardc.errors import InfeasibleError, OptionError
from shardc.partition.options import RECOMPUTES, PartitionOptions, parse_pins
from shardc.partition.problem import PartitionProblem, StagePlan, score, violations
from shardc.partition.search import PartitionResult, search
from shardc.passes import annotate_costs, coarsen, strategies
from shardc.passes.partition import costing_for
from shardc.synth import SynthConfig, build
from shardc.topology import load_topology

ROOT = Path(__file__).resolve().parents[2]
_SHARDC = (sys.executable, "-m", "shardc")
_BATCH = ("--global-batch", "8")
ANALYSIS = [annotate_costs.PASS, coarsen.PASS, strategies.PASS]

H100 = """
kind g {{
    compute bf16 989.4 TFLOPS
    memory {mem} GB
    memory_bandwidth 3.35 TB/s
}}
"""

# Two nodes of two GPUs: an intra-node switch, one direct rail link per local GPU index,
# and a slow 100 GbE (12.5 GB/s) switch joining everything.
TWO_BY_TWO = (
    H100
    + """
node[0..1] {{
    gpu[0..1]: g
    switch sw: nvlink {{ members gpu[*]; bandwidth {inside} GB/s; latency 1 us }}
}}
link node0.gpu0 <-> node1.gpu0: ib {{ bandwidth {rail} GB/s; latency 1 us }}
link node0.gpu1 <-> node1.gpu1: ib {{ bandwidth {rail} GB/s; latency 1 us }}
switch eth: ethernet {{ members node[*].gpu[*]; bandwidth 12.5 GB/s; latency 5 us }}
"""
)


def _topology(mem: float = 80, inside: float = 450, rail: float = 50):
    return load_topology(TWO_BY_TWO.format(mem=mem, inside=inside, rail=rail))


@pytest.fixture(scope="module")
def gpt() -> object:
    """A 4-layer GPT whose blocks are heavy enough for stage choices to matter."""
    return build("gpt", SynthConfig(layers=4, hidden=1024, heads=16, vocab=8192, seq=512, batch=1))


def _costing(model, topo, mode: str = "training"):
    state = analyse(model, topology=topo, passes=ANALYSIS, mode=mode).state
    return costing_for(state)


def _brute_force(costing, options: PartitionOptions) -> float:
    """The best per-sample score over every width, stage split and configuration."""
    n = sum(len(v) for v in costing.pool.values())
    blocks = costing.sections[3]
    tps = {k: costing.tp_degrees(k) for k in costing.pool}
    b = costing.graph.values[costing.graph.inputs[0]].type.shape[0]  # micro-batch size
    best = float("inf")
    for dp in range(1, n + 1):
        if options.global_batch % (dp * b):
            continue
        m = options.global_batch // (dp * b)
        configs = costing.configs(dp, tps, RECOMPUTES)
        if not configs:
            continue
        for v in [1] + [v for v in (2, 3, 4, 6) if blocks % v == 0 and blocks >= 2 * v]:
            p = PartitionProblem(
                blocks=blocks,
                configs=configs,
                devices={k: len(v) for k, v in costing.pool.items()},
                capacity={k: float(costing.kinds[k].memory_bytes) for k in costing.pool},
                dp=dp,
                microbatches=m,
                max_stages=min(blocks, n // dp),
                interleave=v,  # virtual stages per device, a solver decision too
                overlap_p2p=costing.settings.overlap_p2p,
            )
            for s in range(1, p.max_stages + 1):
                for cut in itertools.combinations(range(1, blocks), s - 1):
                    sizes = [b - a for a, b in zip((0, *cut), (*cut, blocks), strict=True)]
                    for names in itertools.product([c.name for c in configs], repeat=s):
                        plan = tuple(StagePlan(c, k) for c, k in zip(names, sizes, strict=True))
                        if not violations(p, plan):
                            best = min(best, score(p, plan) / (dp * m * b))
    return best


def _per_sample(r: PartitionResult) -> float:
    return r.step_seconds / r.samples_per_step


@pytest.mark.parametrize("mem", [80, 0.45], ids=["roomy", "tight"])
def test_plan_is_the_brute_force_optimum_and_fits_memory(gpt, mem: float) -> None:
    costing = _costing(gpt, _topology(mem=mem))
    options = PartitionOptions(global_batch=8)
    r = search(costing, options)
    assert r.status == "OPTIMAL"
    assert _per_sample(r) == pytest.approx(_brute_force(costing, options), rel=1e-6)
    for st in r.stages:
        assert st.memory_bytes <= st.capacity_bytes == mem * 1e9
    if mem < 1:  # the roomy plan does not fit: recomputation or more stages are needed
        roomy = search(_costing(gpt, _topology()), options)
        assert any(st.memory_bytes > mem * 1e9 for st in roomy.stages)
        assert [s.recompute for s in r.stages] != [s.recompute for s in roomy.stages] or (
            r.pp,
            r.dp,
        ) != (roomy.pp, roomy.dp)


@pytest.mark.parametrize("fixture", ["gpt2_path", "llama_path"])
def test_exported_architectures_match_brute_force(request, fixture: str) -> None:
    """Real dynamo exports (weights renamed ``val_N``): coarsened, priced and solved."""
    path = request.getfixturevalue(fixture)
    costing = _costing(path, _topology(mem=80))
    assert costing.sections[3] == 2  # the tiny exports have two transformer blocks
    options = PartitionOptions(global_batch=8)
    r = search(costing, options)
    assert r.status == "OPTIMAL"
    assert _per_sample(r) == pytest.approx(_brute_force(costing, options), rel=1e-6)


def test_nothing_fits_says_why_in_gigabytes(gpt) -> None:
    with pytest.raises(InfeasibleError) as err:
        search(_costing(gpt, _topology(mem=0.1)), PartitionOptions(global_batch=8))
    message = err.value.render()
    assert "GB" in message and "0.4 GB" in message  # the pool's four 0.1 GB devices


def test_tensor_parallel_groups_follow_the_fast_links(gpt) -> None:
    pins = parse_pins(["tp=2"])
    fast_node = search(_costing(gpt, _topology(inside=450, rail=50)), PartitionOptions(pins=pins))
    fast_rail = search(_costing(gpt, _topology(inside=16, rail=100)), PartitionOptions(pins=pins))
    for r, same_node in ((fast_node, True), (fast_rail, False)):
        for st in r.stages:
            for a, b in st.groups:
                assert (a.split(".")[0] == b.split(".")[0]) is same_node, st.groups
    assert fast_node.stages[0].tp_comm_seconds < fast_rail.stages[0].tp_comm_seconds


def test_heterogeneous_pool_gets_uneven_stages_by_kind() -> None:
    """One H100 node and one H20 node: the slow H20s take fewer blocks, not an even half."""
    model = build(
        "llama",
        SynthConfig(layers=8, hidden=2048, heads=16, kv_heads=4, vocab=32000, seq=2048, batch=1),
    )
    topo = load_topology(ROOT / "topologies/h100_h20_mixed.topo", {"h100_nodes": 1, "h20_nodes": 1})
    costing = _costing(model, topo)
    options = PartitionOptions(global_batch=64, max_stages=4, time_limit=4)
    r = search(costing, options)
    kinds = {s.kind: s.blocks[1] - s.blocks[0] + 1 for s in r.stages}
    assert set(kinds) == {"h100_sxm", "h20"}
    assert kinds["h100_sxm"] > kinds["h20"]
    h100_only = search(
        costing, PartitionOptions(global_batch=64, pins=parse_pins(["kind=h100_sxm"]))
    )
    assert _per_sample(r) < _per_sample(h100_only)


def test_same_inputs_same_plan(gpt) -> None:
    a = search(_costing(gpt, _topology(mem=0.6)), PartitionOptions(global_batch=8))
    b = search(_costing(gpt, _topology(mem=0.6)), PartitionOptions(global_batch=8))
    assert json.dumps(a.to_json(), sort_keys=True) == json.dumps(b.to_json(), sort_keys=True)


def test_pins_are_honoured_and_full_pins_evaluate_that_grid(gpt) -> None:
    costing = _costing(gpt, _topology())
    r = search(costing, PartitionOptions(pins=parse_pins(["pp=2,dp=1"])))
    assert (r.pp, r.dp) == (2, 1)
    r = search(costing, PartitionOptions(pins=parse_pins(["tp=2", "recompute=full"])))
    assert all(s.tp == 2 and s.recompute == "full" for s in r.stages)
    grid = parse_pins(["tp=1,pp=2,dp=2", "stage0.blocks=1", "stage1.blocks=3", "recompute=none"])
    r = search(costing, PartitionOptions(pins=grid, global_batch=8))
    assert [(s.tp, s.blocks) for s in r.stages] == [(1, (0, 0)), (1, (1, 3))]
    assert r.status == "OPTIMAL" and r.dp == 2
    free = search(costing, PartitionOptions(global_batch=8))
    assert _per_sample(free) <= _per_sample(r)


def test_warm_start_from_a_plan_gives_the_same_plan(gpt) -> None:
    costing = _costing(gpt, _topology(mem=0.6))
    first = search(costing, PartitionOptions(global_batch=8))
    again = search(costing, PartitionOptions(global_batch=8, warm_start=first.to_json()))
    assert [s.to_json() for s in again.stages] == [s.to_json() for s in first.stages]


def test_inference_latency_uses_one_replica(gpt) -> None:
    costing = _costing(gpt, _topology(), mode="inference")
    r = search(costing, PartitionOptions(objective="latency"))
    assert r.dp == 1 and r.mode == "inference" and r.samples_per_step == 1
    with pytest.raises(OptionError, match="latency is for inference"):
        search(_costing(gpt, _topology()), PartitionOptions(objective="latency"))


@pytest.mark.parametrize(
    "args, words",
    [
        (["--pin", "tp=three"], "not an integer"),
        (["--pin", "colour=red"], "unknown"),
        (["--pin", "pp=99"], "only 4 blocks"),
        (["--pin", "kind=tpu"], "no compute devices of that kind"),
        (["--microbatches", "4", "--global-batch", "8"], "not both"),
        (["--objective", "latency"], "latency is for inference"),
        (["--warm-start", "missing.json"], "--warm-start"),
        (["--time-limit", "0"], "must be positive"),
        (["--mode", "training", "--pin", "v=2,pp=1"], "one stage has no ring"),
        (["--mode", "training", "--pin", "v=3"], "4 blocks do not split into 3"),
        (["--mode", "training", "--pin", "v=2,pp=4"], "pp × v = 8 equal chunks"),
        (["--mode", "training", "--pin", "v=2,dp=4"], "v=2 needs two pipeline stages"),
    ],
)
def test_cli_mistakes_are_one_line_errors(gpt, tmp_path: Path, args: list[str], words: str) -> None:
    from shardc.synth import save

    model = tmp_path / "gpt.onnx"
    save(gpt, model)
    topo = tmp_path / "t.topo"
    topo.write_text(TWO_BY_TWO.format(mem=80, inside=450, rail=50))
    out = tmp_path / "out"
    r = subprocess.run(
        [*_SHARDC, "compile", str(model), "--topology", str(topo), "-o", str(out), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert r.returncode == 2, r.stderr
    assert words in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


def test_cli_plan_files_are_byte_identical_and_reusable(gpt, tmp_path: Path) -> None:
    from shardc.synth import save

    model = tmp_path / "gpt.onnx"
    save(gpt, model)
    topo = tmp_path / "t.topo"
    topo.write_text(TWO_BY_TWO.format(mem=0.6, inside=450, rail=50))

    def compile_(out: str, *extra: str) -> bytes:
        r = subprocess.run(
            [*_SHARDC, "compile", "gpt.onnx", "--topology", "t.topo", "-o", out, *_BATCH, *extra],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
        assert r.returncode == 0, r.stderr
        assert "stages" in r.stdout and "where the time goes" in r.stdout
        return (tmp_path / out / "plan.json").read_bytes()

    a, b = compile_("a"), compile_("b")
    assert a == b
    plan = json.loads(a)
    assert plan["inputs"]["model"]["sha256"] and plan["partition"]["solver"]["status"]
    warm = compile_("c", "--warm-start", "a/plan.json")
    assert json.loads(warm)["partition"]["stages"] == plan["partition"]["stages"]
