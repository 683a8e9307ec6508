"""Sharding rules for the elementwise ops: activations, arithmetic, comparisons, casts,
quantize/dequantize and BatchNormalization.

Why a module of their own: these are the *followers* whose layout comes from their
inputs. Each rule is numpy broadcasting read as loops (:func:`broadcast_loops` in
:mod:`shardc.strategy.rules`), marked with how partial sums pass the op
(``linear``: all inputs, one, the first, none), so the long op lists live here and not
in the core the other rule families share.
"""

from __future__ import annotations

from shardc.ir.opfamilies import ARITHMETIC, COMPARISONS, CONTRIB_ACTIVATIONS, MS, QUANTIZE, UNARY
from shardc.strategy.rules import (
    Ctx,
    Loop,
    OpDims,
    _follower,
    broadcast_loops,
    rule,
)
from shardc.vocabulary import StrategyName as S

# -- elementwise ops (followers): the families of shardc.ir.opfamilies, by linearity ---------
_LINEAR_ALL = ("Add", "Sub", "Sum", "Neg", "Identity", "Dropout")
_UNARY = (*(op for op in UNARY if op not in _LINEAR_ALL), "Cast")
_BINARY = tuple(op for op in (*ARITHMETIC, *COMPARISONS) if op not in (*_LINEAR_ALL, "Mul", "Div"))


def _elementwise(ctx: Ctx) -> OpDims:
    """Numpy broadcasting: each output dim with the input dims aligned to it."""
    return OpDims(broadcast_loops(ctx))


# onnxruntime's contrib activations: Gelu/QuickGelu of one input, BiasGelu and FastGelu
# (x + bias, then the activation), BiasAdd (x + bias + skip: linear, as Add is)
_CONTRIB = tuple(op for op in CONTRIB_ACTIVATIONS if op != f"{MS}BiasAdd")
for _lin, _ops in (
    ("all", (*_LINEAR_ALL, f"{MS}BiasAdd")),
    ("one", ("Mul",)),
    ("first", ("Div",)),
    ("none", (*_UNARY, *_BINARY, *_CONTRIB)),
):
    rule(*_ops)(_follower(_lin)(_elementwise))
# CastLike reads only the dtype of its second input: an argument, never split with the data
rule("CastLike")(_follower("none", args=(1,))(lambda ctx: OpDims(broadcast_loops(ctx, (1,)))))


@rule(*(op for op in QUANTIZE if op != "DynamicQuantizeLinear"))
@_follower("none")
def _quantize(ctx: Ctx) -> OpDims:
    """Scales map onto the dims they scale, blocks included (fp8 weights, 1×128 blocks)."""
    return OpDims(broadcast_loops(ctx, blocked=True))


@rule("BatchNormalization")
@_follower("none", args=())
def _batch_norm(ctx: Ctx) -> OpDims:
    """Inference BatchNorm is per channel: statistics and scale split with channel dim 1.
    In training mode (``training_mode=1``, or running stats as outputs before opset 14)
    the statistics are taken over the batch and spatial dims, so only channels split.
    """
    out = ctx.out_shape(0)
    loops = list(broadcast_loops(ctx, args=range(1, ctx.n_in)))
    training = bool(ctx.attr_int("training_mode", 0)) or sum(map(bool, ctx.node.outputs)) > 1
    if training:
        loops = [Loop(lp.name, lp.ins, lp.outs, kind="fixed") for lp in loops]
    if out is not None and len(out) > 1:
        chan = {i: 0 for i in range(1, ctx.n_in) if ctx.node.inputs[i]}
        stats = {j: 0 for j in range(1, len(ctx.node.outputs)) if ctx.node.outputs[j]}
        loops[1] = ctx.loop(S.CHANNELS, {**chan, 0: 1}, {**stats, 0: 1})
    return OpDims(tuple(loops))
