"""``shardc verify`` of a serving plan's programs: a prefill, then decode steps, sharded.

Why a generation and not one forward: the serving programs are only right if the cache
each rank writes is the cache the next program on that rank reads. So the check runs what
a server runs: every prefill rank's program on the prompt, the hand-off of each rank's
present K/V to the decode ranks (direct when both phases split it alike, else re-laid:
joined along its heads axis, split again), then ``steps`` decode steps, each rank's
updated cache fed back to its next step. onnxruntime runs the original prefill and
decode graphs the same way with whole caches. Both sides get the same tokens: each step
feeds the reference's greedy token, so a near-tie in the logits cannot fork the two runs
(whether the sharded run would have picked the same token is reported per step).

Tolerance: a step passes when the largest absolute error of its logits, over every rank
that outputs them, is at most ``rtol`` times the largest reference magnitude (``RTOL`` by
dtype, fp32 1e-5: sharding reorders sums); the cache after the last step is compared the
same way, each rank's shard against the matching slice of the reference cache.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from shardc.emit.program import cpu_session
from shardc.errors import ModelError, OptionError
from shardc.runtime.inprocess import run_programs
from shardc.runtime.plandir import PlanDir
from shardc.runtime.program import RankProgram
from shardc.runtime.verify_report import RTOL

PROGRAMS = "programs.json"

Arrays = dict[str, np.ndarray]


def programs_folder(path: str | Path) -> Path | None:
    """The serving programs folder at ``path`` (the folder itself or ``path/programs``)."""
    for where in (Path(path), Path(path) / "programs"):
        if (where / PROGRAMS).is_file():
            return where
    return None


@dataclass(frozen=True)
class StepCheck:
    """The logits of one step against the original's."""

    step: str
    position: int
    max_abs: float
    max_rel: float
    tol: float
    ok: bool
    same_token: bool
    """Whether every rank's greedy token equals the reference's."""


@dataclass
class ServingReport:
    """What :func:`verify_serving` found."""

    folder: str
    runner: str
    handoff: str
    steps: list[StepCheck] = field(default_factory=list)
    cache_max_rel: float = 0.0
    cache_ok: bool = True
    wall_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Every step and the final cache within tolerance."""
        return self.cache_ok and all(s.ok for s in self.steps)

    def to_json(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        return {"folder": self.folder, "runner": self.runner, "handoff": self.handoff,
                "ok": self.ok, "cache_max_rel": self.cache_max_rel, "cache_ok": self.cache_ok,
                "steps": [{"step": s.step, "position": s.position, "max_abs": s.max_abs,
                           "max_rel": s.max_rel, "tol": s.tol, "ok": s.ok,
                           "same_token": s.same_token} for s in self.steps]}

    def lines(self) -> list[str]:
        """One line per step, then the cache and the verdict."""
        out = [f"{s.step:<9} position {s.position:>4}: logits max abs err {s.max_abs:.3g}, "
               f"rel {s.max_rel:.3g} (tol {s.tol:g}) {'ok' if s.ok else 'MISMATCH'}"
               f"{'' if s.same_token else ', greedy token differs'}" for s in self.steps]
        out.append(f"KV cache after the last step: max rel err {self.cache_max_rel:.3g} "
                   f"{'ok' if self.cache_ok else 'MISMATCH'}; hand-off {self.handoff}")
        return out


class _Phase:
    """One phase's rank programs and its original graph."""

    def __init__(self, root: Path, phase: str, info: Mapping[str, Any]):
        self.folder = PlanDir(root / info["folder"])
        self.programs = {r: RankProgram(self.folder.device_model(r), r)
                         for r in range(self.folder.world_size)}
        path = Path(info["graph"]["path"])
        if not path.is_file():
            raise OptionError(f"{root}: the original {phase} graph {str(path)!r} is not on disk")
        try:
            self.original = onnx.load(str(path))
        except Exception as exc:  # protobuf decode errors have no common base
            raise ModelError(f"cannot load ({str(exc).splitlines()[0]})", where=str(path)) from None
        self.session = cpu_session(self.original, log_level=3)

    def run(self, feeds: Mapping[int, Arrays]) -> dict[int, Arrays]:
        """Every rank's program on its own feeds (in-process collectives)."""
        return run_programs(self.programs, feeds)

    def reference(self, feeds: Arrays) -> Arrays:
        """The original graph on whole inputs."""
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, feeds), strict=True))


