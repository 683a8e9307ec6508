"""Ring attention in a context-parallel device file: one attention rewritten blockwise.

:func:`shardc.emit.context.context_model` calls :func:`ring_nodes` where the attention's
``P·V`` ran (:class:`~shardc.partition.ring.RingAttention` names its nodes). Copy ``c``
packs the K and V chunks at their gather points into one flat tensor, and for ``t = 0 ..
cp − 1`` holds the chunk of copy ``j = c − t (mod cp)``: it Sends it on (``t < cp − 1``),
runs its views, scores and mask columns ``j`` as block ``t`` and folds the block into the
running row max ``m``, sum ``l`` and output ``o`` (online softmax:
``m' = max(m, rowmax S)``, ``l' = l·e^(m−m') + Σ e^(S−m')``, ``o' = o·e^(m−m') +
e^(S−m')·V``), then Recvs the next chunk. The attention's output is ``o / l``. The order
is the lowering's (:func:`shardc.passes.lower_context._ring_steps`), comm for comm.

A block whose mask rows for this copy are all masked (every entry ``-inf`` or at the
dtype's lowest, as transformers builds causal masks) is skipped: its weights would be
``e^(-huge)`` = 0 exactly. The mask is evaluated once here when it is computed from
constants alone; when it reads an input, every block runs (still exact). Block 0 is the
copy's own, so the running max is finite from the first block on and no row divides 0
by 0.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from shardc.plan.program import DOMAIN, Comm

ShapeOf = Callable[[str], np.ndarray]
"""A Reshape/Expand target by name (an initializer or a Constant node's value)."""


class _Out:
    """The nodes and constants the rewrite adds, named under one attention's prefix."""

    def __init__(self, prefix: str, consts: list[onnx.TensorProto]) -> None:
        self.prefix = prefix
        self.consts = consts
        self.nodes: list[onnx.NodeProto] = []
        self.made: set[str] = set()

    def name(self, what: str) -> str:
        return f"{self.prefix}_{what}"

    def const(self, what: str, values: Any) -> str:
        name = self.name(what)
        if name not in self.made:
            self.made.add(name)
            self.consts.append(numpy_helper.from_array(np.array(values, np.int64), name))
        return name

    def op(self, op: str, ins: list[str], what: str, **attrs: Any) -> str:
        out = self.name(what)
        self.nodes.append(helper.make_node(op, ins, [out], name=out, **attrs))
        return out


def ring_nodes(
    a: Any,
    stash: Mapping[str, onnx.NodeProto],
    c: int,
    cp: int,
    chunk: int,
    take: Callable[[str], Comm],
    rows: Callable[[str, int], str],
    shape_of: ShapeOf,
    consts: list[onnx.TensorProto],
    skip: frozenset[int] = frozenset(),
    zigzag: Callable[[], Any] | None = None,
) -> list[onnx.NodeProto]:
    """Copy ``c``'s nodes for attention ``a`` (see the module doc). ``stash`` holds its
    original nodes (inputs already renamed), ``take(op)`` the next priced ring comm,
    ``rows(node, i)`` the copy's rows of a mask operand, ``skip`` the key chunks whose
    blocks are wholly masked; ``zigzag`` makes the blocks of the load-balanced split
    (:class:`shardc.emit.zigzag.Zigzag`) instead.
    """
    out = _Out(f"{a.pv}__ring", consts)
    n_k, n_v = int(np.prod(a.k_shape)), int(np.prod(a.v_shape))
    flat = out.const("flat", [-1])
    kf = out.op("Reshape", [stash[a.k[0]].input[a.k[1]], flat], "kflat")
    vf = out.op("Reshape", [stash[a.v[0]].input[a.v[1]], flat], "vflat")
    held = out.op("Concat", [kf, vf], "kv0", axis=0)
    cuts = {(n, i): d for n, i, d in a.cuts}
    zig = zigzag() if zigzag is not None else None
    masks = {key: rows(*key) for key in cuts} if zig is None else {}
    state: tuple[str, str, str] | None = None
    for t in range(cp):
        j = (c - t) % cp
        if t < cp - 1:
            _comm(out, take("Send"), [held], [])
        if zig is not None:
            zig.block(out, held, t, j)
        elif j not in skip:
            scores, v_blk = _block(out, a, stash, held, t, j, chunk, n_k, n_v, cp, cuts, masks,
                                   shape_of)
            state = fold(out, scores, v_blk, state, t)
        if t < cp - 1:
            step = take("Recv")
            held = _comm(out, step, [], [out.name(f"kv{t + 1}")], a.dtype, [n_k + n_v])
    if zig is not None:
        zig.finish(out, stash[a.pv].output[0])
        return out.nodes
    if state is None:
        raise ValueError(f"{a.pv}: every block of copy {c} is masked")
    _, total, acc = state
    out.nodes.append(helper.make_node("Div", [acc, total], [stash[a.pv].output[0]],
                                      name=out.name("out")))
    return out.nodes


def _comm(
    out: _Out, step: Comm, ins: list[str], outs: list[str], dtype: int = 1,
    shape: list[int] | None = None,
) -> str:
    """A Send or Recv node for a priced ring step (peer and tag from the program)."""
    node = helper.make_node(step.op, ins, outs, name=out.name(f"{step.op.lower()}{step.tag}"),
                            domain=DOMAIN, peer=step.peer, tag=step.tag)
    if shape is not None:
        node.attribute.append(helper.make_attribute("dtype", dtype))
        node.attribute.append(helper.make_attribute("shape", shape,
                                                    attr_type=onnx.AttributeProto.INTS))
        node.attribute.sort(key=lambda x: x.name)
    out.nodes.append(node)
    return outs[0] if outs else ""


def _block(
    out: _Out, a: Any, stash: Mapping[str, onnx.NodeProto], held: str, t: int, j: int,
    chunk: int, n_k: int, n_v: int, cp: int, cuts: Mapping[tuple[str, int], int],
    masks: Mapping[tuple[str, int], str], shape_of: ShapeOf,
) -> tuple[str, str]:
    """Block ``t`` (key chunk ``j``): the scores after scale and mask, and V's chunk."""
    k_blk, v_blk = unpack(out, a, stash, held, t, n_k, n_v, cp, shape_of)
    qk = stash[a.qk]
    cur = out.op("MatMul", [qk.input[0], k_blk], f"s{t}")

    def mask(name: str, i: int) -> str:
        lo = out.const(f"m{t}{i}_s", [j * chunk])
        hi = out.const(f"m{t}{i}_e", [(j + 1) * chunk])
        axis = out.const(f"m{t}{i}_a", [cuts[(name, i)]])
        return out.op("Slice", [masks[(name, i)], lo, hi, axis], f"{name}_m{t}_{i}")

    return mids(out, a, stash, cur, f"{t}", cuts, mask), v_blk


def unpack(
    out: _Out, a: Any, stash: Mapping[str, onnx.NodeProto], held: str, t: int, n_k: int,
    n_v: int, cp: int, shape_of: ShapeOf,
) -> tuple[str, str]:
    """K' and V' of the chunk ``held`` (packed K then V): unpacked, then their views."""
    def part(what: str, lo: int, hi: int, shape: tuple[int, ...]) -> str:
        s = out.op("Slice", [held, out.const(f"{what}{t}_s", [lo]), out.const(f"{what}{t}_e", [hi]),
                             out.const(f"{what}{t}_a", [0])], f"{what}{t}flat")
        return out.op("Reshape", [s, out.const(f"{what}{t}_shape", list(shape))], f"{what}{t}")

    k_blk = _views(out, a.k_chain, stash, part("k", 0, n_k, a.k_shape), a.dims, cp, t, shape_of)
    v_blk = _views(out, a.v_chain, stash, part("v", n_k, n_k + n_v, a.v_shape), a.dims, cp, t,
                   shape_of)
    return k_blk, v_blk


def mids(
    out: _Out, a: Any, stash: Mapping[str, onnx.NodeProto], cur: str, tag: str,
    cuts: Mapping[tuple[str, int], int], mask: Callable[[str, int], str],
) -> str:
    """The scale/mask ops on the scores ``cur``; ``mask(node, i)`` the block's piece of an
    operand that spans the keys.
    """
    prev = stash[a.qk].output[0]
    for name in a.mids:
        nd = onnx.NodeProto()
        nd.CopyFrom(stash[name])
        for i, v in enumerate(nd.input):
            if v == prev:
                nd.input[i] = cur
            elif (name, i) in cuts:
                nd.input[i] = mask(name, i)
        prev, cur = nd.output[0], out.name(f"{name}_{tag}")
        nd.output[0], nd.name = cur, cur
        out.nodes.append(nd)
    return cur


def _views(
    out: _Out, chain: tuple[str, ...], stash: Mapping[str, onnx.NodeProto], value: str,
    dims: Mapping[str, int], cp: int, t: int, shape_of: ShapeOf,
) -> str:
    """The chain of views from a gather point, on one chunk: reshape/expand targets cut
    along the sequence.
    """
    for name in chain:
        nd = onnx.NodeProto()
        nd.CopyFrom(stash[name])
        nd.input[0] = value
        if nd.op_type in ("Reshape", "Expand"):
            shape = shape_of(nd.input[1])
            if shape[dims[name]] > 1:
                shape[dims[name]] //= cp
            nd.input[1] = out.const(f"{name}_shape{t}", shape)
        value = nd.output[0] = nd.name = out.name(f"{name}_{t}")
        out.nodes.append(nd)
    return value


def fold(
    out: _Out, scores: str, v_blk: str, state: tuple[str, str, str] | None, t: int | str
) -> tuple[str, str, str]:
    """The online-softmax update: (running max, sum, output) after block ``t``."""
    axis = out.const("keys", [-1])
    top = out.op("ReduceMax", [scores, axis], f"max{t}", keepdims=1)
    if state is None:
        e = out.op("Exp", [out.op("Sub", [scores, top], f"shift{t}")], f"p{t}")
        total = out.op("ReduceSum", [e, axis], f"l{t}", keepdims=1)
        return top, total, out.op("MatMul", [e, v_blk], f"o{t}")
    m, total, acc = state
    new = out.op("Max", [m, top], f"m{t}")
    scale = out.op("Exp", [out.op("Sub", [m, new], f"dm{t}")], f"a{t}")
    e = out.op("Exp", [out.op("Sub", [scores, new], f"shift{t}")], f"p{t}")
    total = out.op("Add", [out.op("Mul", [total, scale], f"ls{t}"),
                           out.op("ReduceSum", [e, axis], f"lb{t}", keepdims=1)], f"l{t}")
    acc = out.op("Add", [out.op("Mul", [acc, scale], f"os{t}"),
                         out.op("MatMul", [e, v_blk], f"ob{t}")], f"o{t}")
    return new, total, acc


# -- which blocks are wholly masked ---------------------------------------------------------
def masked_blocks(
    g: onnx.GraphProto, opsets: Any, a: Any, stash: Mapping[str, onnx.NodeProto],
    row_dims: Mapping[tuple[str, int], int], c: int, chunk: int, cp: int,
) -> frozenset[int]:
    """Key chunks ``j`` whose block copy ``c`` may skip: every mask operand of ``a`` is all
    masked on the copy's rows and chunk ``j``'s columns. None when a mask reads an input.
    """
    skip: set[int] | None = None
    for name, i, d in a.cuts:
        if stash[name].op_type != "Add":  # a mask is added; a scale is not one
            continue
        value = _evaluate(g, opsets, stash[name].input[i], a.dtype)
        if value is None or not np.issubdtype(value.dtype, np.floating):
            return frozenset()
        if (name, i) in row_dims:
            r = row_dims[(name, i)]
            value = np.take(value, range(c * chunk, (c + 1) * chunk), axis=r)
        low = np.finfo(value.dtype).min
        dead = {j for j in range(cp)
                if np.all(np.take(value, range(j * chunk, (j + 1) * chunk), axis=d) <= low)}
        skip = dead if skip is None else skip & dead
    return frozenset(skip or ())


def _evaluate(g: onnx.GraphProto, opsets: Any, value: str, dtype: int) -> np.ndarray | None:
    """``value`` computed from the graph's constants alone (onnxruntime), else None."""
    import onnxruntime as ort

    made = {o: n for n in g.node for o in n.output}
    inits = {t.name for t in g.initializer}
    if value in inits:  # folded by the exporter (GPT-2's causal mask)
        tensor = next(t for t in g.initializer if t.name == value)
        try:
            return np.asarray(numpy_helper.to_array(tensor))
        except Exception:
            return None
    need, todo, seen = [], [value], set()
    while todo:
        v = todo.pop()
        if v in seen or not v or v in inits:
            continue
        seen.add(v)
        node = made.get(v)
        if node is None or node.domain not in ("", "ai.onnx"):
            return None  # an input, or a value a comm makes
        need.append(node)
        todo += list(node.input)
    order = {id(n): k for k, n in enumerate(g.node)}
    nodes = sorted({id(n): n for n in need}.values(), key=lambda n: order[id(n)])
    used = {v for n in nodes for v in n.input}
    sub = helper.make_graph(nodes, "mask", [], [helper.make_tensor_value_info(
        value, dtype, None)],
        [t for t in g.initializer if t.name in used])
    model = helper.make_model(sub, opset_imports=list(opsets))
    try:
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return np.asarray(sess.run(None, {})[0])
    except Exception:
        return None
