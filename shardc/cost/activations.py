"""Activations a block keeps for its backward, as fused training kernels keep them.

Why not "every intermediate": an exported graph spells GeLU as eight element-wise ops,
RMSNorm as six and attention's scale-mask-softmax as three, and each writes a tensor; a
training framework runs each group as one kernel that saves only what its backward reads.
Counting every ONNX output over-counts a GPT layer about threefold and declares
configurations that Megatron users run every day out of memory. Rules, per node (the
backward's needs, mapped to the tensor that is really stored):

* a **weight MatMul** keeps its activation input (for the weight gradient); a MatMul of
  two activations (QKᵀ, PV) keeps both;
* **LayerNormalization** keeps its input; **Softmax** its output;
* a **fused element-wise region** (GeLU, SiLU, SwiGLU, RMSNorm spelt as primitives): a
  non-linear op, or a product of two gradient-carrying tensors, keeps its input, traced
  back through element-wise ops to the tensor the region starts from (the GEMM output,
  the norm input): so tanh-GeLU keeps one ``b·s·f`` tensor, SwiGLU keeps gate and up, and
  RMSNorm keeps its input;
* linear ops (adds, sums, products with a constant, casts, views, concat/split,
  reductions) keep nothing; views (Reshape, Transpose, Expand…) alias the tensor they
  view, so K repeated for grouped-query attention is stored at its KV-head size, as
  Megatron and flash attention store it;
* fused attention ops (``Attention``, ``MultiHeadAttention``, ``GroupQueryAttention``) keep
  Q, K, V, the output and a float32 log-sum-exp per query and head: O(s), not O(s²);
* **dropout** (training graphs seldom carry it; Megatron's GPT uses 0.1): with
  ``dropout=True`` each Softmax feeding a product gets a 1-byte mask and a second copy of
  the probabilities (the dropped ones, which PV keeps), and each residual Add a 1-byte mask
  of the branch; explicit ``Dropout`` nodes add their mask.

Only tensors on the gradient path count (those computed from a weight): masks of the
causal pattern and RoPE tables are per model, not per layer and micro-batch.

For a GPT layer this is exactly Korthikanti et al. (2022) ``s·b·h·(34 + 5·a·s/h)`` bytes
at 16-bit, and for a Llama layer (RMSNorm, SwiGLU of width f, g = kv-heads/heads, no
dropout) ``s·b·h·(12 + 4g + 6f/h) + 2·a·s²·b`` (docs/cost-model.md derives both).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from shardc.ir import Graph

VIEWS = frozenset({"Reshape", "Transpose", "Unsqueeze", "Squeeze", "Flatten", "Expand",
                   "Identity"})
"""Ops whose output aliases their first input's storage (or is stored as it)."""
LINEAR = frozenset({"Add", "Sub", "Neg", "Cast", "Concat", "Split", "Slice", "Gather",
                    "ReduceSum", "ReduceMean", "Where", "CumSum", "Pad", "Tile"})
"""Ops whose backward needs none of their inputs' values."""
NONLINEAR = frozenset({"Tanh", "Sigmoid", "Erf", "Relu", "Gelu", "FastGelu", "BiasGelu",
                       "Exp", "Log", "Sqrt", "Reciprocal", "Pow", "Softplus", "Elu",
                       "LeakyRelu", "HardSigmoid", "Sin", "Cos", "Abs", "Silu", "QuickGelu"})
"""Element-wise ops whose backward reads their input."""
ELEMENTWISE = NONLINEAR | {"Add", "Sub", "Mul", "Div", "Neg", "Cast", "Where", "ReduceMean",
                           "ReduceSum"}
"""Ops a fusing compiler folds into one kernel with their neighbours (reductions over the
last dim included: norms are such kernels)."""
FUSED_ATTENTION = frozenset({"Attention", "MultiHeadAttention", "GroupQueryAttention"})
NORMS = frozenset({"LayerNormalization", "SimplifiedLayerNormalization",
                   "SkipLayerNormalization", "RMSNormalization"})


@dataclass(frozen=True, slots=True)
class Saved:
    """One tensor a block keeps for its backward."""

    value: str
    """The stored value (for a mask: the value it masks)."""
    nbytes: float
    """Bytes of the whole (unsharded) tensor."""
    core: bool = False
    """In the attention core (score-sized): what selective recomputation drops."""
    mask: bool = False
    """A dropout mask (one byte per element)."""


def gradient_values(graph: Graph) -> frozenset[str]:
    """Values computed (directly or not) from a trainable parameter: the gradient path.

    A parameter is a float initializer (more than one element) that a MatMul, Gemm, Conv,
    Gather (an embedding table) or a norm reads: RoPE frequency tables and other constants
    that only feed element-wise ops carry no gradient.
    """
    params = {v for node in graph if node.op_type in _PARAM_USERS
              for v in node.present_inputs if _is_float_weight(graph, v)}
    grad: set[str] = set()
    for node in graph:
        if any(v in params or v in grad for v in node.present_inputs):
            grad.update(o for o in node.outputs if o)
    return frozenset(grad)


_PARAM_USERS = frozenset({"MatMul", "Gemm", "Conv", "Gather", *NORMS})


def _is_float_weight(graph: Graph, name: str) -> bool:
    val = graph.values.get(name)
    return (val is not None and val.weight is not None and val.type is not None
            and val.type.dtype.is_float and (val.type.numel or 0) > 1)


def _nbytes(graph: Graph, name: str) -> float:
    val = graph.values.get(name)
    n = val.nbytes if val is not None else None
    return float(n) if n is not None else 0.0


def _numel(graph: Graph, name: str) -> float:
    val = graph.values.get(name)
    n = val.type.numel if val is not None and val.type is not None else None
    return float(n) if n is not None else 0.0


