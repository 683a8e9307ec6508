"""One rank's device program, ready to run: standard nodes in onnxruntime, comm nodes
handed to whoever drives it.

Why a generator: the in-process runner and the torch.distributed runner must give a
device file exactly the same meaning. Both drive the same :meth:`RankProgram.forward`;
it runs runs of standard nodes itself and *yields* each ``shardc``-domain node as a
:class:`CommRequest`, to be answered with the node's output (``None`` for ``Send``).
The in-process driver answers by pairing requests across ranks; the distributed driver
answers with torch.distributed calls. Nothing about communication lives here.

A device model is cut at its comm nodes into runs of standard nodes; each run becomes a
small ONNX model, compiled by onnxruntime once its inputs' types are known and reused for
every later micro-batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from shardc.emit.program import DOMAIN, ORT_DISABLED_OPTIMIZERS
from shardc.emit.program import node_attr as attr
from shardc.errors import ExecutionError

COMM_OPS = ("AllReduce", "AllGather", "ReduceScatter", "AllToAll", "Send", "Recv")


@dataclass(frozen=True)
class CommRequest:
    """A comm node reached by a rank, with its input value (None for ``Recv``)."""

    rank: int
    node: onnx.NodeProto
    value: np.ndarray | None
    microbatch: int

    @property
    def op(self) -> str:
        return self.node.op_type

    @property
    def group(self) -> tuple[int, ...]:
        return tuple(int(g) for g in attr(self.node, "group", []))

    @property
    def peer(self) -> int:
        return int(attr(self.node, "peer", -1))

    @property
    def tag(self) -> int:
        return int(attr(self.node, "tag", 0))

    def describe(self) -> str:
        """``AllReduce 'name'`` with its group or peer: how messages name an op."""
        where = f" with rank {self.peer}" if self.op in ("Send", "Recv") else ""
        if self.group:
            where = f" on group {list(self.group)}"
        return f"{self.op} {self.node.name!r}{where} (micro-batch {self.microbatch})"


@dataclass
class _Run:
    """A run of standard nodes, compiled lazily once its inputs' types are known."""

    nodes: list[onnx.NodeProto]
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    session: Any = None


@dataclass
class Timings:
    """Wall seconds a rank spent per micro-batch: in onnxruntime, and in comm (waits
    included, since a rank blocked on its peers is what the schedule calls a bubble).
    """

    compute: list[float] = field(default_factory=list)
    comm: list[float] = field(default_factory=list)


