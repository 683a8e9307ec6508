"""What ``shardc inspect`` (and a plan folder's analysis.json) says about a model:
parameters, FLOPs, activations, the heaviest nodes, and the single-device estimates.

Why here and not in :mod:`shardc.report`: this computes from the analysis passes' cost
table and the cost model; the report only renders the dict it returns
(:func:`shardc.report.summary.render_summary`), so the report layer imports no pass and no
cost function.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from shardc.cost.graph import GraphCosts
from shardc.ir import DType, Graph, Model


def tokens_and_samples(graph: Graph) -> tuple[int | None, int | None]:
    """(tokens, samples) of one run: samples from the first input's leading dim; tokens
    when that input is an integer id tensor ``[batch, seq]``.
    """
    if not graph.inputs:
        return None, None
    t = graph.values[graph.inputs[0]].type
    if t is None or not t.is_static or not t.shape:
        return None, None
    samples = t.shape[0]
    is_ids = t.dtype in (DType.INT64, DType.INT32) and len(t.shape) == 2
    return (samples * t.shape[1] if is_ids else None), samples  # type: ignore[operator,return-value]


def activation_bytes(graph: Graph) -> tuple[int, int]:
    """(total bytes produced by nodes, peak bytes live at once) over one forward run.

    Liveness walks the nodes in order: a value is live from its producer until its last
    consumer; graph outputs stay live to the end.
    """
    last_use: dict[str, int] = {}
    for i, n in enumerate(graph.nodes):
        for name in n.present_inputs:
            last_use[name] = i
    for o in graph.outputs:
        last_use[o] = len(graph.nodes)
    live = peak = total = 0
    frees: dict[int, int] = {}
    for i, n in enumerate(graph.nodes):
        for o in n.outputs:
            v = graph.values.get(o) if o else None
            size = (v.nbytes or 0) if v else 0
            total += size
            live += size
            end = last_use.get(o, i)
            frees[end] = frees.get(end, 0) + size
        peak = max(peak, live)
        live -= frees.pop(i, 0)
    return total, peak


def graph_summary(model: Model, costs: GraphCosts, *, top: int = 10) -> dict[str, Any]:
    """Everything ``shardc inspect`` reports, as plain data."""
    g = model.graph
    tokens, samples = tokens_and_samples(g)
    act_total, act_peak = activation_bytes(g)
    heaviest = sorted(g.nodes, key=lambda n: (-costs.nodes[n.name].flops, n.name))[:top]
    ops = Counter(n.qualified_op for n in g.nodes)
    flops = costs.flops
    return {
        "model": model.source,
        "graph": g.name,
        "opsets": dict(model.opset_imports),
        "dims": dict(model.dims),
        "inputs": {i: str(g.values[i].type) for i in g.inputs},
        "outputs": {o: str(g.values[o].type) for o in g.outputs},
        "nodes": len(g.nodes),
        "op_counts": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        "parameters": costs.param_count,
        "parameter_bytes": costs.param_bytes,
        "flops": flops,
        "flops_by_dtype": costs.flops_by_dtype(),
        "flops_by_kind": costs.flops_by_kind(),
        "tokens": tokens,
        "samples": samples,
        "flops_per_token": flops / tokens if tokens else None,
        "flops_per_sample": flops / samples if samples else None,
        "activation_bytes": act_total,
        "activation_peak_bytes": act_peak,
        "bytes_moved": costs.bytes_moved(),
        "bytes_only_ops": list(costs.bytes_only_ops),
        "heaviest_nodes": [
            {
                "node": n.name,
                "op": n.qualified_op,
                "flops": costs.nodes[n.name].flops,
                "share": costs.nodes[n.name].flops / flops if flops else 0.0,
                "output": str(g.values[n.outputs[0]].type)
                if n.outputs and n.outputs[0] in g.values
                else "",
            }
            for n in heaviest
        ],
    }


def single_device_estimates(costs: GraphCosts, topology: Any) -> list[dict[str, Any]]:
    """Forward time and weight fit of the whole graph on one device of each compute kind.

    The yardstick a plan must beat: what one device would do alone (roofline per node,
    summed), and whether the weights alone fit its memory.
    """
    from shardc.cost.compute import sequence_time

    kinds = {d.kind.name: d.kind for d in topology.compute_devices}
    out = []
    for name in sorted(kinds):
        kind = kinds[name]
        est = sequence_time(list(costs.nodes.values()), kind)
        capacity = kind.memory_bytes or 0
        out.append(
            {
                "kind": name,
                "devices": sum(1 for d in topology.compute_devices if d.kind.name == name),
                "forward_seconds": est.seconds,
                "compute_seconds": est.compute_seconds,
                "memory_seconds": est.memory_seconds,
                "bound": est.bound,
                "weights_fit": costs.param_bytes <= capacity,
                "memory_bytes": capacity,
            }
        )
    return out
