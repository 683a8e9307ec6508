"""From ONNX node names back to the torch modules that made them.

The plan speaks of ONNX nodes (``node_linear_3`` is ``row``); torch's parallel APIs speak of
module FQNs (``model.layers.0.self_attn.o_proj``). The dynamo exporter records, on every
node, the module scopes it was traced under (``pkg.torch.onnx.name_scopes``) and their
classes (``pkg.torch.onnx.class_hierarchy``); reading those is exact, where matching names
would be a guess. A model exported without that metadata is refused, not guessed at.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import onnx

from shardc.train.planview import TrainPlanError

SCOPES = "pkg.torch.onnx.name_scopes"
CLASSES = "pkg.torch.onnx.class_hierarchy"
LINEAR = "torch.nn.modules.linear.Linear"
EMBEDDING = "torch.nn.modules.sparse.Embedding"
CONV1D = "transformers.pytorch_utils.Conv1D"
_INDEXED = re.compile(r"^(?P<prefix>.+)\.(?P<index>\d+)$")


@dataclass(frozen=True)
class NodeScope:
    """The module a node was traced in: its FQN and class, and the chain above it."""

    node: str
    module: str
    """FQN of the innermost ``nn.Module`` (empty for the root)."""
    cls: str
    """Qualified class name of that module."""
    path: tuple[tuple[str, str], ...]
    """(FQN, class) of every enclosing module, root first."""


@dataclass(frozen=True)
class ModelMap:
    """What the exported graph says about the module tree."""

    scopes: Mapping[str, NodeScope]
    """ONNX node name -> its module scope."""
    order: tuple[str, ...]
    """Node names in graph order."""
    proto: onnx.ModelProto
    """The graph itself (for questions of structure, such as fused projections)."""

    def module_of(self, node: str) -> NodeScope:
        """The scope of ``node`` (TrainPlanError when the plan names an unknown node)."""
        if node not in self.scopes:
            raise TrainPlanError(
                f"node {node!r} of the plan is not in the model's graph",
                hint="the plan was compiled for another model",
            )
        return self.scopes[node]


def _parse(value: str) -> list[str]:
    try:
        out = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return []
    return [str(x) for x in out] if isinstance(out, list) else []


def model_map(model: onnx.ModelProto) -> ModelMap:
    """Read every node's module scope from the exporter's metadata."""
    scopes: dict[str, NodeScope] = {}
    order = []
    for n in model.graph.node:
        order.append(n.name)
        meta = {p.key: p.value for p in n.metadata_props}
        names, classes = _parse(meta.get(SCOPES, "")), _parse(meta.get(CLASSES, ""))
        if not names or len(names) != len(classes):
            continue
        path = tuple(zip(names, classes, strict=True))
        # the innermost entries may be traced functions (aten.*), not modules
        modules = [(f, c) for f, c in path if not c.startswith(("aten.", "prims."))]
        if not modules:
            continue
        scopes[n.name] = NodeScope(n.name, modules[-1][0], modules[-1][1], tuple(modules))
    if not scopes:
        raise TrainPlanError(
            "the compiled ONNX model has no module metadata (pkg.torch.onnx.name_scopes)",
            hint="compile the torch module itself, or a file written by "
            "torch.onnx.export(dynamo=True), so ops map back to modules",
        )
    return ModelMap(scopes, tuple(order), model)


@dataclass(frozen=True)
class LayerChain:
    """The repeated blocks the plan's stages split, as torch modules."""

    container: str
    """FQN of the ModuleList holding them (``model.layers``)."""
    layers: tuple[str, ...]
    """FQN of block i, in order."""
    before: tuple[str, ...]
    """Modules with ops before the first block (embeddings): they ride on stage 0."""
    after: tuple[str, ...]
    """Modules with ops after the last block (final norm, head): on the last stage."""
    owner: str
    """FQN of the module that calls the blocks (``model``)."""
    owner_cls: str


