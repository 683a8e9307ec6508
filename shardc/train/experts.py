"""Expert parallelism of mixture-of-experts layers on torch, as the plan's ``experts``
strategy computes it (see :mod:`shardc.partition.experts` for the design and its pricing).

What the plan says: a stage's tensor-parallel group of ``d`` ranks spreads the ``E``
stacked experts of every MoE layer, ``E/d`` whole experts per rank; the tokens reaching
the layer are whole on every rank of the group (the attention's all-reduce gave them), so
dispatch is a *local selection* (each rank keeps the (token, expert) pairs routed to its
own experts), and combine is the group's reduction of partial sums (each pair's output
lives on exactly one rank). That is one all-reduce per layer, the one a tensor-parallel
MLP pays; the planner explains why an all-to-all would move more bytes when the tokens
are whole already.

The torch mapping, on the module the exporter saw the expert gathers in (Hugging Face's
``*Experts``: ``forward(hidden_states, top_k_index, top_k_weights)``):

* every parameter stacked over experts (leading dim ``E``) becomes a DTensor ``Shard(0)``
  over the tp mesh: this rank stores its experts only, and their gradients stay local
  (each expert has one owner, nothing to reduce over tp; FSDP reduces them over dp);
* the token and routing-weight inputs enter through "identity forward, all-reduce
  backward" (``DTensor.from_local(Replicate)`` then ``to_local(grad_placements=Partial)``):
  a rank's gradient of a token only covers the pairs it computed, and the router upstream,
  replicated, must see every pair's;
* the pairs routed here are selected (``nonzero`` on the ids), run through the module's
  own expert implementation (eager, ``batched_mm`` or ``grouped_mm``) with this rank's
  weights, scattered back into zeros and all-reduced (``Partial -> Replicate``).

The router and everything around the experts module is untouched: it runs replicated on
every rank of the group, on identical inputs.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor
from torch.distributed.tensor.parallel import (
    ParallelStyle,
    PrepareModuleInputOutput,
)

from shardc.train.modules import ModelMap
from shardc.train.planview import TrainPlanError

GATHER = "experts"
"""The plan's strategy on the nodes gathering stacked expert weights."""


def expert_targets(mm: ModelMap, strategies: Mapping[str, str]) -> dict[str, int]:
    """Module FQN -> number of experts, for every module whose weight gathers the plan
    spreads over the group (the exporter's scope of the ``experts`` nodes).
    """
    inits = {t.name: tuple(t.dims) for t in mm.proto.graph.initializer}
    nodes = {n.name: n for n in mm.proto.graph.node}
    out: dict[str, int] = {}
    for node, strategy in sorted(strategies.items()):
        if strategy != GATHER:
            continue
        sc = mm.module_of(node)
        dims = inits.get(nodes[node].input[0])
        if not dims:
            raise TrainPlanError(f"node {node} gathers experts from a value that is no weight")
        if out.setdefault(sc.module, dims[0]) != dims[0]:
            raise TrainPlanError(f"{sc.module} gathers from stacks of different expert counts")
    return out


def expert_ep_targets(mm: ModelMap) -> dict[str, int]:
    """Module FQN -> number of experts, for every module gathering rows of a stacked weight
    (``Gather``/``GatherND`` of an initializer of rank >= 3 by run-time ids): the experts
    modules an ``ep`` group spreads whatever the stage's TP strategies are (an embedding's
    gather reads a matrix, not a stack).
    """
    inits = {t.name: tuple(t.dims) for t in mm.proto.graph.initializer}
    out: dict[str, int] = {}
    for node in mm.proto.graph.node:
        dims = inits.get(node.input[0]) if node.input else None
        if node.op_type not in ("Gather", "GatherND") or not dims or len(dims) < 3:
            continue
        sc = mm.module_of(node.name)
        if out.setdefault(sc.module, dims[0]) != dims[0]:
            raise TrainPlanError(f"{sc.module} gathers from stacks of different expert counts")
    return dict(sorted(out.items()))


def expert_styles(
    experts: Mapping[str, int], *, sequence_parallel: bool
) -> dict[str, ParallelStyle]:
    """FQN -> style for every experts module, and under sequence parallelism for the MoE
    block around it (its parent): the block gathers the sequence on the way in (the router
    and the experts see every token, as the plan's experts strategy assumes) and hands on
    its rank's slice on the way out. That is an all-gather and, after the experts'
    all-reduce, a local slice: twice the bytes of the reduce-scatter the plan priced for the
    combine, since the experts return ``[tokens, hidden]`` rows, not the sequence layout
    a reduce-scatter would cut.
    """
    out: dict[str, ParallelStyle] = {f: ExpertParallel(e) for f, e in sorted(experts.items())}
    if sequence_parallel:
        for f in sorted(experts):
            block = f.rsplit(".", 1)[0]
            out[block] = PrepareModuleInputOutput(
                input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),),
                use_local_input=True, output_layouts=(Replicate(),),
                desired_output_layouts=(Shard(1),), use_local_output=True,
            )  # fmt: skip
    return out


