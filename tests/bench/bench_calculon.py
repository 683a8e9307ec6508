"""shardc and Calculon side by side: Table 1 errors, and each tool's plans priced in both.

Calculon (calculon-ai/calculon, an analytical LLM-training model) is never a dependency:
this script exports a checkout of it into a temporary folder, builds a venv there
(``numpy pandas psutil`` and Calculon itself) and runs its ``llm`` command, one
execution at a time. Point it at a checkout or a git directory with ``--calculon-src``
or ``CALCULON_SRC``; without one (or without a package index) it says so and stops.

* **Table 1** (Narayanan et al. 2021, REFERENCE.md §3.1): each row's published grid
  (micro-batch 1, full recomputation, fp16, all-reduce TP, no ZeRO, no overlap: the
  Megatron-LM of 2021) in Calculon's ``a100_80g`` system, against shardc's prices
  (``bench_megatron.estimate``) and the published TFLOP/s.
* **Planner quality**, GPT-3 175B, global batch 1,536: the picks Calculon's
  ``llm-optimal-execution`` made (issue 14) and shardc's free plans
  (``bench_practitioners``), each priced by both tools. A shardc plan that mixes
  recomputation across stages is priced in Calculon with the heavier mode everywhere
  (Calculon has one mode per run).
* **Search time**: shardc's whole free search (CPU seconds, one CP-SAT worker) against
  Calculon's ``llm-optimal-execution`` on the same model, GPU count and batch, in CPU
  seconds of one process. Its exhaustive search evaluates millions of executions (about
  100 CPU hours for 4,096 GPUs), so it is *measured on a sample and extrapolated*: a
  driver run in Calculon's venv enumerates exactly the executions the command
  enumerates (its outer parameters, then ``OptimalExecution.search`` for the inner
  loops), evaluates every K-th one (``--calculon-sample``, default 20,000) with the same
  ``compile`` + ``run`` + ``get_stats_json`` the search calls, and reports
  ``executions × mean CPU per evaluation + the CPU of the enumeration itself``. Both
  numbers are CPU time, so a loaded machine does not skew the ratio; Calculon's pool of
  worker processes divides its wall clock by the cores, not its work.

Run ``python tests/bench/bench_calculon.py [--calculon-src PATH]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_megatron as mega  # noqa: E402
import bench_practitioners as prac  # noqa: E402

from shardc.cost.grid import GridConfig, StepEstimate  # noqa: E402
from shardc.partition.grid import price_grid  # noqa: E402
from shardc.partition.options import Pins  # noqa: E402

DEFAULT_SRC = "/work/.mirror/calculon-ai+calculon/repo"
RECOMPUTE = {"none": "none", "selective": "attn_only", "full": "full"}


def install(src: Path, folder: Path) -> Path:
    """Calculon's ``calculon`` executable in a fresh venv under ``folder``."""
    code = folder / "calculon-src"
    code.mkdir()
    if (src / "HEAD").exists() and not (src / "setup.py").exists():  # a git directory
        archive = subprocess.run(["git", f"--git-dir={src}", "archive", "HEAD"],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(code)], input=archive, check=True)
    else:
        subprocess.run(["cp", "-r", f"{src}/.", str(code)], check=True)
    venv = folder / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "numpy", "pandas", "psutil",
                    str(code)], check=True, capture_output=True)
    return venv / "bin" / "calculon"


