"""The plan in the words of the frameworks people train with: Megatron-LM arguments and a
torchtitan job config, with what each cannot say written next to it.

Names follow Megatron-LM's ``megatron/training/arguments.py`` and torchtitan's job config
(``[parallelism]``, ``[activation_checkpoint]``, ``[training]``); only facts the plan holds
are written, and every decision the framework cannot express is listed in ``lost`` (and as
comments in the text), never dropped silently.

>>> import shardc
>>> plan = shardc.compile("examples/models/tiny_gpt2.onnx", "topologies/localhost.topo",
...                       devices=4, pins="tp=2,pp=2", quiet=True)
>>> export_config(plan, "megatron").text.split()[:2]
['--tensor-model-parallel-size', '2']
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from typing import Any

from shardc.errors import OptionError
from shardc.train.planview import PlanView, plan_view

FORMATS = ("megatron", "torchtitan")
_ZERO_MEGATRON = {
    1: ["--use-distributed-optimizer"],
    2: ["--use-megatron-fsdp", "--data-parallel-sharding-strategy", "optim_grads"],
    3: ["--use-megatron-fsdp", "--data-parallel-sharding-strategy", "optim_grads_params"],
}


@dataclass(frozen=True)
class Exported:
    """A plan written for another framework."""

    format: str
    text: str
    """Arguments (Megatron) or TOML (torchtitan), with ``#`` comments for what is lost."""
    lost: tuple[str, ...]
    """Decisions of the plan the format cannot express (empty: nothing lost)."""


def _common(v: PlanView) -> tuple[int, bool, str, list[str]]:
    """(tp, sp, recompute) one value per job, and what choosing them loses."""
    lost = []
    tps = Counter(s.tp for s in v.stages)
    tp = tps.most_common(1)[0][0]
    if len(tps) > 1:
        lost.append(f"per-stage TP degrees {[s.tp for s in v.stages]}: one degree, {tp}, for all")
    sps = {s.sequence_parallel for s in v.stages if s.tp > 1}
    sp = any(sps)
    if len(sps) > 1:
        lost.append("sequence parallelism on some TP stages only: on for all")
    rcs = Counter(s.recompute for s in v.stages)
    rc = rcs.most_common(1)[0][0]
    if len(rcs) > 1:
        lost.append(f"per-stage recompute {[s.recompute for s in v.stages]}: {rc} for all")
    return tp, sp, rc, lost


def _layers(v: PlanView) -> list[int]:
    return [s.blocks[1] - s.blocks[0] + 1 for s in v.stages]


