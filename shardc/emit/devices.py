"""Device files: every rank's ONNX model, from the lowered templates and the Plan.

Why a writer and nothing more: lowering (the ``lower`` pass) already chose each rank's
nodes and cut its weight shards, one template per (stage, TP rank); the Plan's programs
hold each comm step's ranks and algorithm. A rank's model is its template's nodes with
the comm nodes filled from its priced :class:`~shardc.plan.program.Comm` steps, in
order, the graph's inputs and outputs typed from the IR, and metadata that names the
rank, its group and where each weight shard came from (``shardc.slices``, which
:mod:`shardc.emit.check` uses to prove nothing was lost or duplicated).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import onnx
from onnx import helper

from shardc.emit.program import DOMAIN, DOMAIN_VERSION
from shardc.errors import ShardcError
from shardc.ir import Model
from shardc.plan.lowered import Lowering, Template
from shardc.plan.model import PlanData
from shardc.plan.program import Comm, DeviceProgram, Programs


class EmitError(ShardcError):
    """A device file cannot be written as the plan asks (names the rank and why)."""


@dataclass(frozen=True)
class Emission:
    """Every rank's program and ONNX model."""

    programs: Programs
    models: Mapping[int, onnx.ModelProto]


def device_models(plan: PlanData, lowering: Lowering, model: Model) -> dict[int, onnx.ModelProto]:
    """Every rank's ONNX model, checked to load in onnxruntime (unless a what-if)."""
    assert plan.programs is not None, "device files need a lowered plan"
    if lowering.context is not None:
        models = _context_models(plan, lowering, model)
    else:
        models = {
            p.rank: _instantiate(model, lowering.templates[(p.stage, p.tp_rank)], p)
            for p in plan.programs.programs
        }
    if not lowering.declared_only:  # a what-if has no bytes to load
        _refuse_unloadable(models)
    return models


def _context_models(
    plan: PlanData, lowering: Lowering, model: Model
) -> dict[int, onnx.ModelProto]:
    """Context parallelism: each copy's model is its rank's template filled with the
    copy's own comms, then rewritten for its sequence chunk with its CP gathers
    (:func:`shardc.emit.context.context_model`).
    """
    from dataclasses import replace

    from shardc.emit.context import context_model
    from shardc.plan.lowered import is_context_comm

    cmap, cp = lowering.context
    assert plan.programs is not None
    out = {}
    for p in plan.programs.programs:
        own = tuple(s for s in p.steps
                    if not (isinstance(s, Comm) and is_context_comm(s.output, s.value)))
        proto = _instantiate(model, lowering.templates[(p.stage, p.tp_rank)],
                             replace(p, steps=own))
        gathers = [c for c in p.comms if is_context_comm(c.output, c.value)]
        out[p.rank] = context_model(proto, cmap, cp, p.copy, gathers)
        for k, v in (("shardc.cp", str(cp)), ("shardc.cp_copy", str(p.copy))):
            out[p.rank].metadata_props.add(key=k, value=v)
    return out


def emit(state: Any) -> Emission:
    """The programs and device models of a compiled state (its ``plan``, ``lowering`` and
    ``model``): what tests of single graphs run in onnxruntime.
    """
    plan = state.plan
    assert plan is not None and plan.programs is not None, "compile with the plan passes"
    return Emission(plan.programs, device_models(plan, state.lowering, state.model))


def _instantiate(model: Model, tmpl: Template, prog: DeviceProgram) -> onnx.ModelProto:
    """One rank's copy of a template: ranks and algorithms in the comm nodes."""
    nodes = [_copy(n) for n in tmpl.nodes]
    comms = prog.comms
    pending = tmpl.comm_nodes
    assert len(comms) == len(pending), f"rank {prog.rank}: template and program disagree"
    for (index, p), c in zip(pending, comms, strict=True):
        _fill(nodes[index], c, p.concat_axis)
    graph = model.graph
    values = graph.values
    local = tmpl.local_shapes
    inputs = [_value_info(values[v], graph.extra, local.get(v)) for v in tmpl.inputs]
    outputs = [_value_info(values[v], graph.extra, local.get(v)) for v in tmpl.outputs]
    initializers = [tmpl.initializers[k] for k in sorted(tmpl.initializers)]
    g = helper.make_graph(nodes, f"{graph.name}_rank{prog.rank}", inputs, outputs, initializers)
    opsets = dict(model.opset_imports)
    opsets[DOMAIN] = DOMAIN_VERSION
    out = helper.make_model(
        g,
        opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets.items())],
        producer_name="shardc",
        # IR 4 let initializers be more than graph inputs; device models rely on it
        ir_version=max(model.ir_version, 4),
    )
    meta = {
        "shardc.rank": str(prog.rank),
        "shardc.device": prog.device,
        "shardc.stage": str(tmpl.stage),
        "shardc.replica": str(prog.replica),
        "shardc.tp_rank": str(tmpl.tp_rank),
        "shardc.tp_group": json.dumps(_tp_group(prog)),
        "shardc.slices": json.dumps(
            {k: v.to_json() for k, v in sorted(tmpl.slices.items())}, sort_keys=True
        ),
    }
    for k, v in meta.items():
        out.metadata_props.add(key=k, value=v)
    return out


def _tp_group(prog: DeviceProgram) -> list[int]:
    """The ranks of ``prog``'s tensor-parallel group (Megatron's order: contiguous)."""
    first = prog.rank - prog.tp_rank
    return list(range(first, first + prog.tp))


def _fill(node: onnx.NodeProto, c: Comm, concat_axis: int) -> None:
    """A comm node's attributes from its priced step: a Send/Recv's peer; a collective's
    group, tag, algorithm, axis (and an AllToAll's concat axis), in that order.
    """
    if c.op in ("Send", "Recv"):
        _set_int(node, "peer", c.peer)
        return
    del node.attribute[:]
    node.attribute.extend(
        [helper.make_attribute("group", list(c.group)), helper.make_attribute("tag", c.tag)]
    )
    node.attribute.append(helper.make_attribute("algorithm", c.algorithm))
    if c.axis >= 0:
        node.attribute.append(helper.make_attribute("axis", c.axis))
    if concat_axis >= 0:
        node.attribute.append(helper.make_attribute("concat_axis", concat_axis))


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


def _value_info(
    v: Any, extra: Mapping[str, bytes], local: tuple[int, ...] | None = None
) -> onnx.ValueInfoProto:
    """The declared type of a program input/output: ``local``'s shape when the rank holds
    a shard of it (the KV cache), else the value's own.
    """
    t = v.type
    if t is None:
        kept = extra.get(f"type/{v.name}")
        if kept is None:
            return helper.make_empty_tensor_value_info(v.name)
        info = onnx.ValueInfoProto(name=v.name)
        info.type.ParseFromString(kept)  # a sequence or optional, as the model declared it
        return info
    shape = list(local) if local is not None else None if t.shape is None else list(t.shape)
    return helper.make_tensor_value_info(v.name, t.dtype.value, shape)
