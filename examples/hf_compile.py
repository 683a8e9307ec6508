"""Compile a Hugging Face model from a training script: shardc.compile on an nn.Module.

    python examples/hf_compile.py [OUTDIR]

A Llama with a tiny random config (nothing is downloaded) is exported on the fly with
torch.onnx.export(dynamo=True) on example inputs, planned onto this machine's CPU split
into 4 devices, saved as the plan folder ``shardc compile`` would write (default
out/hf_llama), and verified: the sharded device programs must give the unsharded
model's logits. Needs the torch extra: pip install 'shardc[torch]'.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from rich import print as rprint
from transformers import LlamaConfig, LlamaForCausalLM

import shardc

TOPOLOGY = Path(__file__).resolve().parents[1] / "topologies" / "localhost.topo"


class Logits(torch.nn.Module):
    """Hugging Face models return a ModelOutput; the plan wants a plain tensor."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids).logits


def main(outdir: str = "out/hf_llama") -> None:
    torch.manual_seed(0)
    config = LlamaConfig(
        num_hidden_layers=2,
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=256,
        max_position_embeddings=64,
        use_cache=False,
        attn_implementation="eager",
    )
    model = Logits(LlamaForCausalLM(config)).eval()
    input_ids = torch.randint(0, config.vocab_size, (2, 16))  # one micro-batch: 2 x 16 tokens

    plan = shardc.compile(
        model,
        TOPOLOGY,
        example_inputs=(input_ids,),
        devices=4,  # the topology's `let devices`: this CPU as 4 equal devices
        pins={"tp": 2},  # ask for tensor parallelism; the solver picks the rest
        microbatches=4,
    )
    rprint(plan.summary())
    row = next(n for n, s in plan.to_json()["partition"]["strategies"].items() if s == "row")
    print(plan.explain(row))  # which ranks run it, how it is split, what it sends, and why
    for stage in plan.stages:
        print(f"stage {stage.index}: {stage.kind} tp={stage.tp} ranks {list(stage.ranks)}")

    folder = plan.save(outdir, force=True)
    print(f"saved {folder}/: {', '.join(plan.file_names)}")

    report = plan.verify()  # all ranks in this process; procs=True runs one process per rank
    rprint(report)
    if not report.ok:
        sys.exit("the sharded programs do not match the model")
    print("the sharded plan computes the model's logits")


if __name__ == "__main__":
    main(*sys.argv[1:2])
