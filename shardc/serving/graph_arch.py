"""The serving sizes of a model without ``shardc synth`` metadata, read from its graph.

Why from the graph: a Hugging Face decoder exported with torch's dynamo exporter keeps no
config, and its weights are renamed (``val_29``), so names cannot be trusted. The graph's
structure can: the token embedding is the ``Gather`` of a weight by ``input_ids``
(``[vocab, hidden]``); each attention is a pair of products between two activations of
rank 4, the first ``[B, heads, S, head_dim] @ [B, heads, head_dim, T]``, so their count is
twice the layers and their shapes give the heads and head width; the KV heads are the
width of the narrowest weight product that reads the hidden state divided by the head
width (or the cache's heads axis, when the graph has a KV cache); the MLP width is the
widest weight product that reads the hidden state and is not the LM head. Dense decoders
only (Llama/Qwen/GPT-2 shapes): a mixture of experts is refused by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shardc.errors import ModelError

_VIEWS = frozenset({"Reshape", "Identity", "Cast", "Unsqueeze", "Squeeze", "Flatten"})
_DTYPES = {"FLOAT": "fp32", "FLOAT16": "fp16", "BFLOAT16": "bf16"}


def _shape(graph: Any, v: str) -> tuple[int, ...] | None:
    t = graph.values[v].type if v in graph.values else None
    if t is None or t.shape is None or not all(isinstance(d, int) for d in t.shape):
        return None
    return tuple(int(d) for d in t.shape)


def sizes_from_graph(path: Path) -> dict[str, Any]:
    """A ``shardc synth``-style config dict (see :func:`~shardc.serving.arch.from_synth_config`)
    of the dense decoder at ``path``, read from its graph (module doc).
    """
    from shardc.frontend import load_model

    graph = load_model(str(path)).graph
    weights = {v for v in graph.values if graph.values[v].weight is not None} | set(
        graph.initializers)
    where = str(path)
    ids = next((i for i in graph.inputs if "ids" in i), graph.inputs[0] if graph.inputs else "")
    token = {ids}  # the ids and their views (GPT-2's export reshapes them first)
    for n in graph.nodes:
        if n.op_type in _VIEWS and n.inputs and n.inputs[0] in token:
            token.add(n.outputs[0])
    embed = next((n for n in graph.nodes if n.op_type == "Gather" and len(n.inputs) > 1
                  and n.inputs[1] in token and n.inputs[0] in weights), None)
    table = _shape(graph, embed.inputs[0]) if embed is not None else None
    if table is None or len(table) != 2:
        raise ModelError("no token embedding (a Gather of a weight by the token ids) found",
                         where=where, hint="build the model with `shardc synth`")
    vocab, hidden = table
    scores = [n for n in graph.nodes if n.op_type == "MatMul"
              and not set(n.inputs) & weights and len(_shape(graph, n.outputs[0]) or ()) == 4]
    if len(scores) < 2 or len(scores) % 2:
        raise ModelError("no attention (pairs of rank-4 products between activations) found",
                         where=where, hint="build the model with `shardc synth`")
    q = _shape(graph, scores[0].inputs[0])
    assert q is not None
    heads, head_dim = q[1], q[3]
    if any(n.op_type in ("TopK", "NonZero") for n in graph.nodes):
        raise ModelError("a mixture-of-experts export: its expert sizes are not read from the "
                         "graph yet", where=where,
                         hint="build the model with `shardc synth moe` or `deepseek`")
    mats = [w for n in graph.nodes
            if n.op_type in ("MatMul", "Gemm") and len(n.inputs) > 1 and n.inputs[1] in weights
            and (w := _shape(graph, n.inputs[1])) is not None and len(w) == 2]
    widths = {w[1] for w in mats if w[0] == hidden and w[1] != vocab}
    kv_width = min((w for w in widths if w % head_dim == 0), default=heads * head_dim)
    kv_heads = min(heads, kv_width // head_dim)
    for out in graph.outputs:  # a KV cache output [B, kv_heads, rows, head_dim] says it best
        s = _shape(graph, out)
        if out.startswith("present.") and s is not None and len(s) == 4 and s[3] == head_dim:
            kv_heads = s[1]
    ffn = max((w[0] for w in mats if w[1] == hidden and w[0] != heads * head_dim),
              default=4 * hidden)
    logits = graph.values[graph.outputs[0]].type
    dtype = _DTYPES.get(logits.dtype.name if logits is not None else "", "bf16")
    return {"layers": len(scores) // 2, "hidden": hidden, "heads": heads, "kv_heads": kv_heads,
            "head_dim": head_dim, "ffn": ffn, "vocab": vocab, "dtype": dtype,
            "tie_embeddings": False}