def megatron_args(v: PlanView, samples_per_step: int) -> Exported:
    """Megatron-LM command-line arguments for the plan."""
    tp, sp, rc, lost = _common(v)
    args: list[list[str]] = [
        ["--tensor-model-parallel-size", str(tp)],
        ["--pipeline-model-parallel-size", str(v.pp)],
        ["--num-layers", str(v.blocks)],
        ["--micro-batch-size", str(samples_per_step // max(v.dp * v.microbatches, 1))],
        ["--global-batch-size", str(samples_per_step)],
    ]
    if sp and tp > 1:
        args.append(["--sequence-parallel"])
    layers = _layers(v)
    if v.pp > 1 and len(set(layers)) > 1:
        stages = ["t" * n for n in layers]
        stages[0], stages[-1] = "E" + stages[0], stages[-1] + "L"
        args.append(["--pipeline-model-parallel-layout", "|".join(stages)])
    if v.interleave > 1:
        per = {n // v.interleave for n in layers}
        if len(per) == 1:
            args.append(["--num-layers-per-virtual-pipeline-stage", str(per.pop())])
        else:
            lost.append("virtual stages over uneven stages")
    if v.schedule == "gpipe" and v.pp > 1:
        lost.append("the GPipe schedule: Megatron-LM runs 1F1B")
    if rc == "full":
        args.append(["--recompute-granularity", "full", "--recompute-method", "uniform",
                     "--recompute-num-layers", "1"])  # fmt: skip
    elif rc == "selective":
        args.append(["--recompute-granularity", "selective"])
    if v.zero in _ZERO_MEGATRON and v.dp > 1:
        args.append(_ZERO_MEGATRON[v.zero])
    if v.dtype == "bf16":
        args.append(["--bf16"])
    elif v.dtype == "fp16":
        args.append(["--fp16"])
    elif v.dtype == "fp8":
        args.append(["--bf16", "--fp8-format", "hybrid"])
    # rank order needs no argument: the plan numbers ranks stage, replica, TP rank, which
    # is Megatron's own tp-fastest, pp-slowest order
    text = " \\\n".join(" ".join(a) for a in args)
    text += "\n" + "".join(f"# not expressed: {x}\n" for x in lost)
    return Exported("megatron", text, tuple(lost))


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(x) for x in value) + "]"
    return str(value)


def torchtitan_config(v: PlanView) -> Exported:
    """A torchtitan job config (TOML) for the plan.

    Stages go in ``module_fqns_per_model_part`` by torchtitan's own Llama names
    (``tok_embeddings``, ``layers.N``, ``norm``, ``output``), which says uneven stages exactly.
    """
    tp, sp, rc, lost = _common(v)
    par: dict[str, Any] = {
        "data_parallel_replicate_degree": v.dp if v.zero == 0 else 1,
        "data_parallel_shard_degree": v.dp if v.zero > 0 else 1,
        "fsdp_reshard_after_forward": "always" if v.zero >= 3 else "never",
        "tensor_parallel_degree": tp,
        "enable_sequence_parallel": sp,
        "pipeline_parallel_degree": v.pp,
    }
    if v.zero in (1, 2) and v.dp > 1:
        lost.append(f"ZeRO-{v.zero}: FSDP shards parameters too (reshard 'never' is ZeRO-2)")
    if v.pp > 1:
        par["pipeline_parallel_schedule"] = (
            "Interleaved1F1B" if v.interleave > 1 else "GPipe" if v.schedule == "gpipe" else "1F1B"
        )
        par["num_pp_microbatches"] = v.microbatches
        parts: list[list[str]] = []
        for s in v.stages:
            for c in range(v.interleave):
                n = (s.blocks[1] - s.blocks[0] + 1) // v.interleave
                lo = s.blocks[0] + c * n
                parts.append([f"layers.{i}" for i in range(lo, lo + n)])
        parts[0].insert(0, "tok_embeddings")
        parts[-1] += ["norm", "output"]
        if v.interleave > 1:
            lost.append("virtual-stage order: parts listed stage by stage, chunk by chunk")
        par["module_fqns_per_model_part"] = parts
    lines = ["[parallelism]"] + [f"{k} = {_toml(x)}" for k, x in par.items()]
    lines += ["", "[activation_checkpoint]", f'mode = "{rc}"']
    if rc == "selective":
        lines.append('selective_ac_option = "op"')
    if v.dtype in ("bf16", "fp16", "fp8"):
        lines += ["", "[training]", 'mixed_precision_param = "bfloat16"']
        if v.dtype == "fp16":
            lost.append("fp16: torchtitan's mixed precision is bfloat16")
        if v.dtype == "fp8":
            lost.append("fp8 GEMMs: add torchtitan's float8 model converter by hand")
    text = "\n".join(lines) + "\n" + "".join(f"# not expressed: {x}\n" for x in lost)
    return Exported("torchtitan", text, tuple(lost))


def export_config(plan: Any | str | os.PathLike[str], fmt: str) -> Exported:
    """The plan as ``fmt`` (``megatron`` or ``torchtitan``)."""
    if fmt not in FORMATS:
        raise OptionError(f"--format {fmt}: use one of {', '.join(FORMATS)}")
    from shardc.handle import Plan

    p = plan if isinstance(plan, Plan) else Plan.load(plan)
    v = plan_view(p)
    if fmt == "megatron":
        return megatron_args(v, int(p.data["partition"]["samples_per_step"]))
    return torchtitan_config(v)
