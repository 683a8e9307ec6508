"""Per-op sharding rules: how each op's tensor dims line up, one small function per family.

A rule describes an op as *loops*, the way an einsum does: one :class:`Loop` per
iteration dimension, naming the dim of every input and output it runs along. Splitting a
loop along a mesh axis splits all those dims at once, which is what makes a strategy
legal: a column-parallel MatMul is its N loop split, a row-parallel one its contracted K
loop split (a ``sum`` loop, so the output holds partial sums), attention by heads is a
batch loop of the batched matmul split. ``fixed`` loops are dims the op mixes (the
Softmax axis, a norm's normalised dims, the dims a Reshape folds behind another) and
cannot be split. The generic machinery in :mod:`shardc.passes.strategies` turns loops
into :class:`~shardc.sharding.Strategy` lists, propagates the batch/sequence dim labels
that decide between ``dp`` and ``sp``, and derives what elementwise and view ops (the
*followers*) do from their inputs. Rules that need more than loops (the expert
all-to-all, KV heads kept whole) add ready-made strategies in ``OpDims.extra``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import cast

from shardc.ir import Graph, Node
from shardc.ir.opfamilies import REDUCTIONS
from shardc.ir.types import Dim
from shardc.registry import registrar
from shardc.sharding import Reshard, Strategy, TensorSharding

Shape = tuple[Dim, ...]


@dataclass(frozen=True, slots=True)
class Loop:
    """One iteration dimension of an op and the tensor dim it runs along in each operand.

    ``ins``/``outs`` give that dim per input/output position (None: absent or
    broadcast). ``axis`` forces the mesh axis a split uses; when None the loop's label
    decides (batch → ``dp``, sequence → ``sp``) and ``unlabeled`` is the axis for an
    unlabelled loop (None: not offered). Splitting a ``sum`` loop leaves partial sums in
    the outputs and asks ``partial_ins`` (a bias added after the sum) to be partial too.
    """

    name: str
    ins: tuple[int | None, ...]
    outs: tuple[int | None, ...]
    kind: str = "parallel"
    axis: str | None = None
    unlabeled: str | None = None
    partial_ins: tuple[int, ...] = ()
    divides: tuple[tuple[str, int], ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def splittable(self) -> bool:
        """Parallel and sum loops can be split; fixed ones cannot."""
        return self.kind != "fixed"


@dataclass(frozen=True)
class OpDims:
    """What a rule says about one node."""

    loops: tuple[Loop, ...] = ()
    follows: bool = False
    """Elementwise and view ops: their layout is derived from their inputs."""
    linear: str = "none"
    """How partial sums pass a follower: ``all`` (every non-free data input partial:
    Add, views), ``one`` (exactly one input partial: Mul), ``first`` (Div), ``none``."""
    args: frozenset[int] = frozenset()
    """Input positions read whole as arguments (shapes, axes, sizes): no sharding."""
    seq_tp: bool = False
    """Offer the sequence split over ``tp`` too (Megatron sequence parallelism)."""
    extra: tuple[Strategy, ...] = ()
    known: bool = True
    limit: str = ""
    """Why the rule keeps some of the op whole (a packed layout, a whole-tensor scale):
    reported once per op type, so a user knows what TP leaves on every rank."""


@dataclass(frozen=True)
class Ctx:
    """A node with the facts rules read: shapes, constants, which values are parameters."""

    node: Node
    graph: Graph
    opset: int
    params: frozenset[str]
    labels: Mapping[str, tuple[str | None, ...]]
    """Batch/sequence labels of the dims of values already analysed."""

    def shape(self, name: str) -> Shape | None:
        """Shape of a value (None when absent or of unknown rank)."""
        v = self.graph.values.get(name) if name else None
        return None if v is None or v.type is None else v.type.shape

    def in_shape(self, i: int) -> Shape | None:
        """Shape of input ``i``."""
        return self.shape(self.node.inputs[i]) if i < len(self.node.inputs) else None

    def out_shape(self, j: int = 0) -> Shape | None:
        """Shape of output ``j``."""
        return self.shape(self.node.outputs[j]) if j < len(self.node.outputs) else None

    def is_param(self, i: int) -> bool:
        """Input ``i`` is a weight or computed from weights and constants only."""
        return i < len(self.node.inputs) and self.node.inputs[i] in self.params

    def ints(self, i: int) -> tuple[int, ...] | None:
        """The small integer constant fed to input ``i``, if known."""
        name = self.node.inputs[i] if i < len(self.node.inputs) else ""
        v = self.graph.values.get(name) if name else None
        return None if v is None or v.const is None else tuple(int(x) for x in v.const)

    def attr_int(self, name: str, default: int) -> int:
        """An INT attribute."""
        return int(self.node.attr(name, default))  # type: ignore[arg-type]

    @cached_property
    def n_in(self) -> int:
        """Number of input positions."""
        return len(self.node.inputs)

    def loop(self, name: str, ins: dict[int, int], outs: dict[int, int], **kw: object) -> Loop:
        """A loop from ``{position: dim}`` maps."""
        return Loop(
            name,
            tuple(ins.get(i) for i in range(self.n_in)),
            tuple(outs.get(j) for j in range(len(self.node.outputs))),
            **kw,  # type: ignore[arg-type]
        )


Rule = Callable[[Ctx], OpDims]
RULES: dict[str, Rule] = {}
_FOLLOWER_RULES: set[Rule] = set()


rule = registrar(RULES)
"""``@rule("MatMul", "Gemm")`` files a rule under each op (``domain::Op`` outside ONNX)."""


# -- shape helpers ------------------------------------------------------------------------
def same(a: Dim, b: Dim) -> bool:
    """Two dims are the same size (unknown dims match anything but a broadcast 1)."""
    if a is None or b is None:
        return a != 1 and b != 1
    return a == b


def norm_axis(axis: int, rank: int) -> int:
    """A possibly negative axis as an index."""
    return axis + rank if axis < 0 else axis


def reshape_groups(src: Shape, dst: Shape) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Groups of dims a reshape maps onto each other, size-1 dims left out.

    ``[B, S, H·D] → [B, S, H, D]`` gives ``[((0,), (0,)), ((1,), (1,)), ((2,), (2, 3))]``.
    Stops at the first group it cannot size (symbolic dims that do not match).
    """
    groups: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    i = j = 0
    while i < len(src) and j < len(dst):
        if src[i] == 1 and dst[j] != 1:
            i += 1
            continue
        if dst[j] == 1 and src[i] != 1:
            j += 1
            continue
        if src[i] == dst[j]:
            if src[i] != 1:
                groups.append(((i,), (j,)))
            i, j = i + 1, j + 1
            continue
        gi, gj = [i], [j]
        pa, pb = src[i], dst[j]
        while pa != pb:
            if not (isinstance(pa, int) and isinstance(pb, int)):
                return groups
            if pa < pb and gi[-1] + 1 < len(src) and isinstance(src[gi[-1] + 1], int):
                gi.append(gi[-1] + 1)
                pa *= src[gi[-1]]  # type: ignore[operator]
            elif pb < pa and gj[-1] + 1 < len(dst) and isinstance(dst[gj[-1] + 1], int):
                gj.append(gj[-1] + 1)
                pb *= dst[gj[-1]]  # type: ignore[operator]
            else:
                return groups
        groups.append((tuple(gi), tuple(gj)))
        i, j = gi[-1] + 1, gj[-1] + 1
    return groups


