"""The mixture-of-experts FFN: top-k routing with capacity-based dispatch.

Formulation (GShard / Switch style, written with gathers and scatters, no one-hot
matmuls, so the graph's FLOPs are those of the routed tokens only):

1. router: ``p = softmax(x @ W_r)`` over E experts; ``TopK`` picks k experts per token,
   gate weights renormalised over the k (Mixtral's softmax over the top-k logits);
2. positions: every (slot j, token t) pair gets a rank inside its expert, slot-major
   (all first choices before any second choice, then token order) -- a CumSum over a
   one-hot ``[k, B, S, E]`` done axis by axis so no reshape loses the symbolic dims;
3. dispatch: k copies of each token are scattered (ScatterND) into rows 1.. of a zero
   buffer ``[1 + E*C, H]`` at row 1 + e*C + rank; pairs with rank >= C (the capacity)
   are dropped -- sent to row 0, which is sliced off, and given gate 0 (GShard's
   behaviour) -- so no two kept pairs share a row and the scatter is exact;
4. experts: a batched SwiGLU ``[E, C, H] @ [E, H, F]`` -- dim 0 is the expert axis that
   expert parallelism splits;
5. combine: Gather each pair's expert output back, weight by its gate, sum over k.

C = min(T, ceil(cf * k * T / E)) for T = batch*seq tokens. Expert MatMul FLOPs are
6*E*C*H*F ~= cf * T * k * (6*H*F): top-k, not every token through every expert. With
cf >= E/k, C = T and nothing is ever dropped: exactly top-k routing. C is a constant
when batch and seq are given; otherwise it is derived from the input's shape with shape
ops only (see `moe_sizes`), so binding the dims lets ONNX shape inference size the
expert buffers. S shared experts are one dense SwiGLU of width S*F added to the output.
"""

from __future__ import annotations

from dataclasses import dataclass

from onnx import TensorProto

from shardc.synth.config import Resolved, capacity, capacity_ratio
from shardc.synth.graph import GraphBuilder
from shardc.synth.layers import linear, silu, swiglu
from shardc.synth.weights import Init

ROUTER_INIT = Init(std=0.5)  # spread router logits so random models route decisively


def moe_ffn(g: GraphBuilder, x: str, res: Resolved, sizes: MoESizes) -> str:
    """The MoE FFN of ``x [B, S, H]``, its buffers sized by `moe_sizes`."""
    e, k, h = res.experts, res.top_k, res.hidden
    with g.scope("moe"):
        logits = linear(g, x, h, e, "router", quantize=False, init=ROUTER_INIT)
        if g.dtype != TensorProto.FLOAT:  # route in fp32, as MoE kernels do (TopK has no bf16)
            logits = g.op("Cast", [logits], label="router_fp32", to=TensorProto.FLOAT)
        probs = g.op("Softmax", [logits], label="router_probs", axis=-1)
        if res.expert_groups:
            probs = _group_limited(g, probs, res)
        top_p, top_i = g.op_n("TopK", [probs, g.ints(k)], ["values", "indices"],
                              label="topk", axis=-1, largest=1, sorted=1)
        total = g.op("ReduceSum", [top_p, g.ints(-1)], label="topk_sum", keepdims=1)
        gates = g.op("Div", [top_p, total], label="gates")
        if g.dtype != TensorProto.FLOAT:
            gates = g.op("Cast", [gates], label="gates_cast", to=g.dtype)
        # slot-major layout [k, B, S]: priority order of the capacity assignment
        expert = g.op("Transpose", [top_i], label="expert_of_pair", perm=[2, 0, 1])
        gate = g.op("Transpose", [gates], label="gate_of_pair", perm=[2, 0, 1])
        pos = _rank_in_expert(g, expert, e)
        kept = g.op("Less", [pos, sizes.cap], label="in_capacity")
        slot = g.op("Add", [g.op("Mul", [expert, sizes.cap], label="expert_base"), pos],
                    label="slot")
        # dispatch: k copies of each token into rows 1.. of [1 + E*C, H]; dropped pairs all
        # land in row 0, which is sliced off (so only it sees duplicate indices)
        target = g.op("Where", [kept, g.op("Add", [slot, g.ints(1)], label="row"),
                                g.ints(0)], label="dispatch_row")
        copies = g.op("Expand", [g.op("Unsqueeze", [x, g.ints(0)], label="x_pairs"),
                                 g.ints(k, 1, 1, 1)], label="token_copies")
        empty = g.op("Expand", [g.scalar(0.0), sizes.overflow_shape], label="empty_buffer")
        index = g.op("Unsqueeze", [target, g.ints(-1)], label="dispatch_index")
        buf = g.op("ScatterND", [empty, index, copies], label="dispatch")
        buf = g.op("Slice", [buf, g.ints(1), g.ints(2**62), g.ints(0)], label="drop_overflow")
        buf = g.op("Reshape", [buf, sizes.buffer_shape], label="expert_inputs")
        out = _experts(g, buf, res)
        out = g.op("Reshape", [out, sizes.flat_shape], label="expert_outputs_flat")
        # combine: each pair's output, weighted by its gate (0 when dropped), summed over k
        slot = g.op("Where", [kept, slot, g.ints(0)], label="combine_slot")
        back = g.op("Gather", [out, slot], label="combine_gather", axis=0)
        keep = g.op("Cast", [kept], label="keep", to=g.dtype)
        weight = g.op("Mul", [gate, keep], label="pair_weight")
        weighted = g.op("Mul", [back, g.op("Unsqueeze", [weight, g.ints(-1)],
                                           label="pair_weight_col")], label="weighted")
        routed = g.op("ReduceSum", [weighted, g.ints(0)], label="combine", keepdims=0)
        if res.shared_experts:
            shared = swiglu(g, x, h, res.shared_experts * res.ffn, name="shared")
            routed = g.op("Add", [routed, shared], label="with_shared")
        return routed


