"""Expert parallelism across data-parallel replicas in training (``--pin ep=N``): what it
costs and saves per block, as :mod:`shardc.train.expert_alltoall` runs it.

The layout (DeepSpeed-MoE, Megatron's ``--expert-model-parallel-size``): ``ep`` consecutive
replicas of a stage form an ep group and split the ``E`` experts of every MoE layer,
``E/ep`` per rank. Their tokens differ, so every (token, expert) pair whose expert lives on
another rank of the group travels there and back:

* **time**: per MoE layer and micro-batch, a dispatch and a combine all-to-all forward and
  the same two reversed in backward, each rank sending its ``S`` pair rows (``S`` = tokens
  times top-k, as the graph's expert region has them) times ``(ep-1)/ep`` (balanced
  routing), priced by :func:`shardc.cost.expert_comm.expert_alltoall` over the topology's
  tier views of the group's devices (the function serving prices its EP with). The torch
  side sends one row per pair (no per-destination deduplication), so the price uses
  ``top_k = 1`` over the pair rows;
* **memory**: a rank stores ``1/ep`` of the expert weights, and of their gradients and
  optimizer state where the ZeRO stage keeps those whole per replica (where ZeRO shards
  them over dp they are already ``1/dp``: ``1/ep`` of the experts over ``dp/ep`` replicas
  is the same share);
* **sync**: expert gradients are reduced over the ``dp/ep`` replicas holding the same
  experts, ``1/ep`` of the bytes; priced here as the part's sync with those bytes removed
  from the dp group's collective (the smaller group's ring factor is not modelled).

With tensor parallelism the stage's TP group first spreads the experts
(:mod:`shardc.partition.experts`: tokens whole, local selection, all-reduce combine), and
each TP rank's share is spread again over its ep peers (the same TP rank in ``ep``
replicas): ``E/(ep·tp)`` experts per rank, ``1/tp`` of the pairs on the all-to-all.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from shardc.cost.expert_comm import expert_alltoall
from shardc.cost.network import tier_options
from shardc.errors import OptionError
from shardc.partition.experts import ExpertRegion
from shardc.partition.pricing import GraphPrices as Costing
from shardc.partition.pricing import PartCost


def regions(costing: Costing) -> tuple[ExpertRegion, ...]:
    """The expert regions of the costing's graph (MoE layers the exporter wrote)."""
    return costing.expert_regions


def check_ep(costing: Costing, ep: int, tp_pins: Sequence[int], dp: int | None) -> None:
    """Refuse a pinned ``ep`` the plan cannot honour (one line, exit 2 via OptionError)."""
    where = f"--pin ep={ep}"
    if costing.settings.mode != "training":
        raise OptionError(f"{where}: expert parallelism across replicas is planned for "
                          "--mode training")  # fmt: skip
    found = regions(costing)
    if not found:
        raise OptionError(f"{where}: the model has no mixture-of-experts layer to spread")
    for r in found:
        if r.experts % ep:
            raise OptionError(f"{where}: {r.experts} experts (indexed by {r.ids!r}) do not "
                              f"split over {ep} ranks")  # fmt: skip
    _, block, _, _ = costing.sections
    inside = set(block)
    if not any(set(r.nodes) <= inside for r in found):
        raise OptionError(f"{where}: no MoE layer sits in the model's repeated blocks")
    for t in tp_pins:
        if any(r.experts % (ep * t) for r in found):
            raise OptionError(f"{where}: with tp={t} the experts spread over ep x tp = "
                              f"{ep * t} ranks, which do not divide them")  # fmt: skip
    if dp is not None and dp % ep:
        raise OptionError(f"{where}: ep must divide the data-parallel width dp={dp}")


def _elem(costing: Costing, value: str) -> tuple[int, float]:
    """(elements of one pair row, bytes per element) of a region value."""
    v = costing.graph.values[value]
    shape = v.type.shape if v.type is not None and v.type.shape else ()
    rows = shape[0] if shape and isinstance(shape[0], int) and shape[0] > 0 else 1
    nbytes = float(v.nbytes or 0)
    numel = 1
    for d in shape[1:]:
        numel *= d if isinstance(d, int) else 1
    return numel, nbytes / max(rows * numel, 1)


