"""Tiny real architectures exported the way users export them (dynamo, opset 18).

Random weights from a fixed seed, no downloads: the configs are built here. Each export
takes seconds, so tests get them through session fixtures in conftest.py.
"""

from __future__ import annotations

from pathlib import Path

SEQ = 16
BATCH = 2


def _wrap(model):
    import torch

    class LogitsOnly(torch.nn.Module):
        """Hugging Face models return a ModelOutput; planning wants plain logits."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids):
            return self.inner(input_ids=input_ids).logits

    return LogitsOnly(model).eval()


def gpt2(layers: int = 2, hidden: int = 64, heads: int = 4, vocab: int = 256):
    """A GPT-2 with random weights (learned positions, GELU MLP, tied LM head)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(
        n_layer=layers,
        n_embd=hidden,
        n_head=heads,
        vocab_size=vocab,
        n_positions=64,
        use_cache=False,
        bos_token_id=0,
        eos_token_id=0,
        attn_implementation="eager",
    )
    return _wrap(GPT2LMHeadModel(cfg))


def llama(
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    ffn: int = 128,
    vocab: int = 256,
):
    """A Llama with random weights (RoPE, RMSNorm, SwiGLU, grouped KV heads)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        num_hidden_layers=layers,
        hidden_size=hidden,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=ffn,
        vocab_size=vocab,
        max_position_embeddings=64,
        use_cache=False,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        attn_implementation="eager",
    )
    return _wrap(LlamaForCausalLM(cfg))


def example_ids(vocab: int = 256):
    """Deterministic token ids of shape [BATCH, SEQ]."""
    import torch

    g = torch.Generator().manual_seed(1)
    return torch.randint(0, vocab, (BATCH, SEQ), generator=g)


def export(module, path: Path) -> Path:
    """Export with the exporter settings shardc supports (dynamo, opset 18)."""
    import torch

    with torch.no_grad():
        program = torch.onnx.export(
            module, (example_ids(),), dynamo=True, opset_version=18, verbose=False
        )
    program.save(str(path))
    return path
