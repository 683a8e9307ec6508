"""The synthesized graphs: valid ONNX, sized by shape inference, counted in closed form."""

from __future__ import annotations

import math
import time
from dataclasses import replace

import onnx
import pytest
from onnx import TensorProto, shape_inference

from shardc.errors import OptionError
from shardc.synth import (
    Saved,
    SynthConfig,
    active_parameter_count,
    build,
    forward_flops,
    graph_parameters,
    parameter_count,
    save,
    weight_bytes,
)
from shardc.synth.store import check

SMALL = {
    "gpt": SynthConfig(layers=2, hidden=64, heads=4, vocab=96, dtype="fp32"),
    "llama": SynthConfig(layers=2, hidden=64, heads=4, kv_heads=2, ffn=80, vocab=96,
                         dtype="fp32"),
    "moe": SynthConfig(layers=2, hidden=64, heads=4, kv_heads=1, ffn=48, experts=6, top_k=2,
                       shared_experts=2, capacity_factor=1.25, vocab=96, dtype="fp32"),
}


def _dims(vi: onnx.ValueInfoProto) -> list[int | str | None]:
    return [d.dim_value or d.dim_param or None for d in vi.type.tensor_type.shape.dim]


def _inferred(model: onnx.ModelProto,
              data_prop: bool = False) -> dict[str, list[int | str | None]]:
    inferred = shape_inference.infer_shapes(model, strict_mode=True, data_prop=data_prop)
    g = inferred.graph
    shapes = {vi.name: _dims(vi) for vi in [*g.value_info, *g.input, *g.output]}
    shapes.update({t.name: list(t.dims) for t in g.initializer})
    return shapes


def _matmul_flops(model: onnx.ModelProto, data_prop: bool = False) -> int:
    """2*M*N*K summed over MatMuls, from the shapes ONNX shape inference gives."""
    shapes = _inferred(model, data_prop)
    total = 0
    for node in model.graph.node:
        if node.op_type == "MatMul":
            out, k = shapes[node.output[0]], shapes[node.input[0]][-1]
            assert all(isinstance(d, int) for d in [*out, k]), (node.name, out, k)
            total += 2 * math.prod(out) * k
    return total


@pytest.mark.parametrize("arch", sorted(SMALL))
@pytest.mark.parametrize("dims", [None, (2, 16)], ids=["symbolic", "concrete"])
@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp8"])
def test_graph_is_valid_and_sized(arch: str, dims: tuple[int, int] | None, dtype: str) -> None:
    batch, seq = dims or (None, None)
    cfg = replace(SMALL[arch], batch=batch, seq=seq, dtype=dtype)
    model = build(arch, cfg)
    check(model)  # onnx.checker full_check, strict shape inference, external refs
    shapes = _inferred(model)
    assert shapes["logits"] == [batch or "batch", seq or "seq", 96]
    unsized = sorted(n for n, s in shapes.items()
                     if any(d is None or str(d).startswith("unk") for d in s))
    if dims is None and arch == "moe":  # only the capacity dim of the expert buffers
        assert unsized and all(".moe." in n or n.startswith("moe_capacity.") for n in unsized)
    else:
        assert unsized == []
    assert graph_parameters(model) == (parameter_count(arch, cfg), weight_bytes(arch, cfg))
    assert model.opset_import[0].version == (21 if dtype == "fp8" else 18)


@pytest.mark.parametrize("arch", sorted(SMALL))
@pytest.mark.parametrize("tied", [False, True])
def test_counts_match_closed_form(arch: str, tied: bool) -> None:
    cfg = replace(SMALL[arch], batch=3, seq=10, tie_embeddings=tied)
    model = build(arch, cfg)
    assert _matmul_flops(model) == forward_flops(arch, cfg)
    assert graph_parameters(model) == (parameter_count(arch, cfg), weight_bytes(arch, cfg))


@pytest.mark.parametrize("arch", sorted(SMALL))
def test_binding_symbolic_dims_sizes_everything(arch: str) -> None:
    """The frontend's flow: bind batch/seq on the inputs, infer with data propagation."""
    model = build(arch, SMALL[arch])
    for vi in [*model.graph.input, *model.graph.output]:
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param:
                d.dim_value = {"batch": 3, "seq": 10}[d.dim_param]
    shapes = _inferred(model, data_prop=True)
    assert [n for n, s in shapes.items() if not all(isinstance(d, int) for d in s)] == []
    cfg = replace(SMALL[arch], batch=3, seq=10)
    assert _matmul_flops(model, data_prop=True) == forward_flops(arch, cfg)


def test_gpt_parameters_are_megatrons_formula() -> None:
    layers, h, vocab, s = 4, 96, 500, 2048
    cfg = SynthConfig(layers=layers, hidden=h, heads=6, vocab=vocab)
    megatron = 12 * layers * h * h * (1 + 13 / (12 * h) + (vocab + s) / (12 * layers * h))
    assert parameter_count("gpt", cfg) == round(megatron) + 2 * h  # + final LN


