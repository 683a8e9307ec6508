"""What :func:`shardc.train.apply` returns: the rank's module(s), the mesh and a step.

Every rank calls :meth:`ParallelModel.step` with the same *global* batch; the helper takes
its replica's rows, splits them into the plan's micro-batches, runs forward and backward
(through the pipeline schedule when there is one) and returns the step's mean loss on every
rank. Splitting the global batch here, not in the user's loop, keeps one script right for
every plan.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.distributed.tensor.parallel import loss_parallel
from torch.nn.parallel import DistributedDataParallel
from torch.profiler import record_function

from shardc.train.planview import PlanView, TrainPlanError


def _unwrapped(m: nn.Module) -> nn.Module:
    return m.module if isinstance(m, DistributedDataParallel) else m


def token_loss(logits: Any, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over every token (logits ``[b, s, V]``, labels ``[b, s]``)."""
    return F.cross_entropy(logits.flatten(0, -2).float(), labels.flatten())


@dataclass
class ParallelModel:
    """One rank's share of the model, as the plan placed it."""

    modules: tuple[nn.Module, ...]
    """This rank's model chunks (one unless virtual stages), as they run (a DDP wrapper
    under ZeRO-1); parameter FQNs are the unsplit model's."""
    mesh: DeviceMesh
    """The ``(pp, dp, tp)`` mesh."""
    view: PlanView
    rank: int
    schedule: Any
    """The pipeline schedule (pp > 1), else None."""
    loss_fn: Callable[[Any, torch.Tensor], torch.Tensor]
    first: bool
    """This rank feeds the model's inputs."""
    last: bool
    """This rank computes the loss."""
    device: torch.device
    aliases: dict[str, str] = field(default_factory=dict)
    """Parameter name -> the name it is tied to in the unsplit model."""
    tied_group: Any = None
    """Process group of the stages holding the two ends of a tied weight (or None)."""

    @property
    def module(self) -> nn.Module:
        """The rank's (first) model chunk (inside its DDP wrapper under ZeRO-1)."""
        return _unwrapped(self.modules[0])

    def parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter this rank holds (for the optimizer)."""
        for m in self.modules:
            yield from m.parameters()

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """(name, parameter) under the unsplit model's names (a DDP wrapper's ``module.``
        prefix dropped).
        """
        for m in self.modules:
            yield from _unwrapped(m).named_parameters()

    @property
    def _ddp(self) -> bool:
        return any(isinstance(m, DistributedDataParallel) for m in self.modules)

    def optimizer(self, cls: type[torch.optim.Optimizer], **options: Any) -> torch.optim.Optimizer:
        """``cls(parameters, **options)``, with its state sharded over the replicas when the
        plan says ZeRO-1 (torch's ``ZeroRedundancyOptimizer``: each replica steps its share
        of the parameters and broadcasts them; gradients stay whole, all-reduced by DDP).
        """
        params = list(self.parameters())
        if not self._ddp:
            return cls(params, **options)
        return ZeroRedundancyOptimizer(
            params, optimizer_class=cls, process_group=self.mesh["dp"].get_group(), **options
        )

    def _replica_rows(self, t: torch.Tensor) -> torch.Tensor:
        dp, m = self.view.dp, self.view.microbatches
        if t.shape[0] % (dp * m):
            raise TrainPlanError(
                f"a global batch of {t.shape[0]} does not split into {dp} replicas x {m} "
                "micro-batches",
                hint=f"use a multiple of {dp * m}",
            )
        replica = self.view.rank(self.rank).replica
        return t.chunk(dp)[replica].to(self.device)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        dt = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.view.dtype or "")
        if dt is None or (self.view.dp > 1 and not self._ddp):  # FSDP's MixedPrecisionPolicy casts
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dt)

    def forward_backward(self, inputs: torch.Tensor, labels: torch.Tensor) -> float:
        """Forward and backward of one global batch; gradients accumulate in the params.

        Returns the batch's mean loss, the same number on every rank.
        """
        x, y = self._replica_rows(inputs), self._replica_rows(labels)
        m = self.view.microbatches
        total = torch.zeros((), device=self.device)
        with loss_parallel(), self._autocast():
            if self.schedule is None:
                for xs, ys in zip(x.chunk(m), y.chunk(m), strict=True):
                    out = self.modules[0](xs)  # through DDP's wrapper, if any
                    loss = self.loss_fn(out, ys) / m
                    loss.backward()
                    total += loss.full_tensor() if isinstance(loss, DTensor) else loss.detach()
            else:
                losses: list[torch.Tensor] = []
                args = (x,) if self.first else ()
                kwargs: dict[str, Any] = {"target": y, "losses": losses} if self.last else {}
                self.schedule.step(*args, **kwargs)
                if self.last:
                    total += torch.stack([t.detach() for t in losses]).mean()
                self._sync_tied()
        # the last stage's replicas hold the loss (tp copies each): average them everywhere
        if not self.last:
            total.zero_()
        with record_function("shardc::loss"):  # reporting, not training: the profiler skips it
            dist.all_reduce(total)
        copies = self.view.dp * (self.view.uniform_tp or 1)
        return float(total.item() / copies)

    def _sync_tied(self) -> None:
        """Sum the gradient of a weight tied across stages (its two ends live apart)."""
        if self.tied_group is None:
            return
        tied = set(self.aliases) | set(self.aliases.values())
        for name, p in self.named_parameters():
            g = p.grad
            if name not in tied or g is None:
                continue
            if not isinstance(g, DTensor):
                dist.all_reduce(g, group=self.tied_group)
                continue
            # the two ends may be sharded differently (a vocab-split head, a whole
            # embedding): sum whole gradients, keep this rank's shard
            full = g.full_tensor()
            dist.all_reduce(full, group=self.tied_group)
            mine = distribute_tensor(full, g.device_mesh, g.placements, src_data_rank=None)
            g.to_local().copy_(mine.to_local())

    def step(
        self, inputs: torch.Tensor, labels: torch.Tensor, optimizer: torch.optim.Optimizer
    ) -> float:
        """One training step: forward, backward, ``optimizer.step()``, zero the grads."""
        loss = self.forward_backward(inputs, labels)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    def full_gradients(self) -> dict[str, torch.Tensor]:
        """FQN -> this rank's gradient made whole (TP and FSDP shards gathered).

        A collective over the rank's mesh: every rank must call it. For tests and debugging.
        """
        out = {}
        for name, p in self.named_parameters():
            g = p.grad
            if g is None:
                continue
            name = self.aliases.get(name, name)
            out[name] = g.full_tensor() if isinstance(g, DTensor) else g.detach().clone()
        return out
