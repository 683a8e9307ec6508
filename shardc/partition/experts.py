"""Expert parallelism for exported mixture-of-experts layers: which nodes, and their layouts.

What the exporters write. Hugging Face's ``batched_mm`` experts (the implementation that
exports to ONNX) give every (token, expert) pair its own row: the routed expert ids
``[S]`` (S = tokens · top-k) index the stacked expert weights ``[E, …]`` with a
``Gather``/``GatherND``, a batched ``MatMul`` multiplies each pair by its expert's matrix,
the activation runs row by row, a second gathered product projects back, and the rows
are weighted and summed over top-k. No op mixes rows between the first weight gather
and the last expert product: that stretch is the *expert region*.

The design. Expert parallelism runs over the stage's tensor-parallel group (EP = TP, as
vLLM does with expert parallelism on and no data parallelism): each of the ``d`` ranks
stores ``E/d`` whole experts (the stacked weights cut along dim 0), and

* **dispatch is a local selection, no communication**: the tokens entering an MoE layer
  are already whole on every rank of the group (the attention's row-parallel all-reduce
  delivered them), so each rank keeps the pairs routed to its own experts (``NonZero``
  on the ids, ``Gather`` of the rows) and runs the region on those rows only: the expert
  FLOPs and the per-pair weight gathers are divided by ``d`` (in expectation, with
  balanced routing), not only the weight memory;
* **combine is the group's reduction**: each rank scatters its rows back into zeros, so
  the region's output holds partial sums with disjoint support (every pair on exactly one
  rank); the weighting and the sum over top-k are linear and keep them partial, and the
  one all-reduce where the residual stream needs the whole value (a reduce-scatter under
  sequence parallelism) is the collective a tensor-parallel MLP pays anyway. DeepSeek's
  shared experts, row-parallel by Megatron's rule, add their partial sums first, so a
  layer still costs one all-reduce.

Why not an all-to-all. A token dispatch by ``AllToAll`` pays off when the tokens are
*split* across the group; here they are whole already. And exact dispatch has
data-dependent sizes: a static even-split all-to-all needs a capacity per destination,
which either drops tokens (the plan no longer computes the model) or pads every buffer to
the worst case, ``T·k`` rows per peer, moving ``k`` times an all-reduce's bytes. Why not
split each expert's matrices instead (expert tensor parallelism): it also costs one
all-reduce, but cuts every expert GEMM ``d`` ways, where many small experts
(DeepSeek-V3: 256 of width 2048) run far from peak; EP keeps each expert's GEMM whole.

In the sharding vocabulary, the region's values are split along the pair dim over
``tp`` (each rank holds its own pairs: ``S/d`` rows in expectation, chosen by routing,
not a contiguous block; the strategies' notes say so and emission never slices them),
the region's last product outputs partial sums, and a ``ReduceSum`` over top-k after it
passes them on. The cost model then prices 1/d of the region's work, E/d experts'
weights, and the all-reduce the resolution inserts. Routing imbalance is not modelled.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from shardc.ir import Graph, Node
from shardc.sharding import Strategy, TensorSharding

AXIS = "tp"
"""Experts are spread over the stage's tensor-parallel group."""

# fmt: off
_ELEMENTWISE = frozenset({
    "Abs", "Add", "And", "Cast", "CastLike", "Ceil", "Clip", "Cos", "Div", "Elu", "Equal",
    "Erf", "Exp", "Floor", "Gelu", "Greater", "GreaterOrEqual", "HardSigmoid", "HardSwish",
    "Identity", "LeakyRelu", "Less", "LessOrEqual", "Log", "Max", "Min", "Mish", "Mod", "Mul",
    "Neg", "Not", "Or", "PRelu", "Pow", "Reciprocal", "Relu", "Round", "Selu", "Sigmoid",
    "Sign", "Sin", "Softplus", "Softsign", "Sqrt", "Sub", "Tanh", "Where",
})
# fmt: on
"""Ops that work element by element: with operands of the region's rank, row-wise."""
_VIEWS = frozenset({"Squeeze", "Unsqueeze", "Reshape", "Flatten", "Identity", "Transpose"})
"""Views the partial sums flow through after the region, towards the combine."""
_NOTE = (
    "expert parallel: each rank stores its experts and computes the (token, expert) pairs "
    "routed to them (rows chosen by routing, not a contiguous block)"
)


