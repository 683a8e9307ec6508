"""``shardc explain OUTDIR DEVICE`` on a serving plan: which instance a device serves in,
its place in it, and the traffic through it.

Why devices and not nodes: a pipeline plan's ``explain`` follows a graph node into the
device programs; a serving plan lists instances (which devices, what shape, which links
its traffic loads), so the question a serving plan answers is "what does this device do,
and what crosses it". Read from the typed Plan alone, like every report.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from shardc.errors import OptionError
from shardc.plan.model import PlanData
from shardc.plan.serving import LinkTraffic
from shardc.report.serving import batch_text, exchange_name, link_name, ms, rate, size
from shardc.report.summary import human


@dataclass(frozen=True)
class DeviceExplanation:
    """One device of a serving plan: its instance and the traffic through it."""

    name: str
    kind: str
    role: str | None
    """``prefill``, ``decode``, ``aggregated``, or None when the plan leaves it idle."""
    instance: int | None
    position: dict[str, int] = field(default_factory=dict)
    """``stage``, ``dp_rank``, ``tp_rank`` inside its instance."""
    lines: tuple[str, ...] = ()

    def __str__(self) -> str:
        return "\n".join([f"device {self.name!r} ({self.kind})", *(f"  {x}" for x in self.lines)])

    def __rich__(self) -> str:
        from shardc.report.text import markup_safe

        return "\n".join(markup_safe(line) for line in str(self).split("\n"))

    def to_json(self) -> dict[str, Any]:
        """Plain data (``shardc explain --json``)."""
        return {"name": self.name, "kind": self.kind, "role": self.role,
                "instance": self.instance, "position": dict(self.position),
                "lines": list(self.lines)}


def _through(links: tuple[LinkTraffic, ...], device: str) -> list[LinkTraffic]:
    return [x for x in links if device in (x.a, x.b)]


def explain_device(plan: PlanData, name: str) -> DeviceExplanation:
    """What device ``name`` does in the serving plan (OptionError with close matches when
    the plan's instances do not name it).
    """
    s = plan.serving
    assert s is not None, "a serving plan"
    for inst in s.instances:
        if name not in inst.devices:
            continue
        k = inst.devices.index(name)
        per_stage = inst.tp * inst.dp
        pos = {"stage": k // per_stage, "dp_rank": k % per_stage // inst.tp, "tp_rank": k % inst.tp}
        count = sum(1 for i in s.instances if i.role == inst.role)
        lines = [
            f"{inst.role} instance {inst.index} of {count}: tp {inst.tp}, dp {inst.dp}, "
            f"ep {inst.ep}, pp {inst.pp}, batch {batch_text(inst)}, on {len(inst.devices)} "
            f"device(s) of kind {inst.kind}",
            f"here: pipeline stage {pos['stage']}, attention-DP rank {pos['dp_rank']}, "
            f"TP rank {pos['tp_rank']}",
            f"step {ms(inst.step_seconds)}, bound by {inst.bound}; "
            f"{human(inst.memory_per_device_bytes, 'B')} per device, KV cache for "
            f"{inst.kv_capacity_tokens:.3g} tokens in the instance",
        ]
        if s.kv_transfer is not None:
            side = "sends" if inst.role == "prefill" else "receives"
            lines.append(f"KV hand-off: the instance {side} {size(s.kv_transfer.bytes_per_request)}"
                         f" per request over {s.kv_transfer.plane}")
            lines += [f"  crosses {link_name(x)}: {rate(x.bytes_per_s)}"
                      for x in _through(s.kv_transfer.links, name)]
        for e in s.expert_traffic:
            if e.role == inst.role:
                lines.append(f"{exchange_name(s)}: {size(e.bytes_per_rank)} sent per step "
                             f"(ep {e.ep} over {e.tiers})")
                lines += [f"  crosses {link_name(x)}: {rate(x.bytes_per_s)}"
                          for x in _through(e.links, name)[:8]]
        lines.append(f"why: the solver chose a {s.mode} plan with {inst.role} on {inst.kind} "
                     f"({s.tokens_per_s_per_device:.4g} tokens/s per device at TPOT "
                     f"{ms(s.tpot)}, TTFT {ms(s.ttft)})")
        return DeviceExplanation(name, inst.kind, inst.role, inst.index, pos, tuple(lines))
    used = sorted(s.role_of())
    close = difflib.get_close_matches(name, used, n=3)
    raise OptionError(
        f"{name!r} is not a device of this serving plan's instances",
        hint=(f"did you mean {', '.join(close)}? " if close else "")
        + "a serving plan explains devices (it has no graph nodes to follow); "
        f"its devices include {', '.join(used[:3])}",
    )
