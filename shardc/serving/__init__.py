"""Serving plans: prefill/decode instances, their devices, KV cache and latency targets.

The deciding half of serving (DESIGN.md, wave 2): a workload (:mod:`.workload`) and the
model's sizes (:mod:`.arch`) in; instance shapes priced by the one cost model
(:mod:`shardc.serving.step`, :mod:`shardc.cost.expert_comm`) on the pools the
topology offers (:mod:`.fabric`, :mod:`.candidates`); CP-SAT choosing aggregated vs
disaggregated, shapes and counts (:mod:`.search`); a frozen :class:`ServingPlan` out
(:mod:`shardc.plan.serving`: the typed Plan's ``serving`` section, so the writer, reader
and report need not import this package), assembled by :func:`plan_serving`
(:mod:`.planner`), its traffic routed on the links by :mod:`.traffic`.
"""

from __future__ import annotations

from shardc.plan.serving import (
    ExpertTraffic,
    KVHandoff,
    ParetoPoint,
    ServingInstance,
    ServingPlan,
)
from shardc.serving.arch import MLA, ServingModel, from_onnx, from_synth_config
from shardc.serving.planner import ServingOptions, plan_serving
from shardc.serving.shapes import Parallel, Quant
from shardc.serving.workload import Workload, parse_duration, workload

__all__ = [
    "MLA",
    "ExpertTraffic",
    "KVHandoff",
    "Parallel",
    "ParetoPoint",
    "Quant",
    "ServingInstance",
    "ServingModel",
    "ServingOptions",
    "ServingPlan",
    "Workload",
    "from_onnx",
    "from_synth_config",
    "parse_duration",
    "plan_serving",
    "workload",
]
