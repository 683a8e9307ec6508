"""The three architectures, assembled from `shardc.synth.layers`, and `build`.

- **gpt** (GPT-2 / Megatron GPT): token + learned position embeddings, pre-LN
  LayerNormalization, MHA with biases, tanh-GELU MLP (4h by default), final LN, LM head
  tied to the token embedding by default (GPT-2 ties; with tying the parameter count is
  Megatron's 12*l*h^2*(1 + 13/(12h) + (V+s)/(12*l*h)) plus the final LN's 2h).
- **llama**: RMSNorm, RoPE, grouped-query attention without biases, SwiGLU MLP,
  untied LM head by default.
- **moe**: llama attention, every layer's FFN a routed MoE (see `shardc.synth.moe`).
- **deepseek** (DeepSeek-V3/R1-shaped): MLA attention (`shardc.synth.mla`), the first
  ``dense_layers`` with a dense SwiGLU of ``dense_ffn``, the rest shared + routed experts.

The graph's input is ``input_ids`` int64 ``[batch, seq]`` and its output ``logits``
``[batch, seq, vocab]`` in the activation type; the dims are symbolic unless given.
"""

from __future__ import annotations

import json
from dataclasses import replace

from onnx import ModelProto, TensorProto, helper

from shardc.errors import OptionError
from shardc.synth.cache import KV_METADATA, PHASES, POSITION, KVCache
from shardc.synth.config import MAX_MATERIALISED_BYTES, Resolved, SynthConfig, resolve
from shardc.synth.counts import weight_bytes
from shardc.synth.graph import GraphBuilder
from shardc.synth.layers import (
    attention,
    causal_mask,
    gelu_mlp,
    layer_norm,
    positions,
    rms_norm,
    rope_tables,
    swiglu,
)
from shardc.synth.mla import mla_attention
from shardc.synth.moe import moe_ffn, moe_sizes
from shardc.synth.weights import Declared, Init, Random, layout
from shardc.version import __version__

#: The default domain's opset, as torch's dynamo exporter writes; fp8 needs 21 for
#: blocked DequantizeLinear.
OPSET, OPSET_FP8 = 18, 21
IR_VERSION = 10
#: Where `build` points declared weights; `save` renames it after the model file.
DEFAULT_LOCATION = "model.weights.bin"
IDS = "input_ids"
EMBED_INIT = Init(std=0.02)


def build(arch: str, config: SynthConfig, *, with_weights: bool = False,
          seed: int = 0, phase: str | None = None, context: int | None = None) -> ModelProto:
    """The ONNX model of ``arch`` sized by ``config``.

    Without ``with_weights`` every initializer is declared external data (dtype and dims
    only, pointing into ``model.weights.bin``, which is never written), so a 1 T-parameter
    graph is a few MB. With it, weights are seeded random values held in the proto, so the
    model runs in onnxruntime as is; `shardc.synth.save` moves them to the weights file.
    Both go through the same builder; only the `WeightSource` differs.

    ``phase`` (``prefill`` or ``decode``) builds that serving phase's graph with the KV
    cache as inputs/outputs, ``context`` rows long (default: twice ``seq``); see
    :mod:`shardc.synth.cache`. ``seq`` is then the prompt length.
    """
    res = resolve(arch, config)
    if with_weights:
        size = weight_bytes(arch, config)
        if size > MAX_MATERIALISED_BYTES:
            raise OptionError(
                f"--with-weights would materialise {size / 2**20:.0f} MiB of weights; the limit "
                f"is {MAX_MATERIALISED_BYTES >> 20} MiB",
                hint="drop --with-weights to write the graph with declared (unwritten) weights",
            )
    cache = None
    if phase is not None:
        cache = _phase_cache(res, phase, context)
        if phase == "decode":
            res = replace(res, seq=1)
    g = GraphBuilder(res.precision, Random(seed) if with_weights else Declared())
    if arch == "gpt":
        _gpt(g, res, cache)
    else:
        _llama(g, res, cache)
    dims: list[int | str] = [res.batch or "batch", res.seq or "seq"]
    inputs = [helper.make_tensor_value_info(IDS, TensorProto.INT64, dims)]
    outputs = [helper.make_tensor_value_info("logits", g.dtype, [*dims, res.vocab])]
    if cache is not None:
        if cache.decoding:
            inputs.append(cache.position_input())
        inputs.extend(cache.inputs)
        outputs.extend(cache.outputs)
    graph = helper.make_graph(
        g.nodes, f"shardc_synth_{arch}" + (f"_{phase}" if phase else ""), inputs, outputs,
        initializer=g.initializers,
    )
    opset = OPSET_FP8 if res.precision.quantized else OPSET
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              ir_version=IR_VERSION, producer_name="shardc.synth",
                              producer_version=__version__)
    props = {"shardc.synth.arch": arch,
             "shardc.synth.config": json.dumps(res.as_dict(), sort_keys=True)}
    if cache is not None:
        props[KV_METADATA] = cache.metadata()
    helper.set_model_props(model, props)
    if not with_weights:
        layout(model.graph.initializer, DEFAULT_LOCATION)
    return model


