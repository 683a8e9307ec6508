"""The training tests' models, exported once per session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import train_harness as H


@pytest.fixture(scope="session")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny Llama and GPT-2 (``train_harness.build``) as dynamo ONNX files."""
    d = tmp_path_factory.mktemp("train_models")
    return {f: H.export(f, d / f"{f}.onnx") for f in ("llama", "gpt2")}
