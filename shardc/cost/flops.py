"""FLOP rules per op: the per-element table, the op categories and the rules with a formula.

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

Which ops each rule covers is read from the op-family table
(:mod:`shardc.ir.opfamilies`), which the shape and sharding rules read too.
:func:`shardc.cost.ops.node_cost` dispatches to these; kept apart so the formulas (the part
that grows with every op) are not mixed with the machinery that applies them.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from shardc.errors import ModelError
from shardc.ir import Dim, Graph, Node, TensorType
from shardc.ir.opfamilies import (
    ARITHMETIC,
    CASTS,
    CHANNEL_NORMS,
    COMPARISONS,
    CONTRIB_NORMS,
    GATHERS,
    LAYER_NORMS,
    LAYOUT,
    MS,
    OPTIONALS,
    POOLS,
    REDUCTIONS,
    SHAPE_OPS,
    SPATIAL,
    UNARY,
    VIEWS,
)
from shardc.registry import registrar

# -- FLOPs per output element of the elementwise ops ----------------------------------------
# Counted as the unfused pattern would be, each library primitive (exp, log, sqrt, sin,
# cos, their inverses) counting 1, so an exported pattern and a fused op agree.
ELEMENTWISE_FLOPS: dict[str, int] = {
    **dict.fromkeys(ARITHMETIC, 1),
    **dict.fromkeys(COMPARISONS, 1),
    **dict.fromkeys((op for op in UNARY if op != "Identity"), 1),  # Identity is a view
    **dict.fromkeys(("Sigmoid", "Tanh", "Erf", "Softplus"), 4),
    "Gelu": 8,
    "Mish": 8,
    "Tan": 3,  # sin / cos
    "Sinh": 5,  # (exp(x) - exp(-x)) / 2: negate, two exps, subtract, halve
    "Cosh": 5,  # (exp(x) + exp(-x)) / 2
    "Asinh": 5,  # log(x + sqrt(x² + 1)): square, add, sqrt, add, log
    "Acosh": 5,  # log(x + sqrt(x² - 1))
    "Atanh": 5,  # log((1 + x) / (1 - x)) / 2: add, subtract, divide, log, halve
    "Shrink": 2,  # compare with lambd, then add or subtract the bias
    "Swish": 6,  # x · sigmoid(alpha · x): scale, Sigmoid's 4, multiply
    # Celu is Elu on x / alpha, Asin/Acos/Atan primitives like Sin: 1 as listed above
    f"{MS}Gelu": 8,
    f"{MS}FastGelu": 8,
    f"{MS}BiasGelu": 9,
    f"{MS}QuickGelu": 5,
    f"{MS}BiasAdd": 2,  # x + bias + skip
    "Softmax": 5,
    "LogSoftmax": 5,
    "Hardmax": 1,  # one comparison per element for the row's max; the one-hot is written
    "LpNormalization": 3,  # |x| or x², the row sum, the divide (the root is per row)
    "CumSum": 1,
    "CumProd": 1,
    "Trilu": 1,
    "LayerNormalization": 7,
    "RMSNormalization": 4,
    f"{MS}SimplifiedLayerNormalization": 4,
    "SimplifiedLayerNormalization": 4,
    f"{MS}SkipLayerNormalization": 8,
    f"{MS}SkipSimplifiedLayerNormalization": 5,
    f"{MS}EmbedLayerNormalization": 9,  # word + position (+ segment) sums, then LayerNorm's 7
    "BatchNormalization": 4,
    "InstanceNormalization": 8,
    "GroupNormalization": 8,
    f"{MS}RotaryEmbedding": 3,  # x·cos + rotate(x)·sin
    "DequantizeLinear": 2,  # (q - zero point) · scale
    f"{MS}DequantizeLinear": 2,
    "QuantizeLinear": 3,  # x / scale, round, + zero point (saturation is free)
    f"{MS}QuantizeLinear": 3,
    "DynamicQuantizeLinear": 5,  # min and max over the tensor, then QuantizeLinear's 3
}
"""FLOPs per output element of elementwise-like ops (qualified names)."""

NORMS = frozenset((*LAYER_NORMS, *CHANNEL_NORMS, *CONTRIB_NORMS))
"""Elementwise-costed ops whose kind is ``norm``."""
VIEW_OPS = frozenset((*VIEWS, "Identity", *(op for op in SHAPE_OPS if op != "NonZero"), *OPTIONALS))
"""No FLOPs, no traffic: the same bytes under another shape, or values made from shapes."""
MOVEMENT_OPS = frozenset(
    (*LAYOUT, *GATHERS, *SPATIAL, *CASTS, "NonZero", "TopK", "ArgMax", "ArgMin")
)
"""No FLOPs but every byte read and written (NonZero writes its indices; the arg-ops and
TopK are priced as the copy they mostly are)."""
REDUCE_OPS = frozenset((*REDUCTIONS, *(op for op in POOLS if op != "LRN")))
"""One FLOP per input element."""


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
FLOP_RULES: dict[str, FlopRule] = {}
flop_rule = registrar(FLOP_RULES)
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


@flop_rule("Det")
def _det(node: Node, need: Need) -> tuple[int, str]:
    """LU decomposition of each ``[n, n]`` matrix, ``2n³/3``, then the diagonal's product."""
    x = need.shape(node.inputs[0])
    n = x[-1]
    return math.prod(x[:-2]) * (2 * n**3 // 3 + n), "matmul"


@flop_rule("LRN")
def _lrn(node: Node, need: Need) -> tuple[int, str]:
    """``x / (bias + alpha/size · Σ x²)^beta`` over ``size`` channels: a square and an add
    per neighbour, then scale, add, power and divide.
    """
    size = int(node.attr("size", 1) or 1)  # type: ignore[arg-type]
    return (2 * size + 4) * need.out_elems(), "norm"


@flop_rule("GridSample")
def _grid_sample(node: Node, need: Need) -> tuple[int, str]:
    """Per output element: 6 FLOPs to map the grid's coordinates onto the input, then a
    multiply-add per neighbour read (1 nearest, 4 linear, 16 cubic).
    """
    mode = node.attr("mode", "linear")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    reads = {"nearest": 1, "cubic": 16, "bicubic": 16}.get(str(mode), 4)
    return (6 + 2 * reads) * need.out_elems(), "elementwise"


def elementwise(node: Node, need: Need) -> tuple[int, str]:
    """Per-element FLOPs times the output's elements (:data:`ELEMENTWISE_FLOPS`)."""
    per = ELEMENTWISE_FLOPS[node.qualified_op]
    kind = "norm" if node.qualified_op in NORMS else "elementwise"
    return per * need.out_elems(), kind


def reduce(node: Node, need: Need) -> tuple[int, str]:
    """One FLOP per input element."""
    return math.prod(need.shape(node.inputs[0])), "reduce"


def has_flop_rule(op: str) -> bool:
    """Whether ``op`` (qualified) is costed by a rule or a category, not by bytes only."""
    return (
        op in FLOP_RULES
        or op in ELEMENTWISE_FLOPS
        or op in REDUCE_OPS
        or op in VIEW_OPS
        or op in MOVEMENT_OPS
    )