def _group_limited(g: GraphBuilder, probs: str, res: Resolved) -> str:
    """``probs [B, S, E]`` with the experts outside each token's ``route_groups`` best
    groups set to 0 (DeepSeek-V3's node-limited routing, its report §2.1.2: a group's score
    is the sum of its two highest expert scores). Groups tied with the last one picked are
    kept too. The top-k that follows then lies within at most ``route_groups`` groups.
    """
    groups, per = res.expert_groups, res.experts // res.expert_groups
    with g.scope("group_limit"):
        grouped = g.op("Reshape", [probs, g.ints(0, 0, groups, per)], label="by_group")
        best, _ = g.op_n("TopK", [grouped, g.ints(min(2, per))], ["values", "indices"],
                         label="group_best", axis=-1, largest=1, sorted=1)
        score = g.op("ReduceSum", [best, g.ints(-1)], label="group_score", keepdims=0)
        picked, _ = g.op_n("TopK", [score, g.ints(res.route_groups)], ["values", "indices"],
                           label="groups_picked", axis=-1, largest=1, sorted=1)
        last = g.op("ReduceMin", [picked, g.ints(-1)], label="last_group", keepdims=1)
        keep = g.op("GreaterOrEqual", [score, last], label="group_kept")
        keep = g.op("Expand", [g.op("Unsqueeze", [keep, g.ints(-1)], label="group_col"),
                               g.ints(1, 1, 1, per)], label="expert_group_kept")
        keep = g.op("Reshape", [keep, g.ints(0, 0, res.experts)], label="expert_kept")
        zero = g.const(0.0, TensorProto.FLOAT)
        return g.op("Where", [keep, probs, zero], label="group_limited_probs")