@dataclass(frozen=True)
class ExpertRegion:
    """One MoE layer's expert computation as the graph writes it (see the module doc)."""

    ids: str
    """The routed expert id of every pair (``[S]``, or ``[S, 1]`` for GatherND)."""
    experts: int
    pairs: int
    gathers: tuple[str, ...]
    """Nodes gathering stacked expert weights (and biases) by ``ids``."""
    nodes: tuple[str, ...]
    """Every node of the region in graph order, the gathers included."""
    exit: str
    """The last expert product: its output is the one value that leaves the region."""
    entries: tuple[str, ...]
    """Activations the region reads from outside, one row per pair (the tokens)."""
    combine: tuple[str, ...]
    """``ReduceSum`` nodes after the exit that sum partial rows (over top-k)."""


def _static(graph: Graph, v: str) -> tuple[int, ...] | None:
    t = graph.values[v].type if v in graph.values else None
    if t is None or t.shape is None or not all(isinstance(d, int) for d in t.shape):
        return None
    return tuple(int(d) for d in t.shape)  # type: ignore[arg-type]


def _weight_gather(graph: Graph, free: frozenset[str], node: Node) -> bool:
    """A Gather (axis 0) or GatherND (one index per row) of a stored weight by run-time ids."""
    if node.op_type not in ("Gather", "GatherND") or len(node.inputs) < 2:
        return False
    data, ids = node.inputs[0], node.inputs[1]
    if graph.values[data].weight is None and data not in graph.initializers:
        return False
    dshape, ishape = _static(graph, data), _static(graph, ids)
    if ids in free or dshape is None or ishape is None or len(dshape) < 2 or not ishape:
        return False
    if node.op_type == "Gather":
        return _int_attr(node, "axis", 0) == 0
    return _int_attr(node, "batch_dims", 0) == 0 and ishape[-1] == 1 and len(ishape) == 2


def _int_attr(node: Node, name: str, default: int) -> int:
    value = node.attr(name, default)
    return int(value) if isinstance(value, int | float) else default


def _const_ints(graph: Graph, v: str) -> tuple[int, ...] | None:
    val = graph.values.get(v) if v else None
    return None if val is None or val.const is None else tuple(int(x) for x in val.const)


def _row_wise(graph: Graph, free: frozenset[str], node: Node, rows: int) -> str | None:
    """None when every output row of ``node`` depends on the same row of its inputs only
    (and every output keeps ``rows`` rows), else why not.
    """
    op = node.op_type
    outs = [_static(graph, o) for o in node.outputs if o]
    if any(s is None or not s or s[0] != rows for s in outs):
        return f"{node.name} ({op}) does not keep one row per pair"
    rank = len(outs[0])  # type: ignore[arg-type]
    data = [v for v in node.present_inputs if v not in free]
    shapes = [_static(graph, v) for v in data]
    if any(s is None or not s or s[0] != rows for s in shapes):
        return f"{node.name} ({op}) reads a value without one row per pair"
    if op in _ELEMENTWISE:
        consts = [_static(graph, v) for v in node.present_inputs if v in free]
        same_rank = all(len(s) == rank for s in shapes)  # type: ignore[arg-type]
        flat = all(s is not None and (len(s) < rank or s[0] == 1) for s in consts)
        return None if same_rank and flat else f"{node.name} ({op}) broadcasts across rows"
    axes: tuple[int, ...] | None = ()
    if op in ("Squeeze", "Unsqueeze"):
        axes = _const_ints(graph, node.inputs[1]) if len(node.inputs) > 1 else None
        full = rank if op == "Unsqueeze" else len(shapes[0])  # type: ignore[arg-type]
        axes = None if axes is None else tuple(a % full for a in axes)
    elif op in ("Split", "Concat", "Softmax", "LogSoftmax"):
        axes = (_int_attr(node, "axis", 0 if op == "Split" else -1) % rank,)
    elif op == "Transpose":
        perm = node.attr("perm")
        axes = () if perm is not None and int(perm[0]) == 0 else (0,)  # type: ignore[index]
    elif op == "MatMul":
        consts = [_static(graph, v) for v in node.present_inputs if v in free]
        if any(s is None or len(s) > 2 for s in consts) or len(data) + len(consts) != 2:
            return f"{node.name} (MatMul) is not a per-pair product"
        if any(len(s) < 3 for s in shapes) and node.inputs[1] in data:  # type: ignore[arg-type]
            return f"{node.name} (MatMul) contracts the pair dim"
    else:
        return f"{node.name} ({op}) is not known to work row by row"
    if axes is None or 0 in axes:
        return f"{node.name} ({op}) works along the pair dim"
    return None


