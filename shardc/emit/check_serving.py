"""``shardc check-plan`` on a serving plan folder: plan.json against its schema and itself,
and its devices and links against the topology it was compiled for.

Why its own check: a serving plan (format ``shardc-plan/2``) has instances instead of
device programs, so the pipeline checks (ONNX models valid, Send/Recv paired, weights
tiled) have nothing to read. What can still be wrong is what a copied or hand-edited
plan.json gets wrong: a device in two instances (the reader refuses that), a device or
link the topology does not have, a kind that is not the device's, or a topology changed
since the plan was made.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shardc.errors import ShardcError
from shardc.plan.folder import read_plan, read_plan_folder, resolve_input


@dataclass
class ServingCheck:
    """What was checked; ``problems`` empty means consistent."""

    mode: str = ""
    instances: dict[str, int] = field(default_factory=dict)
    devices_used: int = 0
    devices_total: int = 0
    links: int = 0
    """KV hand-off and all-to-all link records checked against the topology."""
    topology: str | None = None
    """The topology file the devices were checked against (None: not found)."""
    problems: list[str] = field(default_factory=list)


def _topology(folder: Any) -> tuple[Path | None, dict[str, Any]]:
    """The recorded topology: a file beside the folder, else the stock topology of that name."""
    from shardc.topology.loader import find_topology

    record = folder.plan["inputs"]["topology"]
    found = resolve_input(folder, "topology")
    if found is None:
        try:
            found = find_topology(Path(Path(record["path"]).name), ())
        except ShardcError:
            found = None
    return (Path(found) if found is not None else None), dict(record.get("set") or {})


def check_serving_outdir(path: str | Path) -> ServingCheck:
    """Check the serving plan folder ``path`` (raises PlanFolderError when plan.json is
    unreadable or inconsistent in itself).
    """
    from shardc.topology import load_topology

    plan = read_plan(path)
    s = plan.serving
    assert s is not None, "a serving plan"
    report = ServingCheck(s.mode, {}, s.devices_used, s.devices_total)
    for inst in s.instances:
        report.instances[inst.role] = report.instances.get(inst.role, 0) + 1
    file, sets = _topology(read_plan_folder(path))
    if file is None:
        report.problems.append("the topology plan.json names was not found: devices unchecked")
        return report
    report.topology = str(file)
    recorded = plan.inputs.topology.sha256 if plan.inputs is not None else None
    if recorded and hashlib.sha256(file.read_bytes()).hexdigest() != recorded:
        report.problems.append(f"{file}: changed since the plan was compiled (sha256 differs)")
    topo = load_topology(file, sets)
    kinds = {d.name: d.kind.name for d in topo.devices}
    for inst in s.instances:
        for d in inst.devices:
            if d not in kinds:
                report.problems.append(f"{inst.role} instance {inst.index}: no device {d!r}")
            elif kinds[d] != inst.kind:
                report.problems.append(f"{inst.role} instance {inst.index}: {d} is a "
                                       f"{kinds[d]}, not a {inst.kind}")
    if s.devices_total != len(topo.compute_devices):
        report.problems.append(f"devices_total is {s.devices_total}, the topology has "
                               f"{len(topo.compute_devices)} compute devices")
    ends = {(k.plane, k.a, k.b) for k in topo.links} | {(k.plane, k.b, k.a) for k in topo.links}
    traffic = [*(s.kv_transfer.links if s.kv_transfer else ()),
               *(x for e in s.expert_traffic for x in e.links)]
    for x in traffic:
        report.links += 1
        if (x.plane, x.a, x.b) not in ends:
            report.problems.append(f"no {x.plane} link {x.a} -> {x.b} in the topology")
    return report
