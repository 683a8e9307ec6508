"""ONNX as deployment tools leave it: tiny random models exported, then transformed.

Why a corpus built at test time: shardc promises "any ONNX file", and the files users
bring have been through onnxruntime's transformer optimizer (contrib ops: Attention,
SkipLayerNormalization, BiasGelu, Gemm wrapped in Reshapes…), fp16 conversion, or a
quantizer (MatMulInteger, MatMulNBits, QDQ pairs). Each file is made here from a tiny
random-weight ``transformers`` config (hidden 64, nothing downloaded), so every case is
reproducible, and each is verified against onnxruntime on the transformed file itself.

``build(model, transform, folder)`` returns the path of one case; :func:`run_case`
compiles it with ``--pin`` and verifies it in-process; ``python tests/wild/corpus.py``
runs the whole matrix and prints the table.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models  # tests/models.py: the export settings shardc supports

ROOT = Path(__file__).resolve().parents[2]
MODELS = ("bert", "gpt2", "llama", "vit")
TRANSFORMS = ("optimized", "fp16", "int8", "nbits4", "qdq")
SHAPES = ("tp=2", "pp=2", "tp=2,pp=2")
OPTIMIZER_TYPE = {"bert": "bert", "gpt2": "bert", "llama": "bert", "vit": "vit"}
"""onnxruntime's optimizer ``model_type`` per model. It has no Llama type (``bert``'s
fusions are the generic ones: they find RMSNorm and the skip-adds), and its ``gpt2`` type
fails on a dynamo export (its postprocess reads a Gemm bias the export does not have:
IndexError in onnx_model_gpt2.py), so GPT-2 takes ``bert``'s fusions too."""
HEADS, HIDDEN = 4, 64
LAYERS = 3
"""Three layers, not two: a pre-LN model whose skip-adds are fused ends its last layer
with a different op (the final SkipLayerNormalization returns no running sum), so only
with three layers do two whole identical ones remain to fold into pipeline blocks."""
IMAGE = 32


def _bert():
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(
        num_hidden_layers=LAYERS,
        hidden_size=HIDDEN,
        num_attention_heads=HEADS,
        intermediate_size=4 * HIDDEN,
        vocab_size=256,
        max_position_embeddings=64,
        attn_implementation="eager",
    )
    return _Hidden(BertModel(cfg, add_pooling_layer=False))


def _vit():
    import torch
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    cfg = ViTConfig(
        num_hidden_layers=LAYERS,
        hidden_size=HIDDEN,
        num_attention_heads=HEADS,
        intermediate_size=4 * HIDDEN,
        image_size=IMAGE,
        patch_size=8,
        attn_implementation="eager",
    )
    return _Hidden(ViTModel(cfg, add_pooling_layer=False), key="pixel_values")


def _Hidden(model, key: str = "input_ids"):
    """Encoders return a ModelOutput: planning wants the last hidden state as a tensor."""
    import torch

    class Hidden(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(**{key: x}).last_hidden_state

    return Hidden(model).eval()


def _example(name: str):
    import torch

    if name == "vit":
        g = torch.Generator().manual_seed(1)
        return torch.randn(models.BATCH, 3, IMAGE, IMAGE, generator=g)
    return models.example_ids()


def export(name: str, path: Path) -> Path:
    """The plain dynamo export (opset 18) of model ``name``."""
    import torch

    module = {
        "bert": _bert,
        "gpt2": lambda: models.gpt2(layers=LAYERS, hidden=HIDDEN, heads=HEADS),
        "llama": lambda: models.llama(layers=LAYERS, hidden=HIDDEN, heads=HEADS),
        "vit": _vit,
    }[name]()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module, (_example(name),), dynamo=True, opset_version=18, verbose=False
        )
    program.save(str(path))
    return path


