"""Strategy names are :class:`shardc.vocabulary.StrategyName` members (or made from them:
``batch+column``, ``heads#2``, ``tp@d1``), and being ``str``-valued they read as the plain
words everywhere (plan.json, ``==``, dict keys).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from shardc.frontend import load_model
from shardc.strategy.table import build_table
from shardc.vocabulary import StrategyName

ROOT = Path(__file__).resolve().parents[2]
WORDS = {m.value for m in StrategyName}


def _parts(name: str) -> list[str]:
    """The words of a composite name (``batch+column#2`` -> batch, column)."""
    return [re.sub(r"#\d+$", "", p) for p in name.split("+")]


def test_every_name_on_a_transformer_is_made_of_the_enum() -> None:
    model = load_model(ROOT / "examples" / "models" / "tiny_gpt2.onnx")
    table, _ = build_table(model.graph)
    names = {s.name for strategies in table.by_node.values() for s in strategies}
    stray = {p for n in names for p in _parts(n) if p not in WORDS and not p.startswith("tp@")}
    assert stray == set()
    # the Megatron words the partitioner reads by name are all offered here
    assert {"column", "row", "heads", "vocab", "replicate"} <= {p for n in names for p in _parts(n)}


def test_a_member_is_its_word() -> None:
    assert StrategyName.COLUMN == "column" and f"{StrategyName.ROW}" == "row"
    assert {"heads": 1}[StrategyName.HEADS] == 1
    assert json.dumps({StrategyName.VOCAB: StrategyName.SEQ_TP}) == '{"vocab": "seq_tp"}'