class RankProgram:
    """A device model cut into runs and comm nodes; weights loaded once."""

    def __init__(
        self,
        model: onnx.ModelProto,
        rank: int,
        *,
        keep_all: bool = False,
        providers: tuple[str, ...] = ("CPUExecutionProvider",),
        threads: int | None = None,
    ):
        self.rank = rank
        self.providers = providers
        self.threads = threads
        self.weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        self.inputs = [i.name for i in model.graph.input if i.name not in self.weights]
        self.input_types = {i.name: i.type for i in model.graph.input}
        self.outputs = [o.name for o in model.graph.output]
        self.output_types = {o.name: o.type for o in model.graph.output}
        self.opsets = [o for o in model.opset_import if o.domain != DOMAIN]
        self.keep_all = keep_all
        self.items = self._split(model.graph)
        self.timings = Timings()
        self.publish: Callable[[str], None] | None = None
        """Told every new position at once (a worker mirrors it where its launcher
        reads it even after a crash)."""
        self._position = "start"

    @property
    def position(self) -> str:
        """Where the rank is: the op it runs or waits in, for messages about hangs."""
        return self._position

    @position.setter
    def position(self, value: str) -> None:
        self._position = value
        if self.publish is not None:
            self.publish(value)

    def _split(self, graph: onnx.GraphProto) -> list[_Run | onnx.NodeProto]:
        items: list[_Run | onnx.NodeProto] = []
        current: list[onnx.NodeProto] = []
        for node in graph.node:
            if node.domain == DOMAIN:
                if node.op_type not in COMM_OPS:
                    raise ExecutionError(
                        f"unknown communication op {node.op_type!r}", where=self._where(node)
                    )
                if current:
                    items.append(_Run(current))
                    current = []
                items.append(node)
            else:
                current.append(node)
        if current:
            items.append(_Run(current))
        later: set[str] = set(self.outputs)
        for item in reversed(items):
            if isinstance(item, _Run):
                made = {o for n in item.nodes for o in n.output if o}
                item.outputs = sorted(v for v in made if self.keep_all or v in later)
                reads = {i for n in item.nodes for i in _reads(n)} - made
                item.inputs = sorted(reads)
                later |= reads
            else:
                later |= {i for i in item.input if i}
        return items

    @property
    def comm_nodes(self) -> list[onnx.NodeProto]:
        """The comm nodes in the order the program issues them."""
        return [item for item in self.items if isinstance(item, onnx.NodeProto)]

    def _where(self, node: onnx.NodeProto) -> str:
        return f"rank {self.rank}: {node.op_type} {node.name!r}"

    def _session(self, run: _Run, env: Mapping[str, np.ndarray]) -> Any:
        import onnxruntime as ort

        inputs = [self._type_of(v, env[v]) for v in run.inputs]
        outputs = [helper.make_empty_tensor_value_info(v) for v in run.outputs]
        graph = helper.make_graph(run.nodes, f"rank{self.rank}", inputs, outputs)
        model = helper.make_model(graph, opset_imports=self.opsets)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if self.threads:
            # Ranks sharing a machine share its cores: a fixed share each, and no
            # spinning while a rank waits on its peers.
            options.intra_op_num_threads = self.threads
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            return ort.InferenceSession(
                model.SerializeToString(),
                options,
                providers=list(self.providers),
                disabled_optimizers=list(ORT_DISABLED_OPTIMIZERS),
            )
        except Exception as exc:
            raise ExecutionError(
                f"onnxruntime cannot load the run starting {run.nodes[0].name!r}: {_first(exc)}",
                where=f"rank {self.rank}",
            ) from None

    def _type_of(self, name: str, value: Any) -> onnx.ValueInfoProto:
        """A run input's type: sequences and optionals as the device model declares
        them (a value cannot say what an empty sequence holds), tensors as they are.
        """
        declared = self.input_types.get(name)
        if declared is not None and declared.WhichOneof("value") not in (None, "tensor_type"):
            info = onnx.ValueInfoProto(name=name)
            info.type.CopyFrom(declared)
            return info
        if isinstance(value, list):
            first = next((np.asarray(e) for e in value), np.zeros(0, np.float32))
            return helper.make_tensor_sequence_value_info(
                name, helper.np_dtype_to_tensor_dtype(first.dtype), None
            )
        return helper.make_tensor_value_info(
            name, helper.np_dtype_to_tensor_dtype(value.dtype), list(value.shape)
        )

    def check_feeds(self, feeds: Mapping[str, np.ndarray]) -> None:
        """Every graph input is fed with the shape the plan was compiled for."""
        for name in self.inputs:
            if name not in feeds:
                raise ExecutionError(f"no value fed for input {name!r}", where=f"rank {self.rank}")
            want = _shape(self.input_types[name])
            if want is None:
                continue
            got = list(np.shape(feeds[name]))
            if not _matches(want, got):
                raise ExecutionError(
                    f"input {name!r} has shape {got}, the plan was compiled for {want}",
                    where=f"rank {self.rank}",
                )

    def forward(
        self, feeds: Mapping[str, np.ndarray], microbatch: int = 0
    ) -> Generator[CommRequest, np.ndarray | None, dict[str, np.ndarray]]:
        """Run one micro-batch; yields comm requests, returns the graph outputs by name
        (every value the rank held, weights included, when built with ``keep_all``).
        """
        self.check_feeds(feeds)
        env: dict[str, np.ndarray] = dict(self.weights)
        env.update({k: _fed(feeds[k]) for k in self.inputs})
        compute = comm = 0.0
        for item in self.items:
            if isinstance(item, _Run):
                self.position = f"the node run starting {item.nodes[0].name!r}"
                if item.session is None:  # built once, outside the timed part
                    item.session = self._session(item, env)
                start = time.perf_counter()
                try:
                    got = item.session.run(item.outputs, {v: env[v] for v in item.inputs})
                except Exception as exc:
                    raise ExecutionError(
                        f"the node run starting {item.nodes[0].name!r} failed "
                        f"(micro-batch {microbatch}): {_first(exc)}",
                        where=f"rank {self.rank}",
                    ) from None
                env.update(zip(item.outputs, got, strict=True))
                compute += time.perf_counter() - start
                continue
            value = env[item.input[0]] if item.op_type != "Recv" else None
            request = CommRequest(self.rank, item, value, microbatch)
            self.position = request.describe()
            start = time.perf_counter()
            result = yield request
            comm += time.perf_counter() - start
            if item.op_type == "Recv":
                _check_recv(request, result)
            if item.output and item.output[0]:
                if result is None:
                    raise ExecutionError("no result", where=self._where(item))
                env[item.output[0]] = result
        self.position = "done"
        self.timings.compute.append(compute)
        self.timings.comm.append(comm)
        if self.keep_all:
            return env
        for name in self.outputs:
            want = _shape(self.output_types[name])
            if want is None:  # sequences, optionals, or a tensor of unknown rank
                continue
            got = list(np.shape(env[name]))
            if not _matches(want, got):
                raise ExecutionError(
                    f"output {name!r} has shape {got}, the plan says {want} "
                    f"(micro-batch {microbatch})",
                    where=f"rank {self.rank}",
                )
        return {name: env[name] for name in self.outputs}


