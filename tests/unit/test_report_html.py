"""The HTML report: one self-contained, well-formed, deterministic page.

The schedule builder (shardc/plan/timeline.py) is written separately, so these tests make
their own ``shardc-schedule/1`` documents with :func:`fake_schedule`: a plain 1F1B (or
GPipe) simulation of a plan's stages, with Send/Recv between stages, tensor-parallel
AllReduces and the data-parallel sync, and link load from the topology's routes.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import struct
import subprocess
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from shardc.plan.model import PlanData, stage_ranks
from shardc.plan.records import InputRecord, Inputs, Partition
from shardc.plan.timeline import Timeline
from shardc.report import html as report_html
from shardc.topology import load_topology
from shardc.topology.model import Topology

ROOT = Path(__file__).resolve().parents[2]
LOCALHOST = ROOT / "topologies" / "localhost.topo"
SVG_NS = "http://www.w3.org/2000/svg"
GIB = 1024**3


# ---------------------------------------------------------------------------------------
# Fixtures: plans and schedules


def typed_plan(plan: dict[str, Any], schedule: dict[str, Any]) -> PlanData:
    """The typed Plan the report reads, from a ``partition`` section (or a plan.json that
    names its model) and a schedule document, as :mod:`shardc.plan.folder` would read them.
    """
    inputs = None
    if "partition" in plan:
        path = plan["inputs"]["model"]["path"]
        inputs = Inputs(InputRecord(path), InputRecord("localhost.topo"))
        plan = plan["partition"]
    partition = Partition.from_json(plan)
    return PlanData(partition, stage_ranks(partition), timeline=Timeline.from_json(schedule),
                    inputs=inputs)


def render_html(
    plan: dict[str, Any], schedule: dict[str, Any], topology: Topology, *, model: str | None = None
) -> str:
    """The page for the dict fixtures below (the report itself reads only the typed Plan)."""
    return report_html.render_html(typed_plan(plan, schedule), topology, model=model)


def small_plan(devices: int = 4, tp: int = 1) -> dict[str, Any]:
    """The ``partition`` section of a 2-stage plan on ``localhost.topo`` (as compile writes
    it for tiny_gpt2 with ``--pin pp=2``), for ``devices`` CPUs split into tp groups.
    """
    per_stage = devices // 2
    dp = per_stage // tp
    stages = []
    for j in range(2):
        names = [f"cpu{j * per_stage + k}" for k in range(per_stage)]
        stages.append(
            {
                "index": j,
                "kind": "cpu_share",
                "tp": tp,
                "blocks": [j, j],
                "recompute": "none",
                "groups": [names[r * tp : (r + 1) * tp] for r in range(dp)],
                "in_flight": 2 - j,
                "compute_seconds": 0.000414 + 0.000077 * j,
                "tp_comm_seconds": 0.00005 if tp > 1 else 0,
                "p2p_seconds": 0.000024,
                "sync_seconds": 0.000205,
                "seconds": 0.000438 + 0.000077 * j,
                "memory_bytes": 1757164.0 - 453100.0 * j,
                "capacity_bytes": 4 * GIB,
                "tp_domain_bandwidth": 4e9,
            }
        )
    return {
        "blocks": 2,
        "breakdown": {
            "compute": 0.003927,
            "dp sync + optimizer": 0.000205,
            "pipeline bubble": 0.000515,
            "pp send/recv": 0.000193,
            "tp comm": 0,
        },
        "devices_used": devices,
        "dp": dp,
        "microbatches": 4,
        "mode": "training",
        "objective": "throughput",
        "pins": {"pp": 2},
        "pp": 2,
        "samples_per_step": 4 * 4 * dp,
        "schedule": "1f1b",
        "solver": {
            "bound_seconds": 0.00484,
            "candidates": [],
            "gap": 0.0,
            "status": "OPTIMAL",
        },
        "stages": stages,
        "step_seconds": 0.00484,
        "strategies": {},
    }


def _order(schedule: str, stages: int, stage: int, m: int, training: bool) -> list[tuple]:
    if not training:
        return [("forward", k) for k in range(m)]
    if schedule == "gpipe":
        return [("forward", k) for k in range(m)] + [("backward", k) for k in range(m)]
    warm = min(stages - stage - 1, m)
    out = [("forward", k) for k in range(warm)]
    f, b = warm, 0
    while f < m:
        out += [("forward", f), ("backward", b)]
        f, b = f + 1, b + 1
    return out + [("backward", k) for k in range(b, m)]


def fake_schedule(
    plan: dict[str, Any], topology: Topology, *, backward_factor: float = 2.0
) -> dict[str, Any]:
    """A ``shardc-schedule/1`` document for ``plan``: every rank of a stage runs the same
    timeline; a Recv starts no earlier than its Send; link load follows the routes.
    """
    stages = plan["stages"]
    count, m = len(stages), plan["microbatches"]
    training = plan["mode"] == "training"
    ranks: dict[tuple[int, int, int], int] = {}
    info: list[dict[str, Any]] = []
    offset = 0
    for st in stages:
        for r, group in enumerate(st["groups"]):
            for t, name in enumerate(group):
                rank = offset + r * st["tp"] + t
                ranks[(st["index"], r, t)] = rank
                info.append(
                    {
                        "rank": rank,
                        "device": name,
                        "kind": st["kind"],
                        "stage": st["index"],
                        "replica": r,
                        "tp_rank": t,
                        "tp": st["tp"],
                    }
                )
        offset += sum(len(g) for g in st["groups"])
    info.sort(key=lambda d: d["rank"])

    # one timeline per stage: (phase, microbatch, kind, name/op, start, duration)
    timeline: list[list[tuple]] = [[] for _ in stages]
    send_start: dict[tuple[int, str, int], tuple[float, float]] = {}
    free = [0.0] * count
    todo = [_order(plan["schedule"], count, j, m, training) for j in range(count)]
    done = [0] * count
    while any(done[j] < len(todo[j]) for j in range(count)):
        progressed = False
        for j, st in enumerate(stages):
            while done[j] < len(todo[j]):
                phase, mb = todo[j][done[j]]
                src = j - 1 if phase == "forward" else j + 1
                has_src = 0 <= src < count
                if has_src and (src, phase, mb) not in send_start:
                    break
                fwd = st["compute_seconds"] / (1 + backward_factor if training else 1)
                p2p, tpc = st["p2p_seconds"] / 2, st["tp_comm_seconds"] / 2
                t = free[j]
                steps = []
                if has_src:
                    s0, sd = send_start[(src, phase, mb)]
                    steps.append(("comm", "Recv", max(t, s0), sd, src))
                compute = fwd * (backward_factor if phase == "backward" else 1)
                label = f"blocks {st['blocks'][0]}–{st['blocks'][1]}"
                body = [("compute", label, compute), ("comm", "AllReduce", tpc)]
                if phase == "backward":
                    body.reverse()
                for kind, name, dur in body:
                    if kind == "comm" and st["tp"] == 1:
                        continue
                    steps.append((kind, name, None, dur, -1))
                dst = j + 1 if phase == "forward" else j - 1
                if 0 <= dst < count:
                    steps.append(("comm", "Send", None, p2p, dst))
                for kind, name, start, dur, peer in steps:
                    start = t if start is None else start
                    timeline[j].append((phase, mb, kind, name, start, dur, peer))
                    if name == "Send":
                        send_start[(j, phase, mb)] = (start, dur)
                    t = start + dur
                free[j] = t
                done[j] += 1
                progressed = True
        assert progressed, "schedule deadlocked"
    if training:
        for j, st in enumerate(stages):
            timeline[j].append(("sync", -1, "comm", "AllReduce", free[j], st["sync_seconds"], -2))

    routes: dict[tuple[str, str], tuple[list[str], float]] = {}

    def hop(a: str, b: str) -> tuple[list[str], float]:
        if (a, b) not in routes:
            r = topology.route(a, b)
            routes[(a, b)] = ([f"{x}<->{y}" for x, y in pairwise(r.nodes)], r.bandwidth)
        return routes[(a, b)]

    link_load: dict[str, list[float]] = {}
    devices = []
    for d in info:
        j, r, t = d["stage"], d["replica"], d["tp_rank"]
        tp_group = [ranks[(j, r, k)] for k in range(d["tp"])]
        dp_group = [ranks[(j, q, t)] for q in range(len(stages[j]["groups"]))]
        events = []
        for phase, mb, kind, name, start, dur, peer in timeline[j]:
            ev: dict[str, Any] = {
                "type": kind,
                "phase": phase,
                "microbatch": mb,
                "name": "dp sync + optimizer" if phase == "sync" else name,
                "start": start,
                "duration": dur,
                "end": start + dur,
            }
            if kind == "comm":
                if name in ("Send", "Recv"):
                    other = stages[peer]
                    peer_rank = ranks[(peer, r, min(t, other["tp"] - 1))]
                    group = [d["rank"], peer_rank]
                else:
                    peer_rank = -1
                    group = dp_group if phase == "sync" else tp_group
                ring = group[(group.index(d["rank"]) + 1) % len(group)]
                links, bw = hop(d["device"], info[ring]["device"]) if ring != d["rank"] else ([], 0)
                nbytes = dur * bw
                ev.update(
                    op=name,
                    value=f"h{j}.{mb}",
                    bytes=nbytes,
                    group=group,
                    peer=peer_rank,
                    tag=j * 1000 + max(mb, 0),
                    axis=-1,
                    algorithm="ring" if peer_rank < 0 else "",
                    links=links,
                )
                if name != "Recv":  # a transfer is counted once, at its sender
                    for link in links:
                        load = link_load.setdefault(link, [0.0, 0.0, 0])
                        load[0] += nbytes
                        load[1] += dur
                        load[2] += 1
            events.append(ev)
        devices.append({**d, "busy_seconds": sum(e["duration"] for e in events), "events": events})
    links_out = [
        {"link": name, "bytes": b, "busy_seconds": s, "transfers": int(n)}
        for name, (b, s, n) in link_load.items()
    ]
    links_out.sort(key=lambda k: (-k["bytes"], k["link"]))
    return {
        "format": "shardc-schedule/1",
        "mode": plan["mode"],
        "schedule": plan["schedule"],
        "microbatches": m,
        "dp": plan["dp"],
        "stages": count,
        "step_seconds": max(e["end"] for d in devices for e in d["events"]),
        "devices": devices,
        "links": links_out,
    }


@pytest.fixture(scope="module")
def topo4() -> Topology:
    return load_topology(LOCALHOST, {"devices": 4})


@pytest.fixture(scope="module")
def page(topo4: Topology) -> str:
    plan = small_plan()
    return render_html(plan, fake_schedule(plan, topo4), topo4, model="tiny_gpt2.onnx")


# ---------------------------------------------------------------------------------------
# Helpers


class _Balance(HTMLParser):
    """Checks that every element is closed, in order (void elements aside)."""

    VOID = frozenset({"meta", "br", "hr", "img", "input", "link", "area", "base", "col", "wbr"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append(tag)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list) -> None:
        self.tags.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


def _svgs(page: str) -> list[str]:
    return re.findall(r"<svg\b.*?</svg>", page, flags=re.S)


def _section(page: str, name: str) -> str:
    match = re.search(rf'<section id="{name}"[^>]*>.*?</section>', page, flags=re.S)
    assert match, f"no section {name}"
    return match.group(0)


def _gantt_rows(page: str) -> list[int]:
    return [int(r) for r in re.findall(r'class="row" data-rank="(\d+)"', page)]


def find_chromium() -> str | None:
    """A Chromium to render with: $SHARDC_CHROMIUM, one on PATH, or Playwright's download."""
    env = os.environ.get("SHARDC_CHROMIUM")
    if env and Path(env).is_file():
        return env
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if found := shutil.which(name):
            return found
    cache = Path(os.environ.get("PLAYWRIGHT_BROWSERS_PATH", "~/.cache/ms-playwright"))
    for pattern in (
        "chromium-*/chrome-linux*/chrome",
        "chromium_headless_shell-*/*/headless_shell",
    ):
        hits = sorted(glob.glob(str(cache.expanduser() / pattern)))
        if hits:
            return hits[-1]
    return None