class Calculon:
    """Runs one Calculon ``llm`` execution per call, files in a temporary folder."""

    def __init__(self, exe: Path, systems: Path, folder: Path) -> None:
        self.exe, self.system, self.folder, self.n = exe, systems / "a100_80g.json", folder, 0

    def seconds(self, **kwargs: object) -> float | None:
        """Calculon's step time for one execution, or None if it rejects it (memory)."""
        stats = self.stats(**kwargs)  # type: ignore[arg-type]
        return float(stats["total_time"]) if stats else None

    def stats(self, *, layers: int, hidden: int, heads: int, gpus: int, tp: int, pp: int,
              dp: int, batch: int, recompute: str, sp: bool, v: int = 1,
              zero: bool = False, overlap: bool = False) -> dict | None:
        """Calculon's statistics of one execution, or None if it rejects it (memory)."""
        self.n += 1
        app = {"hidden": hidden, "feedforward": 4 * hidden, "seq_size": 2048,
               "attn_heads": heads, "attn_size": hidden // heads, "num_blocks": layers}
        exe = {"num_procs": gpus, "tensor_par": tp, "pipeline_par": pp, "data_par": dp,
               "tensor_par_net": 0, "pipeline_par_net": 1, "data_par_net": 1,
               "batch_size": batch, "microbatch_size": 1, "datatype": "float16",
               "fused_activation": True, "attention_type": "multihead",
               "activation_recompute": RECOMPUTE[recompute], "pipeline_interleaving": v,
               "optimizer_sharding": zero, "tensor_par_comm_type": "rs_ag" if sp else "ar",
               "tensor_par_overlap": "none", "seq_par_ag_redo": False,
               "data_par_overlap": overlap, "weight_offload": False,
               "activations_offload": False, "optimizer_offload": False, "training": True}
        files = [self.folder / f"{name}{self.n}.json" for name in ("app", "exe", "out")]
        files[0].write_text(json.dumps(app))
        files[1].write_text(json.dumps(exe))
        run = subprocess.run([str(self.exe), "llm", str(files[0]), str(files[1]),
                              str(self.system), str(files[2])], capture_output=True, text=True)
        if run.returncode != 0 or not files[2].exists():
            return None
        return dict(json.loads(files[2].read_text()))


def calculon_parts(stats: dict) -> dict[str, float]:
    """Calculon's exposed step time in shardc's parts (its recomputation apart)."""
    return {"compute": stats["fw_time"] + stats["bw_time"],
            "recompute": stats["recompute_time"],
            "tp comm": stats["tp_comm_exposed_time"] + stats["recomm_exposed_time"],
            "pp send/recv": stats["pp_comm_exposed_time"], "bubble": stats["bubble_time"],
            "dp sync": stats["dp_comm_exposed_time"], "optimizer": stats["optim_step_time"]}


def shardc_parts(est: StepEstimate) -> dict[str, float]:
    """The step time shardc exposes, in the same parts (recomputation inside compute)."""
    b = est.breakdown()
    return {"compute": b["compute"], "recompute": float("nan"), "tp comm": b["tp comm"],
            "pp send/recv": b["pp send/recv"], "bubble": b["pipeline bubble"],
            "dp sync": b["dp all-reduce"], "optimizer": b["optimizer"]}


def parts_line(label: str, parts: dict[str, float]) -> str:
    """One model's breakdown of one plan, seconds per part."""
    return f"      {label:<9}" + " ".join(f"{k} {v:6.3f}" for k, v in parts.items())


def table1(calc: Calculon) -> list[str]:
    """Both tools' TFLOP/s per GPU and errors on every Table 1 row."""
    lines = [f"{'model':>8} {'published':>9} {'shardc':>8} {'err':>7} {'Calculon':>9} "
             f"{'err':>7}"]
    errs: dict[str, list[float]] = {"shardc": [], "calculon": []}
    for row in mega.ROWS:
        ours = mega.estimate(row).tflops_per_device(row.model_flops())
        t = calc.seconds(layers=row.layers, hidden=row.hidden, heads=row.heads, gpus=row.gpus,
                         tp=row.tp, pp=row.pp, dp=row.dp, batch=row.batch, recompute="full",
                         sp=False)
        theirs = row.model_flops() / (t * row.gpus) / 1e12 if t else float("nan")
        e1, e2 = ours / row.tflops - 1, theirs / row.tflops - 1
        errs["shardc"].append(abs(e1))
        errs["calculon"].append(abs(e2))
        lines.append(f"{row.params_b:>7.1f}B {row.tflops:>9.0f} {ours:>8.1f} {e1:>+7.1%} "
                     f"{theirs:>9.1f} {e2:>+7.1%}")
    lines.append(f"mean |error|: shardc {sum(errs['shardc']) / len(errs['shardc']):.1%}, "
                 f"Calculon {sum(errs['calculon']) / len(errs['calculon']):.1%}")
    return lines


SAMPLER = r'''
import sys, time, logging
import calculon
from calculon.llm import Llm
from calculon.llm import optimal_execution as oe
from calculon import System
model, system, gpus, batch, K = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
state = {"n": 0, "timed": 0, "cpu": 0.0}

class Skip(Llm.Error):
    pass

class Dummy:
    def compile(self, syst, exe):
        raise Skip("not sampled")

class Sampled(Llm):
    """Every K-th execution the search builds is evaluated as the search evaluates it."""
    def __new__(cls, *args, **kwargs):
        state["n"] += 1
        return super().__new__(cls) if state["n"] % K == 0 else Dummy()
    def compile(self, syst, exe):
        self._t0 = time.process_time()
        try:
            return super().compile(syst, exe)
        except Llm.Error:
            state["cpu"] += time.process_time() - self._t0; state["timed"] += 1
            raise
    def run(self, syst):
        try:
            return super().run(syst)
        finally:
            state["cpu"] += time.process_time() - self._t0; state["timed"] += 1
    def get_stats_json(self, layers):
        t0 = time.process_time()
        try:
            return super().get_stats_json(layers)
        finally:
            state["cpu"] += time.process_time() - t0

oe.Llm = Sampled
logging.getLogger().setLevel(logging.CRITICAL)
app = Llm.Application(calculon.io.read_json_file(model))
syst = System(calculon.io.read_json_file(system))
params = []  # OptimalExecution.run_command's outer loops, verbatim
for tp in Llm.get_all_tensor_parallelisms(gpus, app.hidden, app.attn_heads):
  for pp in Llm.get_all_pipeline_parallelisms(gpus, tp, app.num_blocks):
    dp = Llm.get_data_parallelism(gpus, tp, pp)
    for ppint in Llm.get_valid_pipeline_interleavings(app.num_blocks, pp):
      bs = oe.OptimalExecution.get_batch_size(dp, batch)
      if bs is None:
        continue
      for rc in ["full", "attn_only", "none"]:
        for osh in ([True, False] if dp > 1 else [False]):
          for cm in ["ar", "p2p_rs_ag", "rs_ag"]:
            params.append((False, 1, False, gpus, batch, "float16", app, syst, tp, pp, dp,
                           ppint, bs, rc, osh, cm, [True], False, True, True))
t0 = time.process_time()
for p in params:
    oe.OptimalExecution.search(*p)
total = time.process_time() - t0
print(state["n"], state["timed"], state["cpu"], total - state["cpu"])
'''


def calculon_search(calc: Calculon, gpus: int, batch: int, every: int) -> tuple[float, str]:
    """CPU seconds Calculon's ``llm-optimal-execution`` needs for GPT-3 175B on ``gpus``
    A100 at ``batch``, extrapolated from every ``every``-th execution, and how.
    """
    src = calc.system.parent.parent
    driver = calc.folder / "sampler.py"
    driver.write_text(SAMPLER)
    out = subprocess.run([str(calc.exe.parent / "python"), str(driver),
                          str(src / "models" / "gpt3-175B.json"), str(calc.system), str(gpus),
                          str(batch), str(every)], capture_output=True, text=True, check=True)
    n, timed, cpu, enum = out.stdout.split()
    per = float(cpu) / int(timed)
    total = int(n) * per + float(enum)
    return total, (f"{int(n):,} executions; {int(timed)} evaluated (every {every:,}th), "
                   f"{per * 1e3:.1f} ms CPU each; enumeration {float(enum):.0f} s CPU")


def planners(calc: Calculon, every: int) -> list[str]:
    """GPT-3 175B at 1,536 on 1,024 and 4,096 GPUs: each plan in both tools' prices with
    both breakdowns, shardc's plan against Calculon's pick in each, and the search times.
    """
    lines = []
    for case in prac.CASES[1:]:
        costing = prac.costing(case)
        lines.append(f"GPT-3 175B, {case.gpus} A100, batch {case.global_batch}:")
        picks = [(name, cfg) for name, cfg in case.practitioners]
        start = time.process_time()
        free = prac.search(costing, prac.PartitionOptions(global_batch=case.global_batch,
                                                          memory_reserve=prac.RESERVE))
        ours_cpu = time.process_time() - start
        plans = [("shardc free", free)]
        if len({s.tp for s in free.stages}) > 1:
            # Calculon has one TP degree per run: a plan mixing them is priced there as
            # the best plan shardc finds with each of its degrees pinned on every stage.
            uniform = [prac.search(costing, prac.PartitionOptions(
                global_batch=case.global_batch, memory_reserve=prac.RESERVE,
                pins=Pins(tp=t))) for t in sorted({s.tp for s in free.stages})]
            plans.append(("shardc, one tp", min(uniform, key=lambda r: r.step_seconds)))
        for label, plan in plans:
            rcs = {s.recompute for s in plan.stages}
            heavy = "full" if "full" in rcs else "selective" if "selective" in rcs else "none"
            tps = {s.tp for s in plan.stages}
            if len(tps) == 1:
                picks.append((f"{label} ({prac.describe(plan)})", GridConfig(
                    tps.pop(), plan.pp, plan.dp, 1, case.global_batch, recompute=heavy,
                    sequence_parallel=any(s.sequence_parallel for s in plan.stages),
                    interleave=plan.interleave, zero_stage=1)))
        priced: dict[str, tuple[float, float | None]] = {}
        for name, cfg in picks:
            ours = price_grid(costing, cfg, prac.RESERVE)
            stats = calc.stats(layers=96, hidden=12288, heads=96, gpus=case.gpus, tp=cfg.tp,
                               pp=cfg.pp, dp=cfg.dp, batch=cfg.global_batch,
                               recompute=cfg.recompute, sp=cfg.sequence_parallel,
                               v=cfg.interleave, zero=True, overlap=True)
            theirs = float(stats["total_time"]) if stats else None
            priced[name] = (ours.seconds, theirs)
            shown = f"{theirs:8.2f} s" if theirs else "rejected"
            lines.append(f"  {name:<70} shardc {ours.seconds:7.2f} s"
                         f"{'' if ours.fits else ' (no fit)'}  Calculon {shown}")
            lines.append(parts_line("shardc", shardc_parts(ours)))
            if stats:
                lines.append(parts_line("Calculon", calculon_parts(stats)))
        lines.append(f"  shardc free plan as searched: {free.step_seconds:.2f} s, "
                     f"{free.status.lower()}, gap {free.gap or 0:.1%}")
        pick = case.practitioners[-1][0]  # Calculon's own pick (v = 6)
        mine = [n for n in priced if n.startswith("shardc")]
        if mine and priced[pick][1] and priced[mine[0]][1]:
            (o1, t1), (o2, t2) = priced[mine[0]], priced[pick]
            lines.append(f"  shardc's plan vs Calculon's pick: {o1 / o2 - 1:+.1%} in shardc's "
                         f"model, {t1 / t2 - 1:+.1%} in Calculon's (goal: <= 0 and <= +5 %)")
        theirs_cpu, how = calculon_search(calc, case.gpus, case.global_batch, every)
        lines.append(f"  search time (CPU): shardc {ours_cpu:.1f} s (whole free search, 1 "
                     f"CP-SAT worker); Calculon llm-optimal-execution ~{theirs_cpu:,.0f} s "
                     f"(~{theirs_cpu / 3600:.0f} h; {how}): {theirs_cpu / ours_cpu:,.0f}x")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Install Calculon in a temporary venv and print both comparisons."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calculon-src", default=os.environ.get("CALCULON_SRC", DEFAULT_SRC))
    ap.add_argument("--calculon-sample", type=int, default=20000,
                    help="evaluate every K-th execution of Calculon's search to time it")
    args = ap.parse_args(argv)
    src = Path(args.calculon_src)
    if not src.exists():
        print(f"no Calculon checkout at {src}: pass --calculon-src or set CALCULON_SRC")
        return 0
    with tempfile.TemporaryDirectory(prefix="shardc-calculon-") as tmp:
        folder = Path(tmp)
        try:
            exe = install(src, folder)
        except subprocess.CalledProcessError as exc:
            print(f"could not install Calculon in a venv: {exc}")
            return 0
        calc = Calculon(exe, folder / "calculon-src" / "systems", folder)
        print("Narayanan et al. 2021 Table 1, TFLOP/s per GPU by the paper's formula:")
        print("\n".join(table1(calc)), flush=True)
        print("\n".join(planners(calc, args.calculon_sample)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
