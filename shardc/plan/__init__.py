"""The Plan: the one typed object between deciding (the passes up to ``partition``) and
writing (emit), and the user-facing handle over a compiled or loaded plan.

``shardc.plan.model.PlanData`` is the frozen, typed Plan; :class:`Plan` wraps it with its
folder (``Plan.load``, ``save``, ``verify``, ``explain``). The folder has one writer
(:mod:`shardc.emit.outputs`) and one reader (:mod:`shardc.plan.folder`).
"""

from shardc.plan.handle import Plan, PlanError
from shardc.plan.model import Estimate, PlanData
from shardc.plan.program import Comm, Compute, DeviceProgram, Link, Programs, Sync
from shardc.plan.records import Device, Rank, Stage
from shardc.plan.timeline import Event, LinkLoad, Timeline

__all__ = [
    "Comm",
    "Compute",
    "Device",
    "DeviceProgram",
    "Estimate",
    "Event",
    "Link",
    "LinkLoad",
    "Plan",
    "PlanData",
    "PlanError",
    "Programs",
    "Rank",
    "Stage",
    "Sync",
    "Timeline",
]