def screenshot(chromium: str, html: Path, png: Path, size: str = "1400,2000") -> None:
    """Render ``html`` headless; no network is needed or allowed for the page."""
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",  # root in containers
            "--disable-gpu",
            "--hide-scrollbars",
            f"--user-data-dir={png.parent / 'chromium-profile'}",
            f"--screenshot={png}",
            f"--window-size={size}",
            html.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )


# ---------------------------------------------------------------------------------------
# Tests


def test_page_is_well_formed(page: str) -> None:
    assert page.startswith("<!DOCTYPE html>")
    parser = _Balance()
    parser.feed(page)
    parser.close()
    assert parser.errors == []
    assert parser.stack == []
    for svg in _svgs(page):
        root = ET.fromstring(svg)  # every SVG is well-formed XML too
        assert root.tag == f"{{{SVG_NS}}}svg"
    assert len(_svgs(page)) >= 4  # breakdown, timeline, topology, placement grid


def test_page_is_self_contained(page: str) -> None:
    assert re.findall(r"https?://[^\"'\s<>]*", page.lower()) == [SVG_NS] * page.count(SVG_NS)
    parser = _Balance()
    parser.feed(page)
    assert not {"script", "link", "img", "iframe", "object"} & set(parser.tags)
    assert "url(" not in page.replace("url(#", "")  # no fetched images or fonts
    assert "@import" not in page


