"""shardc's partition search against the Megatron grid and the rule of thumb, one cost model.

For every (model, topology) case the same :class:`~shardc.partition.costing.Costing` (the
analysis passes run once, prices cached) prices three plans:

* **(a) grid** -- the best Megatron-style grid: every tensor-parallel degree ``tp`` the
  search itself allows (powers of two inside the fastest bandwidth domain,
  :meth:`Costing.tp_degrees`, union over device kinds), every pipeline degree ``pp`` up to
  the block count, every data-parallel width ``dp`` dividing the global batch with
  ``dp·tp·pp ≤ devices``, an even layer split (the remainder on the last stages, as
  :func:`shardc.partition.cpsat.uniform`), the same ``tp`` on every stage and one
  recomputation mode for all (none, selective and full tried, the best legal one kept).
  Each grid point is a fully pinned :func:`shardc.partition.search.search` (tp, pp, dp,
  recompute and every stage's blocks), so it is priced exactly as shardc prices its own
  plans; on the mixed pool the kind is not pinned: the solver picks each stage's kind.
  On a one-kind pool a heavier recomputation is priced only where the lighter ones do
  not fit: the pins fix the plan there and a block's time grows none ≤ selective ≤ full
  (checked per degree, else all three are priced), so it could not win.
* **(b) rule of thumb** -- ``tp`` = devices per node (8 on a DGX, an H20 server and a
  CloudMatrix384 server, 4 on a GB200 NVL72 compute tray), selective
  recomputation, the smallest ``pp`` (even split) at which some ``dp`` fits memory, and
  at that ``pp`` the largest legal ``dp`` that fits (as many replicas as fit).
* **(c) shardc** -- :func:`search` with no pins (stages, uneven splits, per-stage kind,
  tp and recomputation, ``dp``), ``time_limit`` 20 (CP-SAT deterministic seconds).

Inputs (stated once for every case):

* Models: synthetic ONNX graphs from :mod:`shardc.synth` (weights declared, never
  written), bf16, micro-batch ``b = 1``, written to a pytest / ``tempfile`` directory:

  - GPT-3 175B: gpt, 96 layers, hidden 12,288, 96 heads, ffn 49,152, vocab 50,257,
    seq 2,048 (Brown et al. 2020); global batch 1,536 (the paper's);
  - Llama-70B: llama, 80 layers, hidden 8,192, 64 heads, 8 KV heads, ffn 28,672,
    vocab 128,256, seq 4,096 (Llama 2/3 70B); global batch 1,024;
  - GPT-2 small: gpt, 12 layers, hidden 768, 12 heads, ffn 3,072, vocab 50,257,
    seq 1,024; global batch 512.

* Topologies (``topologies/``, no ``--set``): ``dgx_h100_superpod`` (256 H100),
  ``cloudmatrix384`` (384 Ascend 910C), ``gb200_nvl72`` (72 GB200) and
  ``h100_h20_mixed`` (32 H100 + 32 H20).
* Training, objective throughput, 1F1B, ZeRO-1, and a fixed global batch ``G`` per model
  for all three methods (``PartitionOptions(global_batch=G)``): ``dp`` divides ``G / b``
  and each replica runs ``G / dp`` micro-batches. Plans are compared per sample:
  ``step_seconds / samples_per_step``.
* Fully pinned grid evaluations get ``time_limit`` 1.0.

Goals checked by ``pytest tests/bench/bench_partition.py -m bench``: shardc's time per
sample is at most the grid's × (1 + 1e-6) in every case, and below the grid's × 0.999 on
``h100_h20_mixed``; a baseline with no legal configuration prints "does not fit". The
compiler itself runs in a subprocess, started by a bare interpreter whose
``RUSAGE_CHILDREN`` gives the compiler's own peak RSS (see ``_RUSAGE_WRAPPER``):
``python -m shardc compile`` of Llama-70B on ``cloudmatrix384.topo`` (training, CLI
defaults) under 30 s wall and 1 GB peak RSS, and on ``dgx_h100.topo`` with
``--mode inference`` under 5 s wall. Run ``python tests/bench/bench_partition.py
[--models llama70b] [--topologies h100_h20_mixed] [--no-compile]`` for the figures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from shardc.compiler import analyse
from shardc.errors import InfeasibleError, ShardcError, SolverTimeout
from shardc.partition.costing import Costing
from shardc.partition.options import RECOMPUTES, PartitionOptions, Pins
from shardc.partition.search import PartitionResult, search
from shardc.passes import annotate_costs, coarsen, strategies
from shardc.passes.partition import costing_for
from shardc.synth import SynthConfig, build, save
from shardc.topology import load_topology

ROOT = Path(__file__).resolve().parents[2]
TOPOLOGIES = ROOT / "topologies"
CASES_TOPOLOGIES = ("dgx_h100_superpod", "cloudmatrix384", "gb200_nvl72", "h100_h20_mixed")
HETEROGENEOUS = "h100_h20_mixed"
MICRO_BATCH = 1
SHARDC_LIMIT = 20.0
PINNED_LIMIT = 1.0
NOT_WORSE = 1 + 1e-6  # shardc per sample <= grid x this, every case
STRICTLY_BETTER = 0.999  # shardc per sample < grid x this on the heterogeneous pool


@dataclass(frozen=True)
class Model:
    """One synthetic model and the global batch all three methods share."""

    key: str
    name: str
    arch: str
    config: SynthConfig
    global_batch: int

    def write(self, folder: Path) -> Path:
        """The model's ONNX file in ``folder`` (written once; weights declared only)."""
        path = folder / f"{self.key}.onnx"
        if not path.exists():
            save(build(self.arch, self.config), path)
        return path