def _data(ctx: Ctx, args: Iterable[int]) -> list[int]:
    skip = set(args)
    return [i for i in range(ctx.n_in) if i not in skip and ctx.node.inputs[i]]


def broadcast_loops(
    ctx: Ctx, args: Iterable[int] = (), *, blocked: bool = False
) -> tuple[Loop, ...]:
    """One loop per output dim, inputs aligned from the right as numpy broadcasting does.

    ``blocked`` also maps an input dim whose size differs from the output's (a blocked
    DequantizeLinear scale: one entry per block of the dim, so it splits with it).
    """
    out = ctx.out_shape(0)
    if out is None:
        return ()
    rank, data = len(out), _data(ctx, args)
    loops = []
    for j in range(rank):
        ins = {}
        for i in data:
            s = ctx.in_shape(i)
            d = -1 if s is None else j - (rank - len(s))
            if s is not None and d >= 0 and (same(s[d], out[j]) or (blocked and s[d] != 1)):
                ins[i] = d
        outs = {k: j for k in range(len(ctx.node.outputs)) if len(ctx.out_shape(k) or ()) == rank}
        loops.append(ctx.loop(f"d{j}", ins, outs))
    return tuple(loops)


def axis_loops(
    ctx: Ctx, fixed: set[int], args: Iterable[int] = (), **kw: object
) -> tuple[Loop, ...]:
    """Loops of an op that keeps its input's rank and mixes only the ``fixed`` dims."""
    loops = broadcast_loops(ctx, args)
    return tuple(
        Loop(lp.name, lp.ins, lp.outs, kind="fixed")
        if j in fixed
        else Loop(lp.name, lp.ins, lp.outs, **kw)  # type: ignore[arg-type]
        for j, lp in enumerate(loops)
    )


def same_size_loops(ctx: Ctx, args: Iterable[int] = ()) -> tuple[Loop, ...]:
    """Dims whose size the op keeps are parallel, the others fixed (Slice, Pad, Tile)."""
    src, out = ctx.in_shape(0), ctx.out_shape(0)
    if src is None or out is None or len(src) != len(out):
        return ()
    fixed = {d for d in range(len(out)) if not (src[d] == out[d] and src[d] is not None)}
    return axis_loops(ctx, fixed, args)


def reshape_loops(ctx: Ctx) -> tuple[Loop, ...]:
    """A dim survives a reshape onto the leading dim of its group (``[B,S,H·D]→[B,S,H,D]``
    keeps a split of H·D on H): equal contiguous blocks of both cover the same elements.
    """
    src, out = ctx.in_shape(0), ctx.out_shape(0)
    if src is None or out is None:
        return ()
    loops = []
    for gi, go in reshape_groups(src, out):
        loops.append(ctx.loop(f"d{go[0]}", {0: gi[0]}, {0: go[0]}))
        loops += [ctx.loop(f"d{d}", {0: d}, {}, kind="fixed") for d in gi[1:]]
    return tuple(loops)


# -- parameters and the graph around a node -----------------------------------------------


def param_values(graph: Graph) -> frozenset[str]:
    """Weights, constants and everything computed from them alone (a transposed weight)."""
    params = {v.name for v in graph.values.values() if v.is_weight or v.const is not None}
    for node in graph.nodes:
        data = [i for i in node.present_inputs]
        if all(i in params for i in data):
            params.update(o for o in node.outputs if o)
    return frozenset(params)


