"""ONNX as deployment tools leave it compiles, verifies against onnxruntime on the very
file, and tensor parallelism splits its weights.

The corpus (tests/wild/corpus.py) is built once per session under tmp: tiny random
BERT, GPT-2, Llama and ViT exports, then onnxruntime's transformer optimizer, fp16
conversion, dynamic int8, 4-bit MatMulNBits and QDQ static quantization. By default one
case per transformation runs at tp=2·pp=2 (BERT and Llama only, to keep exports few);
``-m slow`` runs every model × transformation × shape, and the optimized BERT at 1, 2
and 4 devices. Each case prints its row of the table (max error, replicated weight %).
"""

from __future__ import annotations

from pathlib import Path

import corpus
import pytest

DEFAULT = [
    ("bert", "optimized"),
    ("bert", "fp16"),
    ("llama", "int8"),
    ("llama", "nbits4"),
    ("bert", "qdq"),
]
KNOWN: dict[tuple[str, str], str] = {}
"""Cases that fail outside this corpus's reach, with why (strict: a fix must remove them)."""
FULL = [
    pytest.param(
        m,
        k,
        s,
        id=f"{k}-{m}-{s}",
        marks=[pytest.mark.xfail(strict=True, reason=KNOWN[(m, k)])] if (m, k) in KNOWN else [],
    )
    for k in corpus.TRANSFORMS
    for m in corpus.MODELS
    for s in corpus.SHAPES
]


@pytest.fixture(scope="session")
def wild(tmp_path_factory: pytest.TempPathFactory) -> corpus.Cache:
    """Exports and transformed files, each made once per session."""
    import logging

    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    return corpus.Cache(tmp_path_factory.mktemp("wild"))


def _check(wild: corpus.Cache, tmp_path: Path, model: str, kind: str, shape: str) -> corpus.Result:
    result = corpus.run_case(wild.case(model, kind), shape, tmp_path / "plan")
    print(result.row())
    assert result.compiled and result.verified, result.row()
    return result


@pytest.mark.parametrize("model, kind", DEFAULT, ids=[f"{k}-{m}" for m, k in DEFAULT])
def test_wild_case_compiles_and_verifies(
    wild: corpus.Cache, tmp_path: Path, model: str, kind: str
) -> None:
    _check(wild, tmp_path, model, kind, "tp=2,pp=2")


def test_tensor_parallel_splits_the_4bit_llama(wild: corpus.Cache, tmp_path: Path) -> None:
    """Every MatMulNBits splits (along N or along whole K blocks): the weights held twice
    are the norms and the rotary tables, under a tenth of the bytes.
    """
    result = _check(wild, tmp_path, "llama", "nbits4", "tp=2")
    assert result.replicated_pct < 10.0, result.row()


@pytest.mark.slow
@pytest.mark.parametrize("model, kind, shape", FULL)
def test_wild_matrix(wild: corpus.Cache, tmp_path: Path, model: str, kind: str, shape: str) -> None:
    _check(wild, tmp_path, model, kind, shape)


@pytest.mark.slow
@pytest.mark.parametrize("shape", ["tp=1", "tp=2", "tp=4"])
def test_optimized_bert_on_1_2_4_devices(wild: corpus.Cache, tmp_path: Path, shape: str) -> None:
    _check(wild, tmp_path, "bert", "optimized", shape)
