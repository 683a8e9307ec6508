"""The plan as per-device ONNX models: each rank's nodes, weight shards and comm nodes.

Why one walk per (stage, tensor-parallel rank): every replica of a stage runs the same
nodes on the same weight shards; only the peers of its Send/Recv differ. So the walk
builds a template per (stage, tp rank) and each replica instantiates it with its ranks.

The walk replays, on one device, what :meth:`StrategyTable.resolve` decided for the
stage's tensor-parallel degree: each node reads its inputs in the layout its strategy
wants, and whatever layout is missing is made from a copy on hand with the steps of
:func:`shardc.sharding.reshard` — a collective becomes a ``shardc`` node; a slice is
cut from a weight at emission time or taken from an activation with a ``Slice``; a
scale is a ``Mul``. Values cross stages whole: the sender makes a replicated
copy, every receiving tp rank gets one from the sender of the same index modulo the
sender's degree.

Weights are never copied whole into a shard that needs a piece: the slice is cut from
the original array (``Model.weights.array``) and recorded in the model's metadata
(``shardc.slices``), which :mod:`shardc.emit.check` uses to prove nothing was lost or
duplicated.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from shardc.cost.compute import ShardScale
from shardc.cost.network import group_collective, point_to_point
from shardc.cost.phases import prefill_time
from shardc.emit.experts import ExpertEmitter
from shardc.emit.onnx_model import attribute_proto
from shardc.emit.program import (
    DOMAIN,
    DOMAIN_VERSION,
    Comm,
    Compute,
    DeviceProgram,
    Programs,
)
from shardc.errors import ShardcError
from shardc.ir import Graph, Node, TensorType
from shardc.partition.split import tp_rule
from shardc.passes.precision import priced_graph
from shardc.sharding import Reshard, Strategy, TensorSharding, reshard, shard_scale

if TYPE_CHECKING:
    from shardc.pipeline import CompileState

_COLLECTIVE = {
    "all_reduce": "AllReduce",
    "all_gather": "AllGather",
    "reduce_scatter": "ReduceScatter",
    "all_to_all": "AllToAll",
}
_COST_OP = {v: k for k, v in _COLLECTIVE.items()}
"""Node type -> the cost model's name for the collective."""
_SHAPE_ARGS = {"Reshape": 1, "Expand": 1}
"""Ops whose shape argument must shrink when their output is split."""


class EmitError(ShardcError):
    """The plan asks for something the emitter cannot write (names the node and why)."""


@dataclass(frozen=True)
class SliceRecord:
    """Where a local initializer came from: ``source[start:stop]`` along ``dim`` (dim -1:
    the whole tensor).
    """

    source: str
    dim: int
    start: int
    stop: int
    pieces: int = 1
    """The dim holds this many equal parts; the slice is taken from each."""
    size: int = 0
    """The source's length along ``dim`` (0 for a whole tensor)."""

    def to_json(self) -> dict[str, Any]:
        """Plain data for the model metadata."""
        return {
            "source": self.source,
            "dim": self.dim,
            "start": self.start,
            "stop": self.stop,
            "pieces": self.pieces,
            "size": self.size,
        }


@dataclass(frozen=True)
class _Pending:
    """A comm step in a template; peers named by (stage, tp rank) until instantiated."""

    op: str
    value: str
    output: str
    nbytes: float
    peer: tuple[int, int] | None = None
    tag: int = 0
    axis: int = -1
    concat_axis: int = -1
    """AllToAll only: the dim the received pieces are joined along (the one split before)."""


@dataclass
class _Template:
    """One (stage, tp rank) program before replicas give it ranks."""

    stage: int
    tp_rank: int
    tp: int
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: dict[str, onnx.TensorProto] = field(default_factory=dict)
    slices: dict[str, SliceRecord] = field(default_factory=dict)
    steps: list[tuple[str, Any]] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    weight_bytes: int = 0


@dataclass(frozen=True)
class Emission:
    """Every rank's program and ONNX model."""

    programs: Programs
    models: Mapping[int, onnx.ModelProto]


def stage_nodes(state: CompileState) -> list[tuple[str, ...]]:
    """Node names of each pipeline stage, in graph order (ends ride with the end stages)."""
    part, chain = state.partition, state.blocks
    assert part is not None and chain is not None
    repeated = chain.repeated or tuple(b.index for b in chain.blocks)
    if not repeated:  # no nodes at all: every output is an input or a weight
        return [() for _ in part.stages]
    first_rep, last_rep = repeated[0], repeated[-1]
    out: list[tuple[str, ...]] = []
    for j, st in enumerate(part.stages):
        lo, hi = st.blocks
        keep = set(range(repeated[lo], repeated[hi] + 1))
        if j == 0:
            keep |= {b.index for b in chain.blocks if b.index < first_rep}
        if j == len(part.stages) - 1:
            keep |= {b.index for b in chain.blocks if b.index > last_rep}
        out.append(tuple(n for b in chain.blocks if b.index in keep for n in b.nodes))
    return out


@runtime_checkable
class _ProtoWeights(Protocol):
    """A weight source that also hands out TensorProtos (the frontend's OnnxWeightSource)."""

    def tensor_proto(self, name: str, *, with_data: bool = True) -> onnx.TensorProto: ...

    def array(self, name: str) -> np.ndarray: ...