def _chain(graph: Graph, value: str, dim: int, down: bool, depth: int = 8) -> int | None:
    """Walk followers from ``value`` to the Reshape that splits (down) or merges (up) ``dim``
    into heads; the head count, the leading size of that group.
    """
    for _ in range(depth):
        nodes = graph.consumers(value) if down else [p] if (p := graph.producer(value)) else []
        node = next((n for n in nodes if n.qualified_op in FOLLOWER_OPS), None)
        if node is None:
            return None
        src = graph.values[node.inputs[0]].type if node.inputs[0] else None
        dst = graph.values[node.outputs[0]].type
        if src is None or dst is None or src.shape is None or dst.shape is None:
            return None
        if node.op_type in ("Reshape", "Flatten"):
            for gi, go in reshape_groups(src.shape, dst.shape):
                near, far = (gi, go) if down else (go, gi)
                if near[0] == dim and len(far) > 1:
                    heads = (dst.shape if down else src.shape)[far[0]]
                    return heads if isinstance(heads, int) else None
                if near[0] == dim:
                    dim = far[0]
                    break
            else:
                return None
        elif len(src.shape) != len(dst.shape):
            return None
        value = node.outputs[0] if down else node.inputs[0]
    return None


def heads_after(ctx: Ctx, value: str, dim: int) -> tuple[tuple[str, int], ...]:
    """``(("tp", heads),)`` when ``dim`` of ``value`` is later viewed as ``[heads, d]``."""
    h = _chain(ctx.graph, value, dim, down=True)
    return (("tp", h),) if h and h > 1 else ()


def heads_before(ctx: Ctx, value: str, dim: int) -> tuple[tuple[str, int], ...]:
    """``(("tp", heads),)`` when ``dim`` of ``value`` was merged from ``[heads, d]``."""
    h = _chain(ctx.graph, value, dim, down=False)
    return (("tp", h),) if h and h > 1 else ()


def reaches_output(graph: Graph, value: str, depth: int = 6) -> bool:
    """``value`` is a graph output, or becomes one through followers (logits)."""
    for _ in range(depth):
        if value in graph.outputs:
            return True
        nxt = [n for n in graph.consumers(value) if n.qualified_op in FOLLOWER_OPS]
        if len(nxt) != 1:
            return False
        value = nxt[0].outputs[0]
    return False


def feeds_experts(
    graph: Graph, params: frozenset[str], value: str, down: bool, depth: int = 6
) -> bool:
    """``value`` reaches (down) or comes from (up) a MatMul with batched expert weights,
    through followers only: the tokens an expert all-to-all dispatches or combines.
    """
    for _ in range(depth):
        nodes = graph.consumers(value) if down else [p] if (p := graph.producer(value)) else []
        for n in nodes:
            if n.op_type == "MatMul":
                w = graph.values[n.inputs[1]]
                if w.name in params and w.type is not None and (w.type.rank or 0) >= 3:
                    return True
        nxt = [n for n in nodes if n.qualified_op in FOLLOWER_OPS]
        if len(nxt) != 1:
            return False
        value = nxt[0].outputs[0] if down else nxt[0].inputs[0]
    return False


def sharding(
    shape: Shape | None,
    dims: dict[int, str],
    partial: str | None = None,
) -> TensorSharding | None:
    """A sharding of a tensor of ``shape`` with ``{dim: axis}`` split (None if rank unknown)."""
    if shape is None:
        return None
    return TensorSharding(tuple(dims.get(d) for d in range(len(shape))), partial)


@dataclass
class Built:
    """Accumulates a hand-made strategy's operand shardings (for ``OpDims.extra``)."""

    ctx: Ctx
    ins: dict[int, dict[int, str]] = field(default_factory=dict)
    outs: dict[int, dict[int, str]] = field(default_factory=dict)
    args: frozenset[int] = frozenset()

    def strategy(self, name: str, comm: tuple[Reshard, ...] = (), **kw: object) -> Strategy:
        """The strategy with every operand not mentioned replicated."""
        ctx = self.ctx
        ins = tuple(
            None
            if i in self.args or not ctx.node.inputs[i]
            else sharding(ctx.in_shape(i), self.ins.get(i, {}))
            for i in range(ctx.n_in)
        )
        outs = tuple(
            sharding(ctx.out_shape(j), self.outs.get(j, {})) for j in range(len(ctx.node.outputs))
        )
        return Strategy(name, ins, outs, comm, **kw)  # type: ignore[arg-type]


# -- followers: elementwise ops and views --------------------------------------------------
_LINEAR_ALL = ("Add", "Sub", "Sum", "Neg", "Identity", "Dropout")
# fmt: off
_UNARY = (
    "Abs", "Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "BitwiseNot", "Ceil", "Celu",
    "Cos", "Cosh", "Elu", "Erf", "Exp", "FastGelu", "Floor", "Gelu", "HardSigmoid", "HardSwish",
    "IsInf", "IsNaN", "LeakyRelu", "Log", "Mish", "Not", "QuickGelu", "Reciprocal", "Relu",
    "Round", "Selu", "Shrink", "Sigmoid", "Sign", "Sin", "Sinh", "Softplus", "Softsign",
    "Sqrt", "Tan", "Tanh", "ThresholdedRelu", "Cast", "Clip", "Swish",
)
_BINARY = (
    "And", "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "Equal", "Greater",
    "GreaterOrEqual", "Less", "LessOrEqual", "Max", "Mean", "Min", "Mod", "Or", "PRelu", "Pow",
    "Where", "Xor", "BiasGelu",
)
# fmt: on


def _follower(linear: str, args: Iterable[int] = ()) -> Callable[[Rule], Rule]:
    """Mark a rule's op as a follower, with how partial sums pass it."""

    def deco(fn: Rule) -> Rule:
        def wrapped(ctx: Ctx) -> OpDims:
            dims = fn(ctx)
            return OpDims(dims.loops, follows=True, linear=linear, args=frozenset(args))

        _FOLLOWER_RULES.add(wrapped)
        return wrapped

    return deco


