"""ONNX op families that several parts of shardc treat alike.

Shape rules, FLOP rules and sharding rules all need "the Reduce* ops"; one list here
keeps them from drifting apart when ONNX adds a member.
"""

from __future__ import annotations

REDUCTIONS: tuple[str, ...] = (
    "ReduceSum",
    "ReduceMean",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceL1",
    "ReduceL2",
    "ReduceSumSquare",
    "ReduceLogSum",
    "ReduceLogSumExp",
)
"""Ops reducing over ``axes`` (an attribute before opset 18, an input from 18 on), with
``keepdims`` and ``noop_with_empty_axes``: one shape and sharding semantics for all."""
