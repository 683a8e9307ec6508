"""The ONNX backend node suite, every case run through a shardc plan on two devices.

``onnx.backend.test.loader.load_model_tests(kind="node")`` builds ~1,900 one-op (or
one-function) models in memory, each with reference inputs and outputs. For each case:

1. **baseline**: onnxruntime runs the unsharded model and is compared with the
   reference; a case it fails is skipped ("onnxruntime fails unsharded"), since the
   plan's compute runs in onnxruntime too;
2. **compile** with the real pipeline (frontend → passes → partition) onto
   ``topologies/localhost.topo`` with two devices, pinned ``tp=2,pp=1,dp=1,rule=split``:
   every op that can be split over the pair is (batch first, else a channel or any
   parallel dim), the rest run whole on both; symbolic input dims are bound from the
   reference inputs, as a user would with ``--dim``;
3. **emit** the two device models and **run** them in-process;
4. **compare** each rank's outputs with the reference, with the backend runner's own
   check (``Runner.assert_similar_outputs``: the case's rtol/atol, 1e-3/1e-7 by default).

A case the compiler refuses with a :class:`~shardc.errors.ShardcError` is skipped with
that error as its reason; any other exception, a runtime error or a mismatch is a
failure. Each outcome also says whether the plan divided work between the devices
(``split``) or ran every op whole on both.

Run as a script for the counts table: ``python tests/backend/node_suite.py [--sample N]
[-k SUBSTRING] [--failures]``.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parents[2]
PINS = "tp=2,pp=1,dp=1,rule=split"
DEVICES = 2

PASSED, SKIPPED, FAILED = "passed", "skipped", "failed"
ORT_FAILS = "onnxruntime fails unsharded"

KNOWN_FAILURES: dict[str, str] = {
    # The split plan runs this fp16 attention in several onnxruntime sessions (cut at the
    # gathers), which round some fp16 intermediates differently from the one unsharded
    # session: 4 of 192 outputs land 2 fp16 ulps from the reference (unsharded ORT: 1),
    # just past rtol 1e-3. The same plan without splits matches ORT exactly.
    "test_attention_4d_causal_fp16_expanded": "fp16 rounding differs across sessions",
}
"""Cases that fail for a reason the project accepts; the tests expect them to fail."""


@dataclass(frozen=True)
class Outcome:
    """What happened to one case."""

    name: str
    status: str
    reason: str = ""
    """For skips and failures: a short, groupable cause."""
    detail: str = ""
    """The full message."""
    split: bool | None = None
    """True when some op ran divided over the devices, False when all ran whole."""
    seconds: float = 0.0


@cache
def cases() -> dict[str, Any]:
    """Every node case by name (the loader builds them in memory, ~4 s)."""
    from onnx.backend.test.loader import load_model_tests

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {c.name: c for c in sorted(load_model_tests(kind="node"), key=lambda c: c.name)}


def sample(count: int) -> list[str]:
    """A fixed sample of ``count`` case names, the same on every machine and run.

    Chosen by a hash of the name, so adding cases to onnx does not reshuffle the rest.
    """
    ranked = sorted(cases(), key=lambda n: hashlib.sha256(n.encode()).hexdigest())
    return sorted(ranked[:count])


def to_value(x: Any) -> Any:
    """A reference input or output as the runner sees it: arrays, lists of them, None."""
    if isinstance(x, onnx.TensorProto):
        return numpy_helper.to_array(x)
    if isinstance(x, list | tuple):
        return [to_value(e) for e in x]
    if isinstance(x, np.generic):
        return np.asarray(x)
    return x


def _data(case: Any) -> tuple[dict[str, Any], list[Any]]:
    """Feeds by input name and the reference outputs (each case has one data set)."""
    inputs, outputs = case.data_sets[0]
    weights = {t.name for t in case.model.graph.initializer}
    names = [i.name for i in case.model.graph.input if i.name not in weights]
    return (
        {n: to_value(v) for n, v in zip(names, inputs, strict=False)},
        [to_value(o) for o in outputs],
    )


def _compare(case: Any, want: Sequence[Any], got: Sequence[Any]) -> None:
    from onnx.backend.test.runner import Runner

    Runner.assert_similar_outputs(want, list(got), rtol=case.rtol, atol=case.atol)


def onnxruntime_fails(case: Any) -> str | None:
    """Why onnxruntime fails this case unsharded, or None when it passes."""
    import onnxruntime as ort

    feeds, want = _data(case)
    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(
            case.model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        _compare(case, want, session.run(None, feeds))
    except Exception as exc:
        return _first_line(exc)
    return None


def bound_dims(model: onnx.ModelProto, feeds: dict[str, Any]) -> dict[str, int]:
    """Symbolic input dims set to the sizes of the reference inputs (``--dim``)."""
    dims: dict[str, int] = {}
    clash: set[str] = set()
    for vi in model.graph.input:
        value = feeds.get(vi.name)
        if not vi.type.HasField("tensor_type") or not isinstance(value, np.ndarray):
            continue
        for d, size in zip(vi.type.tensor_type.shape.dim, value.shape, strict=False):
            if d.dim_param and dims.setdefault(d.dim_param, int(size)) != size:
                clash.add(d.dim_param)
    return {k: v for k, v in dims.items() if k not in clash and v > 0}


def run_case(name: str) -> Outcome:
    """Baseline, compile, emit, run and compare one case."""
    start = time.perf_counter()
    case = cases()[name]

    def done(status: str, reason: str = "", detail: str = "", split: bool | None = None):
        return Outcome(name, status, reason, detail, split, time.perf_counter() - start)

    why = onnxruntime_fails(case)
    if why is not None:
        return done(SKIPPED, ORT_FAILS, why)
    feeds, want = _data(case)
    try:
        state, split = compile_case(case.model, bound_dims(case.model, feeds))
    except Exception as exc:
        return _refused(done, "compile", exc)
    from shardc.emit.devices import emit
    from shardc.runtime.inprocess import run_inprocess

    try:
        emission = emit(state)
    except Exception as exc:
        return _refused(done, "emit", exc, split)
    try:
        outs = run_inprocess(emission.models, feeds)
    except Exception as exc:
        return done(FAILED, f"run: {type(exc).__name__}", _first_line(exc), split)
    names = [o.name for o in case.model.graph.output]
    for rank, got in sorted(outs.items()):
        try:
            _compare(case, want, [got[n] for n in names])
        except Exception as exc:
            return done(FAILED, "mismatch", f"rank {rank}: {_first_line(exc)}", split)
    return done(PASSED, split=split)


def compile_case(model: onnx.ModelProto, dims: dict[str, int]) -> tuple[Any, bool]:
    """The plan's state, and whether it divides any op's work between the devices."""
    from shardc.compiler import build_plan, partition_model
    from shardc.partition.options import PartitionOptions, parse_pins
    from shardc.partition.split import tp_rule

    state = build_plan(partition_model(
        model,
        _topology(),
        dims=dims,
        mode="inference",
        partition=PartitionOptions(pins=parse_pins([PINS])),
    ).state).state
    sizes = {"tp": DEVICES}
    table = state.strategies
    rule = tp_rule(state.graph, table, state.options.partition.pins.rule)
    resolution = table.resolve(state.graph, rule.choose(sizes), sizes)
    return state, any(not s.is_replicated for s in resolution.strategies.values())


@cache
def _topology() -> Any:
    from shardc.topology import load_topology

    return load_topology(ROOT / "topologies/localhost.topo", {"devices": DEVICES})


def _refused(done: Any, stage: str, exc: Exception, split: bool | None = None) -> Outcome:
    """A clear refusal (ShardcError) is a skip with its reason; anything else a failure."""
    from shardc.errors import ShardcError

    if isinstance(exc, ShardcError):
        return done(SKIPPED, f"{stage}: {type(exc).__name__}", _first_line(exc), split)
    return done(FAILED, f"{stage}: {type(exc).__name__}", _first_line(exc), split)


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]


def sweep(names: Iterable[str]) -> list[Outcome]:
    """Run the named cases in order (warnings from the cases' own numpy kept quiet)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [run_case(n) for n in names]


def table(outcomes: Sequence[Outcome]) -> str:
    """The counts: passed (split / whole), skipped by reason, failed by reason."""
    by = Counter(o.status for o in outcomes)
    split = sum(1 for o in outcomes if o.status == PASSED and o.split)
    lines = [
        f"cases     {len(outcomes)}",
        f"passed    {by[PASSED]}  (split over {DEVICES} devices: {split}, "
        f"whole on each: {by[PASSED] - split})",
        f"skipped   {by[SKIPPED]}",
    ]
    for status in (SKIPPED, FAILED):
        if status == FAILED:
            known = sum(1 for o in outcomes if o.status == FAILED and o.name in KNOWN_FAILURES)
            lines.append(f"failed    {by[FAILED]}  (known and accepted: {known})")
        reasons = Counter(o.reason for o in outcomes if o.status == status)
        lines += [f"  {n:5d}  {r}" for r, n in sorted(reasons.items(), key=lambda t: (-t[1], t[0]))]
    seconds = sum(o.seconds for o in outcomes)
    lines.append(
        f"time      {seconds:.1f} s ({1000 * seconds / max(len(outcomes), 1):.0f} ms/case)"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the counts table; exit 1 when a case failed that is not a known failure."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample", type=int, help="run the fixed sample of N cases")
    parser.add_argument("-k", action="append", default=[], help="only cases containing this")
    parser.add_argument("--failures", action="store_true", help="list failures and skips")
    args = parser.parse_args(argv)
    names = sample(args.sample) if args.sample else list(cases())
    if args.k:
        names = [n for n in names if any(k in n for k in args.k)]
    outcomes = sweep(names)
    print(table(outcomes))
    if args.failures:
        for o in outcomes:
            if o.status == FAILED or (o.status == SKIPPED and o.reason != ORT_FAILS):
                print(f"{o.status:8s} {o.name}: {o.reason}: {o.detail}")
    return 1 if any(o.status == FAILED and o.name not in KNOWN_FAILURES for o in outcomes) else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
