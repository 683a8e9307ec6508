"""The sharding vocabulary: how a tensor is laid out over a logical device mesh.

Borrowed from JAX's ``PartitionSpec`` and onnx-ir's multi-device specs, and bound to IR
values (never to names a later pass might change):

* A **logical mesh** has named axes: ``dp`` (data), ``tp`` (tensor), ``ep`` (expert),
  ``sp`` (sequence). Their sizes are chosen later by the partitioner and their devices
  later still by placement, so nothing here knows a degree or a device: rules say *which*
  axis splits *which* dim, and :func:`legal_for` checks a choice of sizes afterwards.
* A :class:`TensorSharding` has one entry per tensor dim: the axis that splits it into
  equal contiguous blocks (block ``r`` on the rank with coordinate ``r`` along the axis),
  or ``None`` when every rank along the other axes holds the whole dim. An axis splits at
  most one dim. An axis that splits nothing replicates the tensor along it.
* ``partial`` names an axis over which the value is held as **partial sums**: the true
  tensor is the sum over that axis's ranks of what each holds (the output of a
  row-parallel MatMul before its all-reduce). A partial axis splits no dim.
* :func:`reshard` names the collectives that turn one sharding into another, axis by
  axis, as :class:`Reshard` steps the cost model can time from a tensor's bytes and the
  axis size; two steps are local and free (``slice``: replicated to split; ``scale``:
  replicated to partial, which emit realises by adding the value on one rank only).
* A :class:`Strategy` is one legal way to run one node: the sharding it needs on each
  input, the sharding of each output, and any collective the strategy itself performs
  (an expert all-to-all); :func:`shard_scale` turns it into the fractions of FLOPs and of
  each operand one device handles, for the roofline.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from shardc.cost.compute import ShardScale
from shardc.cost.ops import NodeCost
from shardc.ir import Graph, Node

AXES: tuple[str, ...] = ("dp", "tp", "ep", "sp")
"""Logical mesh axes the rules use: data, tensor, expert and sequence parallelism."""

LOCAL_OPS: tuple[str, ...] = ("slice", "scale")
"""Reshard steps that need no communication."""

_PARTIAL = "partial"


@dataclass(frozen=True, slots=True)
class TensorSharding:
    """Layout of one tensor: per dim, the mesh axis splitting it (or None), plus partial sums."""

    dims: tuple[str | None, ...]
    partial: str | None = None

    def __post_init__(self) -> None:
        used = [a for a in self.dims if a is not None]
        if len(used) != len(set(used)):
            raise ValueError(f"an axis may split one dim only: {self.dims}")
        if self.partial is not None and self.partial in used:
            raise ValueError(f"axis {self.partial!r} both splits a dim and holds partial sums")

    @staticmethod
    def replicated(rank: int) -> TensorSharding:
        """Every rank holds the whole tensor."""
        return TensorSharding((None,) * rank)

    @staticmethod
    def split(rank: int, dim: int, axis: str, partial: str | None = None) -> TensorSharding:
        """Dim ``dim`` (negative counts from the end) split along ``axis``, the rest whole."""
        dims: list[str | None] = [None] * rank
        dims[dim] = axis
        return TensorSharding(tuple(dims), partial)

    @staticmethod
    def parse(text: str) -> TensorSharding:
        """Read the ``__str__`` form back: ``[dp, -, tp]+partial(tp)``."""
        m = re.fullmatch(r"\s*\[([^\]]*)\]\s*(?:\+\s*partial\((\w+)\))?\s*", text)
        if m is None:
            raise ValueError(f"not a sharding: {text!r} (expected e.g. '[dp, -, tp]+partial(tp)')")
        body = [t.strip() for t in m.group(1).split(",")] if m.group(1).strip() else []
        dims = tuple(None if t == "-" else t for t in body)
        return TensorSharding(dims, m.group(2))

    @property
    def rank(self) -> int:
        """Number of tensor dims this sharding describes."""
        return len(self.dims)

    @property
    def is_replicated(self) -> bool:
        """True when every rank holds the whole, fully reduced tensor."""
        return self.partial is None and all(a is None for a in self.dims)

    @property
    def split_axes(self) -> tuple[str, ...]:
        """Axes that split some dim, in dim order."""
        return tuple(a for a in self.dims if a is not None)

    @property
    def axes(self) -> frozenset[str]:
        """Every axis this layout depends on (splits and the partial axis)."""
        extra = {self.partial} if self.partial else set()
        return frozenset(self.split_axes) | extra

    def dim_of(self, axis: str) -> int | None:
        """The dim ``axis`` splits, or None."""
        for d, a in enumerate(self.dims):
            if a == axis:
                return d
        return None

    def state(self, axis: str) -> int | str | None:
        """What ``axis`` does here: the dim it splits, ``"partial"``, or None (replicated)."""
        if self.partial == axis:
            return _PARTIAL
        return self.dim_of(axis)

    def local_fraction(self, axis_sizes: Mapping[str, int]) -> float:
        """Fraction of the tensor's elements one rank stores (partial sums count whole)."""
        return 1.0 / math.prod(axis_sizes.get(a, 1) for a in self.split_axes)

    def __str__(self) -> str:
        body = ", ".join(a or "-" for a in self.dims)
        return f"[{body}]" + (f"+partial({self.partial})" if self.partial else "")


