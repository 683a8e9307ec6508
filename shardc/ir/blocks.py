"""The graph as a chain of blocks: what ``coarsen`` finds and the partitioner places.

Why in the IR package: a :class:`BlockChain` is a view of the graph's nodes, read by the
passes after ``coarsen``, by the partitioner and by the plan writers; keeping the type here
lets all of them name it without importing the pass that computes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property


@dataclass(frozen=True)
class Block:
    """A contiguous run of nodes; blocks with equal ``signature`` are interchangeable.

    ``inputs`` (activations entering, graph inputs included) and ``constants`` (static
    values made elsewhere, recomputable anywhere, never communicated) are in order of
    first use, so the i-th input of two identical blocks plays the same part in both.
    """

    index: int
    nodes: tuple[str, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    weights: tuple[str, ...]
    signature: str
    role: str
    constants: tuple[str, ...] = ()


@dataclass(frozen=True)
class BlockChain:
    """The graph as a chain of blocks in node order, identical blocks grouped."""

    blocks: tuple[Block, ...]
    classes: Mapping[str, tuple[int, ...]]
    """Signature -> indices of the blocks with that signature (every block is in one)."""
    period: int
    """Segments (cut-to-cut regions) per repeated block; 0 when nothing repeats."""

    @cached_property
    def _index(self) -> dict[str, int]:
        return {n: b.index for b in self.blocks for n in b.nodes}

    def block_of(self, node_name: str) -> int:
        """Index of the block holding ``node_name`` (KeyError if no such node)."""
        return self._index[node_name]

    @property
    def repeated(self) -> tuple[int, ...]:
        """Indices of the repeated blocks (empty when nothing repeats)."""
        return tuple(b.index for b in self.blocks if b.role == "repeated")