def _elementwise(ctx: Ctx) -> OpDims:
    """Numpy broadcasting: each output dim with the input dims aligned to it."""
    return OpDims(broadcast_loops(ctx))


# onnxruntime's contrib activations: Gelu/QuickGelu of one input, BiasGelu and FastGelu
# (x + bias, then the activation), BiasAdd (x + bias + skip: linear, as Add is)
_CONTRIB = tuple(
    f"com.microsoft::{op}" for op in ("BiasGelu", "FastGelu", "Gelu", "QuickGelu")
)
for _lin, _ops in (
    ("all", (*_LINEAR_ALL, "com.microsoft::BiasAdd")),
    ("one", ("Mul",)),
    ("first", ("Div",)),
    ("none", (*_UNARY, *_BINARY, *_CONTRIB)),
):
    rule(*_ops)(_follower(_lin)(_elementwise))
# CastLike reads only the dtype of its second input: an argument, never split with the data
rule("CastLike")(_follower("none", args=(1,))(lambda ctx: OpDims(broadcast_loops(ctx, (1,)))))


@rule(
    "DequantizeLinear",
    "QuantizeLinear",
    "com.microsoft::DequantizeLinear",
    "com.microsoft::QuantizeLinear",
)
@_follower("none")
def _quantize(ctx: Ctx) -> OpDims:
    """Scales map onto the dims they scale, blocks included (fp8 weights, 1×128 blocks)."""
    return OpDims(broadcast_loops(ctx, blocked=True))


@rule("BatchNormalization")
@_follower("none", args=())
def _batch_norm(ctx: Ctx) -> OpDims:
    """Inference BatchNorm is per channel: statistics and scale split with channel dim 1.
    In training mode (``training_mode=1``, or running stats as outputs before opset 14)
    the statistics are taken over the batch and spatial dims, so only channels split.
    """
    out = ctx.out_shape(0)
    loops = list(broadcast_loops(ctx, args=range(1, ctx.n_in)))
    training = bool(ctx.attr_int("training_mode", 0)) or sum(map(bool, ctx.node.outputs)) > 1
    if training:
        loops = [Loop(lp.name, lp.ins, lp.outs, kind="fixed") for lp in loops]
    if out is not None and len(out) > 1:
        chan = {i: 0 for i in range(1, ctx.n_in) if ctx.node.inputs[i]}
        stats = {j: 0 for j in range(1, len(ctx.node.outputs)) if ctx.node.outputs[j]}
        loops[1] = ctx.loop("channels", {**chan, 0: 1}, {**stats, 0: 1})
    return OpDims(tuple(loops))


@rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
@_follower("all", args=(1,))
def _reshape(ctx: Ctx) -> OpDims:
    """Views: the dim mapping of :func:`reshape_groups` (axes are implied by the shapes)."""
    return OpDims(reshape_loops(ctx))


@rule("Transpose")
@_follower("all")
def _transpose(ctx: Ctx) -> OpDims:
    """Output dim j runs along input dim perm[j]."""
    src = ctx.in_shape(0)
    if src is None:
        return OpDims()
    perm = cast(tuple[int, ...], ctx.node.attr("perm") or tuple(reversed(range(len(src)))))
    return OpDims(tuple(ctx.loop(f"d{j}", {0: int(p)}, {0: j}) for j, p in enumerate(perm)))


@rule("Expand")
@_follower("all", args=(1,))
def _expand(ctx: Ctx) -> OpDims:
    """Broadcast dims exist in the output only; the others split with the input."""
    return OpDims(broadcast_loops(ctx, args=(1,)))


@rule("Slice", "Pad", "Tile")
@_follower("all", args=(1, 2, 3, 4))
def _slice(ctx: Ctx) -> OpDims:
    """A dim the op cuts, pads or repeats is fixed; a dim it keeps whole stays parallel."""
    return OpDims(same_size_loops(ctx, args=(1, 2, 3, 4)))


@rule("Concat")
@_follower("all")
def _concat(ctx: Ctx) -> OpDims:
    """Concatenated pieces split alike on every dim but the concat axis."""
    out = ctx.out_shape(0)
    if out is None:
        return OpDims()
    axis = norm_axis(ctx.attr_int("axis", 0), len(out))
    return OpDims(axis_loops(ctx, {axis}))


@rule("Split")
@_follower("all", args=(1,))
def _split(ctx: Ctx) -> OpDims:
    """Pieces split alike on the other dims; the split axis stays whole, except on a fused
    projection (GPT-2's QKV), whose weight emit can lay out piece by piece per rank.
    """
    src = ctx.in_shape(0)
    if src is None:
        return OpDims()
    axis = norm_axis(ctx.attr_int("axis", 0), len(src))
    outs = range(len(ctx.node.outputs))
    fused = axis == len(src) - 1 and _from_column(ctx.graph, ctx.params, ctx.node.inputs[0])
    loops = [
        ctx.loop(
            "pieces" if d == axis else f"d{d}",
            {0: d},
            dict.fromkeys(outs, d),
            kind="parallel" if d != axis or fused else "fixed",
            notes=("fused projection: each rank's weight columns are its part of every piece",)
            if d == axis
            else (),
        )
        for d in range(len(src))
    ]
    return OpDims(tuple(loops))


def _from_column(graph: Graph, params: frozenset[str], value: str, depth: int = 4) -> bool:
    """``value`` is a MatMul/Gemm output with a weight operand, seen through followers."""
    for _ in range(depth):
        p = graph.producer(value)
        if p is None:
            return False
        if p.op_type in ("MatMul", "Gemm"):
            return p.inputs[1] in params
        if p.qualified_op not in FOLLOWER_OPS:
            return False
        value = p.inputs[0]
    return False