@dataclass(frozen=True, slots=True)
class Reshard:
    """One step of turning a layout into another along one mesh axis.

    ``op`` is a collective of :data:`shardc.cost.comm.COLLECTIVES` or a free local step
    (:data:`LOCAL_OPS`). ``src_dim`` is the tensor dim the axis split before (all_gather,
    all_to_all), ``dst_dim`` the one it splits after (reduce_scatter, all_to_all, slice).
    In a :class:`Strategy`'s own ``comm`` the two dims may belong to different tensors
    (an expert all-to-all moves rows of an input into rows of the output); its volume is
    then that of the node's first output.
    """

    op: str
    axis: str
    src_dim: int | None = None
    dst_dim: int | None = None

    @property
    def communicates(self) -> bool:
        """False for the free local steps (slice, scale)."""
        return self.op not in LOCAL_OPS

    def __str__(self) -> str:
        dims = [f"{self.src_dim}" if self.src_dim is not None else "", ""]
        if self.dst_dim is not None:
            dims[1] = f"{self.dst_dim}"
        where = "" if dims == ["", ""] else f" dim {dims[0] or '·'}→{dims[1] or '·'}"
        return f"{self.op}({self.axis}){where}"


# Cheap steps first (slices shrink what later collectives move); gathers grow data, last.
_ORDER = {
    "slice": 0,
    "reduce_scatter": 1,
    "all_reduce": 2,
    "all_to_all": 3,
    "all_gather": 4,
    "scale": 5,
}


def _axis_steps(axis: str, s: int | str | None, d: int | str | None) -> list[Reshard]:
    """The steps that move one axis from state ``s`` to state ``d`` (a dim, partial, None)."""
    src = s if isinstance(s, int) else None
    dst = d if isinstance(d, int) else None
    if s == d:
        return []
    if s == _PARTIAL:
        return [Reshard("reduce_scatter" if dst is not None else "all_reduce", axis, None, dst)]
    if s is None:
        return [Reshard("scale", axis)] if d == _PARTIAL else [Reshard("slice", axis, None, dst)]
    gather = Reshard("all_gather", axis, src, None)
    if d is None:
        return [gather]
    if d == _PARTIAL:
        return [gather, Reshard("scale", axis)]
    return [Reshard("all_to_all", axis, src, dst)]


def _apply(dims: list[str | None], step: Reshard) -> None:
    if step.src_dim is not None:
        dims[step.src_dim] = None
    if step.dst_dim is not None:
        dims[step.dst_dim] = step.axis


