"""A Hugging Face decoder exported as a serving phase pair, its KV cache explicit.

Why: serving programs need the cache as graph inputs and outputs in a layout that does not
change with the step (a compiled program has static shapes). This exports a causal LM
(``LlamaForCausalLM``, ``GPT2LMHeadModel``, ... with eager attention) twice with torch's
dynamo exporter at opset 18, the way :func:`torch.onnx.export` users do, with the same
static cache :mod:`shardc.synth.cache` builds:

* **prefill**: ``input_ids [B, S]`` -> ``logits [B, S, V]`` and per layer
  ``present.<i>.key`` / ``present.<i>.value`` ``[B, kv_heads, context, head_dim]`` (the
  prompt's K/V in rows ``0..S-1``, zeros after);
* **decode step**: ``input_ids [B, 1]``, ``cache_position [1]`` and the past cache ->
  ``logits [B, 1, V]`` and the cache with row ``cache_position`` written.

The decode step hands the model its past rows as a ``DynamicCache`` with a padding mask
over the rows not yet written and the position as ``position_ids`` (so RoPE or learned
positions see the true position); the model's own K/V for the token come back as the
cache's last row and are written into the static buffer with a ``where`` over a one-hot
row mask. The graphs carry the ``shardc.kv_cache`` metadata (heads axis 1), and the
prefill graph names the decode graph's file, as ``shardc synth --cache`` writes them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

KV_METADATA = "shardc.kv_cache"


def _sizes(model: Any) -> tuple[int, int, int]:
    """(layers, KV heads, head dim) from the model's config."""
    cfg = model.config
    layers = int(getattr(cfg, "num_hidden_layers", getattr(cfg, "n_layer", 0)))
    heads = int(getattr(cfg, "num_attention_heads", getattr(cfg, "n_head", 0)))
    kv = int(getattr(cfg, "num_key_value_heads", None) or heads)
    hidden = int(getattr(cfg, "hidden_size", getattr(cfg, "n_embd", 0)))
    head_dim = int(getattr(cfg, "head_dim", None) or hidden // heads)
    return layers, kv, head_dim


def _modules(model: Any, context: int) -> tuple[Any, Any]:
    """The prefill and decode-step wrappers of ``model`` (see module doc)."""
    import torch
    from transformers import DynamicCache

    layers, _, _ = _sizes(model)

    class Prefill(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
            out = self.inner(input_ids=input_ids, use_cache=True)
            pad = context - input_ids.shape[1]
            kv = []
            for i in range(layers):
                layer = out.past_key_values.layers[i]
                for t in (layer.keys, layer.values):
                    kv.append(torch.nn.functional.pad(t, (0, 0, 0, pad)))
            return (out.logits, *kv)

    class Decode(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, input_ids: torch.Tensor, cache_position: torch.Tensor,
                    *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
            rows = torch.arange(context, dtype=torch.int64)
            seen = (rows < cache_position).to(torch.int64)
            mask = torch.cat([seen, torch.ones(1, dtype=torch.int64)]).expand(
                input_ids.shape[0], context + 1)
            cache = DynamicCache(ddp_cache_data=[(past[2 * i], past[2 * i + 1])
                                                 for i in range(layers)])
            positions = cache_position.view(1, 1).expand(input_ids.shape[0], 1)
            out = self.inner(input_ids=input_ids, past_key_values=cache, attention_mask=mask,
                             position_ids=positions, use_cache=True)
            write = (rows == cache_position).view(1, 1, context, 1)
            kv = []
            for i in range(layers):
                layer = out.past_key_values.layers[i]
                for j, t in enumerate((layer.keys, layer.values)):
                    kv.append(torch.where(write, t[:, :, -1:, :], past[2 * i + j]))
            return (out.logits, *kv)

    return Prefill().eval(), Decode().eval()


def export_phases(model: Any, prefill_path: Path, *, batch: int, prompt: int,
                  context: int, vocab: int) -> tuple[Path, Path]:
    """Export the causal LM ``model`` as a phase pair: the prefill graph at
    ``prefill_path``, the decode step beside it as ``<stem>.decode.onnx``.
    """
    import onnx
    import torch

    layers, kv, head_dim = _sizes(model)
    decode_path = prefill_path.with_name(f"{prefill_path.name.removesuffix('.onnx')}.decode.onnx")
    pre, dec = _modules(model, context)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch, prompt), generator=g)
    names_in = ["input_ids"]
    present = [f"present.{i}.{n}" for i in range(layers) for n in ("key", "value")]
    past = [f"past_key_values.{i}.{n}" for i in range(layers) for n in ("key", "value")]
    cache = [torch.zeros(batch, kv, context, head_dim) for _ in past]
    entries = [{"layer": i, "name": n, "past": f"past_key_values.{i}.{n}",
                "present": f"present.{i}.{n}", "heads_axis": 1, "seq_axis": 2}
               for i in range(layers) for n in ("key", "value")]
    with torch.no_grad():
        for module, args, inputs, path, phase in (
            (pre, (ids,), names_in, prefill_path, "prefill"),
            (dec, (ids[:, :1], torch.tensor([prompt]), *cache),
             ["input_ids", "cache_position", *past], decode_path, "decode"),
        ):
            program = torch.onnx.export(module, args, dynamo=True, opset_version=18,
                                        input_names=inputs, output_names=["logits", *present],
                                        verbose=False)
            assert program is not None, "the dynamo exporter returns a program"
            program.save(str(path))
            proto = onnx.load(str(path))
            record = {"phase": phase, "context": context, "batch": batch,
                      "position": "cache_position" if phase == "decode" else None,
                      "entries": entries}
            if phase == "prefill":
                record["decode"] = decode_path.name
            proto.metadata_props.add(key=KV_METADATA, value=json.dumps(record, sort_keys=True))
            onnx.save(proto, str(path))
    return prefill_path, decode_path
