"""The plan's per-op strategies as a ``parallelize_module`` plan.

Mapping (plan strategy of the node -> torch style on the module that ran it):

=====================  =====================================================================
Conv1D column / row    :class:`shardc.train.conv1d.Conv1DParallel` (fused q|k|v strided)
``column`` Linear      ``ColwiseParallel`` (input ``Shard(1)`` under sequence parallelism)
``row`` Linear         ``RowwiseParallel`` (output ``Shard(1)`` under sequence parallelism)
``vocab`` Embedding    ``RowwiseParallel(input_layouts=Replicate())``: rows are vocabulary
``vocab`` Linear       ``ColwiseParallel(output_layouts=Shard(-1))``: logits split by
                       vocabulary, the loss computed under ``loss_parallel``
norms (SP stages)      ``SequenceParallel`` on every parameterised leaf module of the stage's
                       blocks and ends that no other style covers (the norms)
``heads`` etc.         nothing: attention runs on the local heads the column split leaves
=====================  =====================================================================

Under sequence parallelism each column-parallel Linear gathers its own input (torch's
``ColwiseParallel(input_layouts=Shard(1))``) instead of one ``PrepareModuleInput`` per
attention or MLP: the same maths with up to three all-gathers where Megatron does one, but
it needs no knowledge of how a block calls its sub-modules.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from torch import nn
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    RowwiseParallel,
    SequenceParallel,
)

from shardc.train.conv1d import CONV1D, Conv1DParallel
from shardc.train.modules import EMBEDDING, LINEAR
from shardc.train.planview import TrainPlanError


def tp_styles(
    targets: Mapping[str, tuple[str, str, str]],
    *,
    sequence_parallel: bool,
    sp_modules: Iterable[str] = (),
    factors: Mapping[str, int] | None = None,
) -> dict[str, ParallelStyle]:
    """FQN -> ParallelStyle for one stage's modules (``factors``: fused parts of a Conv1D's
    output, see :func:`shardc.train.conv1d.split_factor`).
    """
    seq: Any = Shard(1) if sequence_parallel else Replicate()
    out: dict[str, ParallelStyle] = {}
    for fqn, (strategy, cls, _) in sorted(targets.items()):
        if cls == CONV1D:
            out[fqn] = Conv1DParallel(
                strategy, sequence_parallel=sequence_parallel, factor=(factors or {}).get(fqn, 1)
            )
        elif strategy == "column":
            out[fqn] = ColwiseParallel(input_layouts=seq)
        elif strategy == "row":
            out[fqn] = RowwiseParallel(output_layouts=seq)
        elif strategy == "vocab" and cls == EMBEDDING:
            out[fqn] = RowwiseParallel(input_layouts=Replicate(), output_layouts=seq)
        elif strategy == "vocab" and cls == LINEAR:
            out[fqn] = ColwiseParallel(
                input_layouts=seq, output_layouts=Shard(-1), use_local_output=False
            )
    for fqn in sp_modules:
        out.setdefault(fqn, SequenceParallel())
    return out


def norm_modules(root: nn.Module, scopes: Iterable[str], targets: Mapping[str, Any]) -> list[str]:
    """Parameterised leaf modules under ``scopes`` that no TP style covers (the norms).

    Sequence parallelism splits the activations of exactly these along the sequence.
    """
    out = []
    for scope in scopes:
        sub = root.get_submodule(scope)
        for name, mod in sub.named_modules(prefix=scope):
            leaf = not any(True for _ in mod.children())
            has_params = any(True for _ in mod.parameters(recurse=False))
            if (
                leaf
                and has_params
                and name not in targets
                and not isinstance(mod, nn.Linear | nn.Embedding)
            ):
                out.append(name)
    return out


def check_whole_siblings(root: nn.Module, targets: Mapping[str, tuple[str, str, str]]) -> None:
    """Refuse a Linear the plan keeps whole beside column-split siblings.

    That is how a plan runs more TP ranks than key/value heads (Megatron replicates the
    KV heads); torch's styles have no way to give each rank the KV head its query heads
    use, so the module's own attention would pair them wrongly.
    """
    for fqn, (strategy, _, _) in sorted(targets.items()):
        if strategy != "column" or "." not in fqn:
            continue
        parent = fqn.rsplit(".", 1)[0]
        for name, child in root.get_submodule(parent).named_children():
            sib = f"{parent}.{name}"
            if isinstance(child, nn.Linear) and sib not in targets:
                raise TrainPlanError(
                    f"{sib} stays whole while {fqn} is column-split (more TP ranks than "
                    "key/value heads?); torch's tensor parallelism cannot replicate KV heads",
                    hint="pin a tp that divides the number of key/value heads",
                )
