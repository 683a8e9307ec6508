"""Plan a model onto a cluster you describe yourself: examples/h200_pair.topo.

    python examples/custom_topology.py

The topology file is written from scratch (a device kind, a parameter, two DGX H200
nodes with NVSwitch inside and a rail-optimised NDR InfiniBand network between them),
with the source of every number beside it. This script reads it, asks it a few
questions, then plans a 35 B-parameter Llama-shaped model (the graph only: its weights
are declared, never written) for training on it, and shows where the tensor-parallel
groups landed: inside a node, on NVLink.
"""

from __future__ import annotations

from pathlib import Path

import shardc
from shardc.synth import SynthConfig, build

TOPO = Path(__file__).with_name("h200_pair.topo")


def main() -> None:
    topo = shardc.load_topology(TOPO)
    print(f"{topo.name}: {len(topo.compute_devices)} GPUs, planes {', '.join(topo.planes)}")
    for a, b in (("node0.gpu0", "node0.gpu1"), ("node0.gpu0", "node1.gpu0")):
        r = topo.route(a, b)
        print(
            f"  {a} -> {b}: {r.plane}, {r.bandwidth / 1e9:.0f} GB/s, "
            f"{r.latency * 1e6:.2f} us, {r.hops} hops"
        )

    # Llama-2-70B widths with 40 layers: ~35 B parameters, too big for one GPU to train.
    config = SynthConfig(
        layers=40, hidden=8192, heads=64, kv_heads=8, ffn=28672, vocab=128256, seq=4096, batch=1
    )
    plan = shardc.compile(build("llama", config), TOPO, global_batch=256, time_limit=5, quiet=True)
    print(plan.summary())
    for stage in plan.stages:
        group = stage.groups[0]
        nodes = sorted({name.split(".")[0] for name in group})
        print(f"stage {stage.index}: tp group {', '.join(group)} (within {', '.join(nodes)})")
    assert all(len({n.split(".")[0] for n in s.groups[0]}) == 1 for s in plan.stages), (
        "a tensor-parallel group should stay on one node's NVLink"
    )


if __name__ == "__main__":
    main()
