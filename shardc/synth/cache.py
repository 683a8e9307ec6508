"""The KV cache of a synth decoder, as explicit graph inputs and outputs, per serving phase.

Why two graphs: serving runs a model in two shapes. The **prefill** graph reads the prompt
``input_ids [B, S]`` and writes every layer's cache; the **decode** graph reads one new
token per sequence ``input_ids [B, 1]``, its position ``cache_position [1]`` and every
layer's past cache, and writes the logits of that token and the updated cache. Both are
built by the same builder from the same weight names, so their weights are the same
values (:class:`~shardc.synth.weights.Random` keys each tensor by its name).

Why a cache of fixed length ``context`` (a static cache, as TensorRT-LLM and vLLM
preallocate one): a compiled device program has static shapes, so the decode step's
program must not change with the step. The prefill writes the prompt's K/V into rows
``0..S-1`` of a zero buffer (``Pad``); a decode step writes its token's K/V into row
``cache_position`` (``Where`` over a one-hot row mask) and attends over the rows
``<= cache_position``. No op mixes heads, so a head-split of the cache is a plain split.

What is cached (the tensors HF caches, in its layout):

* MHA/GQA (gpt, llama, moe): per layer ``key`` and ``value`` ``[B, kv_heads, context,
  head_dim]``, the key after RoPE; the heads axis (1) is what tensor parallelism splits;
* MLA (deepseek): per layer the normed ``latent`` ``[B, context, kv_lora_rank]`` and the
  RoPE'd shared ``rope_key`` ``[B, context, qk_rope_head_dim]``: no heads axis, so every
  tensor-parallel rank keeps the whole (small) compressed cache.

The graph records the entries in the ``shardc.kv_cache`` metadata (JSON: phase, context,
per entry the past/present names and the heads axis); the lowering keeps an entry split
along its heads axis across the tensor-parallel group, so prefill rank r's present cache
is decode rank r's past cache (see :mod:`shardc.passes.lower_walk`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import ml_dtypes
from onnx import TensorProto, ValueInfoProto, helper

from shardc.synth.graph import GraphBuilder

KV_METADATA = "shardc.kv_cache"
"""Model metadata key naming a graph's cache entries (see module doc)."""
POSITION = "cache_position"
"""The decode graph's int64 ``[1]`` input: the row its token's K/V is written to."""
PHASES = ("prefill", "decode")


@dataclass
class KVCache:
    """The cache of one phase graph while it is built: its inputs, outputs and masks."""

    phase: str
    context: int
    batch: int
    prompt: int
    """Tokens this graph reads: the prompt length (prefill) or 1 (decode)."""
    inputs: list[ValueInfoProto] = field(default_factory=list)
    outputs: list[ValueInfoProto] = field(default_factory=list)
    entries: list[dict[str, Any]] = field(default_factory=list)
    _rows: dict[str, str] = field(default_factory=dict)

    @property
    def decoding(self) -> bool:
        """Whether this is the one-token decode step."""
        return self.phase == "decode"

    def position_input(self) -> ValueInfoProto:
        """The decode graph's ``cache_position`` input."""
        return helper.make_tensor_value_info(POSITION, TensorProto.INT64, [1])

    def _masks(self, g: GraphBuilder) -> tuple[str, str]:
        """(row written ``[context, 1]``, rows visible ``[context]``), bool, built once."""
        if not self._rows:
            with g.scope("kv_cache"):
                rows = g.const(list(range(self.context)), TensorProto.INT64)
                col = g.op("Unsqueeze", [rows, g.ints(1)], label="row_ids")
                self._rows["write"] = g.op("Equal", [col, POSITION], label="write_row")
                self._rows["seen"] = g.op("LessOrEqual", [rows, POSITION], label="seen_rows")
        return self._rows["write"], self._rows["seen"]

    def visible(self, g: GraphBuilder) -> str:
        """The decode step's key mask ``[context]`` (broadcast over the scores' last axis)."""
        return self._masks(g)[1]

    def update(self, g: GraphBuilder, layer: int, name: str, new: str, shape: list[int],
               seq_axis: int, heads_axis: int | None) -> str:
        """Cache ``new`` (this phase's rows, ``shape`` with ``prompt`` on ``seq_axis``) as
        layer ``layer``'s entry ``name``; return what attention reads: ``new`` itself in
        prefill (the prompt attends to itself), the updated cache in decode.
        """
        past, present = f"past_key_values.{layer}.{name}", f"present.{layer}.{name}"
        full = list(shape)
        full[seq_axis] = self.context
        self.outputs.append(helper.make_tensor_value_info(present, g.dtype, full))
        self.entries.append({"layer": layer, "name": name, "past": past, "present": present,
                             "heads_axis": heads_axis, "seq_axis": seq_axis})
        if not self.decoding:
            pads = [0] * (2 * len(shape))
            pads[len(shape) + seq_axis] = self.context - self.prompt
            g.op("Pad", [new, g.ints(*pads)], label=f"{name}_cache", output_name=present)
            return new
        self.inputs.append(helper.make_tensor_value_info(past, g.dtype, full))
        write = self._masks(g)[0]
        if seq_axis != len(shape) - 2:  # the row mask is [context, 1]: align its axes
            raise ValueError(f"cache entry {name}: sequence axis must be second to last")
        g.op("Where", [write, new, past], label=f"{name}_cache", output_name=present)
        return present

    def metadata(self) -> str:
        """The ``shardc.kv_cache`` metadata value."""
        return json.dumps({"phase": self.phase, "context": self.context, "batch": self.batch,
                           "position": POSITION if self.decoding else None,
                           "entries": self.entries}, sort_keys=True)


def masked_scores(g: GraphBuilder, scores: str, mask: str, cache: KVCache | None) -> str:
    """Scores with the invisible keys set to the type's lowest value: the causal mask in
    prefill (or without a cache), the written rows in decode.
    """
    if cache is not None and cache.decoding:
        mask = cache.visible(g)
    lowest = float(ml_dtypes.finfo(g.precision.np_act).min)
    return g.op("Where", [mask, scores, g.scalar(lowest)], label="masked")


def read_metadata(props: Any) -> dict[str, Any] | None:
    """The ``shardc.kv_cache`` record of a model's metadata (key/value pairs), if any."""
    for item in props:
        key, value = (item.key, item.value) if hasattr(item, "key") else item
        if key == KV_METADATA:
            data: dict[str, Any] = json.loads(value)
            return data
    return None