MODELS = (
    Model(
        "gpt3_175b",
        "GPT-3 175B",
        "gpt",
        SynthConfig(
            layers=96, hidden=12288, heads=96, ffn=49152, vocab=50257, seq=2048, batch=MICRO_BATCH
        ),
        1536,
    ),
    Model(
        "llama70b",
        "Llama-70B",
        "llama",
        SynthConfig(
            layers=80,
            hidden=8192,
            heads=64,
            kv_heads=8,
            ffn=28672,
            vocab=128256,
            seq=4096,
            batch=MICRO_BATCH,
        ),
        1024,
    ),
    Model(
        "gpt2_small",
        "GPT-2 small",
        "gpt",
        SynthConfig(
            layers=12, hidden=768, heads=12, ffn=3072, vocab=50257, seq=1024, batch=MICRO_BATCH
        ),
        512,
    ),
)
BY_KEY = {m.key: m for m in MODELS}


# -- one method's outcome -----------------------------------------------------------------
@dataclass
class Outcome:
    """What one method found for one case."""

    method: str
    result: PartitionResult | None = None
    seconds: float = 0.0
    """Wall time of the method (shardc: analysis passes + search)."""
    evaluations: int = 0
    legal: int = 0
    timeouts: int = 0
    crashes: int = 0
    why: str | None = None
    """Why there is no result (infeasible), as shardc said it."""
    crash: str | None = None
    """A traceback from shardc that is not an infeasibility: a bug to report."""

    @property
    def per_sample(self) -> float | None:
        """Seconds per sample, or None without a plan."""
        r = self.result
        return r.step_seconds / r.samples_per_step if r is not None else None


@dataclass
class Case:
    """One (model, topology) comparison."""

    model: Model
    topology: str
    devices: dict[str, int] = field(default_factory=dict)
    analyse_seconds: float = 0.0
    grid: Outcome = field(default_factory=lambda: Outcome("grid"))
    rule: Outcome = field(default_factory=lambda: Outcome("rule"))
    shardc: Outcome = field(default_factory=lambda: Outcome("shardc"))
    crash: str | None = None
    """The analysis passes themselves crashed."""


# -- the cost model, once per case ---------------------------------------------------------
def prepare(onnx: Path, topology: str, global_batch: int) -> tuple[Costing, float]:
    """The analysis passes once, and the one price table every method uses."""
    start = time.perf_counter()
    topo = load_topology(TOPOLOGIES / f"{topology}.topo")
    state = analyse(
        onnx,
        topology=topo,
        mode="training",
        partition=PartitionOptions(global_batch=global_batch),
        passes=[annotate_costs.PASS, coarsen.PASS, strategies.PASS],
    ).state
    costing = costing_for(state)
    return costing, time.perf_counter() - start


def even_split(blocks: int, pp: int) -> list[int]:
    """Blocks per stage of an even split; the remainder goes to the last stages."""
    base, extra = divmod(blocks, pp)
    return [base + (j >= pp - extra) for j in range(pp)]


