"""``plan_serving``: a model, a topology and a workload in, a
:class:`~shardc.plan.serving.ServingPlan` out (plan.json's ``serving`` section).

The recipe: read the pools the topology offers; price every instance shape on every pool
its role tag allows (:mod:`.candidates`); let CP-SAT choose shapes and counts under the
targets (:mod:`.search`); bind the chosen instances to concrete devices, pool by pool in
rank order (whole scale-up islands stay whole); price the KV hand-off on the real devices
over every plane that joins them, and route it and the expert all-to-all on the topology
(:mod:`.traffic`); repeat the choice at a ladder of TPOT targets for the
Pareto table. When nothing meets the targets, say which phase misses, by how much, and
what would be met.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from shardc.cost.expert_comm import MOE_COMMS
from shardc.errors import InfeasibleError, OptionError
from shardc.plan.records import frozen
from shardc.plan.serving import KVHandoff, ParetoPoint, ServingInstance, ServingPlan
from shardc.serving.arch import ServingModel
from shardc.serving.candidates import (
    Candidate,
    Options,
    aggregated_candidates,
    decode_candidates,
    prefill_candidates,
)
from shardc.serving.fabric import Fabric
from shardc.serving.search import Choice, search
from shardc.serving.shapes import Quant, element_bytes
from shardc.serving.traffic import expert_traffic, kv_links
from shardc.serving.workload import Workload
from shardc.topology import Topology

PARETO_TPOT = (0.010, 0.015, 0.020, 0.030, 0.040, 0.050, 0.075, 0.100, 0.150, 0.200)
"""TPOT targets of the Pareto table (seconds), plus the user's own."""


@dataclass(frozen=True, slots=True)
class ServingOptions:
    """What the user may fix or change about the search."""

    quant: Quant = field(default_factory=Quant)
    mtp: int = 0
    acceptance: float = 0.0
    pins: tuple[tuple[str, int], ...] = ()
    kinds: tuple[tuple[str, str], ...] = ()
    """Role -> device kind pins (``prefill.kind=h100_sxm``)."""
    mode: str | None = None
    """``aggregated`` or ``disaggregated`` to fix the mode; None lets the solver pick."""
    time_limit: float = 10.0
    seed: int = 0
    pareto: bool = True
    overlap: bool = True
    """Whether a MoE layer's all-to-all overlaps its compute (DeepSeek's two-micro-batch
    overlap); False prices them in sequence, as engines without it (TRT-LLM) run."""
    moe_comm: str = "alltoall"
    """The MoE token exchange the runtime runs (`shardc.cost.expert_comm.MOE_COMMS`):
    DeepEP's all-to-all, or TensorRT-LLM's all-gather + reduce-scatter."""


def _check_pins(m: ServingModel, opts: ServingOptions) -> None:
    pins = dict(opts.pins)
    for role in ("", "prefill.", "decode.", "aggregated."):
        _check_ep(m, pins.get(role + "ep"), pins.get(role + "redundant", pins.get("redundant", 0)),
                  role)
    for key, value in pins.items():
        if value <= 0 and not key.endswith("redundant"):
            raise OptionError(f"--pin {key}={value}: must be positive")


def _check_ep(m: ServingModel, ep: int | None, redundant: int, role: str) -> None:
    if ep is not None:
        if not m.moe:
            raise OptionError(f"--pin {role}ep={ep}: the model has no experts",
                              hint="expert parallelism applies to MoE models only")
        if (m.experts + redundant) % ep:
            fill = -m.experts % ep
            raise OptionError(
                f"--pin {role}ep={ep} does not divide the {m.experts} routed experts"
                + (f" plus {redundant} redundant" if redundant else ""),
                hint=f"pin {role}redundant={fill} to fill every rank's slots, or an ep that "
                f"divides {m.experts}",
            )


def _candidates(m: ServingModel, wl: Workload, fabric: Fabric, opts: ServingOptions
                ) -> tuple[dict[str, list[Candidate]], ...]:
    kinds = dict(opts.kinds)
    copts = Options(opts.quant, opts.mtp, opts.acceptance, opts.pins, opts.overlap,
                    opts.moe_comm)
    pre: dict[str, list[Candidate]] = {}
    dec: dict[str, list[Candidate]] = {}
    agg: dict[str, list[Candidate]] = {}
    for pool in fabric.pools:
        name = pool.kind.name
        if opts.mode != "aggregated":
            if pool.allows("prefill") and kinds.get("prefill", name) == name:
                pre[name] = prefill_candidates(m, wl, fabric, pool, copts)
            if pool.allows("decode") and kinds.get("decode", name) == name:
                dec[name] = decode_candidates(m, wl, fabric, pool, copts)
        if opts.mode != "disaggregated" and pool.role not in ("prefill", "decode") \
                and kinds.get("aggregated", name) == name:
            agg[name] = aggregated_candidates(m, wl, fabric, pool, copts)
    return pre, dec, agg