def _phase_cache(res: Resolved, phase: str, context: int | None) -> KVCache:
    """The cache of a phase graph, after checking the sizes it needs."""
    if phase not in PHASES:
        raise OptionError(f"--phase {phase}: use {' or '.join(PHASES)}")
    if not (res.batch and res.seq):
        raise OptionError(f"--phase {phase}: give --batch and --seq (the prompt length)",
                          hint="a serving phase's programs have static shapes")
    rows = context if context is not None else 2 * res.seq
    if rows <= res.seq:
        raise OptionError(f"--context {rows}: must exceed the prompt length --seq {res.seq}")
    if res.arch == "gpt" and rows > res.max_positions:
        raise OptionError(f"--context {rows}: more than --max-positions {res.max_positions}")
    return KVCache(phase, rows, res.batch, 1 if phase == "decode" else res.seq)


def _positions(g: GraphBuilder, cache: KVCache | None) -> tuple[str, str]:
    """(positions of this graph's tokens, causal mask): a decode step's one position is
    its ``cache_position`` input (its mask is the cache's; see `masked_scores`).
    """
    if cache is not None and cache.decoding:
        return POSITION, ""
    pos = positions(g, IDS)
    return pos, causal_mask(g, pos)


def _gpt(g: GraphBuilder, res: Resolved, cache: KVCache | None = None) -> None:
    h_dim, eps = res.hidden, res.norm_eps
    pos, mask = _positions(g, cache)
    with g.scope("embed_tokens"):
        table = g.param("weight", [res.vocab, h_dim], EMBED_INIT)
        tokens = g.op("Gather", [table, IDS], label="lookup")
    with g.scope("embed_positions"):
        where = g.op("Gather", [g.param("weight", [res.max_positions, h_dim], EMBED_INIT), pos],
                     label="lookup")
    h = g.op("Add", [tokens, where], label="embed")
    for i in range(res.layers):
        with g.scope(f"layers.{i}"):
            a = layer_norm(g, h, h_dim, "attn_norm", eps)
            a = attention(g, a, res, mask, bias=True, rope=None, cache=cache, layer=i)
            h = g.op("Add", [h, a], label="attn_residual")
            m = gelu_mlp(g, layer_norm(g, h, h_dim, "mlp_norm", eps), h_dim, res.ffn)
            h = g.op("Add", [h, m], label="mlp_residual")
    _lm_head(g, layer_norm(g, h, h_dim, "norm", eps), res, table)


def _llama(g: GraphBuilder, res: Resolved, cache: KVCache | None = None) -> None:
    h_dim, eps = res.hidden, res.norm_eps
    pos, mask = _positions(g, cache)
    rope = rope_tables(g, pos, res.head_dim, res.rope_theta)
    sizes = moe_sizes(g, res, IDS) if res.moe else None
    with g.scope("embed_tokens"):
        table = g.param("weight", [res.vocab, h_dim], EMBED_INIT)
        h = g.op("Gather", [table, IDS], label="lookup")
    for i in range(res.layers):
        with g.scope(f"layers.{i}"):
            a = rms_norm(g, h, h_dim, "attn_norm", eps)
            if res.arch == "deepseek":
                a = mla_attention(g, a, res, mask, rope, cache, i)
            else:
                a = attention(g, a, res, mask, bias=False, rope=rope, cache=cache, layer=i)
            h = g.op("Add", [h, a], label="attn_residual")
            m = rms_norm(g, h, h_dim, "mlp_norm", eps)
            if sizes and i >= res.dense_layers:
                m = moe_ffn(g, m, res, sizes)
            else:
                m = swiglu(g, m, h_dim, res.dense_ffn or res.ffn)
            h = g.op("Add", [h, m], label="mlp_residual")
    _lm_head(g, rms_norm(g, h, h_dim, "norm", eps), res, table)


def _lm_head(g: GraphBuilder, h: str, res: Resolved, table: str) -> None:
    """The LM head, h @ W, W the token embedding transposed when tied.

    Kept in the activation type under fp8, as DeepSeek-V3 keeps its output head in bf16.
    """
    with g.scope("lm_head"):
        if res.tie_embeddings:
            w = g.op("Transpose", [table], label="tied_weight", perm=[1, 0])
        else:
            w = g.matrix("weight", [res.hidden, res.vocab], EMBED_INIT, quantize=False)
        g.op("MatMul", [h, w], output_name="logits")


def build_phases(arch: str, config: SynthConfig, decode_file: str, *,
                 context: int | None = None, with_weights: bool = False,
                 seed: int = 0) -> tuple[ModelProto, ModelProto]:
    """The serving phase pair of ``arch``: the prefill graph, its ``shardc.kv_cache``
    metadata naming ``decode_file`` (where the caller saves the decode graph, beside it),
    and the decode-step graph; same weights (see :mod:`shardc.synth.cache`).
    """
    prefill = build(arch, config, with_weights=with_weights, seed=seed, phase="prefill",
                    context=context)
    decode = build(arch, config, with_weights=with_weights, seed=seed, phase="decode",
                   context=context)
    for prop in prefill.metadata_props:
        if prop.key == KV_METADATA:
            record = json.loads(prop.value)
            record["decode"] = decode_file
            prop.value = json.dumps(record, sort_keys=True)
    return prefill, decode
