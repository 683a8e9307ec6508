"""Serving reads a Hugging Face decoder export's sizes from its graph (no synth metadata)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shardc.errors import ModelError
from shardc.serving import from_onnx


def test_llama_export_sizes(llama_path: Path) -> None:
    m = from_onnx(llama_path)  # tests/models.py llama(): 2 layers, 64 wide, 4 heads, 2 KV
    assert (m.layers, m.hidden, m.heads, m.kv_heads, m.head_dim, m.ffn, m.vocab) == (
        2, 64, 4, 2, 16, 128, 256)
    assert m.experts == 0 and m.mla is None


def test_gpt2_export_sizes(gpt2_path: Path) -> None:
    m = from_onnx(gpt2_path)  # gpt2(): 2 layers, 64 wide, 4 heads (MHA), MLP 4h
    assert (m.layers, m.hidden, m.heads, m.kv_heads, m.ffn, m.vocab) == (2, 64, 4, 4, 256, 256)


def test_mixture_of_experts_export_is_refused_by_name(mixtral_path: Path) -> None:
    with pytest.raises(ModelError, match="mixture-of-experts"):
        from_onnx(mixtral_path)
