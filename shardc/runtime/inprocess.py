"""All ranks of a plan in one process: compute in onnxruntime, collectives on arrays.

Why: the per-device ONNX files are only trustworthy if running them gives the original
model's answer. This runner gives them exactly the semantics the distributed runner
gives them over torch.distributed, without processes, so tests can check numerics on
every plan shape quickly.

Each rank's model is cut at its ``shardc``-domain nodes into runs of standard nodes;
each run becomes a small ONNX model executed by onnxruntime. Ranks advance in turn until
they block on a communication op; a collective fires once every member of its group has
reached it (members issue collectives in the same order), a Recv once its Send (same
sender, receiver and tag) has been posted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from shardc.emit.program import DOMAIN
from shardc.errors import ShardcError


class RuntimeError_(ShardcError):
    """A rank could not run its program (names the rank and the op)."""


@dataclass
class _Run:
    """A run of standard nodes, compiled lazily once its inputs' types are known."""

    nodes: list[onnx.NodeProto]
    inputs: list[str]
    outputs: list[str]
    session: Any = None


@dataclass
class _Rank:
    rank: int
    items: list[_Run | onnx.NodeProto]
    env: dict[str, np.ndarray] = field(default_factory=dict)
    pc: int = 0
    collectives: int = 0
    outputs: list[str] = field(default_factory=list)


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _split(
    model: onnx.ModelProto, keep_all: bool = False
) -> tuple[list[_Run | onnx.NodeProto], dict[str, np.ndarray]]:
    """The model as runs of standard nodes and single comm nodes, plus its weights."""
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    items: list[_Run | onnx.NodeProto] = []
    current: list[onnx.NodeProto] = []
    for node in model.graph.node:
        if node.domain == DOMAIN:
            if current:
                items.append(_Run(current, [], []))
                current = []
            items.append(node)
        else:
            current.append(node)
    if current:
        items.append(_Run(current, [], []))
    later: set[str] = {o.name for o in model.graph.output}
    for item in reversed(items):
        if isinstance(item, _Run):
            made = {o for n in item.nodes for o in n.output if o}
            item.outputs = sorted(v for v in made if keep_all or v in later)
            reads = {i for n in item.nodes for i in n.input if i} - made
            item.inputs = sorted(reads)
            later |= reads
        else:
            later |= {i for i in item.input if i}
    return items, weights


def _session(run: _Run, env: Mapping[str, np.ndarray], opsets: list[Any]) -> Any:
    import onnxruntime as ort

    inputs = [
        helper.make_tensor_value_info(
            v, helper.np_dtype_to_tensor_dtype(env[v].dtype), list(env[v].shape)
        )
        for v in run.inputs
    ]
    outputs = [helper.make_empty_tensor_value_info(v) for v in run.outputs]
    graph = helper.make_graph(run.nodes, "run", inputs, outputs)
    model = helper.make_model(graph, opset_imports=opsets)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def run_inprocess(
    models: Mapping[int, onnx.ModelProto],
    feeds: Mapping[str, np.ndarray],
    *,
    keep_all: bool = False,
) -> dict[int, dict[str, np.ndarray]]:
    """Run every rank; return each rank's graph outputs by name (every value it holds,
    weights included, with ``keep_all``: for tracing where two runs part ways).
    """
    ranks: dict[int, _Rank] = {}
    opsets: dict[int, list[Any]] = {}
    for r, model in sorted(models.items()):
        items, weights = _split(model, keep_all)
        env = dict(weights)
        for i in model.graph.input:
            if i.name not in feeds:
                raise RuntimeError_(f"rank {r}: no value fed for input {i.name!r}")
            env[i.name] = np.asarray(feeds[i.name])
        ranks[r] = _Rank(r, items, env, outputs=[o.name for o in model.graph.output])
        opsets[r] = [o for o in model.opset_import if o.domain != DOMAIN]
    mailbox: dict[tuple[int, int, int], np.ndarray] = {}
    waiting: dict[tuple[int, ...], dict[int, onnx.NodeProto]] = {}
    while True:
        progressed = False
        for st in ranks.values():
            while st.pc < len(st.items):
                item = st.items[st.pc]
                if isinstance(item, _Run):
                    if item.session is None:
                        item.session = _session(item, st.env, opsets[st.rank])
                    try:
                        got = item.session.run(item.outputs, {v: st.env[v] for v in item.inputs})
                    except Exception as exc:
                        raise RuntimeError_(
                            f"rank {st.rank}: node run starting {item.nodes[0].name!r} "
                            f"failed: {exc}"
                        ) from None
                    st.env.update(zip(item.outputs, got, strict=True))
                elif item.op_type == "Send":
                    key = (st.rank, int(_attr(item, "peer")), int(_attr(item, "tag")))
                    mailbox[key] = st.env[item.input[0]]
                elif item.op_type == "Recv":
                    key = (int(_attr(item, "peer")), st.rank, int(_attr(item, "tag")))
                    if key not in mailbox:
                        break
                    value = mailbox.pop(key)
                    shape = list(_attr(item, "shape", []))
                    if list(value.shape) != shape:
                        raise RuntimeError_(
                            f"rank {st.rank}: {item.name} expected shape {shape}, "
                            f"got {list(value.shape)} from rank {key[0]}"
                        )
                    st.env[item.output[0]] = value
                else:
                    group = tuple(int(g) for g in _attr(item, "group"))
                    key = (*group, st.collectives)
                    waiting.setdefault(key, {})[st.rank] = item
                    if len(waiting[key]) < len(group):
                        break
                    _collective(ranks, group, waiting.pop(key))
                    for member in group:
                        ranks[member].collectives += 1
                        if member != st.rank:
                            ranks[member].pc += 1
                    st.pc += 1
                    progressed = True
                    continue
                st.pc += 1
                progressed = True
        if all(st.pc >= len(st.items) for st in ranks.values()):
            break
        if not progressed:
            stuck = {
                st.rank: st.items[st.pc].name  # type: ignore[union-attr]
                for st in ranks.values()
                if st.pc < len(st.items)
            }
            raise RuntimeError_(f"deadlock: ranks blocked at {stuck}")
    if keep_all:
        return {r: dict(st.env) for r, st in ranks.items()}
    return {r: {o: st.env[o] for o in st.outputs} for r, st in ranks.items()}


def _collective(
    ranks: Mapping[int, _Rank], group: tuple[int, ...], nodes: Mapping[int, onnx.NodeProto]
) -> None:
    ops = {n.op_type for n in nodes.values()}
    if len(ops) != 1:
        raise RuntimeError_(f"group {list(group)} disagrees on the collective: {sorted(ops)}")
    op = ops.pop()
    parts = [ranks[m].env[nodes[m].input[0]] for m in group]
    axis = _attr(nodes[group[0]], "axis", -1)
    if op == "AllReduce":
        total = np.sum(np.stack(parts), axis=0).astype(parts[0].dtype)
        results = [total] * len(group)
    elif op == "AllGather":
        whole = np.concatenate(parts, axis=axis)
        results = [whole] * len(group)
    elif op == "ReduceScatter":
        total = np.sum(np.stack(parts), axis=0).astype(parts[0].dtype)
        results = np.split(total, len(group), axis=axis)
    else:
        raise RuntimeError_(f"collective {op} is not supported by the in-process runner")
    for m, res in zip(group, results, strict=True):
        ranks[m].env[nodes[m].output[0]] = np.ascontiguousarray(res)