def root(graph: Graph, value: str) -> str:
    """The value whose storage ``value`` views (through Reshape, Transpose, Expand…)."""
    while (p := graph.producer(value)) is not None and p.op_type in VIEWS and p.inputs:
        value = p.inputs[0]
    return value


def region_root(graph: Graph, value: str, grad: frozenset[str],
                memo: dict[str, str] | None = None) -> str:
    """The tensor a fused element-wise region starts from: walk back through views and
    element-wise ops while every gradient-carrying input leads to the same start (RMSNorm's
    ``x / sqrt(mean(x²))`` starts at x; GeLU's polynomial at the GEMM output).
    """
    memo = {} if memo is None else memo
    if value in memo:
        return memo[value]
    p = graph.producer(value)
    out = value
    if p is not None and p.op_type in VIEWS and p.inputs:
        out = region_root(graph, p.inputs[0], grad, memo)
    elif p is not None and p.op_type in ELEMENTWISE:
        starts = {region_root(graph, v, grad, memo)
                  for v in dict.fromkeys(p.present_inputs) if v in grad}
        if len(starts) == 1:
            out = starts.pop()
    memo[value] = out
    return out


def saved_tensors(graph: Graph, nodes: Iterable[str], grad: frozenset[str], *,
                  dropout: bool = False) -> tuple[Saved, ...]:
    """Every tensor the nodes keep for backward, each once, in a deterministic order."""
    names = tuple(nodes)
    widest = _widest_product(graph, names, grad)
    memo: dict[str, str] = {}
    out: dict[str, Saved] = {}

    def start(value: str) -> str:
        return region_root(graph, value, grad, memo)

    def keep(value: str, *, mask: bool = False, copy: bool = False) -> None:
        key = value + ("#mask" if mask else "#dropped" if copy else "")
        if value not in grad or key in out:
            return
        elems = _numel(graph, value)
        nbytes = elems if mask else _nbytes(graph, value)  # masks: one byte per element
        out[key] = Saved(key, nbytes, core=bool(widest) and elems == widest, mask=mask)

    for n in names:
        node = graph.node(n)
        op, ins = node.op_type, node.present_inputs
        acts = [v for v in ins if v in grad]
        if op in ("MatMul", "Gemm"):
            if len(acts) == 1:
                keep(root(graph, acts[0]))  # for the weight gradient
            for v in acts if len(acts) > 1 else ():
                kept = root(graph, v)
                dropped = dropout and _made_by(graph, kept, "Softmax")
                keep(kept, copy=dropped)  # PV keeps the dropped probabilities
        elif op in NORMS:
            keep(root(graph, ins[0]))
        elif op == "Softmax":
            keep(node.outputs[0])
            if dropout and _feeds_product(graph, node.outputs[0]):
                keep(node.outputs[0], mask=True)
        elif op in FUSED_ATTENTION:
            for v in acts[:3]:
                keep(root(graph, v))
            keep(node.outputs[0])
        elif op == "Dropout":
            keep(ins[0], mask=True)
        elif op in NONLINEAR:
            keep(start(ins[0]))
        elif op in ("Mul", "Div") and len(acts) == 2:
            for v in acts:
                keep(start(v))
        elif op in ("Mul", "Div") and acts and any(_is_float_weight(graph, v) for v in ins):
            keep(start(acts[0]))  # a scale's gradient reads the normed input
        elif (op == "Add" and dropout and len(acts) == 2
              and _is_residual(graph, acts[0], acts[1], start)):
            keep(acts[1], mask=True)
    saved = list(out.values())
    saved += [_lse(graph, n) for n in names if graph.node(n).op_type in FUSED_ATTENTION]
    return tuple(sorted(saved, key=lambda s: s.value))


def _made_by(graph: Graph, value: str, op: str) -> bool:
    p = graph.producer(value)
    return p is not None and p.op_type == op


def _is_residual(graph: Graph, a: str, b: str, start: Callable[[str], str]) -> bool:
    """An Add of two same-sized tensors from different regions, one of them a weight
    product (or its bias): a residual connection, where dropout sits on the branch.
    """
    if _numel(graph, a) != _numel(graph, b) or not _numel(graph, a) or start(a) == start(b):
        return False
    return any(_from_gemm(graph, v) for v in (a, b))


def _feeds_product(graph: Graph, value: str) -> bool:
    return any(c.op_type == "MatMul" for c in graph.consumers(value))


def _from_gemm(graph: Graph, value: str) -> bool:
    p = graph.producer(value)
    if p is not None and p.op_type == "Add":  # a bias
        p = graph.producer(p.inputs[0]) if p.inputs else None
    return p is not None and p.op_type in ("MatMul", "Gemm")


def _widest_product(graph: Graph, nodes: Sequence[str], grad: frozenset[str]) -> float:
    """Elements of the widest activation-by-activation product output: the score matrix."""
    widest = 0.0
    for n in nodes:
        node = graph.node(n)
        if node.op_type == "MatMul" and all(v in grad for v in node.present_inputs):
            widest = max(widest, _numel(graph, node.outputs[0]))
    return widest


def _lse(graph: Graph, name: str) -> Saved:
    """The float32 log-sum-exp flash attention keeps: one per query and head (O(s))."""
    node = graph.node(name)
    heads = node.attr("num_heads", 1)
    q = graph.values.get(node.inputs[0])
    shape = q.type.shape if q is not None and q.type is not None else None
    tokens = 1
    for d in (shape or ())[:2]:
        tokens *= d if isinstance(d, int) else 1
    return Saved(f"{node.outputs[0]}#lse", 4.0 * tokens * (heads if isinstance(heads, int)
                                                           else 1))