@rule("Shape", "Size", "Constant", "ConstantOfShape", "Range", "EyeLike", "NonZero")
@_follower("none", args=(0, 1, 2))
def _shape_op(ctx: Ctx) -> OpDims:
    """Shape arithmetic reads only metadata or constants: replicated, and free to have."""
    return OpDims()


# -- matrix products -----------------------------------------------------------------------
def product_loops(ctx: Ctx, a: int, b: int, wa: bool, wb: bool) -> list[Loop]:
    """Batch loops of ``[.., M, K] @ [.., K, N]``: experts on a batched weight, heads between
    activations, else by label.
    """
    sa, sb, y = ctx.in_shape(a), ctx.in_shape(b), ctx.out_shape(0)
    assert sa is not None and sb is not None and y is not None
    loops = []
    for j in range(len(y) - 2):
        ins = {}
        for i, s in ((a, sa), (b, sb)):
            d = j - (len(y) - len(s))
            if d >= 0 and same(s[d], y[j]):
                ins[i] = d
        if wb and b in ins:
            loops.append(ctx.loop("experts", ins, {0: j}, axis="ep"))
        else:
            loops.append(
                ctx.loop(
                    "heads" if not (wa or wb) else f"d{j}",
                    ins,
                    {0: j},
                    unlabeled=None if (wa or wb) else "tp",
                )
            )
    return loops


@rule("MatMul", "MatMulInteger")
def _matmul(ctx: Ctx) -> OpDims:
    """Megatron's pair: column-parallel splits N (the weight's columns, nothing to reduce),
    row-parallel splits K (partial sums out); the LM head's column split is its vocab.
    """
    sa, sb, y = ctx.in_shape(0), ctx.in_shape(1), ctx.out_shape(0)
    if sa is None or sb is None or y is None or len(sa) < 2 or len(sb) < 2:
        return OpDims()
    wa, wb = ctx.is_param(0), ctx.is_param(1)
    a, out = ctx.node.inputs[0], ctx.node.outputs[0]
    m, k, n = len(sa) - 2, len(sa) - 1, len(sb) - 1
    loops = product_loops(ctx, 0, 1, wa, wb)
    vocab = wb and reaches_output(ctx.graph, out)
    # MatMulInteger's zero points: per row of A ([M]) and per column of B ([N]) split
    # with those; scalars are read whole
    zp_a = {2: 0} if _per_entry(ctx, 2, sa[m]) else {}
    zp_b = {3: 0} if _per_entry(ctx, 3, sb[n]) else {}
    loops += [
        ctx.loop(
            "column" if wa else "m", {0: m, **zp_a}, {0: len(y) - 2}, unlabeled="tp" if wa else None
        ),
        ctx.loop(
            "vocab" if vocab else "column",
            {1: n, **zp_b},
            {0: len(y) - 1},
            axis="tp" if wb else None,
            divides=heads_after(ctx, out, len(y) - 1),
        ),
        ctx.loop(
            "row",
            {0: k, 1: n - 1},
            {},
            kind="sum" if wa or wb else "fixed",
            axis="tp",
            divides=heads_before(ctx, a, k),
        ),
    ]
    if not (wa or wb):  # between activations N is the keys' sequence: splitting it adds work
        loops[-2] = Loop(loops[-2].name, loops[-2].ins, loops[-2].outs, kind="fixed")
    return OpDims(tuple(loops))


def _per_entry(ctx: Ctx, i: int, size: Dim) -> bool:
    """Input ``i`` is present, 1-D and one entry per index of a dim of ``size`` (> 1)."""
    s = ctx.in_shape(i) if i < ctx.n_in and ctx.node.inputs[i] else None
    return s is not None and len(s) == 1 and s[0] != 1 and same(s[0], size)


@rule("Gemm")
def _gemm(ctx: Ctx) -> OpDims:
    """``α·A'·B' + β·C``: column and row parallel as MatMul; a row split adds C on one rank."""
    sa, y = ctx.in_shape(0), ctx.out_shape(0)
    if sa is None or y is None or ctx.in_shape(1) is None:
        return OpDims()
    ta, tb = ctx.attr_int("transA", 0), ctx.attr_int("transB", 0)
    sc = ctx.in_shape(2) if ctx.n_in > 2 and ctx.node.inputs[2] else None
    c_m = {2: len(sc) - 2} if sc and len(sc) == 2 and same(sc[0], y[0]) else {}
    c_n = {2: len(sc) - 1} if sc and same(sc[-1], y[1]) else {}
    bias = (2,) if sc is not None else ()
    out, a = ctx.node.outputs[0], ctx.node.inputs[0]
    vocab = reaches_output(ctx.graph, out)
    wb = ctx.is_param(1)
    return OpDims(
        (
            ctx.loop("m", {0: 1 if ta else 0, **c_m}, {0: 0}),
            ctx.loop(
                "vocab" if vocab else "column",
                {1: 0 if tb else 1, **c_n},
                {0: 1},
                axis="tp" if wb else None,
                divides=heads_after(ctx, out, 1),
            ),
            ctx.loop(
                "row",
                {0: 0 if ta else 1, 1: 1 if tb else 0},
                {},
                kind="sum" if wb else "fixed",
                axis="tp",
                partial_ins=bias,
                divides=heads_before(ctx, a, 1),
            ),
        )
    )


