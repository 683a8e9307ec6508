"""Shape rules for common ops, applied where ONNX's inference left dims unknown.

Which ops a rule covers is read from the op-family table (:mod:`shardc.ir.opfamilies`),
as the FLOP and sharding rules do; onnxruntime's contrib ops have their rules in
:mod:`shardc.frontend.contrib_shapes`.

ONNX stops inferring at the first op it has no schema for (``com.microsoft::Gelu``, a
custom kernel) and everything downstream loses its shape; these rules carry shapes
across such gaps. Each rule takes the input types and the small constant inputs (shape
tensors, axes) and returns output types, with ``None`` where it cannot tell.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from shardc.ir import Dim, DType, Node, TensorType
from shardc.ir.opfamilies import (
    ALONG_AXIS,
    ARITHMETIC,
    CHANNEL_NORMS,
    COMPARISONS,
    CONTRIB_ACTIVATIONS,
    LAYER_NORMS,
    MS,
    REDUCTIONS,
    SCANS,
    UNARY,
)
from shardc.registry import registrar

Consts = Sequence[tuple[int | float, ...] | None]
Types = Sequence[TensorType | None]
Rule = Callable[[Node, Types, Consts], list[TensorType | None]]

RULES: dict[str, Rule] = {}
rule = registrar(RULES)
"""Register a shape rule for ops, keyed as ``op`` or ``domain::op``."""


def broadcast(*shapes: tuple[Dim, ...]) -> tuple[Dim, ...] | None:
    """Numpy broadcasting over possibly symbolic dims; None if incompatible."""
    rank = max(len(s) for s in shapes)
    out: list[Dim] = []
    for i in range(rank):
        dims = [s[len(s) - rank + i] for s in shapes if len(s) - rank + i >= 0]
        known = {d for d in dims if d != 1}
        if not known:
            out.append(1)
        elif len(known) == 1:
            out.append(known.pop())
        else:
            ints = {d for d in known if isinstance(d, int)}
            if len(ints) > 1:
                return None
            out.append(ints.pop() if ints else None)
    return tuple(out)


class BadNode(Exception):
    """A node's attributes or constant inputs do not fit its input shapes (a user error:
    the frontend reports it as a ModelError naming the node).
    """


def _norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _axis(axis: object, rank: int, what: str = "axis", *, inclusive: bool = False) -> int:
    """``axis`` checked against ``rank`` (``-rank <= axis < rank``) and made non-negative.

    ``inclusive`` also allows ``rank`` itself (Flatten's axis).
    """
    top = rank + 1 if inclusive else rank
    if not isinstance(axis, int) or not -rank <= axis < top:
        raise BadNode(f"{what} {axis} is out of range for a rank-{rank} input")
    return axis + rank if axis < 0 else axis


def same_type(t: TensorType | None, dtype: DType | None = None) -> TensorType | None:
    if t is None:
        return None
    return TensorType(dtype or t.dtype, t.shape)


_COMPARE = frozenset(COMPARISONS)


@rule(*ARITHMETIC, *COMPARISONS)
def _elementwise(node: Node, ts: Types, cs: Consts) -> list[TensorType | None]:
    shapes = [t.shape for t in ts if t is not None and t.shape is not None]
    if len(shapes) != len(ts):
        return [None]
    shape = broadcast(*shapes)
    if shape is None:
        return [None]
    if node.op_type in _COMPARE:
        dtype = DType.BOOL
    elif node.op_type == "Where":
        dtype = ts[1].dtype  # type: ignore[union-attr]
    else:
        dtype = ts[0].dtype  # type: ignore[union-attr]
    return [TensorType(dtype, shape)]


# every op whose first output is its first input's shape and type (Not, IsNaN, IsInf: bool)
@rule(
    *UNARY,
    *CONTRIB_ACTIVATIONS,
    *LAYER_NORMS,
    *CHANNEL_NORMS,
    *(op for op in ALONG_AXIS if op not in ("TopK", "ArgMax", "ArgMin")),
    *SCANS,
    "Trilu",
    f"{MS}RotaryEmbedding",
)
def _unary(node: Node, ts: Types, cs: Consts) -> list[TensorType | None]:
    out = same_type(ts[0] if ts else None)
    if node.op_type in ("Not", "IsNaN", "IsInf") and out is not None:
        out = TensorType(DType.BOOL, out.shape)
    return [out] + [None] * (len(node.outputs) - 1)


@rule("Cast")
def _cast(node: Node, ts: Types, cs: Consts) -> list[TensorType | None]:
    to = node.attr("to")
    return [same_type(ts[0], DType(int(to)) if isinstance(to, int) else None)]


@rule("CastLike")
def _cast_like(node: Node, ts: Types, cs: Consts) -> list[TensorType | None]:
    return [same_type(ts[0], ts[1].dtype if ts[1] else None)]


@rule("MatMul")
def _matmul(node: Node, ts: Types, cs: Consts) -> list[TensorType | None]:
    a, b = ts[0], ts[1]
    if a is None or b is None or a.shape is None or b.shape is None:
        return [None]
    sa, sb = list(a.shape), list(b.shape)
    if not sa or not sb:
        raise BadNode("an input is a scalar; MatMul needs inputs of rank 1 or more")
    squeeze_a, squeeze_b = len(sa) == 1, len(sb) == 1
    if squeeze_a:
        sa = [1, *sa]
    if squeeze_b:
        sb = [*sb, 1]
    batch = broadcast(tuple(sa[:-2]), tuple(sb[:-2])) if len(sa) > 2 or len(sb) > 2 else ()
    if batch is None:
        return [None]
    shape = [*batch, *([] if squeeze_a else [sa[-2]]), *([] if squeeze_b else [sb[-1]])]
    return [TensorType(a.dtype, tuple(shape))]


@rule("Gemm")
def _gemm(node: Node, ts: Types, cs: Consts) -> list[TensorType | None]:
    a, b = ts[0], ts[1]
    if a is None or b is None or a.rank != 2 or b.rank != 2:
        return [None]
    m = a.shape[1] if node.attr("transA", 0) else a.shape[0]  # type: ignore[index]
    n = b.shape[0] if node.attr("transB", 0) else b.shape[1]  # type: ignore[index]
    return [TensorType(a.dtype, (m, n))]


@rule("Transpose")
def _transpose(node: Node, ts: Types, cs: Consts) -> list[TensorType | None]:
    t = ts[0]
    if t is None or t.shape is None:
        return [None]
    perm = _ints(node.attr("perm")) or tuple(reversed(range(len(t.shape))))
    if sorted(perm) != list(range(len(t.shape))):
        raise BadNode(f"perm {list(perm)} is not a permutation of the {len(t.shape)} dims of "
                      "its input")
    return [TensorType(t.dtype, tuple(t.shape[p] for p in perm))]


@rule("Reshape")
def _reshape(node: Node, ts: Types, cs: Consts) -> list[TensorType | None]:
    t, target = ts[0], cs[1] if len(cs) > 1 else None
    if t is None or target is None:
        return [None]
    allow_zero = bool(node.attr("allowzero", 0))
    dims: list[Dim] = []
    for i, wanted in enumerate(int(x) for x in target):
        if wanted == 0 and not allow_zero and t.shape is not None and i < len(t.shape):
            dims.append(t.shape[i])
        else:
            dims.append(wanted)
    if -1 in dims:
        k = dims.index(-1)
        dims[k] = None
        others = [d for j, d in enumerate(dims) if j != k]
        if t.is_static and all(isinstance(d, int) for d in others):
            known = math.prod(int(d) for d in others if isinstance(d, int))
            dims[k] = (t.numel or 0) // known if known else 0
    return [TensorType(t.dtype, tuple(dims))]


def _axes(node: Node, cs: Consts, index: int) -> tuple[int, ...] | None:
    axes = node.attr("axes")
    if isinstance(axes, tuple):
        return tuple(int(a) for a in axes)
    if len(cs) > index and cs[index] is not None:
        return tuple(int(a) for a in cs[index])  # type: ignore[union-attr]
    return None


@rule("Unsqueeze")
def _unsqueeze(node: Node, ts: Types, cs: Consts) -> list[TensorType | None]:
    t, axes = ts[0], _axes(node, cs, 1)
    if t is None or t.shape is None or axes is None:
        return [None]
    rank = len(t.shape) + len(axes)
    norm = sorted(_axis(a, rank, "axes entry") for a in axes)
    if len(set(norm)) != len(norm):
        raise BadNode(f"axes {list(axes)} name a dim twice")
    dims = list(t.shape)
    for a in norm:
        dims.insert(a, 1)
    return [TensorType(t.dtype, tuple(dims))]


@rule("Squeeze")
def _squeeze(node: Node, ts: Types, cs: Consts) -> list[TensorType | None]:
    t = ts[0]
    if t is None or t.shape is None:
        return [None]
    axes = _axes(node, cs, 1)
    if axes is None:
        if not t.is_static:
            return [None]
        return [TensorType(t.dtype, tuple(d for d in t.shape if d != 1))]
    drop = {_axis(a, len(t.shape), "axes entry") for a in axes}
    return [TensorType(t.dtype, tuple(d for i, d in enumerate(t.shape) if i not in drop))]


@rule("Concat")
def _concat(node: Node, ts: Types, cs: Consts) -> list[TensorType | None]:
    if not ts or any(t is None or t.shape is None for t in ts):
        return [None]
    first = ts[0]
    assert first is not None and first.shape is not None
    axis = _axis(node.attr("axis", 0), len(first.shape))
    if any(len(t.shape) != len(first.shape) for t in ts):  # type: ignore[union-attr,arg-type]
        raise BadNode("its inputs have different ranks")
    parts = [t.shape[axis] for t in ts]  # type: ignore[union-attr,index]
    total: Dim = sum(parts) if all(isinstance(p, int) for p in parts) else None  # type: ignore[arg-type]
    dims = list(first.shape)
    dims[axis] = total
    return [TensorType(first.dtype, tuple(dims))]


@rule("Gather")
def _gather(node: Node, ts: Types, cs: Consts) -> list[TensorType | None]:
    data, idx = ts[0], ts[1]
    if data is None or idx is None or data.shape is None or idx.shape is None:
        return [None]
    axis = _axis(node.attr("axis", 0), len(data.shape))
    shape = (*data.shape[:axis], *idx.shape, *data.shape[axis + 1 :])
    return [TensorType(data.dtype, shape)]


@rule("Shape")
def _shape(node: Node, ts: Types, cs: Consts) -> list[TensorType | None]:
    t = ts[0]
    if t is None or t.shape is None:
        return [None]
    r = len(t.shape)
    start = max(0, min(r, _norm_axis(int(node.attr("start", 0)), r)))  # type: ignore[arg-type]
    end_attr = node.attr("end")
    end = r if end_attr is None else max(0, min(r, _norm_axis(int(end_attr), r)))  # type: ignore[arg-type]
    return [TensorType(DType.INT64, (max(0, end - start),))]


@rule("Expand")
def _expand(node: Node, ts: Types, cs: Consts) -> list[TensorType | None]:
    t, target = ts[0], cs[1] if len(cs) > 1 else None
    if t is None or t.shape is None or target is None:
        return [None]
    shape = broadcast(t.shape, tuple(int(x) for x in target))
    return [None if shape is None else TensorType(t.dtype, shape)]


@rule(*REDUCTIONS)
def _reduce(node: Node, ts: Types, cs: Consts) -> list[TensorType | None]:
    t = ts[0]
    if t is None or t.shape is None:
        return [None]
    axes = _axes(node, cs, 1)
    keep = bool(node.attr("keepdims", 1))
    given = len(node.inputs) > 1 and bool(node.inputs[1])
    if axes is None and given:  # axes computed at run time: which dims shrink is unknown
        return [TensorType(t.dtype, (None,) * len(t.shape) if keep else None)]
    if axes is None or not axes:
        if node.attr("noop_with_empty_axes", 0):  # axes absent or empty
            return [t]
        axes = tuple(range(len(t.shape)))
    drop = {_axis(a, len(t.shape), "axes entry") for a in axes}
    dims = [1 if i in drop else d for i, d in enumerate(t.shape) if keep or i not in drop]
    return [TensorType(t.dtype, tuple(dims))]


@rule("Flatten")
def _flatten(node: Node, ts: Types, cs: Consts) -> list[TensorType | None]:
    t = ts[0]
    if t is None or not t.is_static:
        return [None]
    assert t.shape is not None
    axis = _axis(node.attr("axis", 1), len(t.shape), inclusive=True)
    left = 1
    for d in t.shape[:axis]:
        left *= int(d or 0)
    return [TensorType(t.dtype, (left, (t.numel or 0) // left if left else 0))]


@rule("Split")
def _split(node: Node, ts: Types, cs: Consts) -> list[TensorType | None]:
    t, n = ts[0], len(node.outputs)
    if t is None or t.shape is None:
        return [None] * n
    axis = _axis(node.attr("axis", 0), len(t.shape))
    sizes = node.attr("split") or (cs[1] if len(cs) > 1 else None)
    total = t.shape[axis]
    if sizes is None:
        if not isinstance(total, int):
            return [None] * n
        chunk = -(-total // n)
        sizes = tuple(min(chunk, total - i * chunk) for i in range(n))
    outs = []
    for s in sizes:  # type: ignore[union-attr]
        dims = list(t.shape)
        dims[axis] = int(s)
        outs.append(TensorType(t.dtype, tuple(dims)))
    return outs  # type: ignore[return-value]


@rule("ConstantOfShape")
def _constant_of_shape(node: Node, ts: Types, cs: Consts) -> list[TensorType | None]:
    target = cs[0] if cs else None
    if target is None:
        return [None]
    return [TensorType(DType.FLOAT, tuple(int(x) for x in target))]


def _ints(value: object) -> tuple[int, ...]:
    """An INTS attribute as ints (empty when absent)."""
    return tuple(int(v) for v in value) if isinstance(value, tuple) else ()


def apply_rule(node: Node, ts: Types, cs: Consts) -> list[TensorType | None] | None:
    """Output types for ``node``, or None when no rule covers its op."""
    key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
    fn = RULES.get(key)
    if fn is None:
        return None
    outs = fn(node, ts, cs)
    return (outs + [None] * len(node.outputs))[: len(node.outputs)]
