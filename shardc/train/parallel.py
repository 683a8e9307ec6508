"""Apply a plan to a torch module: DeviceMesh, TP/SP, FSDP2, pipelining, recomputation.

Called on every rank of a ``torchrun`` job with the same plan and the same model. The steps,
in the order torch needs them (each comment says why it comes where it does):

1. read the plan's view and check this world and this model against it;
2. build the ``(pp, dp, tp)`` DeviceMesh, ranks in the plan's order (stage, replica, TP rank);
3. map the plan's per-node strategies to module FQNs through the export's metadata;
4. cut the model to this rank's pipeline stage(s) (before any sharding: pruned blocks then
   never allocate shards);
5. recompute per stage (wraps forwards; must precede FSDP, whose hooks sit outside);
6. tensor / sequence parallelism with ``parallelize_module``;
7. ZeRO with FSDP2 ``fully_shard`` over the dp axis (after TP: FSDP shards the DTensors;
   :mod:`shardc.train.zero`);
8. the pipeline schedule over the pp axis.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.pipelining import (
    PipelineStage,
    Schedule1F1B,
    ScheduleGPipe,
    ScheduleInterleaved1F1B,
)
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.parallel import parallelize_module

from shardc.errors import ShardcWarning
from shardc.train.conv1d import CONV1D, split_factor
from shardc.train.expert_alltoall import ep_mesh, expert_data_parallel
from shardc.train.experts import expert_styles, expert_targets
from shardc.train.launch import check_placement
from shardc.train.modules import (
    LayerChain,
    ModelMap,
    check_model,
    holds,
    layer_chain,
    model_map,
    tp_targets,
)
from shardc.train.planview import PlanView, TrainPlanError, plan_view
from shardc.train.stages import FAMILIES, apply_recompute, make_stage
from shardc.train.step import ParallelModel, token_loss
from shardc.train.tensor_parallel import check_whole_siblings, norm_modules, tp_styles
from shardc.train.zero import shard_data_parallel


def _world(view: PlanView) -> int:
    """Join the process group (torchrun's environment) and check its size."""
    if not dist.is_initialized():
        if "RANK" not in os.environ:
            raise TrainPlanError(
                "no process group and no RANK in the environment",
                hint="launch with `shardc launch PLAN -- script.py` or torchrun",
            )
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    world = dist.get_world_size()
    if world != view.world_size:
        raise TrainPlanError(
            f"the plan runs on {view.world_size} ranks and this job has {world}",
            hint=f"launch {view.world_size} processes (shardc launch does)",
        )
    return dist.get_rank()


def _device(view: PlanView, simulate_devices: bool) -> torch.device:
    """Where this rank computes: its accelerator, or the CPU for a CPU or simulated plan."""
    if simulate_devices or all(r.device.startswith("cpu") for r in view.ranks):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise TrainPlanError(
            f"the plan places ranks on {view.ranks[0].device} and this machine has no CUDA device",
            hint="pass simulate_devices=True to run the plan's structure on CPUs",
        )
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def _virtual_ranges(view: PlanView, stage: int) -> list[tuple[int, range]]:
    """(torch stage index, blocks) of each model chunk this pipeline rank holds.

    With v virtual stages the plan records the runs of blocks stage j holds
    (``chunks``, chunk c being model stage ``c * pp + j``, the order torch's interleaved
    schedule wants), and the device programs were lowered from the same runs; a plan
    written before it recorded them gets the same layout computed here.
    """
    v = view.interleave
    if v == 1:
        a, b = view.stages[stage].blocks
        return [(stage, range(a, b + 1))]
    if view.stages[stage].chunks:
        return [(c * view.pp + stage, range(a, b + 1))
                for c, (a, b) in enumerate(view.stages[stage].chunks)]
    sizes = [(s.blocks[1] - s.blocks[0] + 1) // v for s in view.stages]
    out, start = [], 0
    for c in range(v):
        for j, n in enumerate(sizes):
            if j == stage:
                out.append((c * view.pp + j, range(start, start + n)))
            start += n
    return out


def apply(
    plan: Any,
    model: nn.Module,
    *,
    loss_fn: Callable[[Any, torch.Tensor], torch.Tensor] | None = None,
    example_inputs: Any = None,
    simulate_devices: bool | None = None,
) -> ParallelModel:
    """Shard ``model`` as ``plan`` says, on this rank of a torchrun job.

    ``plan`` is a :class:`shardc.plan.Plan` or a plan folder compiled for ``model`` (the
    same module, or its ONNX export). ``loss_fn(logits, labels)`` defaults to token
    cross-entropy. ``example_inputs`` are needed only when the plan neither holds nor names
    the compiled ONNX graph (the module is then exported again to read its metadata).
    ``simulate_devices`` runs a plan for accelerators on a CPU world of the same size
    (default: ``$SHARDC_SIMULATE_DEVICES``, which ``shardc launch --simulate-devices`` sets).
    Returns a :class:`ParallelModel`: ``.module``, ``.mesh``, ``.step(...)``.
    """
    # 1. the plan, this world, this model
    view = _training_view(plan)
    tp = view.uniform_tp
    if tp is None:
        # torch's PipelineStage sends each activation from the one rank of a pp group that
        # holds stage i to the one that holds stage i+1; every TP rank of a stage needs the
        # whole gradient, so a wider stage would have ranks with no peer, and re-laying the
        # tensors inside its TP group around each send and receive has no hook in the
        # schedules (torchtitan and Megatron-LM likewise take one TP degree for all stages)
        tps = ", ".join(f"stage{s.index} tp={s.tp}" for s in view.stages)
        raise TrainPlanError(
            f"the plan's stages differ in TP degree ({tps}); torch's pipelining pairs one rank "
            "of each stage with one rank of the next, so every stage needs the same TP group size",
            hint="pin one tp for every stage (--pin tp=N)",
        )
    if simulate_devices is None:
        simulate_devices = os.environ.get("SHARDC_SIMULATE_DEVICES") == "1"
    device = _device(view, simulate_devices)
    rank = _world(view)
    check_placement(view, rank)
    stage = view.stages[view.rank(rank).stage]
    sp = stage.sequence_parallel and tp > 1
    mm, chain = _model_facts(view, model, example_inputs, needs_chain=sp or view.pp > 1
                             or stage.recompute != "none")  # fmt: skip
    # 2. the mesh, in the plan's rank order (stage, replica, TP rank)
    mesh, dp_mesh = ep_mesh(view, device, tp, stage.ep)
    model.to(device)
    aliases = _aliases(model)
    tied_groups = _tied_groups(view, mesh) if view.pp > 1 and aliases else {}
    # 3.-4. this rank's stage(s), cut before sharding
    chunks = _stage_chunks(model, view, chain, mesh, stage.index, sp)
    for c, (index, m, layers) in enumerate(chunks):
        blocks = [m.get_submodule(chain.layers[i]) for i in layers] if chain else []
        apply_recompute(blocks, stage.recompute)  # 5. inside FSDP's hooks
        if tp > 1:  # 6.
            _tensor_parallel(m, mm, chain, layers, view, mesh, sp)
            _retie(m, aliases)
        experts = expert_data_parallel(m, mm, mesh, stage.ep)
        if view.dp > 1:  # 7. over the DTensors TP made
            for e in experts:  # their own units first, reduced over edp only
                shard_data_parallel(e, [], mesh["edp"], view)
            chunks[c] = (index, shard_data_parallel(m, blocks, dp_mesh, view), layers)
    loss = loss_fn or token_loss
    n_virtual = view.pp * view.interleave
    return ParallelModel(
        modules=tuple(m for _, m, _ in chunks),
        mesh=mesh,
        view=view,
        rank=rank,
        schedule=_schedule(view, chunks, device, mesh, loss),  # 8.
        loss_fn=loss,
        first=any(i == 0 for i, _, _ in chunks),
        last=any(i == n_virtual - 1 for i, _, _ in chunks),
        device=device,
        aliases=aliases,
        tied_group=tied_groups.get(rank),
    )


def _training_view(plan: Any) -> PlanView:
    """The plan's view, fp8 turned into bf16 with a warning (torch cannot run it here)."""
    view = plan_view(plan)
    if view.dtype == "fp8":
        warnings.warn(
            "the plan is priced in fp8; torch runs FP8 GEMMs only through torchao's float8 "
            "training on FP8 GPUs, which shardc does not apply yet: training in bf16",
            ShardcWarning,
            stacklevel=3,
        )
        view = dataclasses.replace(view, dtype="bf16")
    return view


def _model_facts(
    view: PlanView, model: nn.Module, example_inputs: Any, *, needs_chain: bool
) -> tuple[ModelMap, LayerChain | None]:
    """The graph's module map (checked against ``model``) and its chain of blocks."""
    proto = view.onnx_model()
    if proto is None:
        from shardc.frontend.torch_export import export_module

        proto = export_module(model, example_inputs)
        model.train()  # the exporter left it in eval mode
    mm = model_map(proto)
    check_model(model, proto, mm)
    try:
        return mm, layer_chain(mm, view.blocks)
    except TrainPlanError:
        if needs_chain:
            raise
        return mm, None


def _stage_chunks(
    model: nn.Module, view: PlanView, chain: LayerChain | None, mesh: Any, stage: int, sp: bool
) -> list[tuple[int, nn.Module, range]]:
    """(torch stage index, module, blocks) of each model chunk this rank holds."""
    glue = chain is not None and chain.owner_cls.rsplit(".", 1)[-1] in FAMILIES
    ranges = _virtual_ranges(view, stage)
    n_virtual = view.pp * view.interleave
    out = []
    for k, (index, layers) in enumerate(ranges):
        m = model if k == len(ranges) - 1 else copy.deepcopy(model)
        if chain is not None and (glue or view.pp > 1 or sp):
            m = make_stage(m, chain, layers, first=index == 0, last=index == n_virtual - 1,
                           tp_mesh=mesh["tp"], sequence_parallel=sp,
                           whole_output=view.pp > 1)  # fmt: skip
        out.append((index, m, layers))
    return out


def _tensor_parallel(
    m: nn.Module, mm: ModelMap, chain: LayerChain | None, layers: range, view: PlanView,
    mesh: Any, sp: bool,
) -> None:  # fmt: skip
    """The plan's per-node strategies on the chunk's modules, norms under SP."""
    targets = {f: t for f, t in tp_targets(mm, view.strategies).items() if holds(m, f)}
    check_whole_siblings(m, targets)
    scopes: list[str] = []
    if sp and chain is not None:
        scopes = [chain.layers[i] for i in layers] + [f for f in chain.after if holds(m, f)]
    factors = {f: split_factor(mm.proto, node) for f, (_, cls, node) in targets.items()
               if cls == CONV1D}  # fmt: skip
    experts = {f: e for f, e in expert_targets(mm, view.strategies).items() if holds(m, f)}
    # the MoE block around each experts module: its router and experts are no norms
    moe = {f.rsplit(".", 1)[0] for f in experts}
    norms = [
        n for n in norm_modules(m, scopes, targets) if not any(n.startswith(f"{b}.") for b in moe)
    ]
    styles = tp_styles(targets, sequence_parallel=sp, factors=factors, sp_modules=norms)
    ep_styles = expert_styles(experts, sequence_parallel=sp)
    if view.stages[0].ep > 1:  # the experts go to the ep x tp ranks (expert_alltoall)
        ep_styles = {f: s for f, s in ep_styles.items() if f not in experts}
    styles.update(ep_styles)
    parallelize_module(m, mesh["tp"], styles)
    for fqn, k in factors.items():
        # GPT-2's attention cuts the fused output by a width it stores (``split_size``):
        # after the split each rank holds 1/tp of each part
        parent = m.get_submodule(fqn.rsplit(".", 1)[0])
        if k > 1 and isinstance(getattr(parent, "split_size", None), int):
            parent.split_size //= mesh["tp"].size()


def _retie(m: nn.Module, aliases: dict[str, str]) -> None:
    """Tie again what sharding untied: a parameter shared by two modules (GPT-2's head and
    embedding) was distributed once per module; both must hold the same DTensor.
    """
    params = dict(m.named_parameters(remove_duplicate=False))
    for name, first in aliases.items():
        if name not in params or first not in params:
            continue
        a, b = params[first], params[name]
        if a is b:
            continue
        if not isinstance(a, DTensor) or not isinstance(b, DTensor) or a.placements != b.placements:
            raise TrainPlanError(
                f"{name} is tied to {first} and the plan shards them differently",
                hint="a tied head and embedding must both be vocab-split (or both whole)",
            )
        owner, _, attr = name.rpartition(".")
        m.get_submodule(owner).register_parameter(attr, a)


def _schedule(
    view: PlanView, chunks: list[tuple[int, nn.Module, range]], device: torch.device,
    mesh: Any, loss: Callable[..., torch.Tensor],
) -> Any:  # fmt: skip
    """The pipeline schedule over the pp axis (None without pipelining)."""
    if view.pp == 1:
        return None
    n_virtual = view.pp * view.interleave
    stages: list[Any] = [
        PipelineStage(m, index, n_virtual, device, group=mesh["pp"].get_group())
        for index, m, _ in chunks
    ]
    if view.interleave > 1:
        return ScheduleInterleaved1F1B(stages, view.microbatches, loss_fn=loss)
    if view.schedule == "gpipe":
        return ScheduleGPipe(stages[0], view.microbatches, loss_fn=loss)
    return Schedule1F1B(stages[0], view.microbatches, loss_fn=loss)


def _aliases(model: nn.Module) -> dict[str, str]:
    """Name -> first name of every parameter the model ties to another (GPT-2's head and
    token embedding), so gradients report under the unsplit model's names.
    """
    first: dict[int, str] = {}
    out = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            out[name] = first[id(p)]
        else:
            first[id(p)] = name
    return out


def _tied_groups(view: PlanView, mesh: Any) -> dict[int, Any]:
    """Rank -> the process group joining it to its peer holding the other end of a tied
    weight (first and last stage, same replica and TP rank), as Megatron's embedding group.

    Every rank creates every group, in the same order (``new_group`` is collective).
    """
    grid = mesh.mesh.reshape(view.pp, view.dp, -1).tolist()
    out = {}
    for d in range(view.dp):
        for t in range(len(grid[0][0])):
            ranks = [grid[0][d][t], grid[-1][d][t]]
            group = dist.new_group(ranks)
            for r in ranks:
                out[r] = group
    return out