def _feeds(path: Path, n: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Random inputs in the file's shapes: token ids below 256, images from N(0, 1)."""
    import onnx

    rng = np.random.default_rng(seed)
    model = onnx.load(str(path), load_external_data=False)
    weights = {t.name for t in model.graph.initializer}
    out = []
    for _ in range(n):
        feed = {}
        for vi in model.graph.input:
            if vi.name in weights:
                continue
            t = vi.type.tensor_type
            shape = [d.dim_value or 1 for d in t.shape.dim]
            if t.elem_type == onnx.TensorProto.FLOAT:
                feed[vi.name] = rng.standard_normal(shape).astype(np.float32)
            else:
                feed[vi.name] = rng.integers(0, 256, shape).astype(np.int64)
        out.append(feed)
    return out


def transform(name: str, kind: str, src: Path, dst: Path) -> Path:
    """Apply deployment transformation ``kind`` to the export ``src`` of model ``name``."""
    import onnx

    if kind == "optimized":
        from onnxruntime.transformers.optimizer import optimize_model

        opt = optimize_model(
            str(src), model_type=OPTIMIZER_TYPE[name], num_heads=HEADS, hidden_size=HIDDEN
        )
        opt.save_model_to_file(str(dst))
    elif kind == "fp16":  # the optimizer's own fp16 path: convert, then sort the casts in
        from onnxruntime.transformers.onnx_model import OnnxModel

        half = OnnxModel(onnx.load(str(src)))
        half.convert_float_to_float16(keep_io_types=True)
        half.topological_sort()
        half.save_model_to_file(str(dst))
    elif kind == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    elif kind == "nbits4":
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        quant = MatMulNBitsQuantizer(onnx.load(str(src)), block_size=32, is_symmetric=True)
        quant.process()
        quant.model.save_model_to_file(str(dst), use_external_data_format=False)
    elif kind == "qdq":
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

        class Random(CalibrationDataReader):
            def __init__(self) -> None:
                self.feeds = iter(_feeds(src, 4, seed=7))

            def get_next(self):
                return next(self.feeds, None)

        quantize_static(str(src), str(dst), Random(), quant_format=QuantFormat.QDQ)
    else:
        raise ValueError(f"unknown transformation {kind!r}")
    return dst


TOLERANCE = {"fp16": 5e-3}
"""Relative tolerance per transformation where the default (1e-5, fp32) cannot hold: fp16
arithmetic summed in another order differs by a few fp16 ulps (2**-10 relative)."""


def spread(path: Path) -> float:
    """How far onnxruntime's own two ways of running ``path`` differ (optimisations on vs
    off), relative to the output's largest magnitude.

    Why: with its graph optimisations onnxruntime runs QDQ pairs as fused int8 kernels,
    without them in float; a device program's run (weights fed as inputs) is of the
    second kind. The two round at different points, so a quantized file cannot match
    onnxruntime closer than onnxruntime matches itself.
    """
    import onnxruntime as ort

    from shardc.emit.program import ORT_DISABLED_OPTIMIZERS

    feed = _feeds(path, 1, seed=3)[0]
    outs = []
    for level in (
        ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    ):
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        sess = ort.InferenceSession(
            str(path), options, ["CPUExecutionProvider"],
            disabled_optimizers=list(ORT_DISABLED_OPTIMIZERS),
        )  # fmt: skip
        outs.append(sess.run(None, feed)[0].astype(np.float64))
    return float(np.max(np.abs(outs[0] - outs[1])) / max(np.max(np.abs(outs[1])), 1e-30))


def tolerance(path: Path, kind: str) -> float:
    """The verify tolerance for a case: the transformation's own, and at least three
    times onnxruntime's own spread on the file (see :func:`spread`).
    """
    return max(TOLERANCE.get(kind, 1e-5), 3 * spread(path))


class Cache:
    """Exports and transformed files made once per folder (a session's tmp dir)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def export(self, name: str) -> Path:
        path = self.folder / f"{name}.onnx"
        return path if path.is_file() else export(name, path)

    def case(self, name: str, kind: str) -> Path:
        path = self.folder / f"{name}_{kind}.onnx"
        if not path.is_file():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                transform(name, kind, self.export(name), path)
        return path


@dataclass(frozen=True)
class Result:
    """One row of the table."""

    model: str
    kind: str
    shape: str
    compiled: bool
    verified: bool
    max_error: float
    replicated_pct: float
    detail: str = ""

    def row(self) -> str:
        ok = "yes" if self.compiled else "NO"
        ver = "yes" if self.verified else "NO"
        return (
            f"| {self.kind:9} | {self.model:5} | {self.shape:9} | {ok:8} | {ver:8} | "
            f"{self.max_error:9.2e} | {self.replicated_pct:6.1f} % | {self.detail[:60]} |"
        )


HEADER = (
    "| transform | model | shape     | compiled | verified | max error | replicated | notes |\n"
    "|-----------|-------|-----------|----------|----------|-----------|------------|-------|"
)


def run_case(path: Path, shape: str, out: Path) -> Result:
    """Compile ``path`` with ``--pin shape`` on localhost, verify it in-process against
    onnxruntime on the same file, and read replicated weight bytes from check-plan.
    """
    import shardc
    from shardc.emit.check import check_outdir
    from shardc.runtime.verify import verify

    model, kind = path.stem.split("_", 1)
    pins = dict(kv.split("=") for kv in shape.split(","))
    devices = int(pins.get("tp", 1)) * int(pins.get("pp", 1))
    full = f"tp={pins.get('tp', 1)},pp={pins.get('pp', 1)},dp=1"
    try:
        plan = shardc.compile(
            str(path), ROOT / "topologies/localhost.topo", devices=devices, pins=full,
            mode="inference", microbatches=1, quiet=True,
        )  # fmt: skip
        plan.save(out, force=True)
    except Exception as exc:  # every failure is a row of the table, not a crash
        return Result(model, kind, shape, False, False, float("nan"), 0.0, _first(exc))
    check = check_outdir(out)
    total = sum(check.emitted_bytes.values()) or 1
    replicated = 100.0 * sum(check.replicated_bytes.values()) / total
    note = "; ".join(check.problems[:1]) or "; ".join(plan.warnings)[:60]
    try:
        report = verify(out, rtol=tolerance(path, kind))
    except Exception as exc:
        return Result(model, kind, shape, True, False, float("nan"), replicated, _first(exc))
    err = max((o.max_rel for o in report.outputs), default=float("nan"))
    tol = report.outputs[0].rtol if report.outputs else float("nan")
    note = f"tol {tol:.0e}; {note}"
    return Result(model, kind, shape, True, report.ok and not check.problems, err, replicated, note)


def _first(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def main(argv: list[str]) -> int:
    """Run the matrix (or the models/transforms named in ``argv``), print the table."""
    import logging
    import tempfile

    logging.disable(logging.INFO)  # the quantizers log every node they visit
    pick_models = [a for a in argv if a in MODELS] or list(MODELS)
    pick_kinds = [a for a in argv if a in TRANSFORMS] or list(TRANSFORMS)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = Cache(Path(tmp))
        print(HEADER, flush=True)
        for kind in pick_kinds:
            for name in pick_models:
                try:
                    path = cache.case(name, kind)
                except Exception as exc:
                    rows.append(Result(name, kind, "-", False, False, float("nan"), 0, _first(exc)))
                    print(rows[-1].row(), flush=True)
                    continue
                for shape in SHAPES:
                    rows.append(run_case(path, shape, Path(tmp) / f"plan_{path.stem}_{shape}"))
                    print(rows[-1].row(), flush=True)
    return 0 if all(r.verified for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