def test_moe_flops_scale_with_top_k_not_experts() -> None:
    base = dict(layers=1, hidden=64, heads=4, ffn=32, vocab=50, batch=4, seq=64,
                capacity_factor=1.0)
    few = forward_flops("moe", SynthConfig(**base, experts=4, top_k=2))
    many = forward_flops("moe", SynthConfig(**base, experts=64, top_k=2))
    expert_mlp = 6 * 64 * 32  # per routed token
    # 60 more experts add only router FLOPs (2*h per expert per token), not expert MLPs
    assert many - few == 2 * 64 * 60 * 4 * 64
    assert few >= 4 * 64 * 2 * expert_mlp
    assert active_parameter_count("moe", SynthConfig(**base, experts=64, top_k=2)) < \
        parameter_count("moe", SynthConfig(**base, experts=64, top_k=2))


def test_one_trillion_gpt_is_small_and_fast(tmp_path) -> None:
    cfg = SynthConfig(layers=128, hidden=25600, heads=160, vocab=51200, seq=2048)
    start = time.perf_counter()
    saved = save(build("gpt", cfg), tmp_path / "gpt1t.onnx")
    elapsed = time.perf_counter() - start
    assert elapsed < 3.0
    assert saved.model_bytes < 4 << 20
    assert not saved.weights_path.exists() and not saved.weights_written
    model = onnx.load(str(saved.model_path), load_external_data=False)
    params, size = graph_parameters(model)
    assert params == parameter_count("gpt", cfg) == 1_008_038_758_400  # Megatron's "1T"
    assert size == saved.weight_bytes == 2 * params  # bf16
    last = model.graph.initializer[-1]
    ref = {e.key: e.value for e in last.external_data}
    assert last.data_location == TensorProto.EXTERNAL
    assert ref["location"] == "gpt1t.weights.bin"
    assert int(ref["offset"]) + int(ref["length"]) == size


def test_same_arguments_same_bytes(tmp_path) -> None:
    def write(folder: str, **kw: object) -> Saved:
        (tmp_path / folder).mkdir()
        return save(build("moe", SMALL["moe"], **kw), tmp_path / folder / "m.onnx")

    a, b, w, w2, w3 = (write("a"), write("b"), write("w", with_weights=True),
                       write("w2", with_weights=True), write("w3", with_weights=True, seed=1))
    assert a.model_path.read_bytes() == b.model_path.read_bytes()
    # declared-only and materialised models describe the same file: same graph bytes
    assert a.model_path.read_bytes() == w.model_path.read_bytes()
    assert w.weights_path.read_bytes() == w2.weights_path.read_bytes()
    assert w.weights_path.read_bytes() != w3.weights_path.read_bytes()
    assert w.weights_path.stat().st_size == w.weight_bytes


def test_save_leaves_model_alone_and_replaces_stale_weights(tmp_path) -> None:
    model = build("llama", SMALL["llama"], with_weights=True)
    before = model.SerializeToString()
    saved = save(model, tmp_path / "m.onnx")
    assert model.SerializeToString() == before and saved.weights_path.exists()
    save(build("llama", SMALL["llama"]), tmp_path / "m.onnx")
    assert not saved.weights_path.exists()


@pytest.mark.parametrize(("arch", "changes", "message"), [
    ("gpt", {"hidden": 65}, "not divisible by --heads"),
    ("llama", {"kv_heads": 3}, "not divisible by --kv-heads"),
    ("gpt", {"kv_heads": 2}, "multi-head attention"),
    ("moe", {"experts": 2, "top_k": 3}, "larger than --experts"),
    ("llama", {"layers": 0}, "--layers must be a positive integer"),
    ("llama", {"vocab": -5}, "--vocab must be a positive integer"),
    ("moe", {"shared_experts": -1}, "--shared-experts must be >= 0"),
    ("moe", {"capacity_factor": 0.0}, "--capacity-factor"),
    ("gpt", {"experts": 4}, "applies to moe only"),
    ("llama", {"hidden": 60, "heads": 4}, "odd"),
    ("gpt", {"seq": 4096, "max_positions": 1024}, "exceeds --max-positions"),
    ("llama", {"dtype": "int4"}, "unknown dtype"),
    ("rnn", {}, "unknown architecture"),
])
def test_bad_options_raise_option_error(arch: str, changes: dict, message: str) -> None:
    cfg = replace(SMALL.get(arch, SMALL["llama"]), **changes)
    with pytest.raises(OptionError, match=message):
        build(arch, cfg)


def test_with_weights_refuses_large_models() -> None:
    cfg = SynthConfig(layers=32, hidden=4096, heads=32)
    with pytest.raises(OptionError, match="--with-weights would materialise"):
        build("llama", cfg, with_weights=True)


def test_missing_output_directory(tmp_path) -> None:
    with pytest.raises(OptionError, match="does not exist"):
        save(build("gpt", SMALL["gpt"]), tmp_path / "nope" / "m.onnx")
