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
* **Search time**: shardc's whole free search (wall clock, one CP-SAT worker) against
  Calculon's ``llm-optimal-execution`` on the same model, GPU count and batch, on one CPU
  (``-c 1``), stopped after ``--calculon-limit`` seconds (its exhaustive search runs for
  hours on two cores): what is printed is either its time or the limit it ran past, a
  lower bound.

Run ``python tests/bench/bench_calculon.py [--calculon-src PATH]``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_megatron as mega  # noqa: E402
import bench_practitioners as prac  # noqa: E402

from shardc.cost.grid import GridConfig  # noqa: E402
from shardc.partition.grid import price_grid  # noqa: E402

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

    def seconds(self, *, layers: int, hidden: int, heads: int, gpus: int, tp: int, pp: int,
                dp: int, batch: int, recompute: str, sp: bool, v: int = 1,
                zero: bool = False, overlap: bool = False) -> float | None:
        """Calculon's step time for one execution, or None if it rejects it (memory)."""
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
        return float(json.loads(files[2].read_text())["total_time"])


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


def calculon_search(calc: Calculon, gpus: int, batch: int, limit: float) -> tuple[float, bool]:
    """Wall seconds of Calculon's ``llm-optimal-execution`` for GPT-3 175B on ``gpus``
    A100 at ``batch`` on one CPU, and whether it finished within ``limit``.
    """
    src = calc.system.parent.parent
    out = calc.folder / f"optimal{gpus}.json"
    start = time.perf_counter()
    # its own session, so that a timeout stops the worker processes it forks as well
    proc = subprocess.Popen([str(calc.exe), "llm-optimal-execution", str(src / "models" /
                             "gpt3-175B.json"), str(gpus), str(batch), "float16",
                             str(calc.system), str(out), "-c", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return time.perf_counter() - start, False
    return time.perf_counter() - start, True


def planners(calc: Calculon, limit: float) -> list[str]:
    """GPT-3 175B at 1,536 on 1,024 and 4,096 GPUs: each plan in both tools' prices, and
    both tools' search times.
    """
    lines = []
    for case in prac.CASES[1:]:
        costing = prac.costing(case)
        lines.append(f"GPT-3 175B, {case.gpus} A100, batch {case.global_batch}:")
        picks = [(name, cfg) for name, cfg in case.practitioners]
        start = time.perf_counter()
        free = prac.search(costing, prac.PartitionOptions(global_batch=case.global_batch,
                                                          memory_reserve=prac.RESERVE))
        ours_wall = time.perf_counter() - start
        rcs = {s.recompute for s in free.stages}
        heavy = "full" if "full" in rcs else "selective" if "selective" in rcs else "none"
        tps = {s.tp for s in free.stages}
        if len(tps) == 1:
            picks.append((f"shardc free ({prac.describe(free)})", GridConfig(
                tps.pop(), free.pp, free.dp, 1, case.global_batch, recompute=heavy,
                sequence_parallel=any(s.sequence_parallel for s in free.stages),
                interleave=free.interleave, zero_stage=1)))
        for name, cfg in picks:
            ours = price_grid(costing, cfg, prac.RESERVE)
            theirs = calc.seconds(layers=96, hidden=12288, heads=96, gpus=case.gpus, tp=cfg.tp,
                                  pp=cfg.pp, dp=cfg.dp, batch=cfg.global_batch,
                                  recompute=cfg.recompute, sp=cfg.sequence_parallel,
                                  v=cfg.interleave, zero=True, overlap=True)
            shown = f"{theirs:8.2f} s" if theirs else "rejected"
            lines.append(f"  {name:<70} shardc {ours.seconds:7.2f} s"
                         f"{'' if ours.fits else ' (no fit)'}  Calculon {shown}")
        lines.append(f"  shardc free plan as searched: {free.step_seconds:.2f} s, "
                     f"{free.status.lower()}, gap {free.gap or 0:.1%}")
        theirs_wall, done = calculon_search(calc, case.gpus, case.global_batch, limit)
        ratio = theirs_wall / ours_wall if ours_wall else float("inf")
        lines.append(f"  search time: shardc {ours_wall:.1f} s (whole free search, 1 CP-SAT "
                     f"worker); Calculon llm-optimal-execution (1 CPU) "
                     f"{'' if done else 'still running after '}{theirs_wall:.0f} s: "
                     f"{'' if done else '>'}{ratio:.0f}x")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Install Calculon in a temporary venv and print both comparisons."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calculon-src", default=os.environ.get("CALCULON_SRC", DEFAULT_SRC))
    ap.add_argument("--calculon-limit", type=float, default=300.0,
                    help="seconds Calculon's optimal-execution search may run per case")
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
        print("\n".join(planners(calc, args.calculon_limit)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
