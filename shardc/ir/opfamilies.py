"""The op-family table: every op shardc knows, in the one family it belongs to.

Shape rules (:mod:`shardc.frontend.shape_rules`), FLOP rules (:mod:`shardc.cost.ops`) and
sharding rules (:mod:`shardc.strategy`) each file rules for ops, and each used to keep its
own lists: they disagreed (an op with a sharding rule and no FLOP rule was priced as free
arithmetic; ``FastGelu`` was filed without its ``com.microsoft`` domain). They now register
the families named here, so an op added to a family is seen by all three, and
``tests/unit/test_opfamilies.py`` checks that every member has a shape rule (ONNX's own
inference for the standard domain, a shardc rule for contrib ops), a FLOP rule, and a
sharding rule unless :data:`REPLICATED` says why not.

Ops are qualified as the IR qualifies them: ``Op`` in the ONNX domain, ``domain::Op``
elsewhere. Families are disjoint; a rule that treats several families alike (the
followers, the ops that cost no FLOPs) registers their union.
"""

from __future__ import annotations

from collections.abc import Mapping

MS = "com.microsoft::"
"""onnxruntime's contrib-op domain, as qualified op names spell it."""

# fmt: off
ARITHMETIC: tuple[str, ...] = (
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Mod", "Sum", "Mean", "PRelu", "Where",
    "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor",
)
"""Broadcasting arithmetic of two or more inputs."""
COMPARISONS: tuple[str, ...] = (
    "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor",
)
"""Broadcasting comparisons and logic: a bool output."""
UNARY: tuple[str, ...] = (
    "Abs", "Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "BitwiseNot", "Ceil", "Celu",
    "Clip", "Cos", "Cosh", "Elu", "Erf", "Exp", "Floor", "Gelu", "HardSigmoid", "HardSwish",
    "IsInf", "IsNaN", "LeakyRelu", "Log", "Mish", "Neg", "Not", "Reciprocal", "Relu", "Round",
    "Selu", "Shrink", "Sigmoid", "Sign", "Sin", "Sinh", "Softplus", "Softsign", "Sqrt",
    "Swish", "Tan", "Tanh", "ThresholdedRelu", "Dropout", "Identity",
)
"""One input, one output of its shape: activations and math functions."""
CONTRIB_ACTIVATIONS: tuple[str, ...] = tuple(
    MS + op for op in ("BiasAdd", "BiasGelu", "FastGelu", "Gelu", "QuickGelu")
)
"""onnxruntime's fused activations (x + bias, then the activation; BiasAdd adds a skip)."""
CASTS: tuple[str, ...] = ("Cast", "CastLike")
QUANTIZE: tuple[str, ...] = (
    "QuantizeLinear", "DequantizeLinear", f"{MS}QuantizeLinear", f"{MS}DequantizeLinear",
    "DynamicQuantizeLinear",
)
"""Scale and zero point between float and int8/fp8 (DynamicQuantizeLinear finds them)."""
LAYER_NORMS: tuple[str, ...] = (
    "LayerNormalization", "RMSNormalization", f"{MS}SimplifiedLayerNormalization",
    "SimplifiedLayerNormalization",
)
"""Normalise over the trailing dims from ``axis`` (onnxruntime's optimizer writes
SimplifiedLayerNormalization, RMSNorm, in the ONNX domain as well as its own)."""
CHANNEL_NORMS: tuple[str, ...] = (
    "BatchNormalization", "InstanceNormalization", "GroupNormalization",
)
"""Normalise per channel (dim 1)."""
CONTRIB_NORMS: tuple[str, ...] = tuple(
    MS + op for op in (
        "SkipLayerNormalization", "SkipSimplifiedLayerNormalization", "EmbedLayerNormalization",
    )
)
"""onnxruntime's fused residual-add (or embedding-sum) then LayerNorm / RMSNorm."""
ALONG_AXIS: tuple[str, ...] = (
    "Softmax", "LogSoftmax", "Hardmax", "LpNormalization", "TopK", "ArgMax", "ArgMin",
)
"""Mix one ``axis`` and leave the others alone."""
SCANS: tuple[str, ...] = ("CumSum", "CumProd")
"""Prefix sums and products along ``axis``."""
REDUCTIONS: tuple[str, ...] = (
    "ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
    "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp",
)
"""Ops reducing over ``axes`` (an attribute before opset 18, an input from 18 on), with
``keepdims`` and ``noop_with_empty_axes``: one shape and sharding semantics for all."""
POOLS: tuple[str, ...] = (
    "AveragePool", "MaxPool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool",
    "LRN",
)
"""Windows (or the whole map) over the spatial dims of ``[N, C, *spatial]``."""
VIEWS: tuple[str, ...] = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")
"""The same elements under another shape."""
SHAPE_OPS: tuple[str, ...] = (
    "Shape", "Size", "Constant", "ConstantOfShape", "Range", "EyeLike", "NonZero",
)
"""Values made from shapes, attributes or indices, not from the data's layout."""
OPTIONALS: tuple[str, ...] = ("Optional", "OptionalGetElement")
LAYOUT: tuple[str, ...] = ("Transpose", "Expand", "Slice", "Pad", "Tile", "Concat", "Split")
"""Move, repeat, cut or join elements without arithmetic."""
GATHERS: tuple[str, ...] = (
    "Gather", "GatherElements", "GatherND", "ScatterElements", "ScatterND", "OneHot",
    "Compress", "Unique", "ReverseSequence", "Trilu",
)
"""Elements picked, placed or masked by index."""
SPATIAL: tuple[str, ...] = (
    "DepthToSpace", "SpaceToDepth", "Resize", "Upsample", "Col2Im", "GridSample",
)
"""Images rearranged or resampled."""
PRODUCTS: tuple[str, ...] = (
    "MatMul", "MatMulInteger", "QLinearMatMul", "Gemm", f"{MS}FusedMatMul", f"{MS}MatMulNBits",
    "Det",
)
"""Matrix products (quantized and fused ones included) and determinants."""
CONVS: tuple[str, ...] = ("Conv", "ConvInteger", "QLinearConv", "ConvTranspose")
ATTENTION: tuple[str, ...] = (
    "Attention", f"{MS}Attention", f"{MS}MultiHeadAttention", f"{MS}GroupQueryAttention",
    f"{MS}RotaryEmbedding",
)
"""Fused attention, and the rotary embedding applied to its queries and keys."""
# fmt: on

