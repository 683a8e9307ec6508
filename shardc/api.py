"""The Python API: :func:`compile` a model onto a cluster from a script.

Why a function next to the CLI and not inside it: training and serving scripts hold
their model as a ``torch.nn.Module`` or an ``onnx.ModelProto`` and their cluster as a
file or a string, and want a plan object back, not a folder. :func:`compile` turns
those into the same :class:`shardc.build.Inputs` and :class:`~shardc.build.PlanOptions`
``shardc compile`` builds from its flags and calls the same :func:`shardc.build.build`,
so ``plan.save(dir)`` writes the folder the CLI would, byte for byte.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shardc.build import Inputs, PlanOptions, build, sha256_bytes, sha256_file
from shardc.errors import OptionError, ShardcWarning
from shardc.handle import Plan
from shardc.progress import Progress, progress_for
from shardc.vocabulary import default

if TYPE_CHECKING:
    from shardc.topology import Topology

Param = int | float | str


def compile(
    model: Any,
    topology: Any,
    *,
    example_inputs: Any = None,
    dims: Mapping[str, int] | None = None,
    mode: str = default("mode"),
    objective: str = default("objective"),
    microbatches: int | None = default("microbatches"),
    global_batch: int | None = default("global_batch"),
    schedule: str = default("schedule"),
    zero: int = default("zero"),
    pins: str | Sequence[str] | Mapping[str, Param] | None = None,
    recompute: str | None = default("recompute"),
    dtype: str | None = default("dtype"),
    time_limit: float = default("time_limit"),
    seed: int = default("seed"),
    max_stages: int = default("max_stages"),
    memory_reserve: str | float = default("memory_reserve"),
    cp_comm: str = default("cp_comm"),
    devices: int | None = None,
    params: Mapping[str, Param] | None = None,
    warm_start: str | os.PathLike[str] | Plan | None = None,
    custom_flops: Mapping[str, float] | None = None,
    emit: bool | None = None,
    progress: Progress | bool | None = None,
    quiet: bool = False,
) -> Plan:
    """Partition ``model`` onto the cluster ``topology`` and return the :class:`Plan`.

    The same compiler as ``shardc compile``: the model is analysed, folded into repeated
    blocks, every op's legal shardings are listed, and the CP-SAT partitioner chooses
    pipeline stages, tensor/data-parallel degrees, recomputation and the devices of every
    group; then the per-device ONNX programs, schedule.json and trace.json are emitted
    (in memory: :meth:`Plan.save` writes them).

    Args:
        model: an ONNX file path, an ``onnx.ModelProto``, or a ``torch.nn.Module``
            (exported with ``torch.onnx.export(dynamo=True, opset_version=18)`` on
            ``example_inputs``; a Hugging Face model should return plain tensors, e.g.
            wrapped to return ``.logits``). Weights of a file stay on disk.
        topology: a :class:`shardc.topology.Topology`, a ``.topo`` file path, or topology
            text (a ``str`` containing a newline is text; see docs/dsl.md).
        example_inputs: for a ``torch.nn.Module`` only: a tensor, a tuple of positional
            tensors, or a dict of keyword tensors matching ``forward()``. Their shapes
            are the shapes planned (batch = the micro-batch size).
        dims: values for symbolic input dims, ``{"batch": 8, "seq": 4096}``.
        mode: ``"training"`` (forward, backward and optimizer per step) or
            ``"inference"``.
        objective: ``"throughput"`` (samples per second) or ``"latency"`` (one
            request, inference only).
        microbatches: micro-batches per pipeline per step (default 8).
        global_batch: samples per step; sets the micro-batches per replica to
            ``global_batch / (dp * micro-batch size)``. Not with ``microbatches``.
        schedule: pipeline schedule, ``"1f1b"`` or ``"gpipe"``.
        zero: ZeRO stage (0-3) of the data-parallel optimizer state.
        pins: parts of the answer to fix, as ``--pin`` takes them: ``"tp=2,pp=2"``, a
            list of such strings, or a mapping ``{"tp": 2, "stage0.blocks": 3}``. Keys:
            ``tp``, ``pp``, ``dp``, ``kind``, ``recompute``, ``stageN.kind``,
            ``stageN.tp``, ``stageN.blocks``, ``stageN.recompute``, and ``rule``
            (``"megatron"``, the default, or ``"split"``: tensor-parallel stages split
            every op they can, batch first, for graphs that are not transformers).
        recompute: activation recomputation for every stage, ``"none"``,
            ``"selective"`` or ``"full"`` (default: the solver chooses per stage).
        dtype: the precision the plan is priced and sized in, as mixed-precision training
            runs an fp32 export: ``"fp32"``, ``"bf16"`` or ``"fp16"`` for every float
            value, weight and transfer; ``"fp8"`` for the weights and arithmetic of
            GEMMs that read a weight (Transformer Engine's recipe), bf16 elsewhere. The
            device programs keep the model's own types. Default: the model's own.
        time_limit: solver budget for the whole search, in CP-SAT deterministic seconds
            (not wall time, so the same input gives the same plan on any machine).
        seed: solver random seed.
        max_stages: the most pipeline stages to consider.
        memory_reserve: memory per device no plan may use: a fraction (``0.05``), a
            percentage (``"5%"``) or bytes (``"4GB"``); default 5 % (CUDA/NCCL context,
            communication buffers, allocator fragmentation).
        cp_comm: how context parallelism (``pins="cp=N"``) moves K and V: ``"allgather"``
            (one all-gather of each, the default) or ``"ring"`` (cp-1 point-to-point
            steps overlapped with blockwise attention).
        devices: the topology's ``devices`` parameter (``let devices = ...``, as in
            ``topologies/localhost.topo``): shorthand for ``params={"devices": n}``. A
            topology whose size is set another way (``let nodes``) takes ``params``.
        params: overrides of the topology's ``let`` parameters, like ``--set``.
        warm_start: an earlier plan (a :class:`Plan` that has a folder, or a plan.json
            path) whose answer seeds the solver.
        custom_flops: FLOPs per output element for custom ops shardc has no rule for,
            ``{"com.acme::Fused": 12}``.
        emit: write the schedule, the trace and (when the model's weights are readable)
            the device programs; ``False`` none of them. Default: the same, but a graph
            whose weights are declared only (``shardc synth``) gets its schedule only
            while that is quick (see ``shardc.build.SCHEDULE_ONLY_BUDGET``).
        progress: ``progress(step, done, total)`` is called as the compile advances (see
            :data:`shardc.progress.Progress`); ``None`` shows a progress bar when stderr is
            a terminal, ``False`` shows nothing.
        quiet: no progress bar and no warnings.

    Returns:
        The :class:`Plan`: ``.summary()``, ``.stages``, ``.devices``, ``.memory``,
        ``.estimate``, ``.schedule``, ``.explain(name)``, ``.save(dir)``,
        ``.device_model(rank)``, ``.verify()``, ``.runner()``, ``.to_json()``.

    Raises:
        ModelError: the model cannot be read, or ``torch.onnx.export`` failed (the hint
            says what to check).
        TopologyError: the topology text is wrong (``.file``, ``.line``, ``.column``).
        OptionError: an option has a wrong value, or names a parameter, pin or dim the
            inputs do not have.
        InfeasibleError: no plan fits the devices (``.reason``; the hint says what
            would fit).
        SolverTimeout: the solver found no plan within ``time_limit``.

    Pass warnings (unknown ops, a solver stopped at its limit) are issued as
    :class:`shardc.errors.ShardcWarning` unless ``quiet``.

    Example:
        >>> import shardc
        >>> plan = shardc.compile(
        ...     "examples/models/tiny_gpt2.onnx", "topologies/localhost.topo",
        ...     devices=4, pins={"tp": 2})
        >>> plan.dp, plan.pp, plan.stages[0].tp
        (2, 1, 2)
        >>> plan.estimate.status
        'OPTIMAL'
        >>> print(plan.explain("node_Gemm_280").strategy)
        row
    """
    if mode == "serving":
        raise OptionError(
            "shardc.compile plans training and inference; serving plans are made by "
            "`shardc compile MODEL --topology T --mode serving ...`",
            hint="read one with shardc.Plan.load(folder).serving, or plan in-process with "
            "shardc.serving.plan_serving",
        )
    proto, model_record = _model(model, example_inputs)
    overrides = dict(params or {})
    if devices is not None:
        if "devices" in overrides and overrides["devices"] != devices:
            raise OptionError(
                f"devices={devices} and params devices={overrides['devices']} disagree"
            )
        overrides["devices"] = devices
    topo, topology_record = _topology(topology, overrides, named_devices=devices is not None)
    options = PlanOptions(
        mode=mode,
        objective=objective,
        microbatches=microbatches,
        global_batch=global_batch,
        schedule=schedule,
        zero=zero,
        pins=_pins(pins),
        recompute=recompute,
        time_limit=float(time_limit),
        seed=seed,
        max_stages=max_stages,
        warm_start=_warm_start(warm_start),
        dtype=dtype,
        memory_reserve=str(memory_reserve),
        cp_comm=cp_comm,
    )
    inputs = Inputs(
        model=proto,
        model_record=model_record,
        topology=topo,
        topology_record=topology_record,
        dims=dict(dims or {}),
        custom_flops=dict(custom_flops or {}),
    )
    if callable(progress):
        bar: Any = nullcontext(progress)
    else:
        bar = progress_for(quiet or progress is False)
    with bar as report:
        built = build(inputs, options, emit=emit, progress=report)
    if not quiet:
        for w in built.warnings:
            warnings.warn(w, ShardcWarning, stacklevel=2)
    return Plan._from_built(built, topo, source=proto)


def _model(model: Any, example_inputs: Any) -> tuple[Any, dict[str, Any]]:
    """(what the frontend loads, plan.json's record of it); protobuf stays in the frontend."""
    from shardc.frontend import model_source

    return model_source(model, example_inputs=example_inputs)


def _topology(
    topology: Any, overrides: dict[str, Param], *, named_devices: bool
) -> tuple[Topology, dict[str, Any]]:
    """(the built topology, plan.json's record of it)."""
    from shardc.topology import Topology, load_topology

    if isinstance(topology, Topology):
        if overrides:
            raise OptionError(
                "devices= and params= override a topology's parameters, and this one is "
                "already built",
                hint="pass its file or text instead, or build it with those overrides",
            )
        text = topology.to_json().encode()
        return topology, {"path": f"<Topology {topology.name}>", "sha256": sha256_bytes(text)}
    is_text = isinstance(topology, str) and "\n" in topology
    if not is_text and not isinstance(topology, str | os.PathLike):
        raise OptionError(
            f"cannot read a topology from a {type(topology).__name__}",
            hint="pass a .topo path, topology text, or a shardc.topology.Topology",
        )
    try:
        topo = load_topology(topology, overrides)
    except OptionError as exc:
        if named_devices and "unknown parameter 'devices'" in exc.message:
            raise OptionError(
                "devices= sets the topology's `devices` parameter, and this topology has "
                f"none ({exc.message.split('(', 1)[-1].rstrip(')')})",
                hint="size it with params={...} instead, e.g. params={'nodes': 4}",
            ) from None
        raise
    if is_text:
        record = {"path": "<text>", "sha256": sha256_bytes(str(topology).encode())}
    else:
        # a stock name ("gb200_nvl72") is recorded as given, hashed as the file it named
        record = {"path": str(Path(topology)), "sha256": sha256_file(topo.source or topology)}
    return topo, {**record, "set": overrides}


def _pins(pins: str | Sequence[str] | Mapping[str, Param] | None) -> tuple[str, ...]:
    """Pins in ``--pin`` form, whatever shape the caller gave them."""
    if pins is None:
        return ()
    if isinstance(pins, str):
        return (pins,)
    if isinstance(pins, Mapping):
        return tuple(f"{k}={v}" for k, v in pins.items())
    return tuple(str(p) for p in pins)


def _warm_start(warm: str | os.PathLike[str] | Plan | None) -> str | None:
    if warm is None:
        return None
    if isinstance(warm, Plan):
        if warm.path is None:
            raise OptionError(
                "warm_start: this plan has no folder", hint="save it first, or pass its path"
            )
        return str(warm.path / "plan.json")
    path = Path(warm)
    return str(path / "plan.json" if path.is_dir() else path)
