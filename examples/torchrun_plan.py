"""Run a plan over torch.distributed, one process per rank, from a training script.

    torchrun --standalone --nproc-per-node 2 examples/torchrun_plan.py

Every process compiles the same plan (compilation is deterministic, so every rank gets
the same bytes; a real job would compile once and ``shardc.Plan.load`` the folder),
takes its own rank from ``plan.runner()`` (which reads RANK and WORLD_SIZE and joins the
gloo process group on CPU), and runs one micro-batch forward through the sharded
program. The ranks holding the model's outputs compare them with the unsharded model in
onnxruntime. Pass a pin to try another cut, e.g. ``-- pp=2``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

import shardc

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "examples" / "models" / "tiny_gpt2.onnx"
TOPOLOGY = ROOT / "topologies" / "localhost.topo"


def main(pins: str = "tp=2") -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    plan = shardc.compile(MODEL, TOPOLOGY, devices=world, pins=pins, quiet=True)
    runner = plan.runner()  # this process's rank; every rank must call run() alike
    rank = runner.rank

    rng = np.random.default_rng(0)  # the same seed on every rank: the same micro-batch
    feeds = {"input_ids": rng.integers(0, 256, size=(2, 16), dtype=np.int64)}
    outputs = runner.run(feeds)
    runner.close()

    if not outputs:
        print(f"rank {rank} ({plan.devices[rank].device}): stage {runner.stage} done", flush=True)
        return
    session = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    (want,) = session.run(None, feeds)
    (got,) = outputs.values()
    err = float(np.abs(got - want).max() / np.abs(want).max())
    device = plan.devices[rank].device
    print(f"rank {rank} ({device}): max error {err:.2e} relative to the model", flush=True)
    if err > 1e-5:
        sys.exit(f"rank {rank}: the sharded output does not match the model")


if __name__ == "__main__":
    main(*sys.argv[1:2])
