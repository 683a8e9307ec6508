"""schedule.json: every rank's programs laid out in time for one step.

Why simulate instead of summing stage times: a pipeline's step time is set by who waits
for whom (the bubble, a Recv waiting on a late Send, a collective waiting on its slowest
member), and the report, the trace and ``shardc check-plan`` all need the *same* answer.
So the timeline is computed once (:mod:`shardc.plan.schedule`, by the rules below), from
the ``seconds`` the cost model put on each :class:`~shardc.emit.program.Compute` and
:class:`~shardc.emit.program.Comm` step; this module is its format and typed records.

Format ``shardc-schedule/1`` (machine-checkable: ``schedule.schema.json`` next to this
module, loaded by :func:`schedule_schema`). Times are seconds, as floats, never rounded.

Top level: ``format``, ``mode`` (``training`` or ``inference``), ``schedule`` (``1f1b``
or ``gpipe``), ``microbatches``, ``dp``, ``stages``, ``interleave`` (v, model chunks per
rank; 1 is plain 1F1B), ``p2p_overlapped`` (pipeline Sends run beside compute),
``step_seconds`` (the end of the last event on any device), ``devices`` and ``links``.
``chunked_programs`` (true when the device programs hold their v model chunks; absent
otherwise). (``interleave`` and ``p2p_overlapped`` are absent from files written before
them: read as 1 and false.)

``devices`` holds one entry per rank, by rank: the rank's identity (``rank``, ``device``,
``kind``, ``stage``, ``replica``, ``tp_rank``, ``tp``), ``busy_seconds`` (the sum of
its event durations, overlapped Sends and Recvs left out) and ``events`` in issue order,
which never overlap, except that with ``p2p_overlapped`` Sends and Recvs run on their
own stream and may overlap the rest. Every event has ``type`` (``compute`` or ``comm``), ``phase``
(``forward``, ``backward`` or ``sync``), ``microbatch`` (-1 for sync), ``name`` (a
compute run's label, a comm event's op), ``start``,
``duration`` and ``end``; every forward and backward event its ``chunk`` (0 .. v−1) and
``virtual_stage`` (``chunk·stages + stage``, the model stage it runs). Comm events also
carry ``op``, ``value``, ``bytes``, ``group``, ``peer``, ``tag``, ``axis``, ``algorithm``
and ``links``.

``links`` summarises every link a comm event crosses, heaviest first (bytes descending,
then name). One definition, used by the tables, the report and the trace:

* ``transfers``: each transfer once. A Send and its Recv are one transfer, credited at
  the Send with the links of both ends. A collective call (its group, op, tag, phase
  and micro-batch) is one transfer on each link of its ring, whichever members list it.
* ``bytes``: what those transfers put on the link in one direction: a Send's bytes; for
  a collective, one member's ``bytes`` (what each member sends, which is what each hop
  of the ring carries), not the sum over members, which crossed other hops.
* ``busy_seconds``: the length of the *union* of those transfers' intervals (for a
  collective, its members' intervals), so concurrent transfers are not counted twice
  and it never exceeds the step.

So ``bytes / busy_seconds`` is the link's achieved rate while busy: at most its bandwidth
when the cost model priced every transfer on it at no more than that bandwidth. The DP
sync is the known exception: priced overlapped with the last backward, its event lasts
only the exposed part of the reduction, yet carries all of its bytes (so the fabric the
replicas share is not shown idle).

How the timeline is built:

* a forward pass of micro-batch m on a rank is its program's steps in order, each lasting
  its ``seconds``;
* a Recv is matched to the Send with the same sender (the Recv's peer), receiver, tag,
  phase and micro-batch (the k-th such Recv to the k-th such Send, counted over the
  micro-batch's chunks). It starts when the rank is free and the Send has started, and
  lasts the Send's duration, so it never ends before the Send does. A Send never waits.
  With ``p2p_overlapped`` (the partitioner priced pipeline transfers as overlapped, as
  Megatron-LM's ``overlap_p2p_comm`` runs them) Sends and Recvs run on their own stream:
  a Send does not hold its rank (the next step starts when the Send does); a Recv,
  posted ahead, spans its Send's interval, and the rank's next step starts once it ends,
  so a transfer that ends while the rank computes costs nothing and only the fill and
  drain show transfers on the critical path; ``links`` still carries every transfer's
  bytes. A ring attention's K/V transfers (value ``…__cpring…``) always run so, whatever
  ``p2p_overlapped`` says: each is sent before the block it overlaps;
* a collective starts when every member of its group has reached it, at the latest
  member's ready time, and lasts the member's own ``seconds``. Members issue a group's
  collectives in the same order, so the k-th collective over a group in a phase and
  micro-batch matches across members (counting per group, not over all collectives, so a
  rank that also talks to a sub-group still lines up);
* training adds the backward pass of micro-batch m: the forward steps reversed, compute
  lasting ``backward_factor`` times its forward time, comm steps the same time with Send
  and Recv swapped (gradients flow back: a forward Send to p becomes a Recv from p with
  the same tag, and vice versa; collectives keep their op). The per-stage order of passes
  is 1F1B (``min(stages - stage - 1, M)`` warm-up forwards, then one forward / one
  backward, then the remaining backwards) or GPipe (all forwards, then all backwards);
* interleaved 1F1B (``interleave`` v > 1, training, 1F1B; Narayanan et al. 2021
  §2.2.2): each rank runs v chunks; chunk c of stage j is virtual stage ``c·S + j``.
  Compiled plans lower each chunk as its own part of the device program
  (``chunked_programs``): a pass of chunk c is those steps, at their own times and bytes,
  the wrap-around hand-off (the last stage's chunk c to the first stage's chunk c + 1)
  among them, so the timeline's extra traffic is what the programs send. Programs
  lowered as one pass per stage (hand-built ones) are cut up here instead: a pass of one
  chunk is the rank's steps with compute and collectives at ``1/v`` of their
  time and bytes (the chunk's share of the stage's blocks) and whole Sends/Recvs (a
  hand-off per chunk: v times the traffic); the last stage's chunk c sends to the first
  stage's chunk c + 1 what it receives from the stage before it (the wrap-around
  hand-off, :func:`~shardc.plan.issue_order.wrap_steps`). Passes follow Megatron-LM's order
  (:func:`~shardc.plan.issue_order.interleaved_order`), so the bubble is ``(S − 1)/v``
  slots instead of ``S − 1``.
  After its last backward each rank runs one ``sync`` event (a comm event, op
  ``AllReduce``, named ``dp sync + optimizer``) lasting ``stage_sync_seconds[stage]``
  over the ranks of the same stage and tensor-parallel rank in every replica. Its
  ``bytes`` are ``stage_sync_bytes[stage]`` (one device's gradients, what the partitioner
  priced the reduction on) and its ``links`` the ring over those ranks' devices
  (:attr:`~shardc.emit.program.DeviceProgram.sync_links`), so the inter-replica fabric
  shows in ``links`` like any collective's (none when nothing is synced);
* inference runs forwards only, micro-batches in order.

The result depends on the programs alone: no clock, no set order, so the same
:class:`~shardc.emit.program.Programs` always gives an identical dict. Programs whose
Recvs lack Sends, whose collective members disagree, or that deadlock raise
:class:`~shardc.errors.ShardcError` naming the ranks and steps.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from shardc.plan.issue_order import SYNC_NAME
from shardc.plan.program import Link, parse_links

FORMAT = "shardc-schedule/1"

__all__ = ["FORMAT", "SYNC_NAME", "Event", "LinkLoad", "RankTimeline", "Timeline",
           "schedule_schema"]


def schedule_schema() -> dict[str, Any]:
    """The JSON Schema of schedule.json, shipped with the package so readers can check files."""
    return json.loads(_schema_text())


@functools.cache
def _schema_text() -> str:
    return (
        resources.files("shardc.plan").joinpath("schedule.schema.json").read_text(encoding="utf-8")
    )


@dataclass(frozen=True)
class Event:
    """One event of one rank: a compute run or a communication, placed in time."""

    type: str
    """``compute`` or ``comm``."""
    phase: str
    """``forward``, ``backward`` or ``sync``."""
    microbatch: int
    """-1 for the sync."""
    name: str
    start: float
    duration: float
    end: float
    op: str = ""
    """The comm op as issued ('' for compute); a backward Send is the forward Recv."""
    value: str = ""
    nbytes: float = 0.0
    group: tuple[int, ...] = ()
    peer: int = -1
    tag: int = 0
    axis: int = -1
    algorithm: str = ""
    links: tuple[Link, ...] = ()
    chunk: int = 0
    """The model chunk (0 .. v−1); 0 for the sync."""
    virtual_stage: int = -1
    """``chunk·stages + stage``; -1 for the sync."""

    @property
    def is_comm(self) -> bool:
        """True for a communication event."""
        return self.type == "comm"

    def to_json(self) -> dict[str, Any]:
        """The event as schedule.json writes it."""
        out: dict[str, Any] = {
            "type": self.type,
            "phase": self.phase,
            "microbatch": self.microbatch,
            "name": self.name,
            "start": self.start,
            "duration": self.duration,
            "end": self.end,
        }
        if self.phase != "sync":
            out.update(chunk=self.chunk, virtual_stage=self.virtual_stage)
        if self.is_comm:
            out.update(
                op=self.op, value=self.value, bytes=self.nbytes, group=list(self.group),
                peer=self.peer, tag=self.tag, axis=self.axis, algorithm=self.algorithm,
                links=[str(x) for x in self.links],
            )
        return out

    @classmethod
    def from_json(cls, ev: dict[str, Any]) -> Event:
        """An event of a (validated) schedule.json."""
        place = {"chunk": ev.get("chunk", 0), "virtual_stage": ev.get("virtual_stage", -1)}
        if ev["type"] != "comm":
            return cls(ev["type"], ev["phase"], ev["microbatch"], ev["name"], ev["start"],
                       ev["duration"], ev["end"], **place)
        return cls(
            ev["type"], ev["phase"], ev["microbatch"], ev["name"], ev["start"],
            ev["duration"], ev["end"], op=ev["op"], value=ev["value"], nbytes=ev["bytes"],
            group=tuple(ev["group"]), peer=ev["peer"], tag=ev["tag"], axis=ev["axis"],
            algorithm=ev["algorithm"], links=parse_links(tuple(ev["links"])), **place,
        )


@dataclass(frozen=True)
class RankTimeline:
    """One rank's identity and its events in issue order (they never overlap)."""

    rank: int
    device: str
    kind: str
    stage: int
    replica: int
    tp_rank: int
    tp: int
    busy_seconds: float
    """The sum of its event durations."""
    events: tuple[Event, ...]

    def program_events(
        self, stages: int, interleave: int, chunked: bool = False
    ) -> tuple[Event, ...]:
        """The forward events that are this rank's device-program steps, every
        micro-batch's: all of them with one chunk, or when the programs hold their chunks
        (``chunked``: the timeline's ``chunked_programs``); else, with v > 1, chunk 0's
        without the wrap-around hand-offs (the last stage's forward Sends, the first
        stage's forward Recvs), since such a program runs the stage's blocks as one pass
        and the chunks and those hand-offs are the timeline's (see the module docstring).
        """
        forward = [e for e in self.events if e.phase == "forward"]
        if interleave <= 1 or chunked:
            return tuple(forward)
        return tuple(
            e for e in forward
            if e.chunk == 0
            and not (e.op == "Send" and self.stage == stages - 1)
            and not (e.op == "Recv" and self.stage == 0)
        )

    def to_json(self) -> dict[str, Any]:
        """The rank as schedule.json writes it."""
        return {
            "rank": self.rank, "device": self.device, "kind": self.kind, "stage": self.stage,
            "replica": self.replica, "tp_rank": self.tp_rank, "tp": self.tp,
            "busy_seconds": self.busy_seconds, "events": [e.to_json() for e in self.events],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RankTimeline:
        """A rank of a (validated) schedule.json."""
        return cls(d["rank"], d["device"], d["kind"], d["stage"], d["replica"], d["tp_rank"],
                   d["tp"], d["busy_seconds"], tuple(Event.from_json(e) for e in d["events"]))


@dataclass(frozen=True)
class LinkLoad:
    """What one link carries in a step (see the module docstring for the definitions)."""

    link: Link
    nbytes: float
    busy_seconds: float
    transfers: int

    def to_json(self) -> dict[str, Any]:
        """The link as schedule.json writes it."""
        return {"link": str(self.link), "bytes": self.nbytes,
                "busy_seconds": self.busy_seconds, "transfers": self.transfers}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LinkLoad:
        """A link of a (validated) schedule.json."""
        return cls(Link.parse(d["link"]), d["bytes"], d["busy_seconds"], d["transfers"])


@dataclass(frozen=True)
class Timeline:
    """Every rank's events in time for one step, and the load on every link."""

    mode: str
    schedule: str
    microbatches: int
    dp: int
    stages: int
    step_seconds: float
    """The end of the last event on any device."""
    devices: tuple[RankTimeline, ...]
    """By rank."""
    links: tuple[LinkLoad, ...] = field(default=())
    """Heaviest first (bytes descending, then name)."""
    format: str = FORMAT
    interleave: int = 1
    """Model chunks per rank (interleaved 1F1B when above 1)."""
    p2p_overlapped: bool = False
    """Pipeline Sends run beside compute; only exposed waits sit on the critical path."""
    chunked_programs: bool = False
    """The programs hold their model chunks (interleaved lowering): each chunk event is
    a program step at its own time and bytes, the wrap-around hand-offs included."""

    def rank(self, r: int) -> RankTimeline:
        """Rank ``r``'s events."""
        return self.devices[r]

    def to_json(self) -> dict[str, Any]:
        """schedule.json as data."""
        return {
            "format": self.format, "mode": self.mode, "schedule": self.schedule,
            "microbatches": self.microbatches, "dp": self.dp, "stages": self.stages,
            "interleave": self.interleave, "p2p_overlapped": self.p2p_overlapped,
            **({"chunked_programs": True} if self.chunked_programs else {}),
            "step_seconds": self.step_seconds,
            "devices": [d.to_json() for d in self.devices],
            "links": [x.to_json() for x in self.links],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Timeline:
        """A (validated) schedule.json as a Timeline."""
        return cls(
            d["mode"], d["schedule"], d["microbatches"], d["dp"], d["stages"], d["step_seconds"],
            tuple(RankTimeline.from_json(x) for x in d["devices"]),
            tuple(LinkLoad.from_json(x) for x in d["links"]), d["format"],
            d.get("interleave", 1), d.get("p2p_overlapped", False),
            d.get("chunked_programs", False),
        )
