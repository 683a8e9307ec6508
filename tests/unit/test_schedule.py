"""schedule.json and trace.json from hand-built Programs: orders, bubble, matching, checks."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from shardc.emit.trace import chrome_trace
from shardc.errors import ShardcError
from shardc.plan.program import Comm, Compute, DeviceProgram, Programs
from shardc.plan.schedule import build_schedule
from shardc.plan.timeline import SYNC_NAME, schedule_schema


def _link(a: int, b: int) -> str:
    return f"gpu{min(a, b)}<->gpu{max(a, b)}"


def pipeline(
    *,
    stages: int = 2,
    tp: int = 1,
    dp: int = 1,
    m: int = 4,
    schedule: str = "1f1b",
    mode: str = "training",
    compute: Callable[[int, int], float] = lambda stage, tp_rank: 1.0,
    comm: float = 0.0,
    allreduce: float = 0.25,
    after: float = 0.5,
    sync: dict[int, float] | None = None,
) -> Programs:
    """Megatron-numbered ranks; stage s: [Recv] block [AllReduce, block out] [Send].

    Without TP a stage is one compute run of ``compute(stage, 0)`` seconds, so forward
    time per stage is that plus the Recv/Send ``comm`` seconds.
    """
    per_stage = tp * dp

    def rank(s: int, d: int, t: int) -> int:
        return s * per_stage + d * tp + t

    progs = []
    for s in range(stages):
        for d in range(dp):
            for t in range(tp):
                r = rank(s, d, t)
                steps: list[Compute | Comm] = []
                if s > 0:
                    prev = rank(s - 1, d, t)
                    steps.append(
                        Comm(
                            "Recv",
                            f"h{s - 1}",
                            f"h{s - 1}",
                            1024.0,
                            peer=prev,
                            tag=s,
                            seconds=comm,
                            links=(_link(prev, r),),
                        )
                    )
                steps.append(Compute(("a",), compute(s, t), label=f"block {s}"))
                if tp > 1:
                    group = tuple(rank(s, d, u) for u in range(tp))
                    steps.append(
                        Comm(
                            "AllReduce",
                            f"y{s}",
                            f"y{s}r",
                            2048.0,
                            group=group,
                            algorithm="ring",
                            seconds=allreduce,
                            links=(f"nvl{s}.{d}",),
                        )
                    )
                    steps.append(Compute(("b",), after, label=f"block {s} out"))
                if s < stages - 1:
                    nxt = rank(s + 1, d, t)
                    steps.append(
                        Comm(
                            "Send",
                            f"h{s}",
                            "",
                            1024.0,
                            peer=nxt,
                            tag=s + 1,
                            seconds=comm,
                            links=(_link(r, nxt),),
                        )
                    )
                progs.append(
                    DeviceProgram(
                        rank=r,
                        device=f"node{s}.gpu{d * tp + t}",
                        kind="h100",
                        stage=s,
                        replica=d,
                        tp_rank=t,
                        tp=tp,
                        steps=tuple(steps),
                        inputs=("x",),
                        outputs=("y",),
                    )
                )
    return Programs(
        programs=tuple(progs),
        mode=mode,
        schedule=schedule,
        microbatches=m,
        dp=dp,
        stages=stages,
        backward_factor=2.0,
        stage_sync_seconds=sync if sync is not None else {},
    )


def _passes(dev: dict[str, Any]) -> str:
    """``F0 F1 B0 ...``: the passes a device runs, in order (one word per compute event)."""
    return " ".join(
        f"{ev['phase'][0].upper()}{ev['microbatch']}"
        for ev in dev["events"]
        if ev["type"] == "compute"
    )


def _event(dev: dict[str, Any], phase: str, mb: int, name: str) -> dict[str, Any]:
    [ev] = [
        e
        for e in dev["events"]
        if e["phase"] == phase and e["microbatch"] == mb and e["name"] == name
    ]
    return ev


# --- orders and the bubble ----------------------------------------------------------------


def test_1f1b_and_gpipe_pass_orders() -> None:
    one = build_schedule(pipeline(stages=3, m=4, schedule="1f1b"))
    assert [_passes(d) for d in one["devices"]] == [
        "F0 F1 F2 B0 F3 B1 B2 B3",  # stage 0: two warm-up forwards
        "F0 F1 B0 F2 B1 F3 B2 B3",
        "F0 B0 F1 B1 F2 B2 F3 B3",  # last stage: no warm-up
    ]
    gpipe = build_schedule(pipeline(stages=3, m=4, schedule="gpipe"))
    for dev in gpipe["devices"]:
        assert _passes(dev) == "F0 F1 F2 F3 B0 B1 B2 B3"
    few = build_schedule(pipeline(stages=3, m=1, schedule="1f1b"))
    assert [_passes(d) for d in few["devices"]] == ["F0 B0"] * 3


@pytest.mark.parametrize("schedule", ["1f1b", "gpipe"])
def test_bubble_with_free_comm_is_m_plus_s_minus_1_times_f_plus_b(schedule: str) -> None:
    # t_f = 1, t_b = backward_factor * t_f = 2, S = 2, M = 4, Send/Recv take no time:
    # both schedules take (M + S - 1) * (t_f + t_b) = 5 * 3 = 15 s.
    out = build_schedule(pipeline(stages=2, m=4, schedule=schedule, comm=0.0))
    assert out["step_seconds"] == 15.0
    last = out["devices"][1]
    assert _event(last, "forward", 0, "block 1")["start"] == 1.0  # waits one t_f
    first = out["devices"][0]
    assert _event(first, "backward", 3, "block 0")["end"] == 15.0
    # Each device computes M * (t_f + t_b) = 12 s; the rest is the bubble.
    assert [d["busy_seconds"] for d in out["devices"]] == [12.0, 12.0]


def test_bubble_with_comm_exact_timeline() -> None:
    # t_f = 1, t_b = 2, Send/Recv 0.5 s each (a Recv lasts its Send's 0.5 s).
    # Worked by hand from the rules in the schedule module docstring:
    gpipe = build_schedule(pipeline(m=4, schedule="gpipe", comm=0.5))
    r0, r1 = gpipe["devices"]
    # rank 0 forwards: compute [1.5m, 1.5m+1], Send [1.5m+1, 1.5m+1.5]
    assert [_event(r0, "forward", i, "Send")["start"] for i in range(4)] == [1.0, 2.5, 4.0, 5.5]
    # rank 1: Recv starts with the Send, then compute; backwards from t=7, 2.5 s each
    assert [_event(r1, "forward", i, "Recv")["start"] for i in range(4)] == [1.0, 2.5, 4.0, 5.5]
    assert [_event(r1, "backward", i, "Send")["start"] for i in range(4)] == [9.0, 11.5, 14.0, 16.5]
    # rank 0 backwards wait for rank 1's gradient Sends: Recv [9, 9.5] ... compute [17, 19]
    assert [_event(r0, "backward", i, "Recv")["start"] for i in range(4)] == [9.0, 11.5, 14.0, 16.5]
    assert gpipe["step_seconds"] == 19.0

    one = build_schedule(pipeline(m=4, schedule="1f1b", comm=0.5))
    r0, r1 = one["devices"]
    # rank 0: F0 F1 B0 F2 B1 F3 B2 B3; its backward Recvs meet rank 1's gradient Sends
    assert [_event(r1, "backward", i, "Send")["start"] for i in range(4)] == [4.5, 8.5, 12.5, 16.5]
    assert [_event(r0, "backward", i, "Recv")["start"] for i in range(4)] == [4.5, 8.5, 12.5, 16.5]
    # rank 1's forward Recvs wait for rank 1 to be free (it is busy with a backward)
    assert [_event(r1, "forward", i, "Recv")["start"] for i in range(4)] == [1.0, 5.0, 9.0, 13.0]
    assert _event(r0, "backward", 3, "block 0")["end"] == 19.0
    assert one["step_seconds"] == 19.0


def test_tp_collectives_wait_for_the_slowest_member_and_sync_closes_the_step() -> None:
    # One stage, tp=2, dp=2 (ranks 0-3); tp_rank 1's first block is slower (1.5 s vs 1 s).
    progs = pipeline(
        stages=1,
        tp=2,
        dp=2,
        m=2,
        schedule="gpipe",
        compute=lambda s, t: 1.0 + 0.5 * t,
        sync={0: 0.75},
    )
    out = build_schedule(progs)
    devs = out["devices"]
    for d in devs:
        ars = [e for e in d["events"] if e["name"] == "AllReduce"]
        # forward mb0, mb1 then backward mb0, mb1 (reversed steps, compute x2)
        assert [(e["phase"], e["microbatch"], e["start"]) for e in ars] == [
            ("forward", 0, 1.5),
            ("forward", 1, 3.75),
            ("backward", 0, 5.5),
            ("backward", 1, 9.75),
        ]
        assert all(e["duration"] == 0.25 for e in ars)
        sync = d["events"][-1]
        assert (sync["phase"], sync["microbatch"], sync["name"], sync["op"]) == (
            "sync",
            -1,
            SYNC_NAME,
            "AllReduce",
        )
        assert sync["duration"] == 0.75
        # DP group: same stage and tp_rank in every replica
        assert sync["group"] == [d["tp_rank"], 2 + d["tp_rank"]]
    # backward of the first block takes 2 s on tp_rank 0, 3 s on tp_rank 1
    assert [d["events"][-1]["start"] for d in devs] == [12.0, 13.0, 12.0, 13.0]
    assert out["step_seconds"] == 13.75


def test_dp_sync_carries_its_bytes_and_its_rings_links() -> None:
    """The sync event had 0 bytes and no links, so the link table showed the fabric idle."""
    progs = pipeline(stages=1, tp=2, dp=2, m=2, schedule="gpipe", sync={0: 0.75})
    ring = {0: ("ib.a<->node0.gpu0", "ib.a<->node1.gpu0"), 1: ("ib.b<->node0.gpu1",)}
    progs = replace(
        progs,
        stage_sync_bytes={0: 4096.0},
        programs=tuple(replace(p, sync_links=ring[p.tp_rank]) for p in progs.programs),
    )
    out = build_schedule(progs)
    for d in out["devices"]:
        sync = d["events"][-1]
        assert sync["phase"] == "sync" and sync["duration"] == 0.75  # seconds as priced
        assert sync["bytes"] == 4096.0
        assert sync["links"] == list(ring[d["tp_rank"]])
    links = {e["link"]: e for e in out["links"]}
    for names in ring.values():
        for name in names:
            # one call over the ring: its bytes once per link, not once per member
            assert links[name]["bytes"] == 4096.0 and links[name]["transfers"] == 1
            assert links[name]["busy_seconds"] == 0.75
    assert build_schedule(progs) == out


def test_a_lone_replica_syncs_over_no_link() -> None:
    progs = pipeline(stages=1, tp=1, dp=1, m=1, sync={0: 0.5})
    progs = replace(
        progs,
        stage_sync_bytes={0: 0.0},
        programs=tuple(replace(p, sync_links=("x<->y",)) for p in progs.programs),
    )
    out = build_schedule(progs)
    sync = out["devices"][0]["events"][-1]
    assert (sync["bytes"], sync["links"], sync["duration"]) == (0.0, [], 0.5)
    assert out["links"] == []


# --- invariants over a 2-stage x 2-way TP x 2-way DP plan ---------------------------------

CONFIGS = [("training", "1f1b"), ("training", "gpipe"), ("inference", "1f1b")]


def _mixed(mode: str, schedule: str) -> Programs:
    return pipeline(
        stages=2,
        tp=2,
        dp=2,
        m=4,
        mode=mode,
        schedule=schedule,
        comm=0.3,
        compute=lambda s, t: 1.0 + 0.25 * s + 0.125 * t,
        sync={0: 0.5, 1: 0.25},
    )


@pytest.fixture(params=CONFIGS, ids=["-".join(c) for c in CONFIGS])
def mixed(request: pytest.FixtureRequest) -> dict[str, Any]:
    return build_schedule(_mixed(*request.param))


def test_recv_never_ends_before_its_send(mixed: dict[str, Any]) -> None:
    sends: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for d in mixed["devices"]:
        for e in d["events"]:
            if e["type"] == "comm" and e["op"] == "Send":
                key = (d["rank"], e["peer"], e["tag"], e["phase"], e["microbatch"])
                sends.setdefault(key, []).append(e)
    recvs = 0
    for d in mixed["devices"]:
        for e in d["events"]:
            if e["type"] == "comm" and e["op"] == "Recv":
                [send] = sends[(e["peer"], d["rank"], e["tag"], e["phase"], e["microbatch"])]
                assert e["end"] >= send["start"] + send["duration"]
                assert e["start"] >= send["start"]
                recvs += 1
    assert recvs == sum(len(v) for v in sends.values()) > 0


def test_events_on_a_device_never_overlap(mixed: dict[str, Any]) -> None:
    for d in mixed["devices"]:
        free = 0.0
        for e in d["events"]:
            assert e["start"] >= free
            assert e["duration"] >= 0
            assert e["end"] == e["start"] + e["duration"]
            free = e["end"]
        assert d["busy_seconds"] == pytest.approx(sum(e["duration"] for e in d["events"]))
        assert d["busy_seconds"] <= mixed["step_seconds"]
    assert mixed["step_seconds"] == max(e["end"] for d in mixed["devices"] for e in d["events"])


def test_collectives_start_together_across_members(mixed: dict[str, Any]) -> None:
    instances: dict[tuple[Any, ...], dict[int, dict[str, Any]]] = {}
    for d in mixed["devices"]:
        seen: dict[tuple[Any, ...], int] = {}
        for e in d["events"]:
            if e["type"] == "comm" and e["op"] not in ("Send", "Recv"):
                base = (e["phase"], e["microbatch"], tuple(e["group"]))
                k = seen.get(base, 0)
                seen[base] = k + 1
                instances.setdefault((*base, k), {})[d["rank"]] = e
    assert instances
    for (_, _, group, _), members in instances.items():
        assert sorted(members) == sorted(group)
        assert len({(e["start"], e["op"]) for e in members.values()}) == 1


def test_inference_runs_forwards_only_in_microbatch_order() -> None:
    out = build_schedule(_mixed("inference", "gpipe"))
    for d in out["devices"]:
        assert {e["phase"] for e in d["events"]} == {"forward"}
        assert _passes(d) == "F0 F0 F1 F1 F2 F2 F3 F3"  # 2 runs a pass
        assert not any(e["name"] == SYNC_NAME for e in d["events"])


def test_schedule_validates_against_its_schema(mixed: dict[str, Any]) -> None:
    try:
        import jsonschema
    except ImportError:  # pragma: no cover - the test extra installs it
        pytest.skip("jsonschema is not installed (pip install shardc[test])")
    schema = schedule_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(mixed)
    bad = json.loads(json.dumps(mixed))
    bad["devices"][0]["events"][0]["surprise"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate(bad)


def test_link_summary_counts_each_transfer_once() -> None:
    out = build_schedule(pipeline(m=4, schedule="gpipe", comm=0.5))
    # 4 activations forward + 4 gradients back, 1 KiB and 0.5 s each, never concurrent
    assert out["links"] == [
        {"link": "gpu0<->gpu1", "bytes": 8 * 1024.0, "busy_seconds": 4.0, "transfers": 8}
    ]
    mixed = build_schedule(_mixed("training", "1f1b"))
    order = [(-entry["bytes"], entry["link"]) for entry in mixed["links"]]
    assert order == sorted(order)
    nvl = next(e for e in mixed["links"] if e["link"] == "nvl0.0")
    # 4 forward + 4 backward AllReduce calls of 2 members each: one transfer per call,
    # carrying one member's 2 KiB (the sum over members crossed other hops)
    assert nvl["transfers"] == 8
    assert nvl["bytes"] == 8 * 2048.0
    assert nvl["busy_seconds"] == pytest.approx(8 * 0.25)
    for entry in mixed["links"]:
        assert entry["busy_seconds"] <= mixed["step_seconds"]


# --- trace.json -----------------------------------------------------------------------------


def test_chrome_trace_has_a_process_per_rank_and_a_links_process(mixed: dict[str, Any]) -> None:
    trace = json.loads(json.dumps(chrome_trace(mixed), allow_nan=False))
    assert trace["displayTimeUnit"] == "ms"
    events = trace["traceEvents"]
    procs = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
    n = len(mixed["devices"])
    assert sorted(procs) == [*range(n), n]
    assert procs[n] == "links"
    assert procs[5] == "rank 5: node1.gpu1 (h100), stage 1"
    xs = [e for e in events if e["ph"] == "X"]
    assert all(e["dur"] >= 0 and e["ts"] >= 0 for e in xs)
    assert sum(e["pid"] < n for e in xs) == sum(len(d["events"]) for d in mixed["devices"])
    threads = {
        e["tid"]: e["args"]["name"] for e in events if e["name"] == "thread_name" and e["pid"] == n
    }
    # one track per link, plus one per transfer that overlaps the others: "link #2" ...
    bases = list(dict.fromkeys(name.split(" #")[0] for name in threads.values()))
    assert bases == [entry["link"] for entry in mixed["links"]]
    for entry in mixed["links"]:
        tids = [t for t, name in threads.items() if name.split(" #")[0] == entry["link"]]
        on_link = [e for e in xs if e["pid"] == n and e["tid"] in tids]
        assert len(on_link) == entry["transfers"] > 0  # each transfer once, not once per end
        for tid in tids:  # slices of a track never overlap (viewers expect nesting)
            track = sorted((e["ts"], e["ts"] + e["dur"]) for e in on_link if e["tid"] == tid)
            assert all(a[1] <= b[0] + 1e-6 for a, b in itertools.pairwise(track))
    # a flow arrow from every Send to its Recv
    recvs = sum(e["op"] == "Recv" for d in mixed["devices"] for e in d["events"]
                if e["type"] == "comm")
    starts = {e["id"]: e for e in events if e["ph"] == "s"}
    ends = {e["id"]: e for e in events if e["ph"] == "f"}
    assert len(starts) == len(ends) == recvs > 0 and starts.keys() == ends.keys()
    for i, flow in ends.items():
        assert flow["bp"] == "e" and flow["ts"] >= starts[i]["ts"]
    fwd = next(e for e in xs if e["pid"] == 2 and e["name"] == "F0 Send to 6")
    assert fwd["args"]["bytes"] == 1024.0 and fwd["args"]["microbatch"] == 0


# --- determinism and errors ----------------------------------------------------------------


def test_same_programs_give_identical_output_whatever_their_order() -> None:
    progs = _mixed("training", "1f1b")
    a = build_schedule(progs)
    b = build_schedule(replace(progs, programs=tuple(reversed(progs.programs))))
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert json.dumps(chrome_trace(a)) == json.dumps(chrome_trace(b))


def _with_step(progs: Programs, rank: int, index: int, step: Compute | Comm) -> Programs:
    prog = progs.programs[rank]
    steps = list(prog.steps)
    steps[index] = step
    programs = list(progs.programs)
    programs[rank] = replace(prog, steps=tuple(steps))
    return replace(progs, programs=tuple(programs))


def test_recv_without_send_is_a_clear_error() -> None:
    progs = pipeline(mode="inference")
    recv = progs.programs[1].steps[0]
    assert isinstance(recv, Comm)
    broken = _with_step(progs, 1, 0, replace(recv, tag=7))
    with pytest.raises(
        ShardcError,
        match=r"rank 1: Recv of 'h0' from rank 0 \(tag 7\) has no matching Send",
    ):
        build_schedule(broken)


def test_send_without_recv_is_an_error_in_training_only() -> None:
    progs = pipeline(mode="inference")
    send = progs.programs[0].steps[-1]
    assert isinstance(send, Comm)
    extra = replace(progs.programs[0], steps=(*progs.programs[0].steps, replace(send, tag=9)))
    lonely = replace(progs, programs=(extra, progs.programs[1]))
    build_schedule(lonely)  # nobody waits for it
    with pytest.raises(
        ShardcError,
        match=r"rank 0: Send of 'h0' to rank 1 \(tag 9\) has no matching Recv",
    ):
        build_schedule(replace(lonely, mode="training"))


def test_collective_members_that_disagree_are_a_clear_error() -> None:
    progs = pipeline(stages=1, tp=2)
    ar = progs.programs[1].steps[1]
    assert isinstance(ar, Comm)
    broken = _with_step(progs, 1, 1, replace(ar, op="AllGather"))
    with pytest.raises(ShardcError, match=r"members of collective group \[0, 1\] disagree"):
        build_schedule(broken)


def test_collectives_pair_up_per_group() -> None:
    # Rank 0 also runs a collective over a sub-group of its own before the TP AllReduce:
    # the AllReduce still pairs with rank 1's (the k-th over the *same group* matches).
    progs = pipeline(stages=1, tp=2, m=1, mode="inference")
    solo = Comm("AllGather", "a", "a2", 64.0, group=(0,), seconds=0.5)
    first = replace(progs.programs[0], steps=(solo, *progs.programs[0].steps))
    out = build_schedule(replace(progs, programs=(first, progs.programs[1])))
    starts = [_event(d, "forward", 0, "AllReduce")["start"] for d in out["devices"]]
    assert starts == [1.5, 1.5]  # rank 0: AllGather 0.5 s + block 1 s


def test_deadlock_names_the_stuck_ranks_and_steps() -> None:
    def prog(rank: int, peer: int) -> DeviceProgram:
        steps = (
            Comm("Recv", "x", "x", 8.0, peer=peer, tag=rank + 1, seconds=0.1),
            Compute(("n",), 1.0, label="work"),
            Comm("Send", "x", "", 8.0, peer=peer, tag=peer + 1, seconds=0.1),
        )
        return DeviceProgram(rank, f"gpu{rank}", "h100", rank, 0, 0, 1, steps, (), ())

    progs = Programs((prog(0, 1), prog(1, 0)), "inference", "1f1b", 1, 1, 2)
    with pytest.raises(ShardcError, match="deadlocks") as err:
        build_schedule(progs)
    text = str(err.value)
    assert "rank 0 at forward of micro-batch 0, step 1 of 3 (Recv of 'x' from rank 1" in text
    assert "rank 1 at forward of micro-batch 0, step 1 of 3 (Recv of 'x' from rank 0" in text


def test_concurrent_transfers_on_a_link_get_their_own_tracks() -> None:
    def ev(op: str, peer: int, tag: int, start: float, end: float) -> dict[str, Any]:
        return {"type": "comm", "phase": "forward", "microbatch": 0, "name": op, "op": op,
                "value": "h", "bytes": 8.0, "peer": peer, "tag": tag, "group": [], "axis": -1,
                "algorithm": "p2p", "links": ["L"], "start": start, "duration": end - start,
                "end": end}

    def dev(rank: int, events: list[dict[str, Any]]) -> dict[str, Any]:
        return {"rank": rank, "device": f"d{rank}", "kind": "k", "stage": 0, "events": events}

    schedule = {"devices": [dev(0, [ev("Send", 1, 1, 0.0, 2.0)]),
                            dev(1, [ev("Recv", 0, 1, 0.5, 2.5)]),
                            dev(2, [ev("Send", 3, 1, 1.0, 3.0)]),
                            dev(3, [ev("Recv", 2, 1, 1.0, 3.0)])],
                "links": [{"link": "L", "bytes": 16.0, "busy_seconds": 3.0, "transfers": 2}]}
    events = chrome_trace(schedule)["traceEvents"]
    tracks = {e["tid"]: e["args"]["name"] for e in events
              if e["name"] == "thread_name" and e["pid"] == 4}
    assert sorted(tracks.values()) == ["L", "L #2"]
    on = {tracks[e["tid"]]: e["name"] for e in events if e["ph"] == "X" and e["pid"] == 4}
    assert on == {"L": "Send 0->1", "L #2": "Send 2->3"}
    flows = [(e["ph"], e["pid"]) for e in events if e["ph"] in ("s", "f")]
    assert sorted(flows) == [("f", 1), ("f", 3), ("s", 0), ("s", 2)]
