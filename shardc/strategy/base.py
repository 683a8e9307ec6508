"""The vocabulary every sharding rule speaks: :class:`Loop`, :class:`OpDims`, the
:class:`Ctx` a rule reads its node through, the ``RULES`` registry with its ``@rule``
decorator, and the shape helpers that line tensor dims up as loops (broadcasting, a
concat axis, a reshape's dim groups).

Why a module of its own: these depend on nothing but the IR, and every rule module (the
families imported by :mod:`shardc.strategy.rules`, the contrib rules) is written
in them; keeping them apart from the graph walks and the rules keeps each module small.
Import them from :mod:`shardc.strategy.rules`, which re-exports them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property

from shardc.ir import Graph, Node
from shardc.ir.types import Dim
from shardc.registry import registrar
from shardc.sharding import Strategy

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