def reshard(src: TensorSharding, dst: TensorSharding) -> tuple[Reshard, ...]:
    """The steps, in a valid order, that turn layout ``src`` into ``dst``.

    Per axis: partial → replicated is an all_reduce; partial → split on d a
    reduce_scatter; split → replicated an all_gather; split on i → split on j an
    all_to_all; replicated → split a free slice; equal, nothing. Steps are ordered cheap
    first, except that an axis only enters a dim after the axis holding it has left.
    """
    if src.rank != dst.rank:
        raise ValueError(f"cannot reshard rank {src.rank} {src} into rank {dst.rank} {dst}")
    pending = [
        step
        for axis in sorted(src.axes | dst.axes)
        for step in _axis_steps(axis, src.state(axis), dst.state(axis))
    ]
    dims = list(src.dims)
    ordered: list[Reshard] = []
    while pending:
        ready = [p for p in pending if p.dst_dim is None or dims[p.dst_dim] in (None, p.axis)]
        step = min(ready or pending, key=lambda p: (_ORDER[p.op], p.axis))
        pending.remove(step)
        _apply(dims, step)
        ordered.append(step)
    return tuple(ordered)


def reshard_volumes(
    src: TensorSharding, dst: TensorSharding, nbytes: float, axis_sizes: Mapping[str, int]
) -> tuple[tuple[Reshard, float], ...]:
    """Each step of ``reshard(src, dst)`` with the bytes to give the cost model.

    Bytes follow nccl-tests as :func:`shardc.cost.comm.collective_time` expects them: the
    buffer per rank for all_reduce, the whole array over the axis for all_gather and
    reduce_scatter, one rank's send buffer for all_to_all; 0 for local steps. ``nbytes``
    is the whole tensor; what a rank holds shrinks with every axis splitting it.
    """
    dims = list(src.dims)
    out: list[tuple[Reshard, float]] = []
    for step in reshard(src, dst):
        local = nbytes / math.prod(axis_sizes.get(a, 1) for a in dims if a is not None)
        size = axis_sizes.get(step.axis, 1)
        volume = {
            "all_reduce": local,
            "reduce_scatter": local,
            "all_to_all": local,
            "all_gather": local * size,
        }.get(step.op, 0.0)
        out.append((step, volume))
        _apply(dims, step)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Strategy:
    """One legal way to run a node.

    ``inputs`` has one entry per input position of the node (``None`` for omitted inputs
    and for arguments read whole, such as shapes and axes); ``outputs`` one per output
    (``None`` where the rank is unknown: replicated). ``comm`` lists collectives the
    strategy itself performs; resharding between nodes is not in it (a row-parallel
    MatMul says ``partial`` on its output and whoever consumes it reshards). ``divides``
    are extra ``(axis, n)`` facts a degree must divide (head counts found in the graph),
    and ``notes`` what emit must know (masking out-of-shard ids, weight layouts).
    """

    name: str
    inputs: tuple[TensorSharding | None, ...]
    outputs: tuple[TensorSharding | None, ...]
    comm: tuple[Reshard, ...] = ()
    divides: tuple[tuple[str, int], ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def axes(self) -> frozenset[str]:
        """Mesh axes the strategy splits work along."""
        acc: set[str] = {r.axis for r in self.comm}
        for s in (*self.inputs, *self.outputs):
            if s is not None:
                acc |= s.axes
        return frozenset(acc)

    @property
    def is_replicated(self) -> bool:
        """True for the strategy that runs the whole node on every rank."""
        return not self.axes

    def __str__(self) -> str:
        ins = ", ".join("·" if s is None else str(s) for s in self.inputs)
        outs = ", ".join("?" if s is None else str(s) for s in self.outputs)
        comm = f" comm {', '.join(map(str, self.comm))}" if self.comm else ""
        return f"{self.name}: ({ins}) -> ({outs}){comm}"


def _merge(a: TensorSharding | None, b: TensorSharding | None) -> TensorSharding | None:
    if a is None or b is None:
        return a if b is None else b
    if a.rank != b.rank or (a.partial and b.partial and a.partial != b.partial):
        raise ValueError("conflict")
    dims: list[str | None] = []
    for x, y in zip(a.dims, b.dims, strict=True):
        if x and y and x != y:
            raise ValueError("conflict")
        dims.append(x or y)
    return TensorSharding(tuple(dims), a.partial or b.partial)


def combine(a: Strategy, b: Strategy) -> Strategy | None:
    """Both strategies at once on different axes (``batch+column``), or None if they clash.

    They clash when they share an axis or split the same dim of some tensor.
    """
    if a.axes & b.axes or len(a.inputs) != len(b.inputs) or len(a.outputs) != len(b.outputs):
        return None
    try:
        ins = tuple(_merge(x, y) for x, y in zip(a.inputs, b.inputs, strict=True))
        outs = tuple(_merge(x, y) for x, y in zip(a.outputs, b.outputs, strict=True))
    except ValueError:
        return None
    return Strategy(
        f"{a.name}+{b.name}",
        ins,
        outs,
        a.comm + b.comm,
        tuple(dict.fromkeys(a.divides + b.divides)),
        tuple(dict.fromkeys(a.notes + b.notes)),
    )


def shard_scale(
    strategy: Strategy, node_cost: NodeCost, axis_sizes: Mapping[str, int]
) -> ShardScale:
    """Fractions of the node's FLOPs and of each input and output one device handles.

    An operand's fraction is one over the product of the axes splitting it (partial sums
    are stored whole); the FLOPs are divided by every axis the strategy uses, since each
    splits the iteration space once: column-parallel MatMul on tp=8 gives flops 1/8,
    X 1, W 1/8, Y 1/8.
    """

    def frac(shardings: Sequence[TensorSharding | None], count: int) -> tuple[float, ...]:
        return tuple(
            shardings[i].local_fraction(axis_sizes)  # type: ignore[union-attr]
            if i < len(shardings) and shardings[i] is not None
            else 1.0
            for i in range(count)
        )

    work = 1.0 / math.prod(axis_sizes.get(a, 1) for a in strategy.axes)
    n_in = len(node_cost.input_bytes) or len(strategy.inputs)
    n_out = len(node_cost.output_bytes) or len(strategy.outputs)
    return ShardScale(work, frac(strategy.inputs, n_in), frac(strategy.outputs, n_out))


@dataclass(frozen=True)
class Illegal:
    """Why a strategy does not fit given degrees (for ``explain``)."""

    reason: str
    value: str = ""
    dims: tuple[int, ...] = field(default=())


def why_illegal(
    strategy: Strategy, node: Node, graph: Graph, axis_sizes: Mapping[str, int]
) -> Illegal | None:
    """None when ``strategy`` fits ``axis_sizes`` on ``node``, else the first reason.

    Every sharding must have its tensor's rank, every split dim must divide evenly by
    its axis size (a symbolic dim is assumed to, until bound), and every ``divides``
    fact must hold. Axes missing from ``axis_sizes`` have size 1.
    """
    pairs = [
        *zip(node.inputs, strategy.inputs, strict=False),
        *zip(node.outputs, strategy.outputs, strict=False),
    ]
    if len(strategy.inputs) != len(node.inputs) or len(strategy.outputs) != len(node.outputs):
        return Illegal("strategy has a different number of operands than the node")
    for name, s in pairs:
        if s is None or not name:
            continue
        t = graph.values[name].type
        if t is None or t.shape is None or t.rank != s.rank:
            return Illegal(f"sharding {s} does not match the rank of {t}", name)
        for d, axis in enumerate(s.dims):
            size, k = t.shape[d], axis_sizes.get(axis, 1) if axis else 1
            if isinstance(size, int) and size % k:
                return Illegal(f"dim {d} of size {size} does not divide by {axis}={k}", name, (d,))
    for axis, n in strategy.divides:
        k = axis_sizes.get(axis, 1)
        if n % k:
            return Illegal(f"{axis}={k} does not divide {n} ({', '.join(strategy.notes)})")
    return None


def legal_for(strategy: Strategy, node: Node, graph: Graph, axis_sizes: Mapping[str, int]) -> bool:
    """True when ``strategy`` can run ``node`` with these axis sizes (see why_illegal)."""
    return why_illegal(strategy, node, graph, axis_sizes) is None