@pytest.mark.parametrize("tp", [1, 2])
def test_one_gantt_row_per_device(topo4: Topology, tp: int) -> None:
    plan = small_plan(tp=tp)
    schedule = fake_schedule(plan, topo4)
    page = render_html(plan, schedule, topo4)
    timeline = _section(page, "timeline")
    assert _gantt_rows(timeline) == [0, 1, 2, 3]
    assert "one row per device (4 devices)" in timeline
    events = sum(len(d["events"]) for d in schedule["devices"])
    assert timeline.count("<rect") >= events
    for legend in ("forward compute", "backward compute", "pipeline send / recv", "dp sync"):
        assert legend in timeline
    if tp == 2:
        assert "AllReduce" in timeline


def test_each_stage_is_shown(page: str) -> None:
    plan = small_plan()
    stages = _section(page, "stages")
    assert len(re.findall(r"<tbody>.*?</tbody>", stages, flags=re.S)) == 1
    assert stages.count("<tr>") == 1 + len(plan["stages"])  # the head row, then one each
    for st in plan["stages"]:
        assert f"{st['blocks'][0]}–{st['blocks'][1]}" in stages
    topology = _section(page, "topology")
    for j in range(len(plan["stages"])):
        assert f"stage {j}" in topology
        assert f">s{j} t0<" in _section(page, "timeline")


