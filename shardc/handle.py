"""A compiled plan as a Python object: what :func:`shardc.compile` returns.

Why a wrapper over the plan folder and not over the compiler's state: a plan made in this
process and one loaded from disk must answer the same questions the same way, so every
property reads the folder's files (plan.json, schedule.json, the device models), and
:meth:`Plan.save` writes exactly those bytes — the folder ``shardc compile`` writes for
the same inputs. The compiler's state rides along when there is one (``plan.state``),
for those who want the IR; nothing here depends on it.

>>> import shardc
>>> plan = shardc.compile("examples/models/tiny_gpt2.onnx", "topologies/localhost.topo",
...                       devices=2, pins="tp=2")
>>> plan.world_size, plan.dp, plan.pp, [s.tp for s in plan.stages]
(2, 1, 1, [2])
>>> plan.devices[1].device, plan.devices[1].tp_rank
('cpu1', 1)
>>> sorted(plan.estimate.breakdown)[:2]
['compute', 'dp sync + optimizer']
>>> plan.device_model(0).graph.input[0].name
'input_ids'

The typed Plan underneath: every rank's comms with bytes, algorithm and links, and the
timeline (the same objects whether compiled here or loaded from the folder):

>>> c = plan.comms[0][0]
>>> c.op, c.group, c.nbytes, c.algorithm, str(c.links[0])
('AllReduce', (0, 1), 8192.0, 'tree', 'cpu0<->loopback')
>>> plan.timeline.step_seconds == plan.estimate.simulated_step_seconds
True
>>> shardc.Plan.load(plan.folder()).timeline == plan.timeline
True
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping, MutableMapping
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from shardc.emit.outputs import PlanFiles
from shardc.handle_run import PlanError, Running
from shardc.plan.model import Estimate, PlanData
from shardc.plan.program import Comm, Programs, Sync
from shardc.plan.records import Rank, Stage
from shardc.plan.serving import ServingPlan
from shardc.plan.timeline import Timeline

if TYPE_CHECKING:
    from shardc.build import Built
    from shardc.explanation import Explanation
    from shardc.pipeline import CompileState
    from shardc.report.plan import Summary
    from shardc.report.serving_explain import DeviceExplanation

_FIXED = ("plan.json", "analysis.json", "schedule.json", "trace.json")


class Plan(Running):
    """A compiled sharding plan: stages, devices, estimates, device programs.

    Get one from :func:`shardc.compile` or :meth:`Plan.load`. Every property is read from
    the plan folder's contents (in memory, or on disk for a loaded plan), so both kinds
    answer alike.

    Attributes:
        data: plan.json as data (read-only by convention; :meth:`to_json` gives a copy).
        path: the folder the plan was loaded from or last saved to (None if never on disk).
        state: the compiler's :class:`~shardc.pipeline.CompileState` (IR, costs, blocks,
            strategies), for a plan compiled in this process; None when loaded.
        topology: the :class:`~shardc.topology.Topology` compiled onto (None when loaded).
        warnings: what the passes warned about (compiled in this process only).
        timings: seconds per pass (compiled in this process only).
        compile_seconds: wall time of the compile (compiled in this process only).
        source: the ModelProto compiled, when the model was a proto or a torch module.
    """

    def __init__(
        self,
        files: Mapping[str, bytes] | None = None,
        *,
        root: str | os.PathLike[str] | None = None,
        state: CompileState | None = None,
        topology: Any = None,
        warnings: tuple[str, ...] = (),
        timings: Mapping[str, float] | None = None,
        compile_seconds: float | None = None,
        source: onnx.ModelProto | None = None,
        typed: PlanData | None = None,
    ) -> None:
        if files is None and root is None:
            raise PlanError("a Plan needs its files or a folder", hint="use shardc.compile")
        # a compile's PlanFiles stays lazy: schedule.json is made only if read or saved
        self._files: MutableMapping[str, bytes] | None = (
            None if files is None else files if isinstance(files, PlanFiles) else dict(files)
        )
        self.path: Path | None = Path(root) if root is not None else None
        self.state = state
        self.topology = topology
        self.warnings = tuple(warnings)
        self.timings = dict(timings or {})
        self.compile_seconds = compile_seconds
        self.source = source
        self._typed = typed
        from shardc.plan.folder import parse_plan, read_plan_folder

        # validated before any other file is read: every property may then trust it
        self._folder = read_plan_folder(root) if self._files is None and root else None
        self.data: dict[str, Any] = (
            self._folder.plan if self._folder is not None else parse_plan(self._read("plan.json"))
        )

    # ------------------------------------------------------------------ making and saving
    @classmethod
    def _from_built(cls, built: Built, topology: Any, source: Any = None) -> Plan:
        return cls(
            built.files,
            state=built.result.state,
            topology=topology,
            warnings=built.warnings,
            timings=built.timings,
            compile_seconds=built.seconds,
            source=source if isinstance(source, onnx.ModelProto) else None,
            typed=built.typed,
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Plan:
        """The plan in folder ``path`` (written by :meth:`save` or ``shardc compile``).

        Files are read when first needed, so loading a large plan is cheap.
        """
        return cls(root=Path(path))

    def save(self, path: str | os.PathLike[str], *, force: bool = False) -> Path:
        """Write the plan folder to ``path`` atomically (all files or none).

        The bytes are those ``shardc compile`` writes for the same inputs and options, so
        ``shardc check-plan``, ``shardc verify`` and :meth:`Plan.load` read it. An existing
        folder is replaced only with ``force=True``.
        """
        from shardc.emit.outdir import write_outdir
        from shardc.plan.folder import anchor_paths

        files = {name: self._read(name) for name in self.file_names}
        # recorded paths are relative to where compile ran, or to the folder loaded from
        files["plan.json"] = anchor_paths(files["plan.json"], path, origin=self.path)
        dest = write_outdir(path, files, force=force)
        if self._files is not None:
            self._files["plan.json"] = files["plan.json"]
            self.data = json.loads(files["plan.json"])
            self._typed = None  # the records now name the inputs from the new folder
            self.__dict__.pop("typed", None)
        self.path = dest
        return dest

    @property
    def file_names(self) -> list[str]:
        """The plan folder's files, sorted."""
        if self._files is not None:
            return sorted(self._files)
        assert self._folder is not None
        names = [n for n in _FIXED if self._folder.has(n)]
        for r in self.data.get("emission", {}).get("ranks", []):
            names.append(r["file"])
            side = Path(r["file"]).with_suffix(".weights").name
            if self._folder.has(side):
                names.append(side)
        return sorted(names)

    def _read(self, name: str) -> bytes:
        if self._files is not None:
            if name not in self._files:
                raise PlanError(f"the plan has no {name}")
            return self._files[name]
        assert self._folder is not None
        from shardc.plan.folder import MAX_JSON_BYTES, MAX_MODEL_BYTES, MAX_SIDE_BYTES

        limit = MAX_JSON_BYTES.get(name, MAX_SIDE_BYTES if name.endswith(".weights") else 0)
        return self._folder.read(name, limit=limit or MAX_MODEL_BYTES)

    def to_json(self) -> dict[str, Any]:
        """plan.json as plain data (a copy; see docs/plan-format.md for every field)."""
        return copy.deepcopy(self.data)

    # ------------------------------------------------------------------ what the plan says
    @property
    def inputs(self) -> Mapping[str, Any]:
        """What was compiled: model and topology (path relative to the plan folder once
        saved, as given before; SHA-256), ``set``, dims.
        """
        return self.data["inputs"]

    @property
    def options(self) -> Mapping[str, Any]:
        """The options the plan was compiled with (plan.json ``options``)."""
        return self.data["options"]

    @property
    def serving(self) -> ServingPlan | None:
        """The serving plan (``compile --mode serving``): instances with their devices,
        parallelism, batch and KV capacity, TTFT/TPOT, tokens/s, the KV hand-off and the
        expert all-to-all with the links they load, the Pareto table. None for a pipeline
        plan.
        """
        return self.typed.serving

    def _partition(self) -> Mapping[str, Any]:
        if "partition" not in self.data:
            raise PlanError("a serving plan has no pipeline partition",
                            hint="its instances are in plan.serving")
        part: Mapping[str, Any] = self.data["partition"]
        return part

    @property
    def dp(self) -> int:
        """Data-parallel replicas."""
        return int(self._partition()["dp"])

    @property
    def pp(self) -> int:
        """Pipeline stages."""
        return int(self._partition()["pp"])

    @property
    def world_size(self) -> int:
        """Ranks the plan runs on (one per device used)."""
        if "serving" in self.data:
            return int(self.data["serving"]["devices_used"])
        return int(self._partition()["devices_used"])

    @cached_property
    def typed(self) -> PlanData:
        """The frozen, typed Plan (:class:`~shardc.plan.model.PlanData`) these files hold:
        the same object compile wrote them from, whether compiled here or loaded.
        """
        if self._typed is not None:
            return self._typed
        return PlanData.from_json(self.data, self.schedule)

    @property
    def stages(self) -> tuple[Stage, ...]:
        """The pipeline stages in order."""
        return self.typed.stages

    @property
    def ranks(self) -> tuple[Rank, ...]:
        """Every rank, by rank: device, stage, replica, TP rank, memory, device file.

        Ranks are numbered stage outermost, then replica, then TP rank (Megatron's order,
        and the order of ``device_<rank>.onnx``), whether or not device files were emitted.
        """
        return self.typed.ranks

    @property
    def devices(self) -> tuple[Rank, ...]:
        """The ranks (the name this property had first)."""
        return self.ranks

    @property
    def programs(self) -> Programs | None:
        """Every rank's program outline: compute segments and comms (None if not lowered)."""
        return self.typed.programs

    @property
    def comms(self) -> Mapping[int, tuple[Comm, ...]]:
        """Every rank's communications with bytes, links, algorithm and seconds, by rank."""
        return self.typed.comms

    @property
    def syncs(self) -> tuple[Sync, ...]:
        """The data-parallel gradient sync of each stage (training)."""
        return self.typed.syncs

    @property
    def timeline(self) -> Timeline | None:
        """The step in time: every rank's events, link loads, step time (None if not
        lowered).
        """
        return self.typed.timeline

    @property
    def memory(self) -> dict[str, Rank]:
        """Peak memory by device name: ``plan.memory["cpu0"].memory_fraction``."""
        return {d.device: d for d in self.ranks}

    @property
    def estimate(self) -> Estimate:
        """Step time, its breakdown, throughput and how sure the solver is (a pipeline
        plan's; a serving plan's figures are in :attr:`serving`).
        """
        self._partition()
        return self.typed.estimate

    @cached_property
    def schedule(self) -> dict[str, Any] | None:
        """schedule.json as data: every rank's events in time (None when not emitted)."""
        if "schedule.json" not in self.file_names:
            return None
        from shardc.plan.folder import check_schedule, loads

        return check_schedule(loads(self._read("schedule.json"), "schedule.json"), self.data)

    @cached_property
    def analysis(self) -> dict[str, Any]:
        """analysis.json: what ``shardc inspect`` reports about the model."""
        from shardc.plan.folder import loads

        return dict(loads(self._read("analysis.json"), "analysis.json"))

    def summary(self) -> Summary:
        """The plan's tables; ``print(plan.summary())`` or ``rich.print(plan.summary())``."""
        from shardc.report.plan import Summary

        return Summary(self)

    def __rich__(self) -> Any:
        return self.summary().__rich__()

    def __repr__(self) -> str:
        s = self.serving
        if s is not None:
            return (f"<Plan serving {s.mode} instances={len(s.instances)} "
                    f"devices={s.devices_used} ttft={s.ttft:.4g}s tpot={s.tpot:.4g}s>")
        tps = [s.tp for s in self.stages]
        return (
            f"<Plan dp={self.dp} pp={self.pp} tp={tps} ranks={self.world_size} "
            f"step={self.estimate.step_seconds:.4g}s {self.estimate.status}>"
        )

    def explain(self, name: str) -> Explanation | DeviceExplanation:
        """Where node or value ``name`` went and why: stage, ranks, sharding, communication.

        Raises :class:`OptionError` (with close matches) when no rank has ``name``. On a
        serving plan, ``name`` is a device: its instance, role and the traffic through it.
        """
        if self.serving is not None:
            from shardc.report.serving_explain import explain_device

            return explain_device(self.typed, name)
        from shardc.explain import explain

        return explain(self, name)

    def apply(self, model: Any, **options: Any) -> Any:
        """``model`` (a ``torch.nn.Module``) sharded as this plan says on this rank: a
        :class:`shardc.train.ParallelModel`; see :func:`shardc.train.apply` for ``options``.
        """
        from shardc.train import apply

        return apply(self, model, **options)
