"""What each ``shardc`` collective computes, on arrays: the in-process runner's meaning
of the comm nodes, and the reference the torch.distributed runner must agree with.

Every member of ``group`` contributes one array (in group order) and receives one:

- ``AllReduce``: the element-wise sum, to everyone.
- ``AllGather``: the contributions concatenated along ``axis``, to everyone.
- ``ReduceScatter``: the sum, split evenly along ``axis``; member i gets piece i.
- ``AllToAll``: each contribution split evenly along ``axis``; member j gets piece j of
  every member, concatenated along ``concat_axis`` in group order (the semantics of
  ``torch.distributed.all_to_all_single`` with even splits when both axes are 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from shardc.errors import ExecutionError


def combine(
    op: str, parts: Sequence[np.ndarray], axis: int = -1, concat_axis: int | None = None
) -> list[np.ndarray]:
    """Each member's result of collective ``op`` over ``parts`` (one per member)."""
    n = len(parts)
    if op == "AllReduce":
        total = _sum(parts)
        return [total.copy() for _ in parts]
    if op == "AllGather":
        whole = np.concatenate(parts, axis=axis)
        return [whole.copy() for _ in parts]
    if op == "ReduceScatter":
        return [np.ascontiguousarray(p) for p in np.split(_sum(parts), n, axis=axis)]
    if op == "AllToAll":
        pieces = [np.split(p, n, axis=axis) for p in parts]
        cat = axis if concat_axis is None else concat_axis
        return [
            np.ascontiguousarray(np.concatenate([pieces[src][dst] for src in range(n)], axis=cat))
            for dst in range(n)
        ]
    raise ExecutionError(f"unknown collective {op!r}")


def _sum(parts: Sequence[np.ndarray]) -> np.ndarray:
    # Summed in group order, as ring and tree reductions do not promise any order either;
    # the dtype stays the contributions' (an fp16 sum stays fp16, as NCCL's does).
    total = np.array(parts[0], copy=True)
    for p in parts[1:]:
        total += p
    return total
