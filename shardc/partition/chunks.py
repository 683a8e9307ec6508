"""Which repeated blocks each pipeline stage holds when it runs v model chunks.

Why a function of its own: the partitioner decides how many blocks each stage gets, and
interleaved 1F1B (Narayanan et al. 2021 §2.2.2) then decides *which*: the model is cut
into ``v·p`` chunks and model chunk ``c`` of pipeline rank ``d`` is the chain's chunk
``c·p + d`` (Megatron-LM's ``get_model`` builds rank ``d``'s ``v`` modules this way, and
torch.distributed.pipelining's interleaved schedules expect the same stage order). So a
micro-batch walks the ring of stages ``v`` times, and every stage holds ``v``
non-contiguous runs of blocks. The plan records these runs (``partition.stages[j].chunks``),
the lowering emits them as each device's program, and training builds its modules from them:
one answer, computed here.

Stage ``j`` with ``n_j`` blocks holds chunks of ``n_j / v`` blocks each (the solver keeps
``n_j`` a multiple of ``v``), so uneven stages stay uneven in every round.
"""

from __future__ import annotations

from collections.abc import Sequence


class ChunkError(ValueError):
    """The stage sizes cannot be cut into ``v`` equal chunks each."""


def chunk_blocks(sizes: Sequence[int], v: int) -> tuple[tuple[tuple[int, int], ...], ...]:
    """Per stage, its ``v`` chunks as (first, last) repeated-block numbers (inclusive,
    0-based), in chunk order: chunk ``c`` of stage ``j`` is the chain's chunk ``c·p + j``.

    ``sizes`` are the blocks per stage; with ``v == 1`` each stage has one chunk, its
    contiguous run.
    """
    if v < 1:
        raise ChunkError(f"interleave must be at least 1, got {v}")
    if v > 1 and len(sizes) < 2:
        raise ChunkError(f"interleaving (v={v}) needs at least two pipeline stages")
    for j, n in enumerate(sizes):
        if n % v:
            raise ChunkError(f"stage {j}'s {n} blocks do not split into {v} equal chunks")
    out: list[list[tuple[int, int]]] = [[] for _ in sizes]
    start = 0
    for _ in range(v):
        for j, n in enumerate(sizes):
            k = n // v
            out[j].append((start, start + k - 1))
            start += k
    return tuple(tuple(c) for c in out)


def chunk_order(chunks: Sequence[Sequence[tuple[int, int]]]) -> list[tuple[int, int]]:
    """(stage, chunk) in the chain's order: the model chunk each position of the chain is."""
    placed = [(lo, j, c) for j, cs in enumerate(chunks) for c, (lo, _) in enumerate(cs)]
    return [(j, c) for _, j, c in sorted(placed)]