@rule("Conv", "ConvInteger")
def _conv(ctx: Ctx) -> OpDims:
    """By batch, by output channels (the filters), or by input channels (partial sums) when
    ungrouped; a grouped conv splits both channel dims together when tp divides the groups.
    """
    x, w, y = ctx.in_shape(0), ctx.in_shape(1), ctx.out_shape(0)
    if x is None or w is None or y is None:
        return OpDims()
    group = ctx.attr_int("group", 1)
    if ctx.node.op_type == "ConvInteger":  # inputs 2, 3: zero points, not a bias
        bias = {3: 0} if _per_entry(ctx, 3, w[0]) else {}
    else:
        bias = {2: 0} if ctx.n_in > 2 and ctx.node.inputs[2] else {}
    loops = [ctx.loop("batch", {0: 0}, {0: 0})]
    if group == 1:
        loops.append(ctx.loop("channels", {1: 0, **bias}, {0: 1}, axis="tp"))
        loops.append(
            ctx.loop(
                "in_channels",
                {0: 1, 1: 1},
                {},
                kind="sum",
                axis="tp",
                partial_ins=() if ctx.node.op_type == "ConvInteger" else tuple(bias),
            )
        )
    else:
        loops.append(
            ctx.loop(
                "channels",
                {0: 1, 1: 0, **bias},
                {0: 1},
                axis="tp",
                divides=(("tp", group),),
                notes=(f"{group} groups",),
            )
        )
    loops += [ctx.loop(f"d{d}", {0: d}, {0: d}, kind="fixed") for d in range(2, len(y))]
    return OpDims(tuple(loops))


@rule(
    "MaxPool",
    "AveragePool",
    "LpPool",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "GlobalLpPool",
    "LRN",
)
def _pool(ctx: Ctx) -> OpDims:
    """Windows slide over the spatial dims (fixed); batch and channels are independent,
    except that LRN's window runs across channels. MaxPool's Indices count positions in
    the whole input, so a MaxPool that returns them is not split.
    """
    x, y = ctx.in_shape(0), ctx.out_shape(0)
    if x is None or y is None or len(x) != len(y) or len(x) < 2:
        return OpDims()
    if len(ctx.node.outputs) > 1 and ctx.node.outputs[1]:
        return OpDims()
    lrn = ctx.node.op_type == "LRN"
    loops = [
        ctx.loop("batch", {0: 0}, {0: 0}),
        ctx.loop("channels", {0: 1}, {0: 1}, kind="fixed" if lrn else "parallel", unlabeled="tp"),
    ]
    loops += [
        ctx.loop(f"d{d}", {0: d}, {0: d}, kind="parallel" if lrn else "fixed", unlabeled="tp")
        for d in range(2, len(y))
    ]
    return OpDims(tuple(loops))


@rule("ConvTranspose", "DepthToSpace", "SpaceToDepth", "GridSample", "Trilu", "Det")
def _per_item(ctx: Ctx) -> OpDims:
    """Ops that treat each item of the batch alone and mix the rest: split by batch only
    (GridSample also by channels, Trilu and Det by every dim before their matrices).
    """
    x, y = ctx.in_shape(0), ctx.out_shape(0)
    if x is None or y is None or not x or not y:
        return OpDims()
    op = ctx.node.op_type
    free = len(x) - 2 if op in ("Trilu", "Det") else 2 if op == "GridSample" else 1
    grid = {1: 0} if op == "GridSample" else {}
    loops = [ctx.loop(f"d{d}", {0: d, **(grid if d == 0 else {})}, {0: d}) for d in range(free)]
    loops += [ctx.loop(f"d{d}", {0: d}, {}, kind="fixed") for d in range(free, len(x))]
    return OpDims(tuple(loops), args=frozenset(range(1, ctx.n_in)) - set(grid))


def _mask_dim(ctx: Ctx, dim: int) -> dict[int, int]:
    """``{3: d}``: the dim of Attention's mask lined up with ``dim`` of [B, H, S_q, S_kv]
    under broadcasting, unless the mask is absent, shorter, or broadcasts there.
    """
    mask = ctx.in_shape(3) if ctx.n_in > 3 and ctx.node.inputs[3] else None
    d = dim - (4 - len(mask)) if mask is not None else -1
    return {3: d} if mask is not None and d >= 0 and mask[d] != 1 else {}


@rule("Attention")
def _attention(ctx: Ctx) -> OpDims:
    """ONNX Attention (opset 23): by batch, or by heads; with grouped KV heads a second
    option keeps K and V whole so that tp need not divide the KV head count.
    """
    q, k, y = ctx.in_shape(0), ctx.in_shape(1), ctx.out_shape(0)
    if q is None or k is None or y is None:
        return OpDims()
    four = len(q) == 4
    hq = q[1] if four else ctx.attr_int("q_num_heads", 0)
    hkv = k[1] if len(k) == 4 else ctx.attr_int("kv_num_heads", 0)
    hd = 1 if four else 2
    # past_key/value (inputs 4, 5) and present_key/value (outputs 1, 2) are always
    # [B, H_kv, S, D]; the mask (input 3) broadcasts to [B, H_q, S_q, S_kv]
    kv_outs = {j: 1 for j in (1, 2) if j < len(ctx.node.outputs) and ctx.node.outputs[j]}
    past = {i: 1 for i in (4, 5) if i < ctx.n_in and ctx.node.inputs[i]}
    divides = () if four else tuple(("tp", h) for h in (hq, hkv) if isinstance(h, int) and h)
    heads = ctx.loop(
        "heads",
        {0: hd, 1: hd, 2: hd, **past, **_mask_dim(ctx, 1)},
        {0: hd, **kv_outs, 3: 1},
        axis="tp",
        divides=divides,
        notes=(f"{hq} query heads, {hkv} KV heads",),
    )
    lengths = {6: 0} if ctx.n_in > 6 and ctx.node.inputs[6] else {}
    batch = ctx.loop(
        "batch",
        {0: 0, 1: 0, 2: 0, **dict.fromkeys(past, 0), **_mask_dim(ctx, 0), **lengths},
        {0: 0, **dict.fromkeys(kv_outs, 0), 3: 0},
    )
    mask_heads = {i: {d: "tp"} for i, d in _mask_dim(ctx, 1).items()}
    built = Built(ctx, ins={0: {hd: "tp"}, **mask_heads}, outs={0: {hd: "tp"}, 3: {1: "tp"}})
    extra: tuple[Strategy, ...] = ()
    if hq != hkv:
        extra = (
            built.strategy(
                "heads_kv_whole",
                divides=divides[:1],
                notes=(f"{hkv} KV heads kept whole on every rank",),
            ),
        )
    return OpDims((batch, heads), extra=extra)


