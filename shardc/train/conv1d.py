"""Tensor parallelism for ``transformers``' ``Conv1D`` (GPT-2's Linear with a transposed
weight), including fused projections such as GPT-2's ``c_attn`` (q | k | v in one GEMM).

torch's ``ColwiseParallel``/``RowwiseParallel`` accept ``nn.Linear`` only, so this style
distributes the weight itself and computes on local shards, with DTensor redistributions at
the edges (declared partial where the local gradient is one rank's share). A fused
projection is split with ``_StridedShard(dim, split_factor=k)``: rank r gets
``[q_r | k_r | v_r]`` and ``full_tensor()`` gives back the unsplit layout, so parameters and
gradients keep the unsplit model's meaning. The factor ``k`` is read from the graph (the
GEMM's output is cut by a ``Split`` into k parts along its last axis), not from names.

The fused bias is kept whole on every TP rank and sliced to ``[q_r | k_r | v_r]`` in the
forward (a DTensor redistribution: no communication forward, an all-gather of 3·h numbers
backward). Stored strided, it broke under FSDP2: FSDP shards dim 0, the dim TP strides, and
labels its shard ``_StridedShard(0, 2)`` over ``_StridedShard(0, 3)``, a nesting DTensor
reassembles in the wrong order. Training was right (each rank's local bytes were; the
losses of three SGD steps matched one process to 1e-7) but every global view was not:
``full_tensor()`` of the bias and its gradient came back permuted (errors of 1e-2), and so
would a distributed checkpoint. A whole bias has no such nesting.
"""

from __future__ import annotations

import types
from typing import Any

import onnx
import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor
from torch.distributed.tensor.parallel import ParallelStyle
from torch.distributed.tensor.placement_types import _StridedShard

CONV1D = "transformers.pytorch_utils.Conv1D"
_VIEWS = ("Reshape", "Identity", "Cast", "Squeeze", "Unsqueeze")


def split_factor(proto: onnx.ModelProto, node: str) -> int:
    """Parts a ``Split`` cuts ``node``'s output into along its last axis (1: none)."""
    by_name = {n.name: n for n in proto.graph.node}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in proto.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    frontier = list(by_name[node].output)
    for _ in range(4):  # a few view ops may sit between the GEMM and the Split
        nxt = []
        for value in frontier:
            for c in consumers.get(value, []):
                if c.op_type == "Split":
                    axis = next((a.i for a in c.attribute if a.name == "axis"), 0)
                    return len(c.output) if axis in (-1, 2) else 1
                if c.op_type in _VIEWS:
                    nxt.extend(c.output)
        frontier = nxt
    return 1


class Conv1DParallel(ParallelStyle):
    """``column`` or ``row`` parallelism of a Conv1D (weight ``[in, out]``)."""

    def __init__(self, kind: str, *, sequence_parallel: bool, factor: int = 1) -> None:
        super().__init__()
        self.kind, self.sp, self.factor = kind, sequence_parallel, factor

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        col = self.kind == "column"
        split: Any = _StridedShard if self.factor > 1 else None
        w_place = (split(1, split_factor=self.factor) if split else Shard(1)) if col else Shard(0)
        # a fused bias stays whole on every TP rank (see _column_forward): FSDP2 would shard
        # it along the very dim TP strides, and DTensor cannot compose two strided shards
        b_place = Shard(0) if col and not split else Replicate()
        for name, place in (("weight", w_place), ("bias", b_place)):
            p = getattr(module, name)
            dt = distribute_tensor(p.detach(), device_mesh, [place])
            module.register_parameter(name, nn.Parameter(dt, requires_grad=p.requires_grad))
        fwd = _column_forward if col else _row_forward
        module.forward = types.MethodType(fwd, module)
        module._shardc_tp = (device_mesh, self.sp)  # type: ignore[assignment]
        bias_split = [_StridedShard(0, split_factor=self.factor)] if col and split else None
        module._shardc_bias = bias_split  # type: ignore[assignment]
        return module


def _column_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    mesh, sp = self._shardc_tp
    if not isinstance(x, DTensor):
        x = DTensor.from_local(x, mesh, [Shard(1) if sp else Replicate()], run_check=False)
    # every rank's gradient of the gathered input is its own share: partial, summed back
    full = x.redistribute(mesh, [Replicate()]).to_local(grad_placements=[Partial()])
    w = self.weight.to_local()
    b = self.bias
    if self._shardc_bias is not None:  # this rank's [q_r | k_r | v_r] of a whole fused bias:
        b = b.redistribute(mesh, self._shardc_bias)  # a local slice; gathered in backward
    b = b.to_local()
    out = torch.addmm(b, full.reshape(-1, full.shape[-1]), w)
    return out.view(*full.shape[:-1], w.shape[1])


def _row_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    mesh, sp = self._shardc_tp
    w = self.weight.to_local()
    part = (x.reshape(-1, x.shape[-1]) @ w).view(*x.shape[:-1], w.shape[1])
    out = DTensor.from_local(part, mesh, [Partial()], run_check=False).redistribute(
        mesh, [Shard(1) if sp else Replicate()]
    )
    local: torch.Tensor = (out + self.bias).to_local()  # bias in DTensor terms: grads reduced
    return local
