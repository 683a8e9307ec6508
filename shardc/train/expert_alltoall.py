"""Expert parallelism across data-parallel replicas (``ep`` in the plan): DeepSpeed-MoE's
and Megatron's ``--expert-model-parallel-size``, on torch.

What the plan says: ``ep`` consecutive data-parallel replicas of a stage form an *ep
group*; the ``E`` stacked experts of every MoE layer are spread over it, ``E/ep`` whole
experts per rank. Unlike expert parallelism over a tensor-parallel group
(:mod:`shardc.train.experts`), the replicas' tokens *differ*, so

* **dispatch** is an all-to-all: each rank sorts its (token, expert) pairs by the rank
  holding the expert and sends each destination its rows, expert ids and routing weights
  (the row counts are exchanged first: routing decides them at run time);
* the destination runs its local experts on what it received (the module's own
  implementation, its weights only), the routing weight applied there as the module does;
* **combine** is the reverse all-to-all: every row returns to the rank it came from and is
  added onto its token.

Both all-to-alls are ``all_to_all_single_autograd`` (torch's functional collectives), whose backward
is the reverse exchange, so token gradients go home and expert gradients gather every
replica's pairs. That makes an expert's gradient the *sum* over the ep group's local
losses, where a dense weight's is one replica's: the expert gradient is scaled by 1/ep on
the way in, and the data-parallel reduction of the expert weights runs over the replicas
holding the *same* experts only (``edp = dp/ep``), not over the ep group (the caller
shards the experts module over the ``edp`` mesh dim before the rest of the model).

With tensor parallelism (mesh ``(pp, edp, ep, tp)``), tokens are whole on the TP ranks of
a replica as in :mod:`shardc.train.experts`: each TP rank keeps the pairs of its share of
every ep rank's experts (identity forward, all-reduce backward on the tokens), exchanges
them with the *same TP rank* of its ep peers, and the TP group all-reduces the combined
partial sums. Expert ``x`` lives on ep rank ``x // (E/ep)``, TP rank
``(x mod E/ep) // (E/(ep·tp))``: the weights are ``Shard(0)`` over ``(ep, tp)`` flattened.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._functional_collectives import all_to_all_single_autograd
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor.parallel import ParallelStyle, parallelize_module

from shardc.train.experts import (
    combine_group,
    enter_group,
    expert_ep_targets,
    route_forward,
    run_local,
    shard_experts,
)
from shardc.train.modules import ModelMap, holds
from shardc.train.planview import PlanView, TrainPlanError


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``scale``."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return t.view_as(t)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None]:
        return g * ctx.scale, None


class ExpertAllToAll(ParallelStyle):
    """Spread a stacked-experts module's experts over an ep mesh of data-parallel replicas
    (see the module doc); the module's parameters stay DTensors ``Shard(0)`` over it.
    """

    def __init__(self, experts: int, ep: DeviceMesh, tp: DeviceMesh | None = None) -> None:
        super().__init__()
        self.experts, self.ep, self.tp = experts, ep, tp

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        # the mesh is ep, or ep x tp flattened (ep outer)
        stacked = shard_experts(module, device_mesh, self.experts)
        module._shardc_a2a = (self.ep, self.tp, self.experts, stacked)  # type: ignore[assignment]
        route_forward(module, _a2a_forward)
        return module


def _exchange(t: torch.Tensor, send: list[int], recv: list[int], group: Any) -> torch.Tensor:
    """Rows of ``t`` (``send[i]`` for rank i, in order) out; ``recv[i]`` rows from rank i in."""
    if t.requires_grad:
        got: torch.Tensor = all_to_all_single_autograd(t.contiguous(), recv, send, group)
        return got
    out = t.new_empty((sum(recv), *t.shape[1:]))
    dist.all_to_all_single(out, t.contiguous(), recv, send, group=group)
    return out


def _a2a_forward(
    self: Any, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
) -> torch.Tensor:
    mesh, tp_mesh, experts, stacked = self._shardc_a2a
    group, e = mesh.get_group(), mesh.size()
    tp, t = (1, 0) if tp_mesh is None else (tp_mesh.size(), tp_mesh.get_local_rank())
    block = experts // e  # experts of one ep rank, split again over its TP group
    n = block // tp
    x, w = hidden_states, top_k_weights
    if tp_mesh is not None:  # tokens whole over TP: identity forward, all-reduce backward
        x, w = enter_group(x, tp_mesh), enter_group(w, tp_mesh)
    k = top_k_index.shape[-1]
    flat = top_k_index.reshape(-1)
    # this TP rank's share of the pairs (all of them without TP)
    pairs = (torch.div(flat % block, n, rounding_mode="floor") == t).nonzero().squeeze(1)
    flat = flat[pairs]
    # dispatch: pairs sorted by the ep rank holding their expert, counts exchanged first
    dest = torch.div(flat, block, rounding_mode="floor")
    order = torch.sort(dest, stable=True).indices
    tokens = torch.div(pairs[order], k, rounding_mode="floor")
    send_counts = torch.bincount(dest, minlength=e)
    recv_counts = torch.empty_like(send_counts)
    dist.all_to_all_single(recv_counts, send_counts, group=group)
    send, recv = send_counts.tolist(), recv_counts.tolist()
    rows = _exchange(x[tokens], send, recv, group)
    ids = _exchange((flat[order] - dest[order] * block - t * n).unsqueeze(1), send, recv, group)
    weights = _exchange(w.reshape(-1)[pairs[order]].unsqueeze(1), send, recv, group)
    local = {name: _ScaleGrad.apply(getattr(self, name).to_local(), 1.0 / e) for name in stacked}
    out = run_local(self, local, n, rows, ids, weights)
    # combine: every row home, added onto its token
    back = _exchange(out.to(x.dtype), recv, send, group)
    part = torch.zeros_like(x).index_add(0, tokens, back)
    return part if tp_mesh is None else combine_group(part, tp_mesh)


def ep_mesh(view: PlanView, device: torch.device, tp: int, ep: int) -> tuple[Any, Any]:
    """The (pp, dp, tp) mesh in the plan's rank order, and its dp mesh; under ``ep`` the dp
    axis is made of (edp, ep), consecutive replicas forming an ep group, flattened back.
    """
    if ep == 1:
        mesh = init_device_mesh(device.type, (view.pp, view.dp, tp),
                                mesh_dim_names=("pp", "dp", "tp"))  # fmt: skip
        return mesh, mesh["dp"]
    if view.dp % ep:
        raise TrainPlanError(
            f"ep={ep} does not divide dp={view.dp}: the ep group is made of whole replicas",
            hint="pin an ep that divides dp",
        )
    mesh = init_device_mesh(device.type, (view.pp, view.dp // ep, ep, tp),
                            mesh_dim_names=("pp", "edp", "ep", "tp"))  # fmt: skip
    return mesh, mesh["edp", "ep"]._flatten("dp")


def expert_data_parallel(m: nn.Module, mm: ModelMap, mesh: Any, ep: int) -> list[nn.Module]:
    """The experts modules of ``m`` spread over the ep mesh dim (all-to-all dispatch)."""
    if ep == 1:
        return []
    experts = {f: e for f, e in expert_ep_targets(mm).items() if holds(m, f)}
    if not experts:
        raise TrainPlanError(f"the plan pins ep={ep} and the model has no experts module")
    tp = mesh["tp"].size()
    # the experts' weights live on the ep x tp ranks of a replica group (ep outer)
    owner = mesh["ep"] if tp == 1 else mesh["ep", "tp"]._flatten("ep_tp")
    tp_mesh = mesh["tp"] if tp > 1 else None
    styles = {f: ExpertAllToAll(e, mesh["ep"], tp_mesh) for f, e in experts.items()}
    parallelize_module(m, owner, styles)  # type: ignore[arg-type]
    return [m.get_submodule(f) for f in experts]