def _rank_in_expert(g: GraphBuilder, expert: str, experts: int) -> str:
    """The 0-based rank of each pair ``[k, B, S]`` among the pairs routed to its expert.

    Ranks run in (slot, batch, seq) order: an inclusive CumSum along seq plus exclusive
    CumSums of the per-row and per-slot totals, so no reshape flattens the token dims.
    """
    arange = g.const(list(range(experts)), TensorProto.INT64)
    hit = g.op("Equal", [g.op("Unsqueeze", [expert, g.ints(-1)], label="expert_col"), arange],
               label="expert_match")
    onehot = g.op("Cast", [hit], label="onehot", to=TensorProto.INT64)
    within_row = g.op("CumSum", [onehot, g.int_scalar(2)], label="rank_in_row")
    row_total = g.op("ReduceSum", [onehot, g.ints(2)], label="row_total", keepdims=1)
    before_row = g.op("CumSum", [row_total, g.int_scalar(1)], label="before_row", exclusive=1)
    slot_total = g.op("ReduceSum", [row_total, g.ints(1)], label="slot_total", keepdims=1)
    before_slot = g.op("CumSum", [slot_total, g.int_scalar(0)], label="before_slot",
                       exclusive=1)
    rank = g.op("Add", [g.op("Add", [within_row, before_row], label="rank_partial"),
                        before_slot], label="rank_all")
    mine = g.op("ReduceSum", [g.op("Mul", [rank, onehot], label="rank_masked"), g.ints(-1)],
                label="rank_inclusive", keepdims=0)
    return g.op("Sub", [mine, g.int_scalar(1)], label="rank_in_expert")


@dataclass(frozen=True)
class MoESizes:
    """Capacity-derived values of one MoE layer (graph value names, all int64 1-D)."""

    cap: str  # [C]
    flat_shape: str  # [E*C, H]
    overflow_shape: str  # [E*C + 1, H]
    buffer_shape: str  # [E, C, H]


def moe_sizes(g: GraphBuilder, res: Resolved, ids: str) -> MoESizes:
    """C and the buffer shapes, built once per model.

    Constants when batch and seq are given, else derived from the shape of ``ids`` with
    shape ops only, so that once the dims are bound ONNX shape inference (with data
    propagation) sizes every expert buffer.

    C = ceil(p*T/q) for r = p/q = `capacity_ratio`: the length of a length-p*T vector
    sliced with step q. That is a ceil-division done by Slice's shape rule, which shape
    inference evaluates; Div and Ceil on values it would not. The vector is p bytes per
    token (bool).
    """
    e, h = res.experts, res.hidden
    if res.batch and res.seq:
        n = capacity(res, res.batch * res.seq)
        return MoESizes(g.ints(n), g.ints(e * n, h), g.ints(e * n + 1, h), g.ints(e, n, h))
    r = capacity_ratio(res)
    with g.scope("moe_capacity"):
        flat = g.op("Reshape", [ids, g.ints(-1)], label="tokens")
        marks = g.op("Cast", [flat], label="token_marks", to=TensorProto.BOOL)
        marks = g.op("Tile", [marks, g.ints(r.numerator)], label="scaled_marks")
        picked = g.op("Slice", [marks, g.ints(0), g.ints(2**62), g.ints(0),
                                g.ints(r.denominator)], label="one_per_slot")
        cap = g.op("Shape", [picked], label="capacity")
        slots = g.op("Mul", [cap, g.ints(e)], label="slots")
        rows = g.op("Add", [slots, g.ints(1)], label="rows")
        return MoESizes(
            cap,
            g.op("Concat", [slots, g.ints(h)], label="flat_shape", axis=0),
            g.op("Concat", [rows, g.ints(h)], label="overflow_shape", axis=0),
            g.op("Concat", [g.ints(e), cap, g.ints(h)], label="buffer_shape", axis=0),
        )


def _experts(g: GraphBuilder, buf: str, res: Resolved) -> str:
    """Batched SwiGLU over ``[E, C, H]`` with weights ``[E, H, F]`` and ``[E, F, H]``."""
    e, h, f = res.experts, res.hidden, res.ffn
    with g.scope("experts"):
        w_gate = g.matrix("gate_proj.weight", [e, h, f])
        w_up = g.matrix("up_proj.weight", [e, h, f])
        w_down = g.matrix("down_proj.weight", [e, f, h])
        gate = silu(g, g.op("MatMul", [buf, w_gate], label="gate_proj"))
        up = g.op("MatMul", [buf, w_up], label="up_proj")
        act = g.op("Mul", [gate, up], label="swiglu")
        return g.op("MatMul", [act, w_down], label="down_proj")