FAMILIES: Mapping[str, tuple[str, ...]] = {
    "arithmetic": ARITHMETIC,
    "comparison": COMPARISONS,
    "unary": UNARY,
    "contrib_activation": CONTRIB_ACTIVATIONS,
    "cast": CASTS,
    "quantize": QUANTIZE,
    "layer_norm": LAYER_NORMS,
    "channel_norm": CHANNEL_NORMS,
    "contrib_norm": CONTRIB_NORMS,
    "along_axis": ALONG_AXIS,
    "scan": SCANS,
    "reduction": REDUCTIONS,
    "pool": POOLS,
    "view": VIEWS,
    "shape": SHAPE_OPS,
    "optional": OPTIONALS,
    "layout": LAYOUT,
    "gather": GATHERS,
    "spatial": SPATIAL,
    "product": PRODUCTS,
    "conv": CONVS,
    "attention": ATTENTION,
}
"""Every family by name, in the order above."""

FAMILY_OF: Mapping[str, str] = {op: name for name, ops in FAMILIES.items() for op in ops}
"""The family of each known op (qualified)."""

REPLICATED: Mapping[str, str] = {
    **dict.fromkeys(OPTIONALS, "optional plumbing around a value: nothing to split"),
    **dict.fromkeys(
        ("GatherND", "ScatterElements", "OneHot", "Compress", "Unique", "ReverseSequence"),
        "no sharding rule yet: index-driven, replicated with a warning",
    ),
    **dict.fromkeys(
        ("Resize", "Upsample", "Col2Im"), "no sharding rule yet: replicated with a warning"
    ),
    "QLinearConv": "no sharding rule yet (Conv and ConvInteger have one)",
    f"{MS}FusedMatMul": "no sharding rule yet (MatMul has one)",
}
"""Known ops with shape and FLOP rules but no sharding rule, and why: they replicate,
and the strategies pass names them in a warning."""


def _check() -> None:
    seen: dict[str, str] = {}
    for name, ops in FAMILIES.items():
        for op in ops:
            if op in seen:
                raise AssertionError(f"{op} is in families {seen[op]} and {name}")
            seen[op] = name


_check()