def evaluate(
    costing: Costing, out: Outcome, global_batch: int, tp: int, pp: int, dp: int, recompute: str
) -> PartitionResult | None:
    """One fully pinned grid point, priced by search() itself; None if it is not legal."""
    stages = {j: {"blocks": n} for j, n in enumerate(even_split(costing.sections[3], pp))}
    pins = Pins(tp=tp, pp=pp, dp=dp, recompute=recompute, stages=stages)
    options = PartitionOptions(global_batch=global_batch, pins=pins, time_limit=PINNED_LIMIT)
    out.evaluations += 1
    try:
        result = search(costing, options)
    except InfeasibleError:
        return None
    except SolverTimeout:
        out.timeouts += 1
        return None
    except Exception:
        out.crashes += 1
        if out.crash is None:
            out.crash = f"tp={tp} pp={pp} dp={dp} recompute={recompute}\n" + (
                traceback.format_exc()
            )
        return None
    out.legal += 1
    return result


def widths(costing: Costing, global_batch: int) -> list[int]:
    """Data-parallel widths the global batch allows (dp divides G / b), up to the pool."""
    n = sum(len(v) for v in costing.pool.values())
    per = global_batch // MICRO_BATCH
    return [d for d in range(1, min(n, per) + 1) if per % d == 0]


def tp_degrees(costing: Costing) -> list[int]:
    """TP degrees inside the fastest bandwidth domain of any kind."""
    return sorted({t for k in costing.pool for t in costing.tp_degrees(k)})


def keep_best(out: Outcome, result: PartitionResult | None) -> None:
    """Keep ``result`` if it is the fastest per sample so far."""
    if result is None:
        return
    best = out.per_sample
    if best is None or result.step_seconds / result.samples_per_step < best:
        out.result = result


def lighter_is_faster(costing: Costing, tp: int) -> bool:
    """Whether a lighter recomputation that fits makes heavier ones pointless at ``tp``.

    True on a one-kind pool when a block's time grows none ≤ selective ≤ full: the
    plan is then fixed by the pins, and nothing else in its score (ends, pipeline
    transfers, gradient sync) depends on the mode. Not on a mixed pool, where a lighter
    mode's larger activations can rule out the kind assignment a heavier mode allows.
    """
    if len(costing.pool) != 1:
        return False
    block = costing.sections[1]
    kind = next(iter(costing.pool))
    seconds = [costing.part(block, kind, tp, rc).seconds for rc in RECOMPUTES]
    return seconds == sorted(seconds)


