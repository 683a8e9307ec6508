"""Hypothesis strategies for valid topology programs, and two ways to spell each.

A :class:`Model` is a small random cluster: kinds, groups of devices joined by a switch or
a mesh, and a network over everything. :func:`render` writes it as topology text in one
of two spellings that must describe the same cluster: spelling 0 uses ranges, GB/s and
ns, kinds first; spelling 1 uses parameters, one block per group instance, bits per
second, MB, PFLOPS and us, with kinds defined after their use.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from hypothesis import strategies as st

DTYPES = ["fp32", "bf16", "fp16", "fp8", "fp4"]


@dataclass(frozen=True)
class KindM:
    name: str
    flops: tuple[tuple[str, int], ...]  # (dtype, TFLOPS)
    memory_gb: int
    bandwidth_gbs: int


@dataclass(frozen=True)
class DevM:
    base: str
    count: int
    kind: str


@dataclass(frozen=True)
class GroupM:
    base: str
    count: int
    devices: tuple[DevM, ...]
    fabric: str  # "switch" or "mesh"
    bandwidth_gbs: int
    latency_ns: int


@dataclass(frozen=True)
class Model:
    kinds: tuple[KindM, ...]
    groups: tuple[GroupM, ...]
    net_bandwidth_gbs: int
    net_latency_ns: int
    leaf: int | None
    rails: bool

    @property
    def device_count(self) -> int:
        return sum(g.count * sum(d.count for d in g.devices) for g in self.groups)


@st.composite
def kinds(draw, n: int) -> tuple[KindM, ...]:
    out = []
    for i in range(n):
        dtypes = draw(st.lists(st.sampled_from(DTYPES), min_size=1, max_size=3, unique=True))
        flops = tuple((d, draw(st.integers(1, 5000))) for d in dtypes)
        out.append(KindM(f"k{i}", flops, draw(st.integers(1, 300)), draw(st.integers(1, 9000))))
    return tuple(out)


@st.composite
def models(draw) -> Model:
    ks = draw(kinds(draw(st.integers(1, 3))))
    groups = []
    dev_index = 0
    for g in range(draw(st.integers(1, 3))):
        devices = []
        for _ in range(draw(st.integers(1, 2))):
            devices.append(DevM(f"d{dev_index}", draw(st.integers(1, 4)),
                                draw(st.sampled_from([k.name for k in ks]))))
            dev_index += 1
        groups.append(GroupM(f"g{g}", draw(st.integers(1, 3)), tuple(devices),
                             draw(st.sampled_from(["switch", "mesh"])),
                             draw(st.integers(1, 900)), draw(st.integers(1, 5000))))
    return Model(ks, tuple(groups), draw(st.integers(1, 100)), draw(st.integers(1, 20000)),
                 draw(st.one_of(st.none(), st.integers(1, 6))), draw(st.booleans()))


def _thousandth(value: int) -> str:
    return format(Decimal(value).scaleb(-3).normalize(), "f")


def _kind_lines(k: KindM, spelling: int) -> list[str]:
    lines = [f"kind {k.name} {{"]
    for dtype, tflops in k.flops:
        rate = f"{tflops} TFLOPS" if spelling == 0 else f"{_thousandth(tflops)} PFLOPS"
        lines.append(f"    compute {dtype} {rate}")
    memory = f"{k.memory_gb} GB" if spelling == 0 else f"{k.memory_gb * 1000} MB"
    lines.append(f"    memory {memory}")
    bandwidth = f"{k.bandwidth_gbs} GB/s" if spelling == 0 else f"{k.bandwidth_gbs * 8} Gb/s"
    lines.append(f"    memory_bandwidth {bandwidth}")
    return [*lines, "}"]


def _group_body(g: GroupM, spelling: int) -> list[str]:
    lines = [f"    {d.base}[0..{d.count - 1}]: {d.kind}" for d in g.devices]
    members = ", ".join(f"{d.base}[*]" for d in g.devices)
    bandwidth = f"{g.bandwidth_gbs} GB/s" if spelling == 0 else f"{g.bandwidth_gbs * 8} Gb/s"
    latency = f"{g.latency_ns} ns" if spelling == 0 else f"{_thousandth(g.latency_ns)} us"
    kind = "nvlink" if g.fabric == "switch" else "hccs"
    return [*lines, f"    {g.fabric} sw: {kind} {{", f"        members {members}",
            f"        bandwidth {bandwidth}", f"        latency {latency}", "    }"]


def render(m: Model, spelling: int = 0) -> str:
    """Topology text for ``m`` in spelling 0 or 1 (see the module docstring)."""
    kind_text = [line for k in m.kinds for line in _kind_lines(k, spelling)]
    out: list[str] = ["# generated"]
    if spelling == 0:
        out += kind_text
        for g in m.groups:
            out += [f"{g.base}[0..{g.count - 1}] {{", *_group_body(g, 0), "}"]
    else:
        out += [f"let n_{g.base} = {g.count}" for g in m.groups]
        for g in m.groups:
            for i in range(g.count):
                out += [f"{g.base}[{i}] {{", *_group_body(g, 1), "}"]
        out += kind_text
    members = ", ".join(f"{g.base}[*]" for g in m.groups)
    bandwidth = f"{m.net_bandwidth_gbs} GB/s" if spelling == 0 else f"{m.net_bandwidth_gbs * 8} Gb/s"
    out += ["network net: ib {", f"    members {members}", f"    bandwidth {bandwidth}",
            f"    latency {m.net_latency_ns} ns"]
    if m.leaf is not None:
        out.append(f"    leaf {m.leaf}")
    if m.rails:
        out.append("    rails")
    out.append("}")
    return "\n".join(out) + "\n"