def _shard(whole: np.ndarray, layout: Mapping[str, int] | None, rank: int) -> np.ndarray:
    if layout is None:
        return whole
    return np.split(whole, layout["parts"], axis=layout["axis"])[rank]


def _join(shards: Sequence[np.ndarray], layout: Mapping[str, int] | None) -> np.ndarray:
    return shards[0] if layout is None else np.concatenate(shards, axis=layout["axis"])


def _compare(got: Mapping[int, Arrays], want: np.ndarray, rtol: float) -> tuple[float, float, bool]:
    """Largest error of every rank's ``logits`` against ``want``, and the greedy agreement."""
    outs = [o["logits"] for o in got.values() if "logits" in o]
    if not outs:
        raise OptionError("no rank of the programs outputs logits")
    scale = float(np.abs(want).max()) or 1.0
    err = max(float(np.abs(o.astype(np.float64) - want).max()) for o in outs)
    same = all(np.array_equal(o[:, -1].argmax(-1), want[:, -1].argmax(-1)) for o in outs)
    return err, err / scale, same


def verify_serving(path: str | Path, *, steps: int = 4, seed: int = 0,
                   rtol: float | None = None, procs: bool = False,
                   timeout: float = 120.0) -> ServingReport:
    """Run the serving programs at ``path``: a prefill and ``steps`` decode steps, all
    ranks in this process (or one process per rank over torch.distributed with
    ``procs``), against onnxruntime on the original graphs (module doc).
    """
    root = programs_folder(path)
    if root is None:
        raise OptionError(f"{path}: no {PROGRAMS} (not a serving plan with programs)")
    index = json.loads((root / PROGRAMS).read_text())
    for _, info in sorted(index["phases"].items()):
        if not (root / info["folder"] / "device_0.onnx").is_file():
            raise OptionError(f"{root / info['folder']}: no device programs to run: the model's "
                              "weights were declared only", hint="build it with "
                              "`shardc synth ... --with-weights` (or export real weights)")
    start = time.perf_counter()
    pre = _Phase(root, "prefill", index["phases"]["prefill"])
    dec = _Phase(root, "decode", index["phases"]["decode"])
    batch, prompt = (int(d) for d in pre.session.get_inputs()[0].shape)
    context = int(index["context"])
    if steps < 1 or prompt + steps > context:
        raise OptionError(f"--steps {steps}: the cache holds {context} rows, the prompt "
                          f"{prompt}: use 1..{context - prompt}")
    vocab = int(pre.session.get_outputs()[0].shape[-1])
    ids = np.random.default_rng(seed).integers(0, vocab, size=(batch, prompt), dtype=np.int64)
    want, tokens, final = _reference(pre, dec, index, ids, steps)
    positions = np.arange(prompt, prompt + steps, dtype=np.int64)
    if procs:
        if len(pre.programs) != len(dec.programs) or index["handoff"] != "direct":
            raise OptionError(f"--procs: the prefill ({len(pre.programs)} ranks) and decode "
                              f"({len(dec.programs)} ranks) programs hand the cache off "
                              "re-laid; that runs in-process only (drop --procs)")
        from shardc.runtime.launch import run_processes

        result = run_processes(root, {(0, 0): {"ids": ids, "tokens": tokens,
                                               "positions": positions}},
                               timeout=timeout, worker="shardc.runtime.serving_worker",
                               world=len(pre.programs))
        got = result.outputs
        runner = f"{len(got)} processes, torch.distributed"
    else:
        got = _inprocess(pre, dec, index, ids, tokens, positions)
        runner = "in-process"
    report = ServingReport(str(root), runner, index["handoff"])
    tol = rtol if rtol is not None else RTOL.get(want[0].dtype, 0.0)
    for k, ref in enumerate(want):
        mine = {r: {"logits": got[r][k]["logits"]} for r in got if k in got[r]}
        name = "prefill" if k == 0 else f"decode {k}"
        report.steps.append(_check(name, prompt - 1 + k, mine, ref, tol))
    worst = 0.0
    for e in index["cache"]:
        whole = final[e["past"]]
        scale = float(np.abs(whole).max()) or 1.0
        for r in (r for r in got if steps in got[r]):
            shard = got[r][steps][f"cache/{e['past']}"]
            worst = max(worst, float(np.abs(shard - _shard(whole, e.get("decode"), r)).max())
                        / scale)
    report.cache_max_rel, report.cache_ok = worst, worst <= tol
    report.wall_seconds = time.perf_counter() - start
    return report


