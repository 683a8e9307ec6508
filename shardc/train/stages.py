"""One pipeline stage of a decoder as a module: its blocks, and the model's ends if it holds
them; and activation recomputation as the plan chose per stage.

Why the stage is the model itself, pruned: parameters keep their FQNs (``model.layers.3.*``),
so tensor-parallel plans, FSDP and checkpoints written by the unsplit model all address
them the same way on every stage. Blocks the stage does not hold are replaced by
parameter-less placeholders, and the ends (embeddings; final norm and head) are dropped
off the stages that do not hold them.

Which modules are blocks and ends comes from the export's metadata
(:func:`shardc.train.modules.layer_chain`). What the owner does *between* them (token plus
position embeddings, rotary tables) is model code no metadata describes, so each family
has a small entry here: ``rope`` (Llama, Mistral, Mixtral, Qwen2/3: ``rotary_emb`` over global
positions) and ``gpt2`` (learned positions). Other owners are refused with pp > 1.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate, Shard
from torch.utils.checkpoint import (
    CheckpointPolicy,
    checkpoint,
    create_selective_checkpoint_contexts,
)

from shardc.train.modules import LayerChain
from shardc.train.planview import TrainPlanError

FAMILIES = {
    "LlamaModel": "rope",
    "MistralModel": "rope",
    "MixtralModel": "rope",
    "Qwen2Model": "rope",
    "Qwen3Model": "rope",
    "GPT2Model": "gpt2",
}


class _Skipped(nn.Module):
    """Stands in for a block another stage holds (no parameters, never called)."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a block of another pipeline stage was called")


def family_of(chain: LayerChain) -> str:
    """The glue family of the module that calls the blocks (TrainPlanError if unknown)."""
    short = chain.owner_cls.rsplit(".", 1)[-1]
    if short not in FAMILIES:
        raise TrainPlanError(
            f"{short} ({chain.owner}) has no stage glue in shardc.train.stages",
            hint=f"known: {', '.join(sorted(FAMILIES))}; plans with pp=1 and no sequence "
            "parallelism run any model through its own forward",
        )
    return FAMILIES[short]


def _get(root: nn.Module, fqn: str) -> nn.Module:
    return root.get_submodule(fqn) if fqn else root


def _set(root: nn.Module, fqn: str, value: nn.Module) -> None:
    parent, _, leaf = fqn.rpartition(".")
    setattr(_get(root, parent), leaf, value)


def make_stage(
    model: nn.Module,
    chain: LayerChain,
    layers: range,
    *,
    first: bool,
    last: bool,
    tp_mesh: DeviceMesh | None,
    sequence_parallel: bool,
    whole_output: bool,
) -> nn.Module:
    """Prune ``model`` (in place) to the stage holding ``layers`` and give it the stage's
    forward: token ids (first stage) or hidden states in; hidden states or logits out.

    Between stages activations travel whole (gathered over the sequence under sequence
    parallelism), since torch's pipelining sends plain tensors rank to rank; with
    ``whole_output`` vocabulary-split logits are gathered too (the pipeline schedule's loss
    takes plain tensors), else they stay a DTensor for ``loss_parallel``.
    """
    family = family_of(chain)
    owner: Any = _get(model, chain.owner)
    for i, fqn in enumerate(chain.layers):
        if i not in layers:
            _set(model, fqn, _Skipped())
    ends = [*(() if first else chain.before), *(() if last else chain.after)]
    if family == "gpt2" and not first:
        ends += [f"{chain.owner}.wpe"]
    for fqn in ends:
        _set(model, fqn, _Skipped())
    blocks = [_get(model, chain.layers[i]) for i in layers]
    after = [_get(model, f) for f in chain.after] if last else []
    sp = sequence_parallel and tp_mesh is not None and tp_mesh.size() > 1

    def forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
        seq = x.shape[1]
        if first:
            h = owner.embed_tokens(x) if family == "rope" else owner.wte(x)
            if sp and h.shape[1] == seq:  # a replicated embedding: take this rank's slice
                h = _seq_slice(h, tp_mesh)
        elif sp:
            h = _seq_slice(x, tp_mesh)
        else:
            h = x
        pos = torch.arange(seq, device=x.device).unsqueeze(0)
        if family == "gpt2":
            if first:
                wpe = owner.wpe(pos)
                if sp:
                    wpe = _seq_slice(wpe, tp_mesh)
                h = owner.drop(h + wpe)
            for block in blocks:
                h = block(h)
        else:
            pe = owner.rotary_emb(h, pos)
            for block in blocks:
                h = block(h, attention_mask=None, position_ids=pos, position_embeddings=pe)
        h = h[0] if isinstance(h, tuple) else h
        for m in after:
            h = m(h)
        if not last and sp:  # hand the next stage the whole sequence
            h = DTensor.from_local(h, tp_mesh, [Shard(1)]).full_tensor()
        if whole_output and isinstance(h, DTensor):  # vocab-split logits, gathered
            h = h.full_tensor()
        return h

    model.forward = types.MethodType(forward, model)
    return model


def _seq_slice(t: torch.Tensor, mesh: Any) -> torch.Tensor:
    """The calling rank's slice of a whole (replicated) sequence; in backward the slices' gradients
    are gathered, so a replicated producer (a position table, the previous stage) gets the
    whole gradient on every rank rather than its own slice's.
    """
    return DTensor.from_local(t, mesh, [Replicate()]).redistribute(mesh, [Shard(1)]).to_local()


def _selective(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
    """Keep GEMM outputs, recompute the rest (attention core, norms, activations):
    the trade Korthikanti et al. 2022 call selective recomputation.
    """
    keep = (torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default)
    return CheckpointPolicy.MUST_SAVE if op in keep else CheckpointPolicy.PREFER_RECOMPUTE


def apply_recompute(blocks: list[nn.Module], mode: str) -> None:
    """Checkpoint each block's forward (``full``) or all but its GEMMs (``selective``).

    The block's ``forward`` is wrapped in place rather than the block in a
    ``CheckpointWrapper``, so parameter FQNs stay those of the unsplit model.
    """
    if mode == "none":
        return
    if mode not in ("full", "selective"):
        raise TrainPlanError(f"recompute {mode!r} is not one torch checkpointing runs")
    for block in blocks:
        inner: Callable[..., Any] = block.forward
        kw: dict[str, Any] = {"use_reentrant": False}
        if mode == "selective":
            kw["context_fn"] = partial(create_selective_checkpoint_contexts, _selective)
        block.forward = partial(checkpoint, inner, **kw)
