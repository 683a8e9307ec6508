"""Shared setup of the training tests: tiny random decoders, plans, a gloo world.

The models are built here from ``transformers`` configs with fixed seeds (never downloaded);
each plan is compiled once in the test process, and one spawned world runs every plan of a
test so process start-up (importing torch) is paid once per world size.
"""

from __future__ import annotations

import os
import socket
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor

SEQ = 16
VOCAB = 128
BATCH = 8
STEPS = 2
LR = 0.1


class LM(nn.Module):
    """A causal LM returning plain logits (what the exporter and the pipeline want)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.inner(input_ids=ids, use_cache=False).logits


def build(family: str, layers: int = 2) -> LM:
    """The same tiny model on every call (seeded), dropout off, sdpa attention."""
    import transformers

    torch.manual_seed(0)
    if family == "llama":
        cfg: Any = transformers.LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            attn_implementation="sdpa",
        )
        inner: nn.Module = transformers.LlamaForCausalLM(cfg)
    elif family == "mixtral":
        # four experts, top-2: an even split over 2 and 4 ranks; four KV heads so that tp=4
        # splits attention too; router jitter off (no noise)
        cfg = transformers.MixtralConfig(
            vocab_size=VOCAB,
            hidden_size=64,
            intermediate_size=32,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=4,
            num_local_experts=4,
            num_experts_per_tok=2,
            max_position_embeddings=64,
            router_jitter_noise=0.0,
            attn_implementation="sdpa",
        )
        inner = transformers.MixtralForCausalLM(cfg)
        inner.set_experts_implementation("batched_mm")  # the implementation that exports
    else:
        cfg = transformers.GPT2Config(
            vocab_size=VOCAB,
            n_embd=64,
            n_layer=layers,
            n_head=4,
            n_positions=64,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            attn_implementation="sdpa",
        )
        inner = transformers.GPT2LMHeadModel(cfg)
    model = LM(inner)
    model.train()
    return model


def batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (BATCH, SEQ + 1), generator=g)
    return ids[:, :-1].contiguous(), ids[:, 1:].contiguous()


def export(family: str, path: Path, layers: int = 2) -> Path:
    """The model's dynamo ONNX export, written once per session."""
    import onnx

    from shardc.frontend.torch_export import export_module

    x, _ = batch()
    proto = export_module(build(family, layers), (x[:2],))
    onnx.save(proto, str(path))
    return path


def reference(family: str, steps: int = STEPS, layers: int = 2) -> dict[str, Any]:
    """Losses of ``steps`` SGD steps and the first step's gradients, one process."""
    from shardc.train.step import token_loss

    model = build(family, layers)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    x, y = batch()
    losses, grads = [], {}
    for i in range(steps):
        loss = token_loss(model(x), y)
        loss.backward()
        if i == 0:
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        losses.append(float(loss.detach()))
        opt.step()
        opt.zero_grad()
    return {"losses": losses, "grads": grads}


def run_plan(
    plan_dir: str, family: str, steps: int = STEPS, layers: int = 2, **kw: Any
) -> dict[str, Any]:
    """On this rank: apply the plan, train ``steps`` SGD steps; losses and step-1 grads."""
    import shardc.train

    model = build(family, layers)
    if kw.pop("catch", False):  # a plan the test expects refused: its message
        try:
            shardc.train.apply(plan_dir, model, **kw)
        except shardc.train.TrainPlanError as e:
            return {"refused": str(e)}
        return {"refused": ""}
    pm = shardc.train.apply(plan_dir, model, **kw)
    opt = pm.optimizer(torch.optim.SGD, lr=LR)
    # what this rank stores of each parameter (its shard), to check what the plan split
    local = {n: tuple(p.to_local().shape if isinstance(p, DTensor) else p.shape)
             for n, p in pm.named_parameters()}  # fmt: skip
    x, y = batch()
    losses, grads = [], {}
    for i in range(steps):
        loss = pm.forward_backward(x, y)
        if i == 0:
            grads = pm.full_gradients()
        losses.append(loss)
        opt.step()
        opt.zero_grad()
    inner = getattr(opt, "optim", opt)  # ZeroRedundancyOptimizer's own share
    stepped = sum(len(g["params"]) for g in inner.param_groups)
    return {"losses": losses, "grads": grads, "local": local, "stepped": stepped,
            "optimizer": type(opt).__name__}  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(
    rank: int, world: int, port: int, jobs: list[tuple[str, str, dict[str, Any]]], out: str
) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    # a hung collective fails the test after two minutes instead of hanging it
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=120))
    results = []
    try:
        for plan_dir, family, kw in jobs:
            results.append(run_plan(plan_dir, family, **kw))
    except Exception:
        results = [{"error": f"rank {rank}: {traceback.format_exc()}"}]
    torch.save(results, f"{out}.{rank}")
    dist.destroy_process_group()


def spawn(
    world: int, jobs: list[tuple[str, str, dict[str, Any]]], out: Path
) -> list[list[dict[str, Any]]]:
    """Run ``jobs`` (plan folder, family, options) in one gloo world; results per rank."""
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(world, free_port(), jobs, str(out)), nprocs=world, join=True)
    res = [torch.load(f"{out}.{r}") for r in range(world)]
    for r in res:
        if r and "error" in r[0]:
            raise AssertionError(r[0]["error"])
    return res
