"""The words options take, declared once.

Why a module of its own with no imports: the cost model, the partitioner, the timeline
writer, the CLI and the API all check or offer these values. Declared in each, they
drifted (three copies of the schedules, three of the recompute modes); declared here,
a new schedule or mode is added in one place and every layer, from ``cost`` up, sees it.
"""

from __future__ import annotations

OBJECTIVES = ("throughput", "latency")
"""What the partitioner minimises: time per sample, or time for one sample."""

SCHEDULES = ("1f1b", "gpipe")
"""Pipeline schedules the timeline can lay out and the cost model prices."""

RECOMPUTES = ("none", "selective", "full")
"""Activation recomputation: keep everything, recompute attention's core, or keep only
each block's input (Korthikanti et al.)."""

TP_RULES = ("megatron", "split")
"""How a tensor-parallel stage shards its ops: Megatron's pairing of weight products, or
every op split where it legally can (:mod:`shardc.partition.split`)."""
