"""Serving plans: prefill/decode instances, their devices, KV cache and latency targets.

The deciding half of serving (DESIGN.md, wave 2): a workload (:mod:`.workload`) and the
model's sizes (:mod:`.arch`) in; instance shapes priced by the one cost model
(:mod:`shardc.serving.step`, :mod:`shardc.cost.expert_comm`) on the pools the
topology offers (:mod:`.fabric`, :mod:`.candidates`); CP-SAT choosing aggregated vs
disaggregated, shapes and counts (:mod:`.search`); a frozen :class:`ServingPlan` out
(:mod:`.result`), assembled by :func:`plan_serving` (:mod:`.planner`).
"""

from __future__ import annotations

from shardc.serving.arch import MLA, ServingModel, from_onnx, from_synth_config
from shardc.serving.planner import ServingOptions, plan_serving
from shardc.serving.result import Instance, KVTransferPlan, ParetoRow, ServingPlan
from shardc.serving.step import Parallel, Quant
from shardc.serving.workload import Workload, parse_duration, workload

__all__ = [
    "MLA",
    "Instance",
    "KVTransferPlan",
    "Parallel",
    "ParetoRow",
    "Quant",
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