def _static_shape(t: TensorType | None) -> list[int] | None:
    """The dims of ``t`` when every one is a known integer, else None."""
    if t is None or t.shape is None:
        return None
    dims = [int(d) for d in t.shape if isinstance(d, int)]
    return dims if len(dims) == len(t.shape) else None


class _Walk:
    """Builds the template of one (stage, tp rank)."""

    def __init__(
        self,
        state: CompileState,
        stage: int,
        tp_rank: int,
        tp: int,
        nodes: Sequence[str],
        resolution: Any,
        cross: Mapping[str, tuple[int, tuple[int, ...]]],
        tags: Mapping[str, int],
        tps: Sequence[int],
    ) -> None:
        self.state, self.graph = state, state.graph
        assert state.strategies is not None, "emission runs after the strategy table is built"
        self.table = state.strategies
        self.t = _Template(stage, tp_rank, tp)
        self.rank, self.tp = tp_rank, tp
        self.nodes = nodes
        self.res = resolution
        self.cross, self.tags, self.tps = cross, tags, tps
        self.copies: dict[str, dict[TensorSharding | None, str]] = defaultdict(dict)
        self.fresh = 0
        self.initializers = set(state.model.graph.initializers)
        self.lazy: dict[str, Node] = {}
        """Weight views (see :meth:`_weight_view`) by output, made on demand per layout."""
        for node in self.graph.nodes:  # in order, so a view of a view is seen as one
            if self._weight_view(node):
                self.lazy[node.outputs[0]] = node
        self.pieces = self._fused()
        self.experts = ExpertEmitter(self)

    def _fused(self) -> dict[str, int]:
        """Values on the way from a split producer to a ``Split`` cutting the split dim into
        k parts (GPT-2's fused Q/K/V): their weights must be sliced part by part.
        """
        graph, out = self.graph, {}
        for name in self.nodes:
            node = graph.node(name)
            if node.op_type != "Split":
                continue
            layouts = [self.res.layouts.get(o) for o in node.outputs if o]
            axis = self._split_axis(node)
            if not layouts or any(x is None or x.dim_of("tp") != axis for x in layouts):
                continue  # a Split along another dim than tp's cuts no fused weight
            k, chain, v = len(layouts), [], node.inputs[0]
            for _ in range(6):  # back through followers to the split producer
                chain.append(v)
                prod = graph.producer(v)
                if prod is None or prod.name not in self.table.follows:
                    break
                v = next((i for i in prod.present_inputs if i not in self.initializers), "")
                if not v:
                    break
            for c in chain:
                out[c] = k
        return out

    # -- naming -----------------------------------------------------------------------
    def _name(self, base: str, what: str) -> str:
        self.fresh += 1
        return f"{base}__{what}{self.fresh}"

    def _emit(self, node: onnx.NodeProto) -> None:
        self.t.nodes.append(node)

    # -- values -----------------------------------------------------------------------
    def _whole(self, v: str) -> TensorSharding | None:
        t = self.graph.values[v].type
        if t is None or t.shape is None:
            return None
        return TensorSharding.replicated(len(t.shape))

    def _initializer(self, v: str, want: TensorSharding | None, pieces: int = 1) -> str:
        """The local initializer for weight ``v`` in layout ``want`` (cut from the original).

        ``pieces`` > 1: the split dim concatenates that many equal parts (fused Q/K/V
        split apart later), so the rank takes its share of each part.
        """
        dim = want.dim_of("tp") if want is not None else None
        name = v if dim is None else f"{v}__tp{dim}" + (f"x{pieces}" if pieces > 1 else "")
        if name in self.t.initializers:
            return name
        weights = self.state.model.weights
        if not isinstance(weights, _ProtoWeights):
            raise EmitError(f"weight {v!r}: the model has no weight source to cut shards from")
        if dim is None:
            proto = weights.tensor_proto(v, with_data=True)
            self.t.slices[name] = SliceRecord(v, -1, 0, 0)
        else:
            array = weights.array(v)
            size = array.shape[dim]
            if size % (self.tp * pieces):
                raise EmitError(f"weight {v!r} dim {dim} ({size}) does not split {self.tp} ways")
            part = size // pieces
            step = part // self.tp
            lo, hi = self.rank * step, (self.rank + 1) * step
            if getattr(weights, "declared_only", False):
                # no bytes to cut (schedule only): the shard's type and dims, never its data
                proto = weights.tensor_proto(v, with_data=False)
                proto = onnx.TensorProto(name=name, data_type=proto.data_type,
                                         dims=[*array.shape[:dim], size // self.tp,
                                               *array.shape[dim + 1:]])
            else:
                rows = np.concatenate(
                    [np.arange(k * part + lo, k * part + hi) for k in range(pieces)]
                )
                piece = np.ascontiguousarray(np.take(array, rows, axis=dim))
                proto = numpy_helper.from_array(piece, name)
            self.t.slices[name] = SliceRecord(v, dim, lo, hi, pieces, size)
        proto.name = name
        self.t.initializers[name] = proto
        self.t.weight_bytes += _nbytes(proto)
        return name

    def get(self, v: str, want: TensorSharding | None, pieces: int = 1) -> str:
        """The local name of value ``v`` in layout ``want`` (None: as it is on hand)."""
        if v in self.initializers:
            if want is not None and want.partial:
                unscaled = self._initializer(v, TensorSharding(want.dims), pieces)
                return self._scale(unscaled)
            return self._initializer(v, want, pieces)
        if v in self.lazy:
            return self._dequantized(v, want, pieces)
        have = self.copies.get(v)
        if not have:
            raise EmitError(f"value {v!r} is not available on stage {self.t.stage}")
        if want is None:
            return next(iter(have.values()))
        if want in have:
            return have[want]
        best: tuple[int, TensorSharding | None, tuple[Reshard, ...]] | None = None
        for src in have:
            base = src if src is not None else self._whole(v)
            if base is None or base.rank != want.rank:
                continue
            steps = reshard(base, want)
            cost = sum(s.communicates for s in steps)
            if best is None or cost < best[0]:
                best = (cost, src, steps)
        if best is None:
            return next(iter(have.values()))
        _, src, steps = best
        name = have[src]
        layout = src if src is not None else self._whole(v)
        assert layout is not None
        for step in steps:
            name = self._reshard(v, name, layout, step)
            layout = _after(layout, step)
            have[layout] = name
        return name

    def _weight_view(self, node: Node) -> bool:
        """A view of a stored weight: DequantizeLinear (a QDQ weight, with stored scale and
        zero point), QuantizeLinear (a QDQ graph requantizing a transposed weight) or
        Transpose (a tied LM head reading the embedding) of a stored weight or of another
        such view, whose one output is no graph output. Made on each
        layout's slice of the weight, rather than whole and then sliced, it lets tensor
        parallelism split the weight instead of copying it to every rank; each stage makes
        its own rather than receiving the float weight.
        """
        return (
            node.op_type in ("DequantizeLinear", "QuantizeLinear", "Transpose")
            and node.domain in ("", "com.microsoft")
            and len(node.outputs) == 1
            and node.outputs[0] not in self.graph.outputs
            and all(v in self.initializers or v in self.lazy for v in node.present_inputs)
        )

    def _stored(self, name: str, layout: TensorSharding | None, pieces: int) -> str:
        """A stored weight's slice, or a weight view's (made on demand)."""
        if name in self.lazy:
            return self.get(name, layout, pieces)
        return self._initializer(name, layout, pieces)

    def _dequantized(self, v: str, want: TensorSharding | None, pieces: int) -> str:
        """``v`` = DequantizeLinear(weight, scale, zero point) in layout ``want``: the
        dequantization of this rank's slice, scales and zero points cut alongside when
        they run along the split dim (per-axis on it, or blocked), else read whole.
        """
        base = TensorSharding(want.dims) if want is not None else None
        dim = base.dim_of("tp") if base is not None else None
        key = base if dim is not None else self._whole(v)
        made = self.copies[v].get(key)
        if made is None and self.lazy[v].op_type == "Transpose":
            made = self._transposed(v, dim, pieces)
            self.copies[v][key] = made
        if made is None:
            node = self.lazy[v]
            w = self.graph.values[node.inputs[0]].type
            rank = len(w.shape) if w is not None and w.shape is not None else 0
            axis = int(node.attr("axis", 1) or 0) % max(rank, 1)  # type: ignore[arg-type]
            ins = []
            for i, name in enumerate(node.inputs):
                t = self.graph.values[name].type if name else None
                r = len(t.shape) if t is not None and t.shape is not None else 0
                if not name:
                    ins.append("")
                elif dim is None or (i > 0 and (r == 0 or (r == 1 and axis != dim))):
                    ins.append(self._stored(name, None, 1))
                else:
                    d = dim if i == 0 or r == rank else 0
                    layout = TensorSharding(tuple("tp" if j == d else None for j in range(r)))
                    ins.append(self._stored(name, layout, pieces))
            made = self._name(v, "dq")
            proto = onnx.NodeProto(op_type=node.op_type, domain=node.domain, name=made)
            proto.input.extend(ins)
            proto.output.append(made)
            proto.attribute.extend(attribute_proto(a) for a in node.attributes)
            self._emit(proto)
            self.copies[v][key] = made
        if want is not None and want.partial:
            return self._scale(made)
        return made

    def _transposed(self, v: str, dim: int | None, pieces: int) -> str:
        """``v`` = Transpose(weight) split along its ``dim``: the weight's slice along the
        dim ``perm`` brings there, transposed.
        """
        node = self.lazy[v]
        t = self.graph.values[node.inputs[0]].type
        rank = len(t.shape) if t is not None and t.shape is not None else 0
        given = node.attr("perm", None)
        perm = [int(p) for p in given] if given else list(range(rank))[::-1]  # type: ignore[union-attr]
        src = None
        if dim is not None:
            src = TensorSharding(tuple("tp" if perm[dim] == j else None for j in range(rank)))
        made = self._name(v, "transposed")
        weight = self._stored(node.inputs[0], src, pieces)
        proto = helper.make_node("Transpose", [weight], [made], name=made)
        proto.attribute.extend(attribute_proto(a) for a in node.attributes)
        self._emit(proto)
        return made

    def _scale(self, name: str) -> str:
        """Replicated → partial sums: each of the tp ranks contributes 1/tp."""
        const = self._name(name, "inv_tp")
        self.t.initializers[const] = numpy_helper.from_array(
            np.array(1.0 / self.tp, dtype=np.float32), const
        )
        out = self._name(name, "scaled")
        cast = self._name(name, "inv_tp_cast")
        self._emit(helper.make_node("CastLike", [const, name], [cast], name=cast))
        self._emit(helper.make_node("Mul", [name, cast], [out], name=out))
        return out

    def _reshard(self, v: str, name: str, layout: TensorSharding, step: Reshard) -> str:
        if step.axis != "tp":
            raise EmitError(f"value {v!r}: resharding along {step.axis!r} is not emitted yet")
        if step.op == "scale":
            return self._scale(name)
        if step.op == "slice":
            return self._split(v, name, step.dst_dim)
        out = self._name(v, step.op)
        nbytes = self._bytes(v) * layout.local_fraction({"tp": self.tp})
        if step.op == "all_gather":
            nbytes *= self.tp
        dim = step.dst_dim if step.op in ("reduce_scatter", "all_to_all") else step.src_dim
        concat = -1
        if step.op == "all_to_all":
            # split along the new dim, send piece j to rank j, join what arrives along the
            # dim that was split: one exchange turns a src_dim split into a dst_dim split
            assert step.src_dim is not None
            concat = step.src_dim
        op = _COLLECTIVE[step.op]
        pending = _Pending(
            op, name, out, nbytes, axis=dim if dim is not None else -1, concat_axis=concat
        )
        self._comm_node(op, [name], [out], pending)
        return out

    def _split(self, v: str, name: str, dim: int | None) -> str:
        """Replicated → this rank's piece along ``dim`` (a local Slice, no traffic)."""
        assert dim is not None
        t = self.graph.values[v].type
        size = t.shape[dim] if t is not None and t.shape is not None else None
        if not isinstance(size, int):
            raise EmitError(f"value {v!r}: cannot slice a dim of unknown size")
        step = size // self.tp
        out = self._name(v, "slice")
        if (self.state.model.opset() or 18) < 10:  # Slice-1: bounds are attributes
            lo, hi = self.rank * step, (self.rank + 1) * step
            slice1 = helper.make_node("Slice", [name], [out], name=out, starts=[lo], ends=[hi])
            slice1.attribute.append(helper.make_attribute("axes", [dim]))
            self._emit(slice1)
            return out
        consts = {}
        for key, val in (
            ("starts", self.rank * step),
            ("ends", (self.rank + 1) * step),
            ("axes", dim),
        ):
            cname = self._name(v, key)
            self.t.initializers[cname] = numpy_helper.from_array(
                np.array([val], dtype=np.int64), cname
            )
            consts[key] = cname
        self._emit(
            helper.make_node(
                "Slice", [name, consts["starts"], consts["ends"], consts["axes"]], [out], name=out
            )
        )
        return out

    # -- the walk -----------------------------------------------------------------------
    def run(self) -> _Template:
        """Inputs and receives first (in producer order), then the nodes, sending each
        cross-stage value and gathering each graph output as soon as it is made.
        """
        graph, initializers = self.graph, self.initializers
        produced = {o for n in self.nodes for o in graph.node(n).outputs if o}
        needed: list[str] = []
        for n in self.nodes:
            for v in _reads(graph.node(n), graph):
                if v not in produced and v not in initializers and v not in needed:
                    needed.append(v)
        order = {o: i for i, n in enumerate(graph.nodes) for o in n.outputs if o}
        for v in sorted(needed, key=lambda x: (order.get(x, -1), x)):
            if v in self.lazy:  # a weight view: made here from the stored weight, not sent
                continue
            if v in graph.inputs:
                self.t.inputs.append(v)
            elif v in self.cross:
                src = self.cross[v][0]
                self._comm_node(
                    "Recv",
                    [],
                    [v],
                    _Pending(
                        "Recv",
                        v,
                        v,
                        self._bytes(v),
                        peer=(src, self.rank % self.tps[src]),
                        tag=self.tags[v],
                    ),
                    recv_of=v,
                )
            else:
                raise EmitError(f"stage {self.t.stage} reads {v!r}, which no stage produces")
            self.copies[v][self._whole(v)] = v
        for name in self.nodes:
            node = graph.node(name)
            strat: Strategy = self.res.strategies[name]
            if node.outputs and node.outputs[0] in self.lazy:  # made per layout by get()
                self.t.steps.append(("node", name))
                continue
            k = max((self.pieces.get(o, 1) for o in node.outputs if o), default=1)
            if node.qualified_op == "com.microsoft::Attention" and _tp_dim(strat) is not None:
                k = 3  # its QKV weight and bias hold Q, K and V side by side
            if self.experts.owns(name):  # rows chosen by routing: no Slice may cut them
                outs = self.experts.node(node)
            else:
                ins = [
                    self.get(v, strat.inputs[i] if i < len(strat.inputs) else None, k)
                    if v
                    else ""
                    for i, v in enumerate(node.inputs)
                ]
                outs = list(node.outputs)
                for k, out in enumerate(outs):
                    layout = self.res.layouts.get(out) if out else None
                    if out in graph.outputs and layout is not None and not layout.is_replicated:
                        outs[k] = f"{out}__local"
                self._node(node, strat, ins, outs)
            self.t.steps.append(("node", name))
            for out, local in zip(node.outputs, outs, strict=True):
                if not out:
                    continue
                self.copies[out][self.res.layouts.get(out) or self._whole(out)] = local
                if out in graph.outputs:
                    whole = self.get(out, self._whole(out))
                    if whole != out:
                        self._emit(helper.make_node("Identity", [whole], [out], name=f"{out}__out"))
                    self.t.outputs.append(out)
                if out in self.cross and self.cross[out][0] == self.t.stage:
                    self._send(out)
        if self.t.stage == len(self.tps) - 1:  # outputs no node makes: inputs, weights
            made = {o for n in graph.nodes for o in n.outputs if o}
            for out in (o for o in graph.outputs if o not in made):
                if out in initializers:
                    self._initializer(out, None)
                elif out not in self.t.inputs:
                    self.t.inputs.append(out)
                self.t.outputs.append(out)
        return self.t

    def _bytes(self, v: str) -> float:
        """Size of ``v`` as the plan prices it (``--dtype``): for the timeline's transfer
        times only; the types written into the program are the model's (``self.graph``).
        """
        return float(priced_graph(self.state).values[v].nbytes or 0)

    def _send(self, v: str) -> None:
        """The replicated value to every receiving rank whose index maps onto this one."""
        whole = self.get(v, self._whole(v))
        for k in self.cross[v][1]:
            for r in range(self.tps[k]):
                if r % self.tp == self.rank:
                    self._comm_node(
                        "Send",
                        [whole],
                        [],
                        _Pending("Send", whole, "", self._bytes(v), peer=(k, r), tag=self.tags[v]),
                    )

    def _comm_node(
        self, op: str, ins: list[str], outs: list[str], pending: _Pending, recv_of: str = ""
    ) -> None:
        attrs: dict[str, Any] = {"tag": pending.tag}
        if op in ("Send", "Recv"):
            attrs["peer"] = -1  # set per replica
        else:
            attrs["group"] = [-1]
        if recv_of:
            t = self.graph.values[recv_of].type
            shape = _static_shape(t)
            if t is None or shape is None:
                raise EmitError(f"{recv_of!r} crosses stages with an unknown shape")
            attrs["dtype"] = int(t.dtype.value)  # the model's own, whatever --dtype priced
            # typed explicitly: a scalar's shape is an empty list, whose type ONNX cannot guess
            ints = onnx.AttributeProto.INTS
            attrs["shape"] = helper.make_attribute("shape", shape, attr_type=ints)
        if pending.axis >= 0:
            attrs["axis"] = pending.axis
        name = self._name(pending.value or (outs[0] if outs else op), op.lower())
        shape_attr = attrs.pop("shape", None)
        node = helper.make_node(op, ins, outs, name=name, domain=DOMAIN, **attrs)
        if shape_attr is not None:  # typed above; kept in make_node's sorted attribute order
            node.attribute.append(shape_attr)
            node.attribute.sort(key=lambda a: a.name)
        self._emit(node)
        self.t.steps.append(("comm", (len(self.t.nodes) - 1, pending)))

    def _node(self, node: Node, strat: Strategy, ins: list[str], outs: list[str]) -> None:
        graph = self.graph
        split_out = any(
            s is not None and s.dim_of("tp") is not None for s in strat.outputs[: len(outs)]
        )
        if node.op_type in _SHAPE_ARGS and split_out:
            shape = _static_shape(graph.values[node.outputs[0]].type)
            layout = strat.outputs[0]
            assert layout is not None
            if shape is None:
                raise EmitError(f"{node.name}: a split {node.op_type} needs a static output shape")
            d = layout.dim_of("tp")
            assert d is not None
            shape[d] //= self.tp
            cname = self._name(node.name, "shape")
            self.t.initializers[cname] = numpy_helper.from_array(
                np.array(shape, dtype=np.int64), cname
            )
            ins = list(ins)
            ins[_SHAPE_ARGS[node.op_type]] = cname
        if node.op_type == "Split" and len(ins) > 1 and ins[1] and self._splits_axis(node, strat):
            sizes = [self._dim(o, self._split_axis(node)) // self.tp for o in node.outputs]
            cname = self._name(node.name, "split")
            self.t.initializers[cname] = numpy_helper.from_array(
                np.array(sizes, dtype=np.int64), cname
            )
            ins = list(ins)
            ins[1] = cname
        data = strat.inputs[0] if node.op_type == "Gather" and strat.inputs else None
        if data is not None and data.dim_of("tp") == self._split_axis(node):
            self._masked_gather(node, ins, outs[0])
            return
        proto = onnx.NodeProto(op_type=node.op_type, domain=node.domain, name=node.name)
        proto.input.extend(ins)
        proto.output.extend(outs)
        proto.attribute.extend(attribute_proto(a) for a in node.attributes)
        _split_attributes(node.qualified_op, strat, proto, self.tp)
        group = int(node.attr("group", 1) or 1)  # type: ignore[arg-type]
        if node.op_type in ("Conv", "ConvInteger") and group > 1 and _tp_dim(strat) == 1:
            for a in proto.attribute:  # a grouped conv split by channels: tp-th of the groups
                if a.name == "group":
                    a.i = group // self.tp
        self._emit(proto)

    def _splits_axis(self, node: Node, strat: Strategy) -> bool:
        """True when tp splits the dim ``node`` cuts along (its ``split`` sizes shrink);
        a Split along another dim (MLA's rope/nope cut of heads-split tensors) keeps them.
        """
        axis = self._split_axis(node)
        return any(s is not None and s.dim_of("tp") == axis for s in strat.outputs)

    def _dim(self, v: str, axis: int) -> int:
        """The known size of dim ``axis`` of value ``v``."""
        t = self.graph.values[v].type
        size = t.shape[axis] if t is not None and t.shape is not None else None
        if not isinstance(size, int):
            raise EmitError(f"value {v!r}: dim {axis} has an unknown size")
        return size

    def _split_axis(self, node: Node) -> int:
        axis = int(node.attr("axis", 0) or 0)  # type: ignore[arg-type]
        t = self.graph.values[node.inputs[0]].type
        return axis % len(t.shape) if t is not None and t.shape is not None else axis

    def _masked_gather(self, node: Node, ins: list[str], out: str) -> None:
        """Vocab-parallel lookup: ids outside this rank's rows read row 0 and are zeroed,
        so the ranks' partial results sum to the full lookup.
        """
        weight, ids = ins[0], ins[1]
        record = self.t.slices.get(weight)
        if record is not None:
            start, stop = record.start, record.stop
        else:  # a table computed on the rank (a dequantized weight), cut by a local Slice
            step = self._dim(node.inputs[0], self._split_axis(node)) // self.tp
            start, stop = self.rank * step, (self.rank + 1) * step
        n = self._name
        consts = {}
        for key, val, shape in (
            ("lo", start, ()),
            ("hi", stop, ()),
            ("zero", 0, ()),
            ("axes", -1, (1,)),
        ):
            c = n(node.name, key)
            self.t.initializers[c] = numpy_helper.from_array(
                np.array(val, dtype=np.int64).reshape(shape), c
            )
            consts[key] = c
        ids64, shifted, ge, lt, inside, safe, got, mask, maskf = (
            n(node.name, k)
            for k in ("ids64", "shift", "ge", "lt", "in", "safe", "rows", "mask", "maskf")
        )
        axis = int(node.attr("axis", 0) or 0)  # type: ignore[arg-type]
        for proto in (
            helper.make_node("Cast", [ids], [ids64], name=ids64, to=onnx.TensorProto.INT64),
            helper.make_node("Sub", [ids64, consts["lo"]], [shifted], name=shifted),
            helper.make_node("GreaterOrEqual", [ids64, consts["lo"]], [ge], name=ge),
            helper.make_node("Less", [ids64, consts["hi"]], [lt], name=lt),
            helper.make_node("And", [ge, lt], [inside], name=inside),
            helper.make_node("Where", [inside, shifted, consts["zero"]], [safe], name=safe),
            helper.make_node("Gather", [weight, safe], [got], name=got, axis=axis),
            helper.make_node("Unsqueeze", [inside, consts["axes"]], [mask], name=mask),
            helper.make_node("CastLike", [mask, got], [maskf], name=maskf),
            helper.make_node("Mul", [got, maskf], [out], name=node.name),
        ):
            self._emit(proto)


_HEAD_COUNTS = ("num_heads", "kv_num_heads")
_HEADS_OPS = frozenset(
    f"com.microsoft::{op}"
    for op in ("Attention", "MultiHeadAttention", "GroupQueryAttention", "RotaryEmbedding")
)


def _split_attributes(op: str, strat: Strategy, proto: onnx.NodeProto, tp: int) -> None:
    """Divide the attributes that count what a rank holds when tp splits it: the heads of
    onnxruntime's attention ops, MatMulNBits' ``N`` (output columns) and ``K`` (input
    features, a row split). Without this the kernels read the shard's shape as whole.
    """

    def split(i: int, dim: int, outputs: bool = False) -> bool:
        side = strat.outputs if outputs else strat.inputs
        s = side[i] if i < len(side) else None
        return s is not None and s.dim_of("tp") == dim

    divide: set[str] = set()
    if op == "com.microsoft::MatMulNBits":
        out = strat.outputs[0] if strat.outputs else None
        if out is not None and out.dim_of("tp") == len(out.dims) - 1:
            divide.add("N")
        if split(1, 1):
            divide.add("K")
    elif op in _HEADS_OPS and _tp_dim(strat) is not None and _tp_dim(strat) != 0:
        divide.update((*_HEAD_COUNTS, "qkv_hidden_sizes"))
    for a in proto.attribute:
        if a.name not in divide:
            continue
        if a.type == onnx.AttributeProto.INT and a.i > 0:
            a.i //= tp
        elif a.type == onnx.AttributeProto.INTS:
            a.ints[:] = [v // tp for v in a.ints]


def _tp_dim(strat: Strategy) -> int | None:
    """The dim of the first output that tp splits."""
    out = strat.outputs[0] if strat.outputs else None
    return out.dim_of("tp") if out is not None else None


def _after(layout: TensorSharding, step: Reshard) -> TensorSharding:
    dims = list(layout.dims)
    partial = layout.partial
    if step.op in ("all_reduce", "reduce_scatter") and partial == step.axis:
        partial = None
    if step.op == "scale":
        partial = step.axis
    if step.src_dim is not None:
        dims[step.src_dim] = None
    if step.dst_dim is not None:
        dims[step.dst_dim] = step.axis
    return TensorSharding(tuple(dims), partial)


def _nbytes(t: onnx.TensorProto) -> int:
    return (
        int(np.prod(t.dims, dtype=np.int64))
        * np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    )


def _cross_stage(
    graph: Graph, stages: Sequence[Sequence[str]]
) -> tuple[dict[str, tuple[int, tuple[int, ...]]], dict[str, int]]:
    """Values made on one stage and read on others: producer stage, reader stages; and a
    tag per value (its rank in producer order), the same on the Send and the Recv.
    """
    home = {n: j for j, names in enumerate(stages) for n in names}
    readers: dict[str, set[int]] = defaultdict(set)
    made: dict[str, int] = {}
    for n in graph.nodes:
        if n.name not in home:
            continue
        for o in n.outputs:
            if o:
                made[o] = home[n.name]
        for v in _reads(n, graph):
            if v in made and made[v] != home[n.name]:
                readers[v].add(home[n.name])
    order = {o: i for i, n in enumerate(graph.nodes) for o in n.outputs if o}
    cross = {v: (made[v], tuple(sorted(r))) for v, r in readers.items()}
    tags = {v: i + 1 for i, v in enumerate(sorted(cross, key=lambda x: order[x]))}
    return cross, tags


def emit(state: CompileState) -> Emission:
    """Every rank's program and ONNX model for ``state``'s plan."""
    part, graph, table, topo = state.partition, state.graph, state.strategies, state.topology
    assert part is not None and table is not None and topo is not None
    stages = stage_nodes(state)
    cross, tags = _cross_stage(graph, stages)
    tps = [s.tp for s in part.stages]
    rule = tp_rule(graph, table, state.options.partition.pins.rule)
    offsets, acc = [], 0
    for s in part.stages:
        offsets.append(acc)
        acc += part.dp * s.tp

    def rank_of(stage: int, replica: int, tp_rank: int) -> int:
        return offsets[stage] + replica * tps[stage] + tp_rank

    kinds = {d.name: d.kind for d in topo.compute_devices}
    programs: list[DeviceProgram] = []
    models: dict[int, onnx.ModelProto] = {}
    for j, st in enumerate(part.stages):
        sizes = {"tp": st.tp}
        resolution = table.resolve(graph, rule.choose(sizes), sizes)
        for t in range(st.tp):
            tmpl = _Walk(state, j, t, st.tp, stages[j], resolution, cross, tags, tps).run()
            # the gradient sync's ring: this stage and TP rank in every replica, by replica
            # (the order of the schedule's sync group)
            replicas = [part.placement.devices[(q, j, t)] for q in range(part.dp)]
            sync_links = _ring_links(topo, replicas) if part.mode == "training" else ()
            for r in range(part.dp):
                rank = rank_of(j, r, t)
                device = part.placement.devices[(r, j, t)]
                group = tuple(rank_of(j, r, k) for k in range(st.tp))
                members = [part.placement.devices[(r, j, k)] for k in range(st.tp)]
                model, steps = _instantiate(
                    state, tmpl, rank, group, members, rank_of, r, kinds[device], resolution
                )
                models[rank] = model
                programs.append(
                    DeviceProgram(
                        rank=rank,
                        device=device,
                        kind=st.kind,
                        stage=j,
                        replica=r,
                        tp_rank=t,
                        tp=st.tp,
                        steps=steps,
                        inputs=tuple(tmpl.inputs),
                        outputs=tuple(tmpl.outputs),
                        memory_bytes=st.memory_bytes,
                        weight_bytes=tmpl.weight_bytes,
                        sync_links=sync_links,
                    )
                )
    programs.sort(key=lambda p: p.rank)
    if not getattr(state.model.weights, "declared_only", False):  # a what-if has no bytes
        _refuse_unloadable(models)
    sync = {s.index: s.sync_seconds for s in part.stages}
    sync_bytes = {s.index: s.sync_bytes for s in part.stages}
    return Emission(
        Programs(
            tuple(programs),
            part.mode,
            part.schedule,
            part.microbatches,
            part.dp,
            len(part.stages),
            stage_sync_seconds=sync,
            stage_sync_bytes=sync_bytes,
        ),
        models,
    )


_ORT_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft", DOMAIN})
_ORT_CHECK_BYTES = 256 << 20


def _refuse_unloadable(models: Mapping[int, onnx.ModelProto]) -> None:
    """Stop before writing a plan onnxruntime would refuse: every device program must load
    (comm nodes stood in, see :mod:`shardc.emit.standin`). Skipped for programs with ops
    onnxruntime does not know (custom domains) or weights too large to copy cheaply.
    """
    from shardc.emit.standin import onnxruntime_problem

    for rank, model in sorted(models.items()):
        if any(n.domain not in _ORT_DOMAINS for n in model.graph.node):
            continue
        inits = model.graph.initializer
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in inits):
            continue  # data kept on disk: nothing in memory to load
        if sum(len(t.raw_data) for t in inits) > _ORT_CHECK_BYTES:
            continue
        problem = onnxruntime_problem(model, run=False)
        if problem:
            raise EmitError(
                f"rank {rank}: the device program is wrong, {problem}",
                hint="a shardc bug: please report it with the model and the options used",
            )


def _instantiate(
    state: CompileState,
    tmpl: _Template,
    rank: int,
    group: tuple[int, ...],
    members: Sequence[str],
    rank_of: Any,
    replica: int,
    kind: Any,
    resolution: Any,
) -> tuple[onnx.ModelProto, tuple[Compute | Comm, ...]]:
    """One replica's copy of a template: ranks in the comm nodes, timings on the steps."""
    part, topo, graph = state.partition, state.topology, state.graph
    assert part is not None and topo is not None and state.costs is not None
    nodes = [_copy(n) for n in tmpl.nodes]
    steps: list[Compute | Comm] = []
    run: list[str] = []
    sizes = {"tp": tmpl.tp}
    device = members[tmpl.tp_rank]

    def flush() -> None:
        if not run:
            return
        groups: dict[ShardScale, list[Any]] = defaultdict(list)
        for n in run:
            cost = state.costs.nodes[n]  # type: ignore[union-attr]
            groups[shard_scale(resolution.strategies[n], cost, sizes)].append(cost)
        seconds = sum(prefill_time(g, kind, shard=s).seconds for s, g in groups.items())
        steps.append(Compute(tuple(run), seconds, _label(state, run)))
        run.clear()

    for what, item in tmpl.steps:
        if what == "node":
            run.append(item)
            continue
        flush()
        index: int
        p: _Pending
        index, p = item
        node = nodes[index]
        peer = rank_of(p.peer[0], replica, p.peer[1]) if p.peer is not None else -1
        if p.op in ("Send", "Recv"):
            assert p.peer is not None, f"{p.op} of {p.value!r} has no peer"
            _set_int(node, "peer", peer)
            other = part.placement.devices[(replica, p.peer[0], p.peer[1])]
            a, b = (device, other) if p.op == "Send" else (other, device)
            est = point_to_point(topo, a, b, p.nbytes)
            route = topo.route(a, b)
            links = tuple(f"{u}<->{v}" for u, v in zip(route.nodes, route.nodes[1:], strict=False))
            comm = Comm(
                p.op, p.value, p.output, p.nbytes, (), peer, p.tag, -1, "p2p", est.seconds, links
            )
        else:
            del node.attribute[:]
            node.attribute.extend(
                [helper.make_attribute("group", list(group)), helper.make_attribute("tag", p.tag)]
            )
            op = _COST_OP[p.op]
            est = group_collective(topo, op, p.nbytes, members)
            node.attribute.append(helper.make_attribute("algorithm", est.algorithm))
            if p.axis >= 0:
                node.attribute.append(helper.make_attribute("axis", p.axis))
            if p.concat_axis >= 0:
                node.attribute.append(helper.make_attribute("concat_axis", p.concat_axis))
            links = _ring_links(topo, members)
            comm = Comm(
                p.op,
                p.value,
                p.output,
                p.nbytes,
                group,
                -1,
                p.tag,
                p.axis,
                est.algorithm,
                est.seconds,
                links,
            )
        steps.append(comm)
    flush()
    values = graph.values
    inputs = [_value_info(values[v], graph.extra) for v in tmpl.inputs]
    outputs = [_value_info(values[v], graph.extra) for v in tmpl.outputs]
    initializers = [tmpl.initializers[k] for k in sorted(tmpl.initializers)]
    g = helper.make_graph(nodes, f"{graph.name}_rank{rank}", inputs, outputs, initializers)
    opsets = dict(state.model.opset_imports)
    opsets[DOMAIN] = DOMAIN_VERSION
    model = helper.make_model(
        g,
        opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets.items())],
        producer_name="shardc",
        # IR 4 let initializers be more than graph inputs; device models rely on it
        ir_version=max(state.model.ir_version, 4),
    )
    meta = {
        "shardc.rank": str(rank),
        "shardc.device": device,
        "shardc.stage": str(tmpl.stage),
        "shardc.replica": str(replica),
        "shardc.tp_rank": str(tmpl.tp_rank),
        "shardc.tp_group": json.dumps(list(group)),
        "shardc.slices": json.dumps(
            {k: v.to_json() for k, v in sorted(tmpl.slices.items())}, sort_keys=True
        ),
    }
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    return model, tuple(steps)


