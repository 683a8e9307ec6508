"""What if we trained it on another system? One model, three clusters, one table.

    python examples/whatif.py

Plans the same Llama-shaped model (16 layers at Llama-2-70B widths, ~14 B parameters;
the graph only, from shardc.synth, so no weights are ever written) for training with a
global batch of 512 sequences of 4,096 tokens on a slice of three systems described in
topologies/: a DGX H100 SuperPOD (2 nodes, 16 GPUs), a GB200 NVL72 rack (72 GPUs), and a
Huawei CloudMatrix384 (2 nodes, 16 NPUs). Prints step time, throughput (also per
device, since the slices differ in size), the parallel shape the solver chose, and peak
memory. Each plan takes a few seconds; raise --time-limit for tighter plans, and the
``nodes`` below for bigger slices.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

import shardc
from shardc.synth import SynthConfig, build

TOPOLOGIES = Path(__file__).resolve().parents[1] / "topologies"
SYSTEMS = {
    "DGX H100 SuperPOD": ("dgx_h100_superpod.topo", {"nodes": 2}),
    "GB200 NVL72": ("gb200_nvl72.topo", {}),
    "CloudMatrix384": ("cloudmatrix384.topo", {"nodes": 2}),
}


def shape(plan: shardc.Plan) -> str:
    """``dp=8 × pp=3 (tp 1,1,2)``: the parallel degrees, TP per stage."""
    return f"dp={plan.dp} × pp={plan.pp} (tp {','.join(str(s.tp) for s in plan.stages)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--global-batch", type=int, default=512)
    parser.add_argument("--time-limit", type=float, default=1.0)
    args = parser.parse_args()

    config = SynthConfig(
        layers=args.layers, hidden=8192, heads=64, kv_heads=8, ffn=28672, vocab=32000,
        seq=4096, batch=1, dtype="bf16",
    )  # fmt: skip
    model = build("llama", config)

    table = Table(title=f"Llama-shaped, {args.layers} layers, global batch {args.global_batch}")
    for col in ("system", "devices", "parallel shape", "step", "samples/s", "per device",
                "peak memory", "solver"):  # fmt: skip
        table.add_column(col, justify="left" if col in ("system", "parallel shape") else "right")
    for name, (file, params) in SYSTEMS.items():
        topology = shardc.load_topology(TOPOLOGIES / file, params)
        plan = shardc.compile(
            model,
            topology,
            global_batch=args.global_batch,
            time_limit=args.time_limit,
            quiet=True,
        )
        est = plan.estimate
        peak = max(plan.devices, key=lambda d: d.memory_fraction)
        table.add_row(
            name,
            f"{plan.world_size}/{len(topology.compute_devices)}",
            shape(plan),
            f"{est.step_seconds:.2f} s",
            f"{est.samples_per_second:.1f}",
            f"{est.samples_per_second / plan.world_size:.2f}",
            f"{peak.memory_bytes / 2**30:.0f} GiB ({peak.memory_fraction:.0%})",
            est.status.lower(),
        )
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