def _reference(pre: _Phase, dec: _Phase, index: Mapping[str, Any], ids: np.ndarray,
               steps: int) -> tuple[list[np.ndarray], np.ndarray, Arrays]:
    """The originals' logits per step, the greedy tokens fed at each decode step
    ``[steps, B, 1]``, and the final cache.
    """
    cache = index["cache"]
    ref = pre.reference({"input_ids": ids})
    logits, tokens = [ref["logits"]], []
    for k in range(steps):
        token = ref["logits"][:, -1:].argmax(-1).astype(np.int64)
        pos = np.array([ids.shape[1] + k], dtype=np.int64)
        past = {e["past"]: ref[e["present"]] for e in cache}
        ref = dec.reference({"input_ids": token, index["position"]: pos, **past})
        logits.append(ref["logits"])
        tokens.append(token)
    return logits, np.stack(tokens), {e["past"]: ref[e["present"]] for e in cache}


def _inprocess(pre: _Phase, dec: _Phase, index: Mapping[str, Any], ids: np.ndarray,
               tokens: np.ndarray, positions: np.ndarray) -> dict[int, dict[int, Arrays]]:
    """Every rank's logits per step and final cache (``cache/<past>`` at the last step),
    all ranks in this process: the layout the process runner returns.
    """
    cache = index["cache"]
    got = pre.run({r: {"input_ids": ids} for r in pre.programs})
    out: dict[int, dict[int, Arrays]] = {r: {} for r in dec.programs}
    for r in got:
        out.setdefault(r, {})[0] = {"logits": got[r]["logits"]}
    past: dict[int, Arrays] = {r: {} for r in dec.programs}
    for e in cache:  # the hand-off: direct when both phases split alike, else re-laid
        shards = [got[r][e["present"]] for r in sorted(got)]
        if e.get("prefill") == e.get("decode") and len(shards) == len(past):
            for r in past:
                past[r][e["past"]] = shards[r]
        else:
            whole = _join(shards, e.get("prefill"))
            for r in past:
                past[r][e["past"]] = _shard(whole, e.get("decode"), r)
    for k, token in enumerate(tokens):
        pos = positions[k:k + 1]
        got = dec.run({r: {"input_ids": token, index["position"]: pos, **past[r]}
                       for r in past})
        for r in got:
            out[r][k + 1] = {"logits": got[r]["logits"]}
        past = {r: {e["past"]: got[r][e["present"]] for e in cache} for r in got}
    last = len(tokens)
    for r in past:
        out[r][last].update({f"cache/{name}": v for name, v in past[r].items()})
    return out


def _check(step: str, position: int, got: Mapping[int, Arrays], want: np.ndarray,
           tol: float) -> StepCheck:
    err, rel, same = _compare(got, want, tol)
    return StepCheck(step, position, err, rel, tol, rel <= tol, same)
