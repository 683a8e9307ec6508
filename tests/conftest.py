"""Shared fixtures: real architectures exported once per session, ONNX-text helpers."""

from __future__ import annotations

import sys
from pathlib import Path

import onnx
import pytest

sys.path.insert(0, str(Path(__file__).parent))

import models


@pytest.fixture(scope="session")
def gpt2_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny GPT-2 (2 layers, hidden 64) exported with dynamo at opset 18."""
    return models.export(models.gpt2(), tmp_path_factory.mktemp("gpt2") / "gpt2.onnx")


@pytest.fixture(scope="session")
def llama_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny Llama (2 layers, hidden 64, 4 heads, 2 KV heads) exported with dynamo."""
    return models.export(models.llama(), tmp_path_factory.mktemp("llama") / "llama.onnx")


@pytest.fixture(scope="session")
def mixtral_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny Mixtral (2 MoE layers, 8 experts top-2, batched_mm experts) exported with dynamo."""
    return models.export(models.mixtral(), tmp_path_factory.mktemp("mixtral") / "mixtral.onnx")


@pytest.fixture(scope="session")
def deepseek_v3_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny DeepSeek-V3 (a dense layer, then an MoE layer of 8 routed experts top-2 and one
    shared expert; MLA attention) exported with dynamo.
    """
    path = tmp_path_factory.mktemp("deepseek_v3") / "deepseek_v3.onnx"
    return models.export(models.deepseek_v3(), path)


def parse(text: str) -> onnx.ModelProto:
    """A model from ONNX text, checked, the way the rewriter tests write theirs."""
    model = onnx.parser.parse_model(text)
    onnx.checker.check_model(model)
    return model


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect ``slow`` tests unless the ``-m`` expression names ``slow``: the full
    sweeps (the ONNX node suite, the light models, 8 processes) are opt-in, and the
    default run does not list them as skips.
    """
    if "slow" in (config.getoption("-m") or ""):
        return
    slow = [i for i in items if "slow" in i.keywords]
    if slow:
        config.hook.pytest_deselected(items=slow)
        chosen = set(map(id, slow))
        items[:] = [i for i in items if id(i) not in chosen]
