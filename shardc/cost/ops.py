"""FLOPs and memory traffic of one node: the op-level half of the cost model.

Conventions (what a FLOP is here, so figures compare with papers):

* a multiply-add is 2 FLOPs: MatMul ``[.., M, K] x [.., K, N]`` costs ``2·batch·M·N·K``;
  Gemm adds ``M·N`` for the bias; Conv costs ``2·N·Cout·prod(out_spatial)·Cin/group·prod(kernel)``;
* basic elementwise ops cost 1 FLOP per output element; transcendental ones cost the
  few FLOPs listed in :data:`ELEMENTWISE_FLOPS` (a polynomial approximation's worth);
* fused normalisations and Softmax cost what their unfused patterns cost per element
  (LayerNorm 7: mean, subtract, square, mean, scale, γ, β; RMSNorm 4: square, mean,
  scale, γ; Softmax 5: max, subtract, exp, sum, divide), so an exported pattern and a
  fused op agree (tested);
* data movement (Transpose, Concat, Gather…) costs no FLOPs but reads and writes bytes;
  pure views (Reshape, Squeeze, Identity…) move nothing;
* ``bytes_read`` counts what the kernel touches: a Gather on an embedding table reads
  the selected rows, not the table, while ``param_bytes`` still counts the whole table.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from shardc.errors import ModelError
from shardc.ir import Dim, DType, Graph, Node, TensorType
from shardc.ir.opfamilies import REDUCTIONS
from shardc.registry import registrar


@dataclass(frozen=True, slots=True)
class NodeCost:
    """What one node costs, independent of the device it will run on."""

    flops: int
    bytes_read: int
    bytes_written: int
    param_bytes: int
    dtype: DType
    kind: str
    """``matmul``, ``conv``, ``attention``, ``norm``, ``elementwise``, ``reduce``,
    ``movement``, ``view``, ``control`` (opaque bodies), ``custom`` or ``bytes-only``."""
    exact: bool = True
    """False when only bytes are known (unknown op): its FLOPs are a lower bound (0)."""
    input_bytes: tuple[int, ...] = ()
    """Bytes read from each input position (0 for omitted ones), so a shard can scale
    each operand by what it actually reads: a column-split MatMul reads all of X but an
    eighth of W."""
    output_bytes: tuple[int, ...] = ()
    estimated: bool = False
    """True when a data-dependent size (NonZero's count, a shape computed at run time) was
    unknown and counted as 1: FLOPs and bytes are then lower bounds."""

    @property
    def bytes_total(self) -> int:
        """Memory traffic: the roofline's denominator."""
        return self.bytes_read + self.bytes_written

    @property
    def intensity(self) -> float:
        """FLOPs per byte moved (arithmetic intensity)."""
        return self.flops / self.bytes_total if self.bytes_total else math.inf


ELEMENTWISE_FLOPS: dict[str, int] = {
    **dict.fromkeys(
        [
            "Add",
            "Sub",
            "Mul",
            "Div",
            "Neg",
            "Abs",
            "Max",
            "Min",
            "Sum",
            "Mean",
            "Relu",
            "LeakyRelu",
            "PRelu",
            "Clip",
            "Where",
            "Equal",
            "Less",
            "Greater",
            "LessOrEqual",
            "GreaterOrEqual",
            "And",
            "Or",
            "Xor",
            "Not",
            "Sign",
            "Floor",
            "Ceil",
            "Round",
            "Mod",
            "Reciprocal",
            "BitShift",
            "IsNaN",
            "IsInf",
            "Trilu",
            "CumSum",
        ],
        1,
    ),
    **dict.fromkeys(
        [
            "Pow",
            "Sqrt",
            "Exp",
            "Log",
            "Sin",
            "Cos",
            "Elu",
            "Selu",
            "HardSigmoid",
            "HardSwish",
            "Softsign",
            "ThresholdedRelu",
        ],
        1,
    ),
    **dict.fromkeys(["Sigmoid", "Tanh", "Erf", "Softplus"], 4),
    "Gelu": 8,
    "FastGelu": 8,
    "BiasGelu": 9,
    "QuickGelu": 5,
    "Mish": 8,
    "Softmax": 5,
    "LogSoftmax": 5,
    "LayerNormalization": 7,
    "SkipLayerNormalization": 8,
    "RMSNormalization": 4,
    "SimplifiedLayerNormalization": 4,
    "SkipSimplifiedLayerNormalization": 5,
    "EmbedLayerNormalization": 9,  # word + position (+ segment) sums, then LayerNorm's 7
    "BiasAdd": 2,  # x + bias + skip
    "RotaryEmbedding": 3,  # x·cos + rotate(x)·sin
    "DequantizeLinear": 2,  # (q - zero point) · scale
    "QuantizeLinear": 3,  # x / scale, round, + zero point (saturation is free)
    "DynamicQuantizeLinear": 5,  # min and max over the tensor, then QuantizeLinear's 3
    "BatchNormalization": 4,
    "InstanceNormalization": 8,
    "GroupNormalization": 8,
    "Dropout": 1,
}
"""FLOPs per output element of elementwise-like ops."""

_NORMS = {
    "LayerNormalization",
    "SkipLayerNormalization",
    "RMSNormalization",
    "SimplifiedLayerNormalization",
    "SkipSimplifiedLayerNormalization",
    "EmbedLayerNormalization",
    "BatchNormalization",
    "InstanceNormalization",
    "GroupNormalization",
}
VIEW_OPS = frozenset(
    {
        "Reshape",
        "Squeeze",
        "Unsqueeze",
        "Flatten",
        "Identity",
        "Shape",
        "Size",
        "Constant",
        "ConstantOfShape",
        "Range",
        "EyeLike",
        "Optional",
        "OptionalGetElement",
    }
)
MOVEMENT_OPS = frozenset(
    {
        "Transpose",
        "Concat",
        "Split",
        "Slice",
        "Gather",
        "GatherElements",
        "GatherND",
        "ScatterElements",
        "ScatterND",
        "Expand",
        "Tile",
        "Pad",
        "Cast",
        "CastLike",
        "DepthToSpace",
        "SpaceToDepth",
        "Resize",
        "ReverseSequence",
        "Compress",
        "OneHot",
        "NonZero",
        "TopK",
        "ArgMax",
        "ArgMin",
        "Unique",
        "Col2Im",
        "Upsample",
    }
)
REDUCE_OPS = frozenset(
    {
        *REDUCTIONS,
        "GlobalAveragePool",
        "GlobalMaxPool",
        "AveragePool",
        "MaxPool",
        "LpPool",
    }
)


def bindable_dims(graph: Graph) -> frozenset[str]:
    """Symbolic dims of the graph's inputs: the ones the user can bind with ``--dim``."""
    return frozenset(
        d
        for name in graph.inputs
        if (v := graph.values.get(name)) is not None and v.type is not None
        for d in v.type.shape or ()
        if isinstance(d, str)
    )


class Need:
    """Fetches static types of a node's values, raising a user error naming the node.

    A size the user cannot give is estimated, not refused: a dim ONNX left anonymous or
    named ``unk__N`` because it depends on data (NonZero's count, an Expand to a shape
    computed at run time) counts as 1, a value of unknown rank (an If whose branches
    differ) as a scalar, and the cost is marked :attr:`estimated`. A symbolic dim of a
    graph input must still be bound (``--dim``), and a value with no type is an error.
    """

    def __init__(
        self, node: Node, graph: Graph, where: str, bindable: frozenset[str] | None = None
    ):
        self.node, self.graph, self.where = node, graph, where
        self.bindable = bindable_dims(graph) if bindable is None else bindable
        self.estimated = False

    def type(self, name: str) -> TensorType:
        """Static type of ``name`` (estimated, see above) or a ModelError saying why not."""
        v = self.graph.values.get(name)
        t = v.type if v else None
        if t is not None and t.is_static:
            return t
        shape = t.shape if t is not None else None
        if t is not None and shape is None:
            self.estimated = True
            return TensorType(t.dtype, ())
        if t is not None and shape is not None and not self._user_dims(shape):
            self.estimated = True
            return TensorType(t.dtype, tuple(d if isinstance(d, int) else 1 for d in shape))
        missing = ", ".join(t.unknown_dims()) if t else "type"
        user = self._user_dims(shape or ())
        hint = (
            f"bind it with --dim {user[0]}=N"
            if user
            else "the shape could not be inferred; check the exporter's output"
        )
        raise ModelError(
            f"cannot cost {self.node.qualified_op}: value {name!r} has unknown {missing}",
            where=f"{self.where}: node {self.node.name!r}",
            hint=hint,
        )

    def _user_dims(self, shape: tuple[Dim, ...]) -> list[str]:
        """The dims of ``shape`` the user can bind with ``--dim``."""
        return [d for d in shape if isinstance(d, str) and d in self.bindable]

    def shape(self, name: str) -> tuple[int, ...]:
        """Static shape of ``name``."""
        return self.type(name).shape  # type: ignore[return-value]

    def nbytes(self, names: tuple[str, ...]) -> int:
        """Total bytes of the present, tensor-typed values among ``names``."""
        total = 0
        for n in names:
            v = self.graph.values.get(n) if n else None
            if v is None or v.type is None:
                continue
            total += self.type(n).nbytes or 0
        return total

    def param_bytes(self) -> int:
        """Bytes of the weights this node reads."""
        seen = dict.fromkeys(
            i
            for i in self.node.present_inputs
            if self.graph.values.get(i) and self.graph.values[i].is_weight
        )
        return self.nbytes(tuple(seen))

    def out_elems(self, index: int = 0) -> int:
        """Element count of output ``index``."""
        return math.prod(self.shape(self.node.outputs[index]))


FlopRule = Callable[[Node, Need], tuple[int, str]]
_FLOP_RULES: dict[str, FlopRule] = {}
flop_rule = registrar(_FLOP_RULES)
"""Register a FLOP rule returning ``(flops, kind)`` for ops (``op`` or ``dom::op``)."""


@flop_rule("MatMul", "MatMulInteger", "QLinearMatMul", "com.microsoft::FusedMatMul")
def _matmul(node: Node, need: Need) -> tuple[int, str]:
    """``2·K`` FLOPs per output element, K the contracted dim of the left operand."""
    a_name = node.inputs[0]
    k = need.shape(a_name)[-1]
    return 2 * need.out_elems() * k, "matmul"


@flop_rule("Gemm")
def _gemm(node: Node, need: Need) -> tuple[int, str]:
    a = need.shape(node.inputs[0])
    k = a[0] if node.attr("transA", 0) else a[1]
    out = need.out_elems()
    bias = out if len(node.inputs) > 2 and node.inputs[2] else 0
    return 2 * out * k + bias, "matmul"


@flop_rule("Conv", "ConvInteger", "QLinearConv", "ConvTranspose")
def _conv(node: Node, need: Need) -> tuple[int, str]:
    w_name = node.inputs[3] if node.op_type == "QLinearConv" else node.inputs[1]
    w = need.shape(w_name)
    kernel = math.prod(w[2:])  # groups are already folded into the weight's channel dim
    if node.op_type == "ConvTranspose":  # weight [Cin, Cout/group, k...]: scatter form
        x = need.shape(node.inputs[0])
        macs = math.prod(x) * w[1] * kernel
    else:  # weight [Cout, Cin/group, k...]
        macs = need.out_elems() * w[1] * kernel
    bias = (
        need.out_elems()
        if len(node.inputs) > 2 and node.inputs[2] and node.op_type in ("Conv", "ConvTranspose")
        else 0
    )
    return 2 * macs + bias, "conv"


@flop_rule(
    "Attention",
    "com.microsoft::MultiHeadAttention",
    "com.microsoft::GroupQueryAttention",
)
def _attention(node: Node, need: Need) -> tuple[int, str]:
    """Fused attention: QK^T and PV matmuls plus the softmax, from the output's size.

    Q is ``[B, (H,) S_q, D]`` (or packed ``[B, S_q, H·D]``), K/V ``[B, (H_kv,) S_kv, D]``;
    with the output holding B·S_q·H·D_v elements, the two matmuls cost
    ``2·out·S_kv·(1 + D_qk/D_v)`` and the softmax ``5·B·H·S_q·S_kv``.
    """
    q, k = need.shape(node.inputs[0]), need.shape(node.inputs[1])
    out = need.out_elems()
    s_kv = k[-2] if len(k) == 4 else k[1]
    heads = int(node.attr("num_heads", node.attr("q_num_heads", 0)) or (q[1] if len(q) == 4 else 1))  # type: ignore[arg-type]
    d_qk = q[-1] if len(q) == 4 else q[-1] // max(heads, 1)
    o = need.shape(node.outputs[0])
    d_v = o[-1] if len(o) == 4 else o[-1] // max(heads, 1)
    scores = out // max(d_v, 1) * s_kv
    return 2 * scores * d_qk + 2 * scores * d_v + 5 * scores, "attention"


@flop_rule("com.microsoft::MatMulNBits")
def _matmul_nbits(node: Node, need: Need) -> tuple[int, str]:
    """A weight-only quantized product: ``2·K`` per output element, plus dequantizing the
    weight once (a multiply per element, and a subtract with zero points): ``N·K·(1|2)``.
    K and N are the op's attributes (B is packed, its shape is not the matrix's).
    """
    k, n = int(node.attr("K", 0) or 0), int(node.attr("N", 0) or 0)  # type: ignore[arg-type]
    zero_points = len(node.inputs) > 3 and bool(node.inputs[3])
    return 2 * need.out_elems() * k + n * k * (2 if zero_points else 1), "matmul"


@flop_rule("com.microsoft::Attention")
def _ms_attention(node: Node, need: Need) -> tuple[int, str]:
    """BERT's fused attention: the QKV projection ``2·B·S·H_in·3H`` (+ bias) and the
    attention core, with ``num_heads`` heads over the output's hidden size.
    """
    x, w = need.shape(node.inputs[0]), need.shape(node.inputs[1])
    o = need.shape(node.outputs[0])
    tokens = math.prod(x[:-1])
    proj = 2 * tokens * x[-1] * w[-1] + (tokens * w[-1] if len(node.inputs) > 2 else 0)
    heads = max(int(node.attr("num_heads", 1) or 1), 1)  # type: ignore[arg-type]
    d = o[-1] // heads
    s = x[1] if len(x) == 3 else 1
    scores = math.prod(o[:-1]) * heads * s  # B·S·N·T, keys = the sequence (no past)
    return proj + 4 * scores * d + 5 * scores, "attention"


def _elementwise(node: Node, need: Need) -> tuple[int, str]:
    per = ELEMENTWISE_FLOPS[node.op_type]
    kind = "norm" if node.op_type in _NORMS else "elementwise"
    return per * need.out_elems(), kind


def _reduce(node: Node, need: Need) -> tuple[int, str]:
    return math.prod(need.shape(node.inputs[0])), "reduce"


_QUANTIZED = frozenset({"QLinearMatMul", "MatMulInteger", "ConvInteger", "QLinearConv"})


def _compute_dtype(node: Node, graph: Graph) -> DType:
    """The type the arithmetic runs in: the widest float input, else the first input's.

    Quantized kernels run in their data's type (int8, fp8), not their fp32 scales'.
    MatMulNBits quantizes only its weight: the product runs in the activations' type,
    or in int8 when ``accuracy_level`` is 4 (onnxruntime then quantizes A to int8 too).
    """
    if node.qualified_op == "com.microsoft::MatMulNBits" and node.attr("accuracy_level", 0) == 4:
        return DType.INT8
    if node.op_type in _QUANTIZED and node.inputs and graph.values.get(node.inputs[0]):
        t = graph.values[node.inputs[0]].type
        if t is not None:
            return t.dtype
    types = [graph.values[i].type for i in node.present_inputs if graph.values.get(i)]
    floats = [t.dtype for t in types if t is not None and t.dtype.is_float]
    if floats:
        return max(floats, key=lambda d: d.bits)
    outs = [graph.values[o].type for o in node.outputs if o and graph.values.get(o)]
    for t in (*types, *outs):
        if t is not None:
            return t.dtype
    return DType.FLOAT


def node_cost(
    node: Node,
    graph: Graph,
    *,
    where: str,
    custom_flops: Mapping[str, float] | None = None,
    body_cost: Callable[[Node], int] | None = None,
    bindable: frozenset[str] | None = None,
) -> NodeCost:
    """Cost of ``node``; unknown ops get a bytes-only cost with ``exact=False``.

    ``custom_flops`` maps ``domain::op`` to FLOPs per output element for ops shardc has
    no rule for; ``body_cost`` sums the FLOPs of an opaque node's subgraphs;
    ``bindable`` are the dims the user can bind (default: the graph inputs' symbolic dims).
    """
    need = Need(node, graph, where, bindable)
    key = node.qualified_op
    exact = True
    if node.subgraphs and body_cost is not None:
        flops, kind = body_cost(node), "control"
    elif key in _FLOP_RULES:
        try:
            flops, kind = _FLOP_RULES[key](node, need)
        except (IndexError, ValueError):
            if not need.estimated:
                raise
            flops, kind = 0, "bytes-only"  # the rule needs a dim a run-time shape hides
    elif (node.domain == "" and node.op_type in ELEMENTWISE_FLOPS) or (
        key.startswith("com.microsoft::") and node.op_type in ELEMENTWISE_FLOPS
    ):
        flops, kind = _elementwise(node, need)
    elif node.domain == "" and node.op_type in REDUCE_OPS:
        flops, kind = _reduce(node, need)
    elif node.domain == "" and node.op_type in VIEW_OPS:
        return NodeCost(0, 0, 0, 0, _compute_dtype(node, graph), "view")
    elif node.domain == "" and node.op_type in MOVEMENT_OPS:
        flops, kind = 0, "movement"
    elif custom_flops and key in custom_flops:
        flops, kind = int(custom_flops[key] * _all_out_elems(node, need)), "custom"
    else:
        flops, kind, exact = 0, "bytes-only", False
    reads = [need.nbytes((i,)) for i in node.inputs]
    if node.op_type == "Gather" and node.domain == "" and graph.values[node.inputs[0]].is_weight:
        reads[0] = need.nbytes(node.outputs)  # the rows gathered, not the table
    writes = tuple(need.nbytes((o,)) for o in node.outputs)
    return NodeCost(
        flops=int(flops),
        bytes_read=sum(reads),
        bytes_written=sum(writes),
        param_bytes=need.param_bytes(),
        dtype=_compute_dtype(node, graph),
        kind=kind,
        exact=exact,
        estimated=need.estimated,
        input_bytes=tuple(reads),
        output_bytes=writes,
    )


def _all_out_elems(node: Node, need: Need) -> int:
    return sum(math.prod(need.shape(o)) for o in node.outputs if o)
