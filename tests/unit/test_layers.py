"""The layering check (``tools/lint_imports.py``, run by ``make test``) holds on this tree
and fails when an import breaks it: an arrow pointing up, a function-level one included;
an import of protobuf outside the parts that read and write models, seen in ``passes/``
(which installs as ``shardc.passes`` and which a bare ``lint-imports`` would not see); a
new top-level module no layer names.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _tool() -> Any:
    spec = importlib.util.spec_from_file_location("lint_imports", ROOT / "tools" / "lint_imports.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A copy of the package folders and pyproject.toml to break on purpose."""
    skip = shutil.ignore_patterns("__pycache__")
    for folder in ("shardc", "passes", "topologies"):
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=skip)
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


def _check(root: Path, capfd: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = _tool().main(["--root", str(root)])
    out, err = capfd.readouterr()
    return code, out + err


def test_this_tree_keeps_every_contract(capfd: pytest.CaptureFixture[str]) -> None:
    code, out = _check(ROOT, capfd)
    assert code == 0, out
    assert "6 kept, 0 broken" in out


def test_an_upward_import_inside_a_function_breaks_the_layers(
    checkout: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    verify = checkout / "shardc" / "ir" / "verify.py"
    verify.write_text(verify.read_text() + "\n\ndef _up() -> None:\n    import shardc.cli.main\n")
    code, out = _check(checkout, capfd)
    assert code == 1
    assert "shardc.ir is not allowed to import shardc.cli" in out
    assert "No import cycles between the top-level parts BROKEN" in out


def test_protobuf_in_a_pass_is_seen(checkout: Path, capfd: pytest.CaptureFixture[str]) -> None:
    coarsen = checkout / "passes" / "coarsen.py"
    coarsen.write_text(coarsen.read_text() + "\nimport onnx  # noqa: E402\n")
    code, out = _check(checkout, capfd)
    assert code == 1
    assert "shardc.passes is not allowed to import onnx" in out


def test_a_new_top_level_module_must_be_given_a_layer(
    checkout: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    (checkout / "shardc" / "stray.py").write_text('"""Nowhere in the layers."""\n')
    code, out = _check(checkout, capfd)
    assert code == 1
    assert "shardc.stray" in out


def _add_ignore(checkout: Path, entry: str) -> None:
    """Add ``entry`` to the "pipeline" contract's ignore_imports list of ``checkout``."""
    pyproject = checkout / "pyproject.toml"
    head = 'id = "pipeline"'
    before, after = pyproject.read_text().split(head, 1)
    assert "ignore_imports = [\n" in after
    after = after.replace("ignore_imports = [\n", f'ignore_imports = [\n    "{entry}",\n', 1)
    pyproject.write_text(before + head + after)


def test_a_stale_ignore_entry_fails_so_the_lists_shrink(
    checkout: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    _add_ignore(checkout, "shardc.ir -> shardc.cli")
    code, out = _check(checkout, capfd)
    assert code == 1
    assert "No matches for ignored import shardc.ir -> shardc.cli" in out


def test_a_misconfigured_contract_fails(checkout: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """import-linter rejects a contract it cannot read (here a wildcard inside a module
    name) without checking it: that must fail the check, not pass with the contract
    silently unchecked.
    """
    _add_ignore(checkout, "shardc.ir.ver*fy -> shardc.cli")
    code, out = _check(checkout, capfd)
    assert code != 0
    assert "is not configured correctly" in out
