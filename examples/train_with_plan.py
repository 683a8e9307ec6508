"""Train a small Llama with a shardc plan on torch's own parallelism.

    torchrun --standalone --nproc-per-node 2 examples/train_with_plan.py --steps 5 --pins tp=2
    shardc launch PLAN -- examples/train_with_plan.py --steps 5     # a plan compiled before

Every rank builds the same random model, compiles the same plan (deterministic: no plan
has to travel) and applies it: DeviceMesh, tensor/sequence parallelism, FSDP2 and pipeline
stages as the plan says. ``--profile`` prints the measured step split beside the plan's.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import transformers

import shardc

TOPOLOGY = Path(__file__).resolve().parents[1] / "topologies" / "localhost.topo"


class LM(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        cfg = transformers.LlamaConfig(
            vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, attn_implementation="sdpa",
        )  # fmt: skip
        self.inner = transformers.LlamaForCausalLM(cfg)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.inner(input_ids=ids, use_cache=False).logits


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--pins", default="tp=2")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = LM()
    ids = torch.randint(0, 128, (8, 17), generator=torch.Generator().manual_seed(1))
    x, y = ids[:, :-1], ids[:, 1:]
    if "SHARDC_PLAN" in os.environ:  # `shardc launch PLAN -- train_with_plan.py`
        pm = shardc.train.apply(os.environ["SHARDC_PLAN"], model)
    else:  # plain torchrun: every rank compiles the same plan
        world = int(os.environ["WORLD_SIZE"])
        pm = shardc.parallelize(model, TOPOLOGY, example_inputs=(x[:2],), devices=world,
                                pins=args.pins, microbatches=2)  # fmt: skip
    opt = pm.optimizer(torch.optim.AdamW, lr=1e-2)  # ZeRO-1: state sharded over replicas
    for step in range(args.steps):
        loss = pm.step(x, y, opt)
        if pm.rank == 0:
            print(f"step {step}: loss {loss:.4f}", flush=True)
    if args.profile:
        from shardc.train.profile import measure_step

        table = measure_step(pm, x, y, opt)
        if pm.rank == 0:
            print(table)


if __name__ == "__main__":
    main()