def _explain_infeasible(m: ServingModel, wl: Workload, pre: dict[str, list[Candidate]],
                        dec: dict[str, list[Candidate]], agg: dict[str, list[Candidate]]
                        ) -> InfeasibleError:
    decs = [c for v in list(dec.values()) + list(agg.values()) for c in v]
    if not decs:
        need = m.kv_bytes_per_token(1.0) * wl.max_context
        return InfeasibleError(
            f"the KV cache does not fit: no instance shape holds the weights plus one "
            f"{wl.max_context}-token sequence ({need / 1e9:.3g} GB of KV per byte of "
            "element width) on these devices",
            hint="use more devices (--set nodes=...), --kv-dtype fp8, --weight-dtype fp8, "
            "or shorter --isl/--osl",
        )
    if wl.tpot is not None and min(c.tpot for c in decs) > wl.tpot:
        best = min(decs, key=lambda c: c.tpot)
        return InfeasibleError(
            f"decode misses --tpot {wl.tpot * 1e3:.4g}ms by {(best.tpot - wl.tpot) * 1e3:.3g}ms: "
            f"the fastest step is {best.tpot * 1e3:.4g}ms ({best.describe()})",
            hint=f"--tpot {best.tpot * 1e3:.4g}ms would be met; or more devices per instance",
        )
    pres = [c for v in list(pre.values()) + list(agg.values()) for c in v]
    if wl.ttft is not None and pres and min(c.ttft_part for c in pres) > wl.ttft:
        best = min(pres, key=lambda c: c.ttft_part)
        return InfeasibleError(
            f"prefill misses --ttft {wl.ttft * 1e3:.4g}ms by "
            f"{(best.ttft_part - wl.ttft) * 1e3:.4g}ms: the fastest prompt takes "
            f"{best.ttft_part * 1e3:.4g}ms ({best.describe()})",
            hint=f"--ttft {best.ttft_part * 1e3:.4g}ms would be met (plus the KV transfer)",
        )
    what = f"{wl.rate} requests/s" if wl.rate else (
        f"{wl.concurrency} requests in flight" if wl.concurrency else "the targets")
    return InfeasibleError(
        f"no plan on these devices meets {what} with --tpot/--ttft as given",
        hint="add devices (--set nodes=...), relax --tpot/--ttft, or lower the rate",
    )


def _bind(choice: Choice, fabric: Fabric, moe: bool) -> list[ServingInstance]:
    """Concrete devices per instance: each pool's devices in rank order, prefill first."""
    nxt = {p.kind.name: 0 for p in fabric.pools}
    out: list[ServingInstance] = []
    groups: list[tuple[Candidate, int]] = []
    if choice.prefill is not None:
        groups.append((choice.prefill, choice.prefill_count))
    groups.append((choice.decode, choice.decode_count))
    for cand, count in groups:
        pool = cand.pool
        for i in range(count):
            start = nxt[pool.kind.name]
            devs = pool.devices[start:start + cand.devices]
            nxt[pool.kind.name] = start + cand.devices
            out.append(ServingInstance(
                cand.role, i, pool.kind.name, tuple(devs), cand.par.tp, cand.par.dp, cand.par.pp,
                cand.par.ep if moe else 1, cand.redundant, cand.batch, cand.chunk,
                cand.step.seconds, cand.memory_per_device, cand.kv_capacity_tokens,
                frozen(dict(sorted(cand.step.parts.items()))), cand.output_rate,
                cand.request_rate,
            ))
    return out