# -- normalisations, softmax, reductions ---------------------------------------------------
@rule(
    "LayerNormalization",
    "RMSNormalization",
    "com.microsoft::SimplifiedLayerNormalization",
    "SimplifiedLayerNormalization",
)
def _layer_norm(ctx: Ctx) -> OpDims:
    """Normalised dims (``axis`` to the end) stay whole; the leading ones split freely,
    including the sequence over tp between tensor-parallel regions (Megatron-SP).
    """
    x = ctx.in_shape(0)
    if x is None:
        return OpDims()
    axis = norm_axis(ctx.attr_int("axis", -1), len(x))
    outs = range(len(ctx.node.outputs))
    loops = []
    for d in range(len(x)):
        params = {i: d - axis for i in range(1, ctx.n_in) if ctx.node.inputs[i] and d >= axis}
        loops.append(
            ctx.loop(
                f"d{d}",
                {0: d, **params},
                dict.fromkeys(outs, d),
                kind="fixed" if d >= axis else "parallel",
            )
        )
    return OpDims(tuple(loops), seq_tp=True)


@rule("InstanceNormalization", "GroupNormalization")
def _channel_norm(ctx: Ctx) -> OpDims:
    """Instance norm: batch and channels parallel; group norm: batch only."""
    x = ctx.in_shape(0)
    if x is None or len(x) < 2:
        return OpDims()
    group = ctx.node.op_type == "GroupNormalization"
    fixed = set(range(1 if group else 2, len(x)))
    loops = list(axis_loops(ctx, fixed, args=(1, 2)))
    if not group:
        loops[1] = ctx.loop("channels", {0: 1, 1: 0, 2: 0}, {0: 1}, unlabeled="tp")
    return OpDims(tuple(loops))


@rule("Softmax", "LogSoftmax", "Hardmax", "LpNormalization", "TopK", "ArgMax", "ArgMin")
def _along_axis(ctx: Ctx) -> OpDims:
    """Ops that mix one axis (every dim from ``axis`` on, for Softmax before opset 13)."""
    x = ctx.in_shape(0)
    if x is None:
        return OpDims()
    old_softmax = ctx.node.op_type in ("Softmax", "LogSoftmax", "Hardmax") and ctx.opset < 13
    arg = ctx.node.op_type in ("ArgMax", "ArgMin")  # whose axis defaults to 0
    axis = norm_axis(ctx.attr_int("axis", 1 if old_softmax else 0 if arg else -1), len(x))
    fixed = set(range(axis, len(x))) if old_softmax else {axis}
    if arg:
        return OpDims(
            _reduce_loops(ctx, x, fixed, keep=bool(ctx.attr_int("keepdims", 1)), summed=False)
        )
    return OpDims(axis_loops(ctx, fixed, args=(1,)))


@rule("CumSum", "CumProd")
def _cumsum(ctx: Ctx) -> OpDims:
    """A running sum (or product) mixes its axis (a constant input)."""
    x, axis = ctx.in_shape(0), ctx.ints(1)
    if x is None or not axis:
        return OpDims()
    return OpDims(axis_loops(ctx, {norm_axis(axis[0], len(x))}, args=(1,)))


def _reduce_loops(
    ctx: Ctx,
    x: Shape,
    axes: set[int],
    *,
    keep: bool,
    summed: bool,
) -> tuple[Loop, ...]:
    loops, j = [], 0
    for d in range(len(x)):
        if d in axes:
            kind, axis = ("sum", "tp") if summed else ("fixed", None)
            loops.append(
                ctx.loop(f"d{d}", {0: d}, {0: j} if keep else {}, kind=kind, unlabeled=axis)
            )
        else:
            loops.append(ctx.loop(f"d{d}", {0: d}, {0: j}))
        j += 1 if keep or d not in axes else 0
    return tuple(loops)


@rule(*REDUCTIONS)
def _reduce(ctx: Ctx) -> OpDims:
    """Kept dims split freely; a reduced dim splits only under ReduceSum (partial sums out).
    ReduceMean over a split dim would be partial too, but what follows it (RMSNorm's
    ``+ eps``, ``sqrt``) is not linear, so it is kept whole.
    """
    x = ctx.in_shape(0)
    if x is None:
        return OpDims()
    attr_axes = ctx.node.attr("axes")
    axes = ctx.ints(1) if ctx.n_in > 1 and ctx.node.inputs[1] else attr_axes
    if axes is None and ctx.n_in > 1 and ctx.node.inputs[1]:
        return OpDims(args=frozenset({1}))  # axes computed at run time: cannot tell
    if not axes:
        noop = ctx.attr_int("noop_with_empty_axes", 0)
        axes = () if noop else tuple(range(len(x)))
    reduced = {norm_axis(int(a), len(x)) for a in axes}  # type: ignore[union-attr]
    loops = _reduce_loops(
        ctx,
        x,
        reduced,
        keep=bool(ctx.attr_int("keepdims", 1)),
        summed=ctx.node.op_type == "ReduceSum",
    )
    return OpDims(loops, args=frozenset({1}), seq_tp=True)