def test_header_breakdown_memory_and_links(page: str) -> None:
    assert "tiny_gpt2.onnx" in page
    assert "OPTIMAL" in page
    assert "6612 samples/s" in page  # 32 samples in 4.84 ms
    breakdown = _section(page, "breakdown")
    for part in ("compute", "tp comm", "pp send/recv", "pipeline bubble", "dp sync + optimizer"):
        assert part in breakdown
    memory = _section(page, "memory")
    assert "cpu_share" in memory and "4 of 4" in memory and "4.00 GiB" in memory
    topology = _section(page, "topology")
    assert "Busiest links" in topology and "loopback" in topology
    assert 'data-name="cpu[0..3]"' in topology


def test_drawing_shows_placement_and_link_load(page: str) -> None:
    topology = _section(page, "topology")
    # the four CPUs are one folded box: half stage 0, half stage 1
    assert "<title>stage 0: 2, stage 1: 2</title>" in topology
    # the four loopback links fold into one edge, the busiest one: darkest and thicker
    edge = re.search(r'<path class="link"[^>]*>', topology)
    assert edge and 'stroke="#b91c1c"' in edge.group(0)
    assert "this step:" in topology
    # the drawing's one-letter style classes must not restyle the page around it
    for style in re.findall(r"<style>(.*?)</style>", topology, flags=re.S):
        for rule in re.findall(r"([^{}]+)\{", style):
            assert all(sel.strip().startswith("#shardc-topology ") for sel in rule.split(","))


def test_inference_latency_plan(topo4: Topology) -> None:
    plan = small_plan()
    plan.update(mode="inference", objective="latency")
    schedule = fake_schedule(plan, topo4)
    assert {e["phase"] for d in schedule["devices"] for e in d["events"]} == {"forward"}
    page = render_html(plan, schedule, topo4)
    assert "<b>latency</b>" in page
    assert _gantt_rows(_section(page, "timeline")) == [0, 1, 2, 3]


def test_output_is_deterministic(topo4: Topology) -> None:
    plan = small_plan()
    a = render_html(plan, fake_schedule(plan, topo4), topo4, model="m")
    b = render_html(small_plan(), fake_schedule(small_plan(), topo4), topo4, model="m")
    assert a == b


def test_text_is_escaped(topo4: Topology) -> None:
    plan = small_plan()
    plan["stages"][0]["recompute"] = "<script>alert(1)</script>"
    page = render_html(plan, fake_schedule(plan, topo4), topo4, model='a"<b>&c')
    assert "<script>" not in page
    assert "&lt;script&gt;" in page
    assert "a&quot;&lt;b&gt;&amp;c" in page


def test_large_plan_shows_replica_zero() -> None:
    topo = load_topology(LOCALHOST, {"devices": 80})
    plan = small_plan(devices=80)
    page = render_html(plan, fake_schedule(plan, topo), topo)
    timeline = _section(page, "timeline")
    assert _gantt_rows(timeline) == [0, 40]  # stage 0 and stage 1 of replica 0
    assert "replica 0" in timeline and "the other 39 replicas" in timeline


def test_full_plan_json_names_the_model(topo4: Topology) -> None:
    plan = small_plan()
    doc = {"inputs": {"model": {"path": "examples/models/tiny_gpt2.onnx"}}, "partition": plan}
    page = render_html(doc, fake_schedule(plan, topo4), topo4)
    assert "<h1>shardc plan: tiny_gpt2.onnx</h1>" in page


def test_renders_in_headless_chromium(page: str, tmp_path: Path) -> None:
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("chromium not installed: apt install chromium")
    html, png = tmp_path / "report.html", tmp_path / "report.png"
    html.write_text(page, encoding="utf-8")
    screenshot(chromium, html, png)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1400, 2000)
    assert len(data) > 20_000  # a blank page compresses to a few KB
