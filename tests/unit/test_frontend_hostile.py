"""Hostile ONNX input (issue 18): one-line ModelError naming the node or file, never exit 1.

Each case was, before the fix, an internal error (exit 1), a hang, a MemoryError, or a
wrong answer (a negative dim planned, an opset from the future accepted, a short
external-data file emitted as an invalid device file).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from shardc.cli.main import cli
from shardc.errors import ModelError, OptionError
from shardc.frontend import load_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


def _model(node: onnx.NodeProto, inputs: list[onnx.ValueInfoProto] | None = None,
           opset: int = 18, initializers: list[onnx.TensorProto] | None = None
           ) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 4])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["a", "b"])
    graph = helper.make_graph([node], "g", inputs or [x], [y], initializers or [])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _transpose(perm: list[int] | None = None, **kw) -> onnx.ModelProto:
    return _model(helper.make_node("Transpose", ["X"], ["Y"], name="tr", perm=perm or [1, 0]),
                  **kw)


def _inspect(path: Path) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["inspect", str(path)])
    return result.exit_code, result.output


def _refused(model: onnx.ModelProto, tmp_path: Path, *fragments: str) -> str:
    """Saved and inspected: exit 2, one line, naming the file and each fragment."""
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    code, out = _inspect(path)
    assert code == 2, out
    assert out.startswith(f"shardc: error: {path}: ") and out.count("\n") == 1, out
    for fragment in fragments:
        assert fragment in out, out
    return out


def test_attributes_out_of_range_name_the_node(tmp_path: Path) -> None:
    _refused(_transpose([5, 0]), tmp_path, "node 'tr' (Transpose)", "perm [5, 0]")
    _refused(_model(helper.make_node("Concat", ["X", "X"], ["Y"], name="cat", axis=7)),
             tmp_path, "node 'cat' (Concat)", "axis 7 is out of range for a rank-2 input")
    idx = helper.make_tensor_value_info("I", TensorProto.INT64, [3])
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 4])
    for axis in (5, -9):
        _refused(_model(helper.make_node("Gather", ["X", "I"], ["Y"], name="g", axis=axis),
                        [x, idx]), tmp_path, "node 'g' (Gather)", f"axis {axis} is out of")


def test_a_scalar_matmul_input_names_the_node() -> None:
    """Found by the fuzz run: it loaded, then the cost model failed with an IndexError."""
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [])
    w = numpy_helper.from_array(np.ones((8, 4), np.float32), "W")
    node = helper.make_node("MatMul", ["X", "W"], ["Y"], name="mm")
    with pytest.raises(ModelError, match="node 'mm' \\(MatMul\\): an input is a scalar"):
        load_model(_model(node, [x], initializers=[w]))


def test_names_that_are_not_utf8_are_refused(tmp_path: Path) -> None:
    data = _transpose().SerializeToString()
    assert data.count(b"\x1a\x02tr") == 1  # NodeProto.name, field 3
    path = tmp_path / "m.onnx"
    path.write_bytes(data.replace(b"\x1a\x02tr", b"\x1a\x02\xfft"))
    code, out = _inspect(path)
    assert code == 2 and "node #0: its name is not valid UTF-8" in out, out


def test_unknown_data_types_are_refused(tmp_path: Path) -> None:
    w = numpy_helper.from_array(np.ones(4, np.float32), "W")
    w.data_type = 77
    _refused(_transpose(initializers=[w]), tmp_path, "initializer 'W'", "data_type 77")
    model = _transpose()
    model.graph.input[0].type.tensor_type.elem_type = 99
    _refused(model, tmp_path, "'X'", "elem_type 99")


@pytest.mark.parametrize("dim", [-2, 2**62])
def test_negative_and_huge_dims_are_refused(tmp_path: Path, dim: int) -> None:
    model = _transpose()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = dim
    _refused(model, tmp_path, "graph input 'X' has dim 0", str(dim))


def test_zero_dims_stay_legal() -> None:
    model = _transpose()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 0
    assert load_model(model).graph.values["Y"].type.shape == (4, 0)


def test_dims_computed_negative_by_rules_are_refused() -> None:
    shape = numpy_helper.from_array(np.array([-3, 4], np.int64), "S")
    cos = helper.make_node("ConstantOfShape", ["S"], ["Y"], name="c")
    model = _model(cos, [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2])],
                   initializers=[shape])
    with pytest.raises(ModelError, match="dim 0 = -3"):
        load_model(model, check=False)


def test_huge_dim_options_are_refused() -> None:
    model = _transpose()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    with pytest.raises(OptionError, match="at most"):
        load_model(model, dims={"batch": 2**62})


def test_opsets_newer_than_onnx_are_refused(tmp_path: Path) -> None:
    _refused(_transpose(opset=99999), tmp_path, "opset 99999 of ai.onnx is newer")
    custom = _transpose()
    custom.opset_import.append(helper.make_opsetid("com.acme", 99999))
    load_model(custom)  # custom domains are not ours to judge


def _external(tmp_path: Path, offset: str, length: str, data: int = 64) -> Path:
    w = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[4, 4])
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "w.bin"), ("offset", offset), ("length", length)):
        w.external_data.add(key=key, value=value)
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 4])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, 4])
    g = helper.make_graph([helper.make_node("MatMul", ["X", "W"], ["Y"], name="mm")], "g",
                          [x], [y], [w])
    (tmp_path / "w.bin").write_bytes(b"\0" * data)
    path = tmp_path / "m.onnx"
    onnx.save_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


@pytest.mark.parametrize(
    ("offset", "length", "fragment"),
    [
        ("abc", "64", "offset 'abc' is not a non-negative integer"),
        ("-5", "64", "offset '-5'"),
        ("0", str(2**70), "length '1180591620717411303424'"),
        ("0", "1.5", "length '1.5'"),
        ("0", "32", "length 32 does not match"),
        ("32", "64", "has 64 bytes, shorter than offset + length = 96"),
    ],
)
def test_bad_external_data_fields_are_refused_at_load(
    tmp_path: Path, offset: str, length: str, fragment: str
) -> None:
    path = _external(tmp_path, offset, length)
    code, out = _inspect(path)
    assert code == 2 and "initializer 'W'" in out and fragment in out, out


def test_external_locations_that_are_not_text_are_refused(tmp_path: Path) -> None:
    """Found by the fuzz run: a location that is not UTF-8 was a TypeError in pathlib."""
    path = _external(tmp_path, "0", "64")
    data = path.read_bytes()
    assert data.count(b"w.bin") == 1
    path.write_bytes(data.replace(b"w.bin", b"w\xffbin"))
    code, out = _inspect(path)
    assert code == 2 and "an external_data entry is not valid UTF-8" in out, out
    path.write_bytes(data.replace(b"w.bin", b"w\x00bin"))
    code, out = _inspect(path)
    assert code == 2 and "location has a NUL character" in out, out


def test_short_external_data_is_refused_before_emitting(tmp_path: Path) -> None:
    """It used to plan, emit an invalid device file and exit 0."""
    path = _external(tmp_path, "32", "64")
    result = CliRunner().invoke(cli, ["compile", str(path), "--topology",
                                      "topologies/localhost.topo", "--set", "devices=2",
                                      "-o", str(tmp_path / "out"), "--emit"])
    assert result.exit_code == 2 and "shorter than offset + length" in result.output
    assert not (tmp_path / "out").exists()
    load_model(_external(tmp_path, "0", "64"))  # exact size is fine


def test_special_files_are_refused_without_reading(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.onnx"
    os.mkfifo(fifo)
    start = time.perf_counter()
    for path in (fifo, Path("/dev/zero")):
        code, out = _inspect(path)
        assert code == 2 and "not a regular file" in out, out
    assert time.perf_counter() - start < 10


def test_truncated_small_constants_are_model_errors() -> None:
    shape = numpy_helper.from_array(np.array([2, 4], np.int64), "S")
    shape.raw_data = shape.raw_data[:5]
    node = helper.make_node("Reshape", ["X", "S"], ["Y"], name="r")
    with pytest.raises(ModelError, match="does not match"):
        load_model(_model(node, initializers=[shape]), check=False)


def test_loading_is_linear_in_the_node_count() -> None:
    """4,000 then 16,000 nodes: the quadratic scope rebuild made this 16x, not 4x."""
    from bench_frontend import chain_model

    def seconds(n: int) -> float:
        model = chain_model(n)
        start = time.perf_counter()
        load_model(model)
        return time.perf_counter() - start

    seconds(1000)  # warm up imports and schemas
    small, large = seconds(4000), seconds(16000)
    assert large < 8 * small + 1.0, (small, large)