# -- gathers and scatters: embeddings and expert routing -----------------------------------
@rule("Gather")
def _gather(ctx: Ctx) -> OpDims:
    """Embedding lookup: by the ids' batch/sequence, by hidden, or vocab-parallel (table
    rows split: each rank looks up the ids in its row range, masks the rest to zero, and
    the output holds partial sums). Gathering expert outputs back to their tokens (the
    MoE combine) is an all-to-all over ``ep``.
    """
    data, idx, out = ctx.in_shape(0), ctx.in_shape(1), ctx.out_shape(0)
    if data is None or idx is None or out is None:
        return OpDims()
    a, q = norm_axis(ctx.attr_int("axis", 0), len(data)), len(idx)
    table = ctx.is_param(0)
    loops = [ctx.loop(f"d{d}", {0: d}, {0: d}) for d in range(a)]
    loops += [ctx.loop(f"i{d}", {1: d}, {0: a + d}) for d in range(q)]
    loops += [
        ctx.loop(
            "hidden" if table else f"d{d}",
            {0: d},
            {0: d + q - 1},
            unlabeled="tp" if table else None,
        )
        for d in range(a + 1, len(data))
    ]
    loops.append(
        ctx.loop(
            "vocab",
            {0: a},
            {},
            kind="sum" if table else "fixed",
            axis="tp",
            notes=("vocab-parallel: mask ids outside this rank's rows",),
        )
    )
    extra: tuple[Strategy, ...] = ()
    if (
        not table
        and a == 0
        and feeds_experts(ctx.graph, ctx.params, ctx.node.inputs[0], down=False)
    ):
        extra = _expert_exchange(ctx, data_pos=0, token_inputs=(1,), rows_out=False)
    return OpDims(tuple(loops), extra=extra)


@rule("GatherElements")
def _gather_elements(ctx: Ctx) -> OpDims:
    """Data, indices and output share a rank; every dim but ``axis`` splits alike."""
    out = ctx.out_shape(0)
    if out is None:
        return OpDims()
    return OpDims(axis_loops(ctx, {norm_axis(ctx.attr_int("axis", 0), len(out))}))


@rule("ScatterND")
def _scatter_nd(ctx: Ctx) -> OpDims:
    """Rows addressed by the indices stay whole; the trailing (hidden) dims split alike in
    data, updates and output. Scattering token copies into per-expert buffers (the MoE
    dispatch) is an all-to-all over ``ep``.
    """
    data, idx, upd = ctx.in_shape(0), ctx.in_shape(1), ctx.in_shape(2)
    if data is None or idx is None or upd is None or not isinstance(idx[-1], int):
        return OpDims()
    depth, lead = idx[-1], len(idx) - 1
    loops = [
        ctx.loop("hidden", {0: d, 2: lead + d - depth}, {0: d}, unlabeled="tp")
        for d in range(depth, len(data))
    ]
    loops += [ctx.loop(f"u{d}", {1: d, 2: d}, {}, kind="fixed") for d in range(lead)]
    extra: tuple[Strategy, ...] = ()
    if feeds_experts(ctx.graph, ctx.params, ctx.node.outputs[0], down=True):
        extra = _expert_exchange(ctx, data_pos=0, token_inputs=(1, 2), rows_out=True)
    return OpDims(tuple(loops), extra=extra)


def _expert_exchange(
    ctx: Ctx,
    data_pos: int,
    token_inputs: tuple[int, ...],
    rows_out: bool,
) -> tuple[Strategy, ...]:
    """Tokens split over ``ep`` on their batch dim, expert rows split over ``ep`` on dim 0,
    and one all-to-all between the two layouts (GShard's dispatch and combine).
    """
    tok = next((i for i in token_inputs if ctx.in_shape(i) is not None), None)
    bdim = _token_dim(ctx, tok) if tok is not None else None
    if bdim is None:
        return ()
    built = Built(ctx)
    for i in token_inputs:
        built.ins[i] = {bdim: "ep"}
    built.ins[data_pos] = {0: "ep"}
    if rows_out:
        built.outs[0] = {0: "ep"}
        comm = Reshard("all_to_all", "ep", bdim, 0)
    else:
        shift = 0 if ctx.node.op_type != "Gather" else norm_axis(ctx.attr_int("axis", 0), 1)
        built.outs[0] = {bdim + shift: "ep"}
        comm = Reshard("all_to_all", "ep", 0, bdim + shift)
    name = "expert_dispatch" if rows_out else "expert_combine"
    return (
        built.strategy(
            name,
            (comm,),
            notes=("expert parallel: tokens travel to the rank holding their expert and back",),
        ),
    )


def _token_dim(ctx: Ctx, i: int) -> int | None:
    """The batch dim of a token tensor, else its first dim larger than 1 (the pairs)."""
    shape = ctx.in_shape(i)
    labels = ctx.labels.get(ctx.node.inputs[i], ())
    for d, lab in enumerate(labels):
        if lab == "batch":
            return d
    return next((d for d, s in enumerate(shape or ()) if s != 1), None)


# the contrib ops' rules file themselves in RULES on import (they use the helpers above)
from shardc.passes import contrib_rules  # noqa: E402, F401

FOLLOWER_OPS: frozenset[str] = frozenset(op for op, fn in RULES.items() if fn in _FOLLOWER_RULES)
"""Ops (qualified) whose layout follows their inputs; the graph walks above step over them."""