def megatron_grid(costing: Costing, global_batch: int) -> Outcome:
    """(a) Every even Megatron grid, every uniform recomputation; the best legal one."""
    out = Outcome("grid")
    start = time.perf_counter()
    n = sum(len(v) for v in costing.pool.values())
    blocks = costing.sections[3]
    for tp in tp_degrees(costing):
        lighter_wins = lighter_is_faster(costing, tp)
        for dp in widths(costing, global_batch):
            for pp in range(1, min(blocks, n // (dp * tp)) + 1):
                for rc in RECOMPUTES:
                    result = evaluate(costing, out, global_batch, tp, pp, dp, rc)
                    keep_best(out, result)
                    if result is not None and lighter_wins:
                        break
    out.seconds = time.perf_counter() - start
    if out.result is None:
        out.why = f"none of {out.evaluations} grid points fits"
    return out


# Devices per node, the rule of thumb's tensor-parallel degree: a DGX H100 (and the H20
# servers of the mixed pool) holds 8 GPUs (REFERENCE.md §1.1), a CloudMatrix384 node 8
# Ascend 910C (§1.4: 48 nodes x 8 NPUs). A GB200 NVL72 compute tray holds two superchips,
# 4 GPUs: [UNCONFIRMED], not in REFERENCE.md (the topology file names superchips only).
NODE_SIZE = {"dgx_h100_superpod": 8, "cloudmatrix384": 8, "gb200_nvl72": 4, "h100_h20_mixed": 8}


def rule_of_thumb(costing: Costing, global_batch: int, node: int) -> Outcome:
    """(b) tp = devices per node, selective, the fewest stages that fit, widest dp."""
    out = Outcome("rule")
    start = time.perf_counter()
    n = sum(len(v) for v in costing.pool.values())
    tp = max(t for t in tp_degrees(costing) if t <= node)
    for pp in range(1, costing.sections[3] + 1):
        fits = [d for d in widths(costing, global_batch) if d * tp * pp <= n]
        if not fits:
            break
        for dp in reversed(fits):
            out.result = evaluate(costing, out, global_batch, tp, pp, dp, "selective")
            if out.result is not None:
                break
        if out.result is not None:
            break
    out.seconds = time.perf_counter() - start
    if out.result is None:
        out.why = f"tp={tp} with selective recomputation fits at no pp"
    return out


def shardc_search(costing: Costing, global_batch: int, analysis: float) -> Outcome:
    """(c) shardc's own search, nothing pinned."""
    out = Outcome("shardc")
    start = time.perf_counter()
    try:
        out.result = search(
            costing, PartitionOptions(global_batch=global_batch, time_limit=SHARDC_LIMIT)
        )
    except ShardcError as exc:
        out.why = f"{type(exc).__name__}: {exc}"
    except Exception:
        out.crash = traceback.format_exc()
    out.seconds = analysis + time.perf_counter() - start
    return out


def compare(model: Model, topology: str, folder: Path) -> Case:
    """The three methods on one (model, topology), on one price table."""
    case = Case(model, topology)
    try:
        costing, case.analyse_seconds = prepare(model.write(folder), topology, model.global_batch)
    except Exception:
        case.crash = traceback.format_exc()
        return case
    case.devices = {k: len(v) for k, v in sorted(costing.pool.items())}
    case.shardc = shardc_search(costing, model.global_batch, case.analyse_seconds)
    case.grid = megatron_grid(costing, model.global_batch)
    case.rule = rule_of_thumb(costing, model.global_batch, NODE_SIZE[topology])
    return case


# -- the table -----------------------------------------------------------------------------
_SHORT = {"none": "none", "selective": "sel", "full": "full"}


def describe(result: PartitionResult, uniform: bool, kinds: int) -> str:
    """The plan in one cell: dp×pp×tp + recompute for a grid, per-stage runs for shardc."""
    stages = result.stages
    if uniform:
        text = f"{result.dp}×{result.pp}×{stages[0].tp} {stages[0].recompute}"
        if kinds > 1:
            text += " " + runs([(s.kind,) for s in stages])
        return text
    body = runs(
        [
            (s.kind, f"tp{s.tp}", _SHORT[s.recompute], f"{s.blocks[1] - s.blocks[0] + 1}b")
            for s in stages
        ]
    )
    return f"dp{result.dp} pp{result.pp}: {body}"


def runs(items: Sequence[tuple[str, ...]]) -> str:
    """Consecutive equal items as ``n×item``, joined by ``+``."""
    out: list[str] = []
    i = 0
    while i < len(items):
        j = i
        while j < len(items) and items[j] == items[i]:
            j += 1
        one = "/".join(items[i])
        out.append(f"{j - i}×{one}" if j - i > 1 else one)
        i = j
    return "+".join(out)


def memory(result: PartitionResult) -> str:
    """The fullest device's peak memory against its capacity."""
    s = max(result.stages, key=lambda s: s.memory_bytes / s.capacity_bytes)
    return f"{s.memory_bytes / 1e9:6.1f}/{s.capacity_bytes / 1e9:.0f} GB"


def rows(case: Case) -> Iterator[str]:
    """The three lines of one case."""
    kinds = len(case.devices)
    name = f"{case.topology} ({'+'.join(str(n) for n in case.devices.values())})"
    if case.crash is not None:
        yield f"{name:<24} analysis crashed: {case.crash.strip().splitlines()[-1]}"
        return
    grid = case.grid.per_sample
    for label, out in (
        ("(a) grid", case.grid),
        ("(b) rule", case.rule),
        ("(c) shardc", case.shardc),
    ):
        if out.method == "shardc":
            wall = f"{case.analyse_seconds:.1f} + {out.seconds - case.analyse_seconds:.1f} s"
        else:
            extra = "".join(
                f", {k} {w}"
                for k, w in ((out.timeouts, "timed out"), (out.crashes, "crashed"))
                if k
            )
            wall = f"{out.seconds:5.1f} s ({out.legal}/{out.evaluations} legal{extra})"
        if out.result is None:
            if out.crash is not None:
                text = f"CRASHED: {out.crash.strip().splitlines()[-1]}"
            else:
                text = f"does not fit ({out.why})"
            yield f"{name:<24} {label:<10} {text}   [{wall}]"
        else:
            r = out.result
            ps = r.step_seconds / r.samples_per_step
            ratio = f"{grid / ps:5.3f}×" if grid else "   -  "
            note = ""
            if out.method == "shardc":
                gap = f" gap {r.gap:.1%}" if r.gap else ""
                note = f" {r.status}{gap}"
            yield (
                f"{name:<24} {label:<10} {r.step_seconds:8.4g} {r.samples_per_step / r.step_seconds:9.1f} "
                f"{ratio} {memory(r)}  {wall:<28} {describe(r, out.method != 'shardc', kinds)}{note}"
            )
        name = ""


def table(model: Model, cases: Sequence[Case]) -> str:
    """One model's table: three lines per topology."""
    head = (
        f"{model.name}: training, 1F1B, global batch {model.global_batch}, micro-batch "
        f"{MICRO_BATCH}, ZeRO-1"
    )
    cols = (
        f"{'topology (devices)':<24} {'method':<10} {'step s':>8} {'samples/s':>9} "
        f"{'vs (a)':>6} {'peak mem/device':>15}  {'wall':<28} "
        f"config (dp×pp×tp recompute | stages)"
    )
    lines = [head, cols, "-" * len(cols)]
    for case in cases:
        lines.extend(rows(case))
    lines += [
        "vs (a): the grid's time per sample over this plan's (> 1: faster than the grid); "
        "peak mem: the fullest device",
        "wall: (a), (b) pricing their points (legal/priced); (c) analysis passes + search, "
        "the compile time; shardc stages: n×kind/tp/recompute/blocks",
    ]
    return "\n".join(lines)


def problems(cases: Sequence[Case]) -> list[str]:
    """The goals each case misses (empty when all are met)."""
    out = []
    for case in cases:
        where = f"{case.model.name} on {case.topology}"
        if case.crash is not None:
            out.append(f"{where}: analysis crashed:\n{case.crash}")
            continue
        for o in (case.grid, case.rule, case.shardc):
            if o.crash is not None:
                out.append(f"{where}: {o.method} crashed in shardc:\n{o.crash}")
        s, g = case.shardc.per_sample, case.grid.per_sample
        if s is None:
            if g is not None and case.shardc.crash is None:
                out.append(f"{where}: shardc found no plan ({case.shardc.why}), the grid did")
            continue
        if g is not None and s > g * NOT_WORSE:
            out.append(f"{where}: shardc {s * 1e3:.4f} ms/sample > grid {g * 1e3:.4f}")
        if case.topology == HETEROGENEOUS and g is not None and not s < g * STRICTLY_BETTER:
            out.append(
                f"{where}: shardc {s * 1e3:.4f} ms/sample not below grid "
                f"{g * 1e3:.4f} × {STRICTLY_BETTER}"
            )
    return out


# -- the compiler in a subprocess ----------------------------------------------------------
@dataclass(frozen=True)
class CompileRun:
    """One ``python -m shardc compile`` run and its goals."""

    key: str
    label: str
    model: str
    topology: str
    args: tuple[str, ...]
    wall_goal: float
    rss_goal: float | None = None
    """Bytes, or None for no goal."""


COMPILE_RUNS = (
    CompileRun(
        "cm384_training",
        "Llama-70B training on cloudmatrix384 (384 NPUs)",
        "llama70b",
        "cloudmatrix384",
        (),
        30.0,
        1e9,
    ),
    CompileRun(
        "dgx_inference",
        "Llama-70B inference on dgx_h100 (8 GPUs)",
        "llama70b",
        "dgx_h100",
        ("--mode", "inference"),
        5.0,
    ),
)


@dataclass
class Measured:
    """Wall time, peak RSS and the plan of one compile subprocess."""

    run: CompileRun
    returncode: int
    wall: float
    rss: float
    """Peak resident set of the child, bytes."""
    summary: str

    @property
    def missed(self) -> list[str]:
        """The goals this run misses."""
        out = []
        if self.returncode != 0:
            out.append(f"{self.run.label}: exit status {self.returncode}: {self.summary}")
        if self.wall >= self.run.wall_goal:
            out.append(f"{self.run.label}: {self.wall:.2f} s wall, goal < {self.run.wall_goal:g} s")
        if self.run.rss_goal is not None and self.rss >= self.run.rss_goal:
            out.append(
                f"{self.run.label}: peak RSS {self.rss / 1e6:.0f} MB, goal < "
                f"{self.run.rss_goal / 1e6:.0f} MB"
            )
        return out

    def line(self) -> str:
        """One line for the report."""
        goal = f"< {self.run.wall_goal:g} s"
        if self.run.rss_goal is not None:
            goal += f", < {self.run.rss_goal / 1e9:g} GB"
        verdict = "ok" if not self.missed else "MISSED"
        return (
            f"{self.run.label:<50} {self.wall:6.2f} s wall {self.rss / 1e6:7.0f} MB peak RSS"
            f"  (goal {goal}: {verdict})  {self.summary}"
        )


# A child's ru_maxrss on Linux starts at the peak RSS of the process that spawned it
# (exec records the old address space's high-water mark, and subprocess spawns with
# vfork), so a compile launched straight from this process would report this process's
# peak. A bare interpreter in between launches it and reports RUSAGE_CHILDREN, which then
# overstates the compiler's own peak by at most that interpreter's ~10 MB.
_RUSAGE_WRAPPER = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.call(sys.argv[2:])
wall = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(sys.argv[1], "w") as f:
    json.dump({"returncode": code, "wall": wall, "maxrss_kib": usage.ru_maxrss}, f)
"""


def measure_compile(run: CompileRun, folder: Path) -> Measured:
    """Run the compiler in a child process: its wall time and its own peak RSS."""
    onnx = BY_KEY[run.model].write(folder)
    outdir = folder / f"plan_{run.key}"
    cmd = [
        sys.executable,
        "-m",
        "shardc",
        "compile",
        str(onnx),
        "--topology",
        str(TOPOLOGIES / f"{run.topology}.topo"),
        "-o",
        str(outdir),
        "--force",
        "--json",
        "--timings",
        *run.args,
    ]
    with (
        tempfile.TemporaryFile() as stdout,
        tempfile.TemporaryFile() as stderr,
        tempfile.TemporaryDirectory() as tmp,
    ):
        usage_file = Path(tmp) / "usage.json"
        wrapper = [sys.executable, "-c", _RUSAGE_WRAPPER, str(usage_file)]
        subprocess.run([*wrapper, *cmd], stdout=stdout, stderr=stderr, cwd=ROOT, check=False)
        stdout.seek(0)
        stderr.seek(0)
        text, err = stdout.read().decode(), stderr.read().decode()
        usage = json.loads(usage_file.read_text())
    returncode, wall = usage["returncode"], usage["wall"]
    rss = usage["maxrss_kib"] * 1024.0  # ru_maxrss is in KiB on Linux
    if returncode != 0:
        return Measured(run, returncode, wall, rss, (err or text).strip()[-2000:])
    try:
        data = json.loads(text)
        plan = data["plan"]["partition"]
        summary = (
            f"compile_seconds {data['timings']['compile_seconds']:.2f}, plan dp{plan['dp']} "
            f"pp{plan['pp']}, {plan['devices_used']} devices, "
            f"step {plan['step_seconds']:.3f} s"
        )
    except (ValueError, KeyError, TypeError) as exc:
        summary = f"unreadable --json output ({exc})"
    return Measured(run, returncode, wall, rss, summary)


# -- pytest --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the synthetic models are written (declared weights only)."""
    return tmp_path_factory.mktemp("models")


@pytest.mark.bench
@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.key)
def test_shardc_beats_megatron_grid(model: Model, model_dir: Path) -> None:
    cases = [compare(model, topo, model_dir) for topo in CASES_TOPOLOGIES]
    print("\n" + table(model, cases))
    missed = problems(cases)
    assert not missed, "\n".join(missed)


@pytest.mark.bench
@pytest.mark.parametrize("run", COMPILE_RUNS, ids=lambda r: r.key)
def test_compiler_wall_and_rss(run: CompileRun, model_dir: Path) -> None:
    measured = measure_compile(run, model_dir)
    print("\n" + measured.line())
    assert not measured.missed, "\n".join(measured.missed)


# -- script --------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Print every table and the compiler timings; exit 1 if a goal is missed."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", choices=sorted(BY_KEY), default=[m.key for m in MODELS])
    ap.add_argument(
        "--topologies", nargs="*", choices=CASES_TOPOLOGIES, default=list(CASES_TOPOLOGIES)
    )
    ap.add_argument("--no-compile", action="store_true", help="skip the subprocess timings")
    args = ap.parse_args(argv)
    missed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench_partition_") as tmp:
        folder = Path(tmp)
        for key in args.models:
            model = BY_KEY[key]
            cases = [compare(model, topo, folder) for topo in args.topologies]
            print(table(model, cases) + "\n", flush=True)
            missed += problems(cases)
        if not args.no_compile:
            print(
                "Compiler in a subprocess (wall includes interpreter start and imports):",
                flush=True,
            )
            for run in COMPILE_RUNS:
                measured = measure_compile(run, folder)
                print(measured.line(), flush=True)
                missed += measured.missed
    if missed:
        print("\nGOALS MISSED:\n" + "\n".join(missed), flush=True)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
