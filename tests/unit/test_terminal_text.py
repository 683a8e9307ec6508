"""Names from a model are printed as text: never rich markup, never terminal escapes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from shardc.cli.main import cli
from shardc.report.text import markup_safe, plain_safe

HOSTILE = ["[/]", "[link=https://example.invalid]click[/link]", "\x1b]0;pwned\x07", "\x1b[31mred"]


def _hostile_model(path: Path) -> Path:
    """A chain of MatMuls whose node and value names are markup and escape sequences."""
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    nodes, prev = [], "x"
    for i, name in enumerate(HOSTILE):
        out = f"v{i}{name}" if i < len(HOSTILE) - 1 else f"y{name}"
        nodes.append(helper.make_node("MatMul", [prev, "w"], [out], name=name))
        prev = out
    graph = helper.make_graph(
        nodes,
        "g[/]",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [2, 4])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, str(path))
    return path


def test_inspect_prints_hostile_names_literally(tmp_path: Path) -> None:
    model = _hostile_model(tmp_path / "m[b].onnx")
    r = CliRunner().invoke(cli, ["inspect", str(model)], env={"COLUMNS": "240"})
    assert r.exit_code == 0, r.output
    assert "\x1b" not in r.output and "\x07" not in r.output
    assert "[/]" in r.output and "[link=https://example.invalid]click[/link]" in r.output
    assert "\\x1b]0;pwned\\x07" in r.output


def test_helpers() -> None:
    assert markup_safe("[bold]x[/]") == "\\[bold]x\\[/]"
    assert plain_safe("a\x1b[2Jb\u202e") == "a\\x1b[2Jb\\u202e"
    assert plain_safe("a\nb", keep_newlines=True) == "a\nb"
    assert plain_safe("a\nb") == "a\\x0ab"


def test_one_line_errors_carry_no_escapes(tmp_path: Path) -> None:
    missing = tmp_path / "\x1b[31mnope.onnx"
    r = CliRunner().invoke(cli, ["inspect", str(missing)])
    assert r.exit_code == 2 and "\x1b" not in r.output
