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


def mixtral(
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    ffn: int = 32,
    experts: int = 8,
    top_k: int = 2,
    vocab: int = 256,
):
    """A Mixtral with random weights: every layer a top-k MoE of SwiGLU experts.

    Experts run as ``batched_mm`` (the default ``grouped_mm`` has no ONNX export): each
    (token, expert) pair gathers its expert's stacked weights and multiplies.
    """
    import torch
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(0)
    cfg = MixtralConfig(
        num_hidden_layers=layers,
        hidden_size=hidden,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=ffn,
        num_local_experts=experts,
        num_experts_per_tok=top_k,
        vocab_size=vocab,
        max_position_embeddings=64,
        use_cache=False,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        attn_implementation="eager",
    )
    model = MixtralForCausalLM(cfg)
    model.set_experts_implementation("batched_mm")
    return _wrap(model)


def deepseek_v3(
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    ffn: int = 128,
    expert_ffn: int = 32,
    experts: int = 8,
    top_k: int = 2,
    vocab: int = 256,
):
    """A DeepSeek-V3 with random weights: MLA attention, a dense first layer, then MoE
    layers of routed experts (grouped sigmoid top-k) beside one shared expert.
    """
    import torch
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    torch.manual_seed(0)
    cfg = DeepseekV3Config(
        num_hidden_layers=layers,
        first_k_dense_replace=1,
        hidden_size=hidden,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        intermediate_size=ffn,
        moe_intermediate_size=expert_ffn,
        n_routed_experts=experts,
        n_shared_experts=1,
        num_experts_per_tok=top_k,
        n_group=2,
        topk_group=1,
        q_lora_rank=32,
        kv_lora_rank=32,
        qk_rope_head_dim=8,
        qk_nope_head_dim=8,
        v_head_dim=16,
        vocab_size=vocab,
        max_position_embeddings=64,
        use_cache=False,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        attn_implementation="eager",
    )
    model = DeepseekV3ForCausalLM(cfg)
    model.set_experts_implementation("batched_mm")
    return _wrap(model)


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
