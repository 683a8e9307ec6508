"""The ring's blocks under the load-balanced causal split (``--cp-comm zigzag``).

Copy ``c`` holds sequence chunks ``c`` and ``2cp − 1 − c`` of ``2cp`` (halves of its
``2·length/cp``-row share), so each block is four quarters: (query half ``r``, key half
``h``). Under a causal mask the quarter of the own block above the diagonal is masked,
and of every other block exactly two quarters are (all queries against the earlier key
half, or the later query half against both): each copy computes ``3/4 + (cp − 1)/2``
blocks, where the contiguous split leaves the last copy all ``cp`` (Megatron-LM's
``AttnFuncWithCPAndKVP2P``). Each query half keeps its own running max, sum and output
(:func:`shardc.emit.ring.fold`); the attention's output is the two halves joined.

Which quarters are live is read from the mask itself (evaluated once, from the graph's
constants); a mask that is not causal, or that reads an input, would make the programs'
work differ from what was priced (:func:`shardc.partition.ring.zigzag_shares`), so it is
refused with a one-line error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx

from shardc.emit.ring import ShapeOf, _evaluate, _Out, fold, mids, unpack
from shardc.errors import OptionError


class ZigzagError(OptionError):
    """The attention's mask does not allow the causal zigzag split (one line, exit 2)."""


QUARTERS = (3, 2)
"""Live quarters of the own block, and of every other block, under a causal mask."""


class Zigzag:
    """Copy ``c``'s blocks of attention ``a`` on the zigzag split (see the module doc)."""

    def __init__(
        self, a: Any, stash: Mapping[str, onnx.NodeProto], c: int, cp: int, length: int,
        g: onnx.GraphProto, opsets: Any, row_dims: Mapping[tuple[str, int], int],
        shape_of: ShapeOf, n_k: int, n_v: int,
    ) -> None:
        self.a, self.stash, self.c, self.cp = a, stash, c, cp
        self.half = length // (2 * cp)
        self.rows = (c, 2 * cp - 1 - c)
        self.cuts = {(n, i): d for n, i, d in a.cuts}
        self.row_dims, self.shape_of, self.n_k, self.n_v = row_dims, shape_of, n_k, n_v
        self.kd = a.dims[a.k_chain[-1]] if a.k_chain else a.k[2]
        self.vd = a.dims[a.v_chain[-1]] if a.v_chain else a.v[2]
        self.masks: dict[tuple[str, int], np.ndarray] = {}
        for (n, i), _ in self.cuts.items():
            if stash[n].op_type != "Add":
                continue
            value = _evaluate(g, opsets, stash[n].input[i], a.dtype)
            if value is None:
                raise ZigzagError(f"--cp-comm zigzag: the mask of {a.qk!r} is not computed from "
                                  "constants, so its causal structure cannot be checked; use "
                                  "--cp-comm ring")
            self.masks[(n, i)] = value
        self.states: list[tuple[str, str, str] | None] = [None, None]

    def _piece(self, arr: np.ndarray, key: tuple[str, int], r: int, col: int) -> np.ndarray:
        h = self.half
        if key in self.row_dims:
            arr = np.take(arr, range(self.rows[r] * h, (self.rows[r] + 1) * h),
                          axis=self.row_dims[key])
        return np.take(arr, range(col * h, (col + 1) * h), axis=self.cuts[key])

    def live(self, r: int, j: int) -> list[int]:
        """The key halves (0, 1) of block ``j`` that query half ``r`` sees."""
        cols = (j, 2 * self.cp - 1 - j)
        out = []
        for k, col in enumerate(cols):
            dead = any(np.all(self._piece(arr, key, r, col) <= np.finfo(arr.dtype).min)
                       for key, arr in self.masks.items())
            if not dead:
                out.append(k)
        return out

    def _slice(self, out: _Out, value: str, lo: int, hi: int, axis: int, what: str) -> str:
        return out.op("Slice", [value, out.const(f"{what}_s", [lo]), out.const(f"{what}_e", [hi]),
                                out.const(f"{what}_a", [axis])], what)

    def block(self, out: _Out, held: str, t: int, j: int) -> None:
        """Block ``t`` (the chunk pair of copy ``j``): each query half against its live
        key halves, folded into that half's running state.
        """
        a, h = self.a, self.half
        k_blk, v_blk = unpack(out, a, self.stash, held, t, self.n_k, self.n_v, self.cp,
                              self.shape_of)
        quarters = 0
        for r in (0, 1):
            cols = self.live(r, j)
            quarters += len(cols)
            if not cols:
                continue
            tag = f"{t}r{r}"
            q = self._slice(out, self.stash[a.qk].input[0], r * h, (r + 1) * h, a.q_dim,
                            f"q{tag}")
            k, v = k_blk, v_blk
            if len(cols) == 1:
                lo, hi = cols[0] * h, (cols[0] + 1) * h
                k = self._slice(out, k_blk, lo, hi, self.kd, f"k{tag}")
                v = self._slice(out, v_blk, lo, hi, self.vd, f"v{tag}")
            scores = out.op("MatMul", [q, k], f"s{tag}")
            def mask(n: str, i: int, r: int = r, cols: list[int] = cols, tag: str = tag) -> str:
                return self._mask(out, n, i, r, j, cols, tag)

            scores = mids(out, a, self.stash, scores, tag, self.cuts, mask)
            self.states[r] = fold(out, scores, v, self.states[r], tag)
        want = QUARTERS[0 if t == 0 else 1]
        if quarters != want:
            raise ZigzagError(f"--cp-comm zigzag: the mask of {a.qk!r} is not causal (copy "
                              f"{self.c}, step {t}: {quarters} of 4 quarters live, causal has "
                              f"{want}); use --cp-comm ring")

    def _mask(self, out: _Out, n: str, i: int, r: int, j: int, cols: list[int], tag: str) -> str:
        """Query half ``r``'s rows and the live key halves' columns of a mask operand."""
        h, value = self.half, self.stash[n].input[i]
        if (n, i) in self.row_dims:
            lo = self.rows[r] * h
            value = self._slice(out, value, lo, lo + h, self.row_dims[(n, i)], f"{n}_r{tag}{i}")
        col = (j, 2 * self.cp - 1 - j)
        pieces = [self._slice(out, value, col[k] * h, (col[k] + 1) * h, self.cuts[(n, i)],
                              f"{n}_c{tag}{i}{k}") for k in cols]
        if len(pieces) == 1:
            return pieces[0]
        return out.op("Concat", pieces, f"{n}_m{tag}{i}", axis=self.cuts[(n, i)])

    def finish(self, out: _Out, name: str) -> None:
        """The attention's output ``name``: each query half's ``o / l``, joined."""
        halves = []
        for r, state in enumerate(self.states):
            if state is None:
                raise ZigzagError(f"--cp-comm zigzag: query half {r} of copy {self.c} sees no "
                                  f"key in {self.a.qk!r}")
            _, total, acc = state
            halves.append(out.op("Div", [acc, total], f"out{r}"))
        out.nodes.append(onnx.helper.make_node("Concat", halves, [name], name=out.name("out"),
                                               axis=self.a.out_dim))