def expected_shape(request: CommRequest) -> list[int] | None:
    """The shape a Recv declares for what it receives."""
    shape = attr(request.node, "shape")
    return None if shape is None else [int(d) for d in shape]


def recv_dtype(node: onnx.NodeProto) -> np.dtype:
    """The numpy dtype a Recv declares (ONNX TensorProto code in its ``dtype``)."""
    code = int(attr(node, "dtype", onnx.TensorProto.FLOAT))
    return np.dtype(helper.tensor_dtype_to_np_dtype(code))


def _check_recv(request: CommRequest, value: np.ndarray | None) -> None:
    want = expected_shape(request)
    if value is None or (want is not None and list(value.shape) != want):
        got = None if value is None else list(value.shape)
        raise ExecutionError(
            f"{request.describe()} expected shape {want}, got {got} from rank {request.peer}",
            where=f"rank {request.rank}",
        )


def _fed(value: Any) -> Any:
    """Tensors as arrays; sequences (lists) and absent optionals (None) as they are."""
    if value is None:
        return None
    if isinstance(value, list | tuple):
        return [np.asarray(e) for e in value]
    return np.asarray(value)


def _reads(node: onnx.NodeProto) -> list[str]:
    """The node's inputs and the outer values its subgraphs (If/Loop/Scan) read."""
    names = [i for i in node.input if i]
    for a in node.attribute:
        graphs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
        for g in graphs:
            inner = {i.name for i in g.input} | {t.name for t in g.initializer}
            for n in g.node:
                inner |= {o for o in n.output if o}
            for n in g.node:
                names += [i for i in _reads(n) if i not in inner]
    return names


def _shape(tp: onnx.TypeProto) -> list[int | None] | None:
    if not tp.HasField("tensor_type") or not tp.tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in tp.tensor_type.shape.dim]


def _matches(want: list[int | None], got: list[int]) -> bool:
    return len(want) == len(got) and all(
        w is None or w == g for w, g in zip(want, got, strict=True)
    )


def _first(exc: BaseException) -> str:
    """Errors from onnxruntime span lines; the first says what went wrong."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
