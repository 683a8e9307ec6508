"""The per-device programs of a serving plan: a prefill program and a decode-step program
per rank, the KV cache their explicit inputs and outputs.

Why its own module above the compiler: serving decides instances (:mod:`shardc.serving`)
from the cost model alone; the programs are two inference compilations -- the model's
prefill graph under the prefill instance's tensor-parallel degree and its decode-step graph
under the decode instance's -- by the same passes ``shardc compile --mode inference`` runs,
with the KV cache pinned split along its heads (:func:`shardc.strategy.table.kv_pins`).

A serving model with programs is a *phase pair*: the prefill graph (the file given to
``compile --mode serving``) whose ``shardc.kv_cache`` metadata names its decode-step graph
beside it (``shardc synth ... --cache`` writes both; a Hugging Face decoder exported with
:mod:`shardc.frontend.kv_export` too). The folder written, ``OUTDIR/programs/``::

    programs.json        format, the two graphs, batch / prompt / context, per phase its
                         tensor-parallel degree and instance, per cache entry its layout
                         on each phase's ranks ({"axis": 1, "parts": 2} or whole), hand-off
    prefill/             the prefill phase's plan folder: plan.json, device_<rank>.onnx ...
    decode/              the decode step's plan folder

Rank r of ``prefill/`` outputs ``present.<layer>.<name>``; rank r of ``decode/`` reads it
as ``past_key_values.<layer>.<name>`` when both phases split it alike (``handoff:
direct``). When the degrees differ the hand-off re-lays the cache: the entry is joined
along its heads axis over the prefill ranks and split over the decode ranks (what a KV
transfer does when each decode rank pulls the heads it holds); ``handoff`` says so.
Expert parallelism runs over each phase's tensor-parallel group (EP = TP, see
:mod:`shardc.partition.experts`); an instance with pipeline stages gets no programs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shardc.build import Inputs, PlanOptions, build, sha256_file
from shardc.emit.outputs import serving_files
from shardc.errors import ModelError, OptionError

PROGRAMS_FORMAT = "shardc.serving-programs/1"
KV_METADATA = "shardc.kv_cache"


def phase_pair(model: Path) -> tuple[Path, Path] | None:
    """(prefill graph, decode graph) when ``model`` is a prefill graph naming its decode
    partner in its ``shardc.kv_cache`` metadata; None for a model without a cache.
    """
    import onnx

    try:
        proto = onnx.load(str(model), load_external_data=False)
    except Exception as exc:  # onnx raises several unrelated types for unreadable files
        raise ModelError(f"cannot read ({str(exc).splitlines()[0]})", where=str(model)) from None
    record = {p.key: p.value for p in proto.metadata_props}.get(KV_METADATA)
    if record is None:
        return None
    data = json.loads(record)
    if data.get("phase") != "prefill" or not data.get("decode"):
        raise ModelError("a serving model is the prefill graph of a phase pair; this one "
                         f"is the {data.get('phase')} graph", where=str(model),
                         hint="pass the prefill graph (its metadata names the decode graph)")
    decode = model.parent / data["decode"]
    if not decode.is_file():
        raise ModelError(f"its decode-step graph {data['decode']!r} is not beside it",
                         where=str(model))
    return model, decode


def _instance(serving: Mapping[str, Any], phase: str) -> Mapping[str, Any]:
    """The instance that runs ``phase``: its own role, else the aggregated one."""
    for role in (phase, "aggregated"):
        for inst in serving["instances"]:
            if inst["role"] == role:
                return inst
    raise OptionError(f"the serving plan has no instance that runs {phase}")


def refusal(serving: Mapping[str, Any]) -> str | None:
    """Why the instances of ``serving`` get no programs (a phase with pipeline stages), or
    None: the plan is still written, the programs are not.
    """
    for phase in ("prefill", "decode"):
        inst = _instance(serving, phase)
        if inst["pp"] > 1:
            return (f"the {phase} instance has {inst['pp']} pipeline stages and programs are "
                    "lowered for pp=1 only (pin pp=1 to get them)")
    return None


def program_files(
    pair: tuple[Path, Path],
    topology: Any,
    topology_record: Mapping[str, Any],
    serving: Mapping[str, Any],
    *,
    time_limit: float = 10.0,
    seed: int = 0,
) -> dict[str, bytes]:
    """The ``programs/`` folder's files for the instances of ``serving`` (a serving plan's
    ``to_dict()``): both phases compiled under their instance's TP degree, one rank per
    device of one TP group (a data-parallel replica runs the same programs).
    """
    phases: dict[str, Mapping[str, bytes]] = {}
    layouts: dict[str, dict[str, Any]] = {}
    info: dict[str, Any] = {}
    meta: dict[str, Any] = {}
    for phase, path in zip(("prefill", "decode"), pair, strict=True):
        inst = _instance(serving, phase)
        why = refusal(serving)
        if why is not None:
            raise OptionError(f"no serving programs: {why}")
        tp = int(inst["tp"])
        pins = f"tp={tp},pp=1,dp=1,kind={inst['kind']}"  # one TP group of the instance's kind
        options = PlanOptions(mode="inference", pins=(pins,), time_limit=time_limit, seed=seed)
        built = build(Inputs(path, {"path": str(path)}, topology, topology_record), options,
                      emit=True)
        phases[phase] = built.files
        state = built.result.state
        meta = json.loads(dict(state.model.metadata)[KV_METADATA])
        values = state.graph.values
        local = state.lowering.templates[(0, 0)].local_shapes
        for entry in meta["entries"]:
            name = entry["present"] if phase == "prefill" else entry["past"]
            whole = list(values[name].type.shape)
            mine = local.get(name)
            axis = next((i for i, (a, b) in enumerate(zip(whole, mine or whole, strict=True))
                         if a != b), None)
            key = f"{entry['layer']}.{entry['name']}"
            layouts.setdefault(key, dict(entry))[phase] = (
                {"axis": axis, "parts": tp} if axis is not None else None)
        info[phase] = {"folder": phase, "tp": tp, "instance_ep": inst["ep"],
                       "instance_role": inst["role"], "instance_kind": inst["kind"],
                       "graph": {"path": str(path), "sha256": sha256_file(path)}}
    entries = [layouts[k] for k in sorted(layouts, key=_entry_order)]
    direct = all(e.get("prefill") == e.get("decode") for e in entries)
    index = {
        "format": PROGRAMS_FORMAT,
        "batch": meta.get("batch"),
        "context": meta.get("context"),
        "position": "cache_position",
        "phases": info,
        "cache": [{k: e[k] for k in ("layer", "name", "past", "present", "heads_axis",
                                     "prefill", "decode") if k in e} for e in entries],
        "handoff": "direct" if direct else
        "re-laid: each entry joined along its heads axis over the prefill ranks and split "
        "over the decode ranks",
    }
    return serving_files(phases, index)


def _entry_order(key: str) -> tuple[int, str]:
    layer, _, name = key.partition(".")
    return int(layer), name
