"""ZeRO over the data-parallel axis: the wrapper each ZeRO stage needs, and its mixed
precision.

Why apart from :mod:`shardc.train.parallel`: that module is the order torch needs the
steps in (mesh, stage cut, recomputation, TP, data parallelism, pipeline schedule); this
is step 7 alone, the choice between FSDP2's ``replicate``, DDP and ``fully_shard`` per
ZeRO stage, with the workarounds each needs (DDP under pipelining, ZeRO-1 over DTensors).
It changes with torch's data-parallel APIs, not with the order of the steps.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from shardc.errors import ShardcWarning
from shardc.train.planview import PlanView

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def shard_data_parallel(
    m: nn.Module, blocks: list[nn.Module], dp_mesh: Any, view: PlanView
) -> nn.Module:
    """ZeRO over the dp axis; returns the module to run (a DDP wrapper for ZeRO-1).

    * ZeRO-0: FSDP2's ``replicate`` (DDP's maths: whole copies, gradients all-reduced);
    * ZeRO-1: ``DistributedDataParallel`` (whole parameters and gradients, all-reduced), the
      optimizer state sharded by ``ZeroRedundancyOptimizer``
      (:meth:`~shardc.train.step.ParallelModel.optimizer`);
    * ZeRO-2/3: FSDP2 ``fully_shard``, every block its own unit, then the rest; ZeRO-3
      reshards parameters after forward, ZeRO-2 keeps them gathered until backward.

    ZeRO-1 over tensor-parallel (DTensor) parameters runs as ZeRO-2, with a warning: DDP
    takes plain tensors only, and ``ZeroRedundancyOptimizer`` broadcasts each updated
    parameter with ``c10d.broadcast_``, for which DTensor has no sharding rule.
    """
    mp = MixedPrecisionPolicy()
    if view.dtype in ("bf16", "fp16"):
        mp = MixedPrecisionPolicy(param_dtype=DTYPES[view.dtype], reduce_dtype=torch.float32)
    if view.zero == 0:  # plain data parallelism: whole copies, gradients all-reduced
        from torch.distributed._composable.replicate_with_fsdp import replicate

        for b in blocks:
            replicate(b, mesh=dp_mesh, mp_policy=mp)
        replicate(m, mesh=dp_mesh, mp_policy=mp)
        return m
    distributed = any(isinstance(p, DTensor) for p in m.parameters())
    if view.zero == 1 and not distributed:
        from torch.nn.parallel import DistributedDataParallel

        # under pipelining every forward runs in no_sync and the stage prepares the last
        # backward itself, so DDP never reaches the point where it rebuilds its buckets and
        # its record of gradient order doubles each step (an internal assert on step 2);
        # find_unused_parameters turns that rebuild off
        return DistributedDataParallel(
            m, process_group=dp_mesh.get_group(), find_unused_parameters=view.pp > 1
        )
    if view.zero == 1:
        warnings.warn(
            "ZeRO-1 over tensor- or expert-parallel parameters runs as FSDP2's ZeRO-2 (gradients "
            "sharded too: the same maths and traffic, less memory than the plan priced): "
            "DDP and ZeroRedundancyOptimizer take plain tensors, not DTensors",
            ShardcWarning,
            stacklevel=3,
        )
    reshard = view.zero >= 3
    for b in blocks:
        fully_shard(b, mesh=dp_mesh, reshard_after_forward=reshard, mp_policy=mp)
    fully_shard(m, mesh=dp_mesh, reshard_after_forward=reshard, mp_policy=mp)
    return m
