"""The Markdown docs say what the code does: generated pages are current, the DSL page
names every keyword and unit, the plan-format page every field a compile writes, and
every relative link resolves.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import pytest

import shardc

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def _docgen() -> Any:
    spec = importlib.util.spec_from_file_location("docgen", ROOT / "tools" / "docgen.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("page", ["cli.md", "api.md"])
def test_generated_pages_are_current(page: str) -> None:
    text = _docgen().GENERATED[page]()
    assert (DOCS / page).read_text() == text, f"docs/{page} is stale: run python tools/docgen.py"


def test_cli_reference_lists_every_command_and_option() -> None:
    import click

    from shardc.cli.main import cli

    text = (DOCS / "cli.md").read_text()
    ctx = click.Context(cli)
    for name in cli.list_commands(ctx):
        assert f"## `shardc {name}`" in text
    compile_cmd = cli.get_command(ctx, "compile")
    assert compile_cmd is not None
    for param in compile_cmd.params:
        for opt in getattr(param, "opts", []):
            if opt.startswith("-"):
                assert opt in text, opt


def _code_spans(text: str) -> set[str]:
    """Inline code spans, outside fenced blocks."""
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    return set(re.findall(r"`([^`\n]+)`", prose))


def test_dsl_reference_names_every_keyword_property_kind_dtype_and_unit() -> None:
    from shardc.topology import fabrics, kinds
    from shardc.topology.model import DTYPES
    from shardc.topology.units import UNITS

    grammar = (ROOT / "shardc" / "topology" / "grammar.lark").read_text()
    keywords = set(re.findall(r'"([a-z]+)"', grammar))
    assert {"let", "include", "kind", "extends", "switch", "mesh", "network", "link"} <= keywords
    properties = set(kinds._USAGE) | {p for spec in fabrics._ALLOWED.values() for p in spec}
    spans = _code_spans((DOCS / "dsl.md").read_text())
    for group, words in (
        ("keyword", keywords),
        ("property", properties),
        ("link kind", fabrics.LINK_KINDS),
        ("dtype", DTYPES),
        ("unit", UNITS),
    ):
        missing = sorted(set(words) - spans)
        assert not missing, f"docs/dsl.md does not name the {group}s {missing}"


# maps whose keys are data (node, weight, parameter or dim names), not fields
_DATA_KEYED = {
    "inputs.topology.set",
    "inputs.dims",
    "partition.strategies",
    "emission.weights",
    "options.pins",
    "partition.pins",
    "flops_by_dtype",
    "flops_by_kind",
    "op_counts",
    "opsets",
    "inputs",
    "outputs",
}


def _keys(obj: Any, prefix: str = "") -> set[str]:
    """Every field name in ``obj``, with the dotted path to its parent for data-keyed maps."""
    found: set[str] = set()
    if isinstance(obj, dict):
        if prefix in _DATA_KEYED:
            return found
        for key, value in obj.items():
            found.add(key)
            found |= _keys(value, f"{prefix}.{key}" if prefix else key)
    elif isinstance(obj, list):
        for item in obj:
            found |= _keys(item, prefix)
    return found


def test_plan_format_explains_every_field(tmp_path: Path) -> None:
    plan = shardc.compile(
        "examples/models/tiny_gpt2.onnx",
        "topologies/localhost.topo",
        devices=4,
        pins="tp=2,pp=2",
        quiet=True,
    )
    spans = _code_spans((DOCS / "plan-format.md").read_text())
    words = {w for span in spans for w in re.split(r"[\s.,`()\[\]]+", span)} | spans
    for name, data in (
        ("plan.json", plan.to_json()),
        ("schedule.json", plan.schedule),
        ("analysis.json", plan.analysis),
    ):
        missing = sorted(_keys(data) - words)
        assert not missing, f"docs/plan-format.md does not explain {name} fields {missing}"
    meta = {p.key for p in plan.device_model(0).metadata_props}
    assert not sorted(meta - words), "device model metadata keys missing from plan-format.md"


def test_readme_leads_to_the_guide_and_links_resolve() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "docs/guide.md" in readme
    for page in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.name}: broken link {target}"
    guide = (DOCS / "guide.md").read_text()
    for page in ("cli.md", "dsl.md", "api.md", "plan-format.md"):
        assert f"({page})" in guide, f"the guide does not link {page}"


def test_plan_json_sample_in_docs_is_json() -> None:
    for page in DOCS.glob("*.md"):
        for block in re.findall(r"```json\n(.*?)```", page.read_text(), re.S):
            json.loads(block)
