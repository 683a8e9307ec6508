"""The inputs of a verification: one set per (replica, micro-batch) slot, from a file,
a mapping or a torch user's tuple, or drawn at random within what index inputs allow.

Why apart from :mod:`shardc.runtime.verify`: finding legal random inputs (an index input
must stay below the size of what it indexes) is its own reading of the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx

from shardc.errors import OptionError
from shardc.runtime.plandir import InputSpec


def slot_feeds(
    specs: list[InputSpec],
    slots: list[tuple[int, int]],
    inputs: str | Path | Mapping[str, np.ndarray] | None,
    original: onnx.ModelProto,
    seed: int,
) -> dict[tuple[int, int], dict[str, np.ndarray]]:
    if inputs is None:
        rng = np.random.default_rng(seed)
        # ids over the whole table (traced through reshapes to the input): ids from 0..1
        # alone would never reach a vocab-parallel embedding's other shards
        highs = _input_index_bounds(original)
        return {slot: {s.name: _random(rng, s, highs.get(s.name)) for s in specs} for slot in slots}
    given = _load_inputs(inputs)
    batches = _microbatches(specs, given)
    _check_indices(batches, _input_index_bounds(original))
    return {slot: batches[i % len(batches)] for i, slot in enumerate(slots)}


def _check_indices(batches: list[dict[str, np.ndarray]], bounds: Mapping[str, int]) -> None:
    """Token ids outside the table they index would fail inside onnxruntime, as a crash
    of the run rather than a mistake in the inputs: say which input and which bound.
    """
    for batch in batches:
        for name, rows in sorted(bounds.items()):
            a = batch.get(name)
            if a is None or a.size == 0 or a.dtype.kind not in "iu":
                continue
            lo, hi = int(a.min()), int(a.max())
            if lo < -rows or hi >= rows:
                raise OptionError(
                    f"input {name!r} holds ids {lo}..{hi}; it indexes {rows} rows",
                    hint=f"use ids in 0..{rows - 1}",
                )


def _load_inputs(inputs: str | Path | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    if isinstance(inputs, Mapping):
        return {k: np.asarray(v) for k, v in inputs.items()}
    path = Path(inputs)
    try:
        data = np.load(path, allow_pickle=False)
    except OSError as exc:
        raise OptionError(f"cannot read inputs ({exc.strerror or exc})", where=str(path)) from None
    except Exception as exc:  # numpy raises ValueError, EOFError, zip errors…
        raise OptionError(
            f"cannot read inputs: not an .npz archive of arrays "
            f"({type(exc).__name__}: {str(exc)[:200]})",
            where=str(path),
        ) from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise OptionError(
            "cannot read inputs: a single array, not an .npz archive naming the inputs",
            where=str(path),
            hint="save with numpy.savez(path, input_ids=...)",
        )
    try:
        with data:
            return {k: data[k] for k in data.files}
    except Exception as exc:  # a member that is not an array, a truncated archive…
        raise OptionError(
            f"cannot read inputs: bad arrays in it ({type(exc).__name__}: {str(exc)[:200]})",
            where=str(path),
        ) from None


def _microbatches(
    specs: list[InputSpec], given: Mapping[str, np.ndarray]
) -> list[dict[str, np.ndarray]]:
    """One micro-batch, or ``k`` stacked along the first dimension, cut apart."""
    missing = [s.name for s in specs if s.name not in given]
    if missing:
        raise OptionError(
            f"inputs lack {missing}", hint=f"the plan reads {[s.name for s in specs]}"
        )
    counts = set()
    for s in specs:
        a = given[s.name]
        if tuple(a.shape) == s.shape:
            counts.add(1)
        elif (
            a.ndim == len(s.shape)
            and a.ndim
            and a.shape[1:] == s.shape[1:]
            and s.shape[0]
            and a.shape[0] % s.shape[0] == 0
        ):
            counts.add(a.shape[0] // s.shape[0])
        else:
            raise OptionError(
                f"input {s.name!r} has shape {list(a.shape)}; the plan runs micro-batches of "
                f"{list(s.shape)} (give one, or several stacked along the first dimension)"
            )
    if len(counts) != 1:
        raise OptionError(f"inputs hold different numbers of micro-batches: {sorted(counts)}")
    k = counts.pop()
    out = []
    for i in range(k):
        batch = {}
        for s in specs:
            a = given[s.name]
            b = s.shape[0] if s.shape else 1
            part = a if k == 1 else a[i * b : (i + 1) * b]
            try:
                batch[s.name] = np.ascontiguousarray(part.astype(s.dtype, copy=False))
            except (TypeError, ValueError) as exc:
                raise OptionError(
                    f"input {s.name!r} of dtype {a.dtype} cannot be read as {s.dtype} ({exc})"
                ) from None
        out.append(batch)
    return out


def _index_bounds(model: onnx.ModelProto) -> dict[str, int]:
    """For integer inputs used as Gather indices: the rows of what they index."""
    dims = {t.name: list(t.dims) for t in model.graph.initializer}
    bounds: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) > 1 and node.input[0] in dims:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            rows = dims[node.input[0]][axis]
            name = node.input[1]
            bounds[name] = min(bounds.get(name, rows), rows)
    return bounds


_RESHAPING = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Expand"})


def _input_index_bounds(model: onnx.ModelProto) -> dict[str, int]:
    """:func:`_index_bounds` traced back to the graph inputs through ops that only
    reshape (``input_ids`` reshaped into ``view``, then gathered).
    """
    producer = {out: node for node in model.graph.node for out in node.output}
    inputs = {i.name for i in model.graph.input}
    bounds: dict[str, int] = {}
    for name, rows in _index_bounds(model).items():
        seen = 0
        while name not in inputs and name in producer and seen < 64:
            node = producer[name]
            if node.op_type not in _RESHAPING or not node.input:
                break
            name, seen = node.input[0], seen + 1
        if name in inputs:
            bounds[name] = min(bounds.get(name, rows), rows)
    return bounds


def _random(rng: np.random.Generator, spec: InputSpec, high: int | None) -> np.ndarray:
    if spec.dtype.kind == "f":
        return rng.standard_normal(spec.shape).astype(spec.dtype)
    if spec.dtype.kind == "b":
        return rng.integers(0, 2, spec.shape).astype(bool)
    if spec.dtype.kind in "iu":
        return rng.integers(0, high or 2, spec.shape).astype(spec.dtype)
    raise OptionError(f"cannot make random values for input {spec.name!r} ({spec.dtype})")