def _label(state: CompileState, run: Sequence[str]) -> str:
    chain = state.blocks
    assert chain is not None
    blocks = sorted({chain.block_of(n) for n in run})
    roles = {chain.blocks[b].role for b in blocks}
    if roles == {"repeated"}:
        rep = chain.repeated
        idx = [rep.index(b) for b in blocks]
        return f"block {idx[0]}" if len(idx) == 1 else f"blocks {idx[0]}-{idx[-1]}"
    return "+".join(sorted(roles))


def _ring_links(topo: Any, members: Sequence[str]) -> tuple[str, ...]:
    """Links a ring over ``members`` crosses (each neighbour pair's route)."""
    if len(members) < 2:
        return ()
    out: list[str] = []
    for a, b in zip(members, [*members[1:], members[0]], strict=True):
        route = topo.route(a, b)
        out += [f"{u}<->{v}" for u, v in zip(route.nodes, route.nodes[1:], strict=False)]
    return tuple(dict.fromkeys(out))


def _copy(n: onnx.NodeProto) -> onnx.NodeProto:
    out = onnx.NodeProto()
    out.CopyFrom(n)
    return out


def _set_int(node: onnx.NodeProto, name: str, value: int) -> None:
    for a in node.attribute:
        if a.name == name:
            a.i = value
            return
    node.attribute.append(helper.make_attribute(name, value))


def _reads(node: Any, graph: Any) -> list[str]:
    """The node's inputs, then the values of ``graph`` its bodies (If/Loop/Scan) capture:
    a rank must hold those too, though no edge of the outer graph says so.
    """
    names = list(node.present_inputs)
    stack = list(node.subgraphs)
    while stack:
        body = stack.pop(0)
        names += [v for v in body.outer if v in graph.values and v not in names]
        for inner in body.nodes:
            stack.extend(inner.subgraphs)
    return names


def _value_info(v: Any, extra: Mapping[str, bytes]) -> onnx.ValueInfoProto:
    t = v.type
    if t is None:
        kept = extra.get(f"type/{v.name}")
        if kept is None:
            return helper.make_empty_tensor_value_info(v.name)
        info = onnx.ValueInfoProto(name=v.name)
        info.type.ParseFromString(kept)  # a sequence or optional, as the model declared it
        return info
    return helper.make_tensor_value_info(
        v.name, t.dtype.value, None if t.shape is None else list(t.shape)
    )