def layer_chain(mm: ModelMap, blocks: int) -> LayerChain:
    """Find the module list whose items are the plan's ``blocks`` repeated blocks.

    A block is an indexed module (``<prefix>.<i>``); the chain is the indexed family with
    exactly ``blocks`` members 0..blocks-1 of one class, as the coarsen pass found
    ``blocks`` repeats of one signature.
    """
    family: dict[str, dict[int, str]] = {}
    first_seen: dict[str, int] = {}
    for pos, name in enumerate(mm.order):
        sc = mm.scopes.get(name)
        if sc is None:
            continue
        for fqn, cls in sc.path:
            m = _INDEXED.match(fqn)
            if m:
                family.setdefault(m["prefix"], {})[int(m["index"])] = cls
                first_seen.setdefault(fqn, pos)
    fits = [
        p
        for p, items in sorted(family.items())
        if sorted(items) == list(range(blocks)) and len(set(items.values())) == 1
    ]
    if not fits:
        raise TrainPlanError(
            f"no module list of the model has the plan's {blocks} repeated blocks",
            hint="the plan was compiled for another model",
        )
    container = min(fits, key=len)
    layers = tuple(f"{container}.{i}" for i in range(blocks))
    in_chain = {n for n, sc in mm.scopes.items() if any(f in layers for f, _ in sc.path)}
    positions = [i for i, n in enumerate(mm.order) if n in in_chain]
    lo, hi = min(positions), max(positions)
    # the chain's ancestors call the blocks; their other children are the model's ends
    ancestors = {""} | {container[:i] for i, c in enumerate(container) if c == "."}
    ancestors.add(container)
    before: list[str] = []
    after: list[str] = []
    for i, n in enumerate(mm.order):
        sc = mm.scopes.get(n)
        if sc is None or n in in_chain:
            continue
        outer = next((f for f, _ in sc.path if f not in ancestors), None)
        target = before if i < lo else after if i > hi else None
        if outer is not None and target is not None and outer not in target:
            target.append(outer)
    owner = container.rsplit(".", 1)[0] if "." in container else ""
    owner_cls = next((c for sc in mm.scopes.values() for f, c in sc.path if f == owner), "?")
    return LayerChain(container, layers, tuple(before), tuple(after), owner, owner_cls)


def check_model(model: Any, proto: onnx.ModelProto, mm: ModelMap) -> None:
    """Refuse a module that is not the one the plan's graph was exported from.

    Initializer names are no fingerprint (the exporter folds transposes into new constants
    and merges equal ones), so the check is structural: every module scope the graph
    records exists in ``model`` with the same class, and every weight a Linear or Embedding
    op reads has that module's weight shape (either orientation).
    """
    inits = {t.name: tuple(t.dims) for t in proto.graph.initializer}
    nodes = {n.name: n for n in proto.graph.node}
    for name, sc in sorted(mm.scopes.items()):
        for fqn, cls in sc.path:
            try:
                mod = model.get_submodule(fqn) if fqn else model
            except AttributeError:
                raise TrainPlanError(
                    f"the plan's graph has module {fqn} ({cls.rsplit('.', 1)[-1]}) and the "
                    "model has none: the plan was compiled for another model"
                ) from None
            have = f"{type(mod).__module__}.{type(mod).__qualname__}"
            # class names, not paths: a script's __main__.LM is the test's harness.LM
            if type(mod).__qualname__ != cls.rsplit(".", 1)[-1]:
                raise TrainPlanError(
                    f"module {fqn} is a {have} and the plan's graph has a {cls}: the plan "
                    "was compiled for another model"
                )
        if sc.cls in (LINEAR, EMBEDDING):
            want = tuple(model.get_submodule(sc.module).weight.shape)
            for i in nodes[name].input:
                if i in inits and len(inits[i]) == 2 and inits[i] not in (want, want[::-1]):
                    raise TrainPlanError(
                        f"{sc.module}.weight is {list(want)} and the plan's graph has "
                        f"{list(inits[i])}: the plan was compiled for another model"
                    )


def tp_targets(mm: ModelMap, strategies: Mapping[str, str]) -> dict[str, tuple[str, str, str]]:
    """Module FQN -> (strategy, class, node) for every weight op the plan shards.

    ``column``/``row``/``vocab`` on a node inside a Linear, Embedding or ``transformers``
    Conv1D become that module's plan; ``heads`` and the other activation strategies follow
    from those (local heads after a column-split projection) and need no module of their own.
    """
    out: dict[str, tuple[str, str, str]] = {}
    for node, strategy in sorted(strategies.items()):
        if strategy not in ("column", "row", "vocab"):
            continue
        sc = mm.module_of(node)
        if sc.cls not in (LINEAR, EMBEDDING, CONV1D) or (sc.cls == CONV1D and strategy == "vocab"):
            raise TrainPlanError(
                f"node {node} ({strategy}) runs in {sc.module or '<root>'}, a {sc.cls}; "
                "shardc's tensor parallelism on torch shards Linear, Embedding and Conv1D "
                "modules only",
                hint="pin tp=1 for this model, or write it with nn.Linear",
            )
        seen = out.get(sc.module)
        if seen is not None and seen[0] != strategy:
            raise TrainPlanError(f"module {sc.module} is both {seen[0]} and {strategy} in the plan")
        out[sc.module] = (strategy, sc.cls, node)
    return out


def holds(model: Any, fqn: str) -> bool:
    """Whether ``model`` (an ``nn.Module``) holds ``fqn`` with parameters: a pipeline stage
    keeps only its blocks, so a plan's module targets are filtered by what is there.
    """
    try:
        sub = model.get_submodule(fqn)
    except AttributeError:
        return False
    return any(True for _ in sub.parameters())