def _closure(graph: Graph, free: frozenset[str], starts: list[Node], rows: int) -> set[str]:
    """Nodes reached from ``starts`` through row-wise nodes only."""
    seen = {n.name for n in starts}
    todo = list(starts)
    while todo:
        for out in todo.pop().outputs:
            for c in graph.consumers(out) if out else ():
                if c.name not in seen and _row_wise(graph, free, c, rows) is None:
                    seen.add(c.name)
                    todo.append(c)
    return seen


def _region(
    graph: Graph, free: frozenset[str], ids: str, gathers: list[Node]
) -> ExpertRegion | str:
    """The region grown from the weight gathers sharing ``ids``, or why there is none."""
    where = f"experts indexed by {ids!r}"
    shapes = [_static(graph, g.inputs[0]) for g in gathers]
    experts = {s[0] for s in shapes if s}
    rows = _static(graph, gathers[0].outputs[0])
    if len(experts) != 1 or rows is None:
        return f"{where}: stacked weights disagree on the expert count"
    pairs = rows[0]
    reach = _closure(graph, free, gathers, pairs)
    made = {o: n for n in gathers for o in n.outputs}
    products = [
        n
        for n in graph.nodes
        if n.name in reach and n.op_type == "MatMul" and any(i in made for i in n.inputs)
    ]
    if not products:
        return f"{where}: no product reads the gathered weights"
    exits = [
        p
        for p in products
        if not any(q is not p and q.name in _closure(graph, free, [p], pairs) for q in products)
    ]
    if len(exits) != 1:
        return f"{where}: {len(exits)} last expert products, expected one"
    exit_ = exits[0]
    inside, todo = {exit_.name}, [exit_]
    while todo:  # the exit's ancestors within the reach
        for v in todo.pop().present_inputs:
            p = graph.producer(v)
            if p is not None and p.name in reach and p.name not in inside:
                inside.add(p.name)
                todo.append(p)
    if not {g.name for g in gathers} <= inside:
        return f"{where}: a gathered weight never reaches the last expert product"
    order = [n.name for n in graph.nodes if n.name in inside]
    entries: list[str] = []
    for name in order:
        node = graph.node(name)
        for out in node.outputs if name != exit_.name else ():
            users = {c.name for c in graph.consumers(out)} if out else set()
            if out in graph.outputs or not users <= inside:
                return f"{where}: {out!r} is read outside the expert computation"
        for v in node.present_inputs:
            p = graph.producer(v)
            index = v == ids and name in {g.name for g in gathers}
            if index or v in free or (p is not None and p.name in inside):
                continue
            if v not in entries:
                entries.append(v)
    if _static(graph, exit_.outputs[0]) is None:
        return f"{where}: the last expert product has no static shape"
    return ExpertRegion(
        ids,
        experts.pop(),
        pairs,
        tuple(g.name for g in gathers),
        tuple(order),
        exit_.name,
        tuple(entries),
        _combine(graph, exit_.outputs[0]),
    )