def ep_choices(costing: Costing, pinned: int | None, devices: int) -> tuple[int, ...]:
    """The expert-parallel widths the search tries: the pin alone when there is one; else
    1 and every power of two that divides every MoE layer's experts and fits the pool
    (training with MoE layers in the repeated blocks only; inference and dense models
    have nothing to spread). Why powers of two: ep groups are consecutive replicas and dp
    widths are mostly powers of two; Megatron's ``--expert-model-parallel-size`` and
    DeepSpeed-MoE configurations in practice are too.
    """
    if pinned is not None:
        return (pinned,)
    if costing.settings.mode != "training":
        return (1,)
    found = regions(costing)
    _, block, _, _ = costing.sections
    inside = set(block)
    if not found or not any(set(r.nodes) <= inside for r in found):
        return (1,)
    out, e = [1], 2
    while e <= devices and all(r.experts % e == 0 for r in found):
        out.append(e)
        e *= 2
    return tuple(out)


def fits(costing: Costing, ep: int, tp: int) -> bool:
    """Whether every MoE layer's experts split over ``ep x tp`` ranks."""
    return all(r.experts % (ep * tp) == 0 for r in regions(costing))


def block_alltoall(
    costing: Costing, block: Sequence[str], group: Sequence[str], tp: int = 1
) -> float:
    """Seconds of one micro-batch's dispatch + combine, forward and backward, for the MoE
    layers of ``block`` over the ep group's devices ``group``; under TP each rank of the
    group moves its TP share of the pairs (``1/tp``: the pairs of its own experts).
    """
    inside = set(block)
    views = tier_options(costing.topology, group)
    seconds = 0.0
    for r in regions(costing):
        if not set(r.nodes) <= inside:
            continue
        out = costing.graph.node(r.exit).outputs[0]
        for value, is_dispatch in [*((e, True) for e in r.entries), (out, False)]:
            hidden, elem = _elem(costing, value)
            est = expert_alltoall(views, tokens_per_rank=r.pairs / tp, hidden=hidden, top_k=1,
                                  dispatch_bytes=elem, combine_bytes=elem)  # fmt: skip
            one = est.dispatch_seconds if is_dispatch else est.combine_seconds
            seconds += 2 * one  # forward, and its reverse in backward
    return seconds


def expert_params(costing: Costing, block: Sequence[str], tp: int = 1) -> tuple[float, float]:
    """(parameters, weight bytes) of the stacked expert weights ``block`` gathers, as one
    rank of a ``tp`` group holds them (the experts strategy gives each ``1/tp``).
    """
    inside = set(block)
    seen: set[str] = set()
    params = nbytes = 0.0
    for r in regions(costing):
        if not set(r.nodes) <= inside:
            continue
        for g in r.gathers:
            w = costing.graph.node(g).inputs[0]
            if w in seen:
                continue
            seen.add(w)
            t = costing.graph.values[w].type
            params += float(t.numel or 0) if t is not None else 0.0
            nbytes += float(costing.graph.values[w].nbytes or 0)
    return params / tp, nbytes / tp


def saved_bytes(params: float, nbytes: float, ep: int, zero: int) -> float:
    """Bytes per rank ep frees of a block's experts: ``1 - 1/ep`` of the weights, gradients
    and optimizer state the ZeRO stage keeps whole per replica (the sharded ones are
    ``1/dp`` with or without ep). Adam state as :meth:`Costing._state` prices it.
    """
    if not params:
        return 0.0
    per_weight = nbytes / params
    whole = (per_weight if zero < 3 else 0.0) + (per_weight if zero < 2 else 0.0)
    whole += (12.0 if per_weight < 4 else 8.0) if zero < 1 else 0.0
    return params * whole * (1.0 - 1.0 / ep)


def synced_part(part: PartCost, params: float, ep: int) -> PartCost:
    """``part`` as the dp sync sees it under ep: expert gradients are ``1/ep`` of theirs."""
    keep = 1.0 - 1.0 / ep
    grad_per = part.grad_bytes / part.params if part.params else 0.0
    return dataclasses.replace(
        part,
        params=max(0.0, part.params - params * keep),
        grad_bytes=max(0.0, part.grad_bytes - params * grad_per * keep),
    )
