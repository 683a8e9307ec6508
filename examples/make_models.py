"""Rebuild the bundled example models in examples/models/ (run from the repo root).

    python examples/make_models.py

Each is a real Hugging Face architecture with a tiny config and random weights from a
fixed seed (nothing is downloaded), exported the way shardc expects: the dynamo exporter
at opset 18. Needs the torch extra: pip install -e '.[torch]'.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

OUT = Path(__file__).parent / "models"


class LogitsOnly(torch.nn.Module):
    """Hugging Face models return a ModelOutput; the plan wants plain logits."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.inner(input_ids=input_ids).logits


def tiny_gpt2() -> Path:
    """GPT-2 architecture: 2 layers, hidden 64, 4 heads, vocab 256, batch 2 x seq 16."""
    torch.manual_seed(0)
    cfg = GPT2Config(
        n_layer=2,
        n_embd=64,
        n_head=4,
        vocab_size=256,
        n_positions=64,
        use_cache=False,
        bos_token_id=0,
        eos_token_id=0,
        attn_implementation="eager",
    )
    model = LogitsOnly(GPT2LMHeadModel(cfg)).eval()
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    path = OUT / "tiny_gpt2.onnx"
    with torch.no_grad():
        torch.onnx.export(model, (ids,), dynamo=True, opset_version=18).save(str(path))
    return path


if __name__ == "__main__":
    OUT.mkdir(exist_ok=True)
    print(tiny_gpt2())