def enter_group(t: torch.Tensor, mesh: DeviceMesh) -> torch.Tensor:
    """Identity forward; backward all-reduces the rank's partial gradient over ``mesh``
    (a token whole on every rank of the group, each rank computing some of its pairs).
    """
    d = DTensor.from_local(t, mesh, [Replicate()], run_check=False)
    return d.to_local(grad_placements=[Partial()])


def combine_group(t: torch.Tensor, mesh: DeviceMesh) -> torch.Tensor:
    """All-reduce forward (partial sums with disjoint support); identity backward."""
    d = DTensor.from_local(t, mesh, [Partial()], run_check=False)
    out: torch.Tensor = d.redistribute(mesh, [Replicate()]).to_local()
    return out


def shard_experts(module: nn.Module, device_mesh: DeviceMesh, experts: int) -> tuple[str, ...]:
    """Split every parameter of ``module`` stacked over its ``experts`` along dim 0 over
    ``device_mesh`` (each rank keeps whole experts: EP never cuts one expert's GEMM), and
    return their names. Why one function: experts inside a TP group and experts across
    data-parallel replicas keep their weights the same way; only the token routing differs.
    """
    d = device_mesh.size()
    if experts % d:
        raise TrainPlanError(f"{experts} experts do not spread over {d} ranks")
    stacked = [
        name
        for name, p in module.named_parameters(recurse=False)
        if p.dim() >= 1 and p.shape[0] == experts
    ]
    if not stacked:
        raise TrainPlanError(
            f"{type(module).__name__} has no parameter stacked over {experts} experts"
        )
    for name in stacked:
        p = getattr(module, name)
        dt = distribute_tensor(p.detach(), device_mesh, [Shard(0)])
        module.register_parameter(name, nn.Parameter(dt, requires_grad=p.requires_grad))
    return tuple(stacked)


def route_forward(module: nn.Module, forward: Any) -> None:
    """Make ``forward`` the module's forward, except while :func:`run_local` runs the
    module's own implementation on this rank's experts (it calls the module, which must
    then reach the class's forward, not ``forward`` again).
    """
    module._shardc_inner = False  # type: ignore[assignment]

    def routed(
        self: Any, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
        top_k_weights: torch.Tensor,
    ) -> torch.Tensor:
        if self._shardc_inner:
            out: torch.Tensor = type(self).forward(self, hidden_states, top_k_index,
                                                   top_k_weights)
            return out
        got: torch.Tensor = forward(self, hidden_states, top_k_index, top_k_weights)
        return got

    module.forward = types.MethodType(routed, module)


def run_local(
    module: Any, local: Mapping[str, torch.Tensor], experts: int, rows: torch.Tensor,
    ids: torch.Tensor, weights: torch.Tensor,
) -> torch.Tensor:
    """The module's own implementation over this rank's ``experts`` experts (``local``: its
    shards of the stacked weights), one row per (token, expert) pair with local expert
    ``ids``: the experts' arithmetic stays the model's, whichever way pairs arrived.
    """
    whole = getattr(module, "num_experts", None)
    module._shardc_inner = True
    if whole is not None:
        module.num_experts = experts  # the implementations size their masks by it
    try:
        out: torch.Tensor = torch.func.functional_call(module, dict(local), (rows, ids, weights))
    finally:
        module._shardc_inner = False
        if whole is not None:
            module.num_experts = whole
    return out


class ExpertParallel(ParallelStyle):
    """Spread a stacked-experts module's ``experts`` over the mesh (see the module doc)."""

    def __init__(self, experts: int) -> None:
        super().__init__()
        self.experts = experts

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        stacked = shard_experts(module, device_mesh, self.experts)
        module._shardc_ep = (device_mesh, self.experts, stacked)  # type: ignore[assignment]
        route_forward(module, _expert_forward)
        return module


def _expert_forward(
    self: Any, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
) -> torch.Tensor:
    mesh, experts, stacked = self._shardc_ep
    n = experts // mesh.size()
    lo = mesh.get_local_rank() * n
    x = enter_group(hidden_states, mesh)
    w = enter_group(top_k_weights, mesh)
    k = top_k_index.shape[-1]
    flat = top_k_index.reshape(-1)
    # dispatch: the (token, expert) pairs routed to this rank's experts, in pair order
    pairs = ((flat >= lo) & (flat < lo + n)).nonzero().squeeze(1)
    tokens = torch.div(pairs, k, rounding_mode="floor")
    ids = (flat[pairs] - lo).unsqueeze(1)
    weights = w.reshape(-1)[pairs].unsqueeze(1)
    local = {name: getattr(self, name).to_local() for name in stacked}
    out = run_local(self, local, n, x[tokens], ids, weights)
    # combine: each pair's output back on its token, summed over ranks
    part = torch.zeros_like(x).index_add(0, tokens, out.to(x.dtype))
    return combine_group(part, mesh)