def _kv_plan(choice: Choice, instances: Sequence[ServingInstance], fabric: Fabric,
             nbytes: float, requests_per_s: float) -> KVHandoff | None:
    if choice.prefill is None or choice.transfer is None:
        return None
    p = next(i for i in instances if i.role == "prefill")
    d = next(i for i in instances if i.role == "decode")
    options = fabric.kv_transfers(p.devices[:p.tp], d.devices[:d.tp], nbytes)
    if not options:
        return None
    best = options[0]
    rho = choice.prefill.request_rate / max(p.dp, 1) * best.seconds
    seconds = best.seconds / (1.0 - rho) if rho < 1 else choice.transfer.seconds
    links = kv_links(fabric, instances, best.plane, nbytes, requests_per_s)
    return KVHandoff(best.plane, best.link_kinds, nbytes, seconds, best.streams,
                     frozen({o.plane: o.seconds for o in options[1:]}), nbytes * requests_per_s,
                     links)


def plan_serving(m: ServingModel, topo: Topology, wl: Workload,
                 opts: ServingOptions = ServingOptions()) -> ServingPlan:
    """Search and return the best serving plan; raise InfeasibleError saying why not."""
    if opts.moe_comm not in MOE_COMMS:
        raise OptionError(f"moe_comm {opts.moe_comm!r}: use {' or '.join(MOE_COMMS)}")
    _check_pins(m, opts)
    fabric = Fabric(topo)
    pre, dec, agg = _candidates(m, wl, fabric, opts)
    kv_bytes = wl.isl * m.kv_bytes_per_token(element_bytes(opts.quant.kv))
    choices = search(pre, dec, agg, wl, fabric, kv_bytes, tpot=wl.tpot, ttft=wl.ttft,
                     time_limit=opts.time_limit, seed=opts.seed)
    if not choices:
        raise _explain_infeasible(m, wl, pre, dec, agg)
    best = choices[0]
    instances = _bind(best, fabric, m.moe)
    other = next((c for c in choices if c.mode != best.mode), None)
    alternative: dict[str, object] = {"mode": "aggregated" if best.mode == "disaggregated"
                                      else "disaggregated"}
    if other is None and opts.mode is not None:
        alternative["status"] = f"left out by --pin mode={opts.mode}"
    elif other is None:
        alternative["status"] = "no feasible plan" if (
            agg if best.mode == "disaggregated" else pre) else "not allowed on these devices"
    else:
        alternative.update({
            "status": "feasible", "tokens_per_s_per_device": round(other.per_device, 3),
            "devices": other.devices, "tpot_s": round(other.tpot, 6),
            "ttft_s": round(other.ttft, 6), "decode": other.decode.describe(),
        })
    pareto: list[ParetoPoint] = []
    if opts.pareto:
        targets = sorted(set(PARETO_TPOT) | ({wl.tpot} if wl.tpot else set()))
        for target in targets:
            got = search(pre, dec, agg, wl, fabric, kv_bytes, tpot=target, ttft=wl.ttft,
                         time_limit=opts.time_limit / 4, seed=opts.seed)
            if got:
                c = got[0]
                pareto.append(ParetoPoint(target, c.mode, c.tpot, c.ttft, c.per_device,
                                        1.0 / c.tpot, c.devices, c.decode.describe()))
    requests = best.output_rate / wl.osl
    total = sum(len(p.devices) for p in fabric.pools)
    plan = ServingPlan(
        mode=best.mode,
        model=frozen(dict(sorted(m.as_dict().items()))),
        workload=frozen(dict(sorted(wl.as_dict().items()))),
        precision=frozen({
            "activations": opts.quant.activations, "combine": opts.quant.combine,
            "dispatch": opts.quant.dispatch, "kv": opts.quant.kv, "mtp": opts.mtp,
            "mtp_acceptance": opts.acceptance, "weights": opts.quant.weights,
            # recorded only off the default, so plans priced before the option read the same
            **({"moe_comm": opts.moe_comm} if opts.moe_comm != "alltoall" else {})}),
        instances=tuple(instances),
        kv_transfer=_kv_plan(best, instances, fabric, kv_bytes, requests),
        expert_traffic=expert_traffic(m, fabric, instances, opts.quant, opts.mtp,
                                      opts.moe_comm),
        ttft=best.ttft,
        tpot=best.tpot,
        output_tokens_per_s=best.output_rate,
        input_tokens_per_s=requests * wl.isl,
        devices_used=best.devices,
        devices_total=total,
        requests_per_s=requests,
        alternative=frozen(dict(sorted(alternative.items()))),
        pareto=tuple(pareto),
        solver=frozen({"candidates": sum(len(v) for d in (pre, dec, agg) for v in d.values()),
                       "plans_compared": len(choices), "status": best.status}),
    )
    # through the written rounding: the plan returned is the plan plan.json reads back
    return ServingPlan.from_json(plan.to_json())