def _combine(graph: Graph, value: str, depth: int = 8) -> tuple[str, ...]:
    """ReduceSum nodes the exit's partial rows reach through views and scalings (by the
    routing weights): sums of partial sums, which stay partial.
    """
    found: list[str] = []
    for _ in range(depth):
        users = graph.consumers(value)
        if len(users) != 1 or users[0].present_inputs.count(value) != 1:
            break
        node = users[0]
        scaled = node.op_type == "Mul" or (node.op_type == "Div" and node.inputs[0] == value)
        if node.op_type == "ReduceSum" and node.inputs[0] == value:
            found.append(node.name)
        elif not (node.op_type in _VIEWS or scaled):
            break
        value = node.outputs[0]
    return tuple(found)


def find_regions(
    graph: Graph, free: frozenset[str]
) -> tuple[tuple[ExpertRegion, ...], tuple[str, ...]]:
    """Every expert region of ``graph``, and why candidate MoE layers were not taken.

    ``free`` are the weights, constants and graph inputs (``StrategyTable.free``).
    """
    consts = frozenset(v for v in free if v not in graph.inputs)
    by_ids: dict[str, list[Node]] = {}
    for node in graph.nodes:
        if _weight_gather(graph, consts, node):
            by_ids.setdefault(node.inputs[1], []).append(node)
    regions: list[ExpertRegion] = []
    reasons: list[str] = []
    for ids, gathers in by_ids.items():
        if not any(len(_static(graph, g.inputs[0]) or ()) >= 3 for g in gathers):
            continue  # an embedding lookup, not stacked expert matrices
        found = _region(graph, consts, ids, gathers)
        if isinstance(found, ExpertRegion):
            regions.append(found)
        else:
            reasons.append(found)
    return tuple(regions), tuple(reasons)


def _rank(graph: Graph, v: str) -> int:
    return len(_static(graph, v) or ())


def _lead(graph: Graph, v: str) -> TensorSharding:
    return TensorSharding.split(_rank(graph, v), 0, AXIS)


def _partial(graph: Graph, v: str) -> TensorSharding:
    return TensorSharding((None,) * _rank(graph, v), AXIS)


def region_strategies(
    graph: Graph, free: frozenset[str], region: ExpertRegion
) -> dict[str, Strategy]:
    """Node name → strategy for one region spread over the group (see the module doc)."""
    out: dict[str, Strategy] = {}
    divides = ((AXIS, region.experts),)
    for name in region.nodes:
        node = graph.node(name)
        gather = name in region.gathers
        ins = tuple(
            None if not v or (v in free and not (gather and i == 0)) else _lead(graph, v)
            for i, v in enumerate(node.inputs)
        )
        if name == region.exit:
            outs = tuple(_partial(graph, o) if o else None for o in node.outputs)
            kind = "experts_scatter"
        else:
            outs = tuple(_lead(graph, o) if o else None for o in node.outputs)
            kind = "experts" if gather else "experts_rows"
        out[name] = Strategy(kind, ins, outs, divides=divides, notes=(_NOTE,))
    for name in region.combine:
        node = graph.node(name)
        ins = tuple(_partial(graph, v) if i == 0 else None for i, v in enumerate(node.inputs))
        outs = (_partial(graph, node.outputs[0]),)
        out[name] = Strategy("experts_combine", ins, outs, notes=("partial sums over top-k",))
    return out


class ExpertRule:
    """Expert regions of one graph, found once; their strategies for any group size."""

    def __init__(self, graph: Graph, free: frozenset[str]) -> None:
        self.graph, self.free = graph, free
        self.regions, self.reasons = find_regions(graph, free)
        self.consts = frozenset(v for v in free if v not in graph.inputs)

    def choose(self, sizes: Mapping[str, int]) -> dict[str, Strategy]:
        """Node name → strategy for every region whose experts divide over the group."""
        d = sizes.get(AXIS, 1)
        chosen: dict[str, Strategy] = {}
        if d <= 1:
            return chosen
        for region in self.regions:
            if region.experts % d == 0:
                chosen.update(region_strategies(self.graph, self.consts, region))
        return chosen
