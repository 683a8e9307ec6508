"""The Plan: the one typed object between deciding (the passes up to ``partition``) and
writing (emit), as frozen data.

``shardc.plan.model.PlanData`` is the frozen, typed Plan; :class:`shardc.handle.Plan` (what
users hold) wraps it with its folder (``Plan.load``, ``save``, ``verify``, ``explain``):
the handle sits above the writers and runners it calls, the data below the passes that
make it. The folder has one writer
(:mod:`shardc.emit.outputs`) and one reader (:mod:`shardc.plan.folder`).
"""

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
    "PlanData",
    "Programs",
    "Rank",
    "Stage",
    "Sync",
    "Timeline",
]
