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

This module is the core the rule families share: :class:`Loop`, :class:`OpDims`,
:class:`Ctx`, the ``RULES`` registry and its ``@rule`` decorator, the shape helpers and
the walks over the graph around a node. The rules themselves live in one module per op
family, imported at the bottom so that importing this module files every rule:
:mod:`~shardc.passes.elementwise_rules`, :mod:`~shardc.passes.view_rules`,
:mod:`~shardc.passes.product_rules`, :mod:`~shardc.passes.reduction_rules`,
:mod:`~shardc.passes.gather_rules` and :mod:`~shardc.passes.contrib_rules`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

from shardc.ir import Graph, Node
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


# -- followers -----------------------------------------------------------------------------
def _follower(linear: str, args: Iterable[int] = ()) -> Callable[[Rule], Rule]:
    """Mark a rule's op as a follower, with how partial sums pass it."""

    def deco(fn: Rule) -> Rule:
        def wrapped(ctx: Ctx) -> OpDims:
            dims = fn(ctx)
            return OpDims(dims.loops, follows=True, linear=linear, args=frozenset(args))

        _FOLLOWER_RULES.add(wrapped)
        return wrapped

    return deco


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


# the rule families file themselves in RULES on import (they use the helpers above), in
# the order they were written in; product_loops is re-exported for the contrib rules
from shardc.passes import elementwise_rules, view_rules  # noqa: E402, F401, I001
from shardc.passes.product_rules import product_loops  # noqa: E402, F401
from shardc.passes import reduction_rules, gather_rules  # noqa: E402, F401
from shardc.passes import contrib_rules  # noqa: E402, F401

FOLLOWER_OPS: frozenset[str] = frozenset(op for op, fn in RULES.items() if fn in _FOLLOWER_RULES)
"""Ops (qualified) whose layout follows their inputs; the graph walks above step over them."""
