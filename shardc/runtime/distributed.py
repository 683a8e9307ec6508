"""One rank of a plan over torch.distributed: the executor a ``torchrun`` script gets.

Each process loads only its own ``device_<rank>.onnx``, runs the standard nodes in
onnxruntime and answers the ``shardc`` comm nodes with the matching torch.distributed
call (``send``/``recv``, ``all_reduce``, ``all_gather``, ``reduce_scatter``,
``all_to_all``). The backend follows the device the process runs on: NCCL next to a CUDA
GPU, HCCL next to an Ascend NPU (``torch_npu``), gloo on CPU; ``SHARDC_DIST_BACKEND``
overrides. ``SHARDC_ORT_THREADS`` caps onnxruntime's threads per rank (the launcher sets
each rank's share of this machine's cores, so ranks do not spin against each other).
The meaning of each comm node is the one in :mod:`shardc.runtime.collectives`.

Why the groups are agreed first: ``torch.distributed.new_group`` must be called by every
process, in the same order, for every group, even by processes outside it. Each rank
knows only its own program's groups, so ranks exchange them once (``all_gather_object``)
and all create the union in sorted order.

With ``check_shapes`` every comm op first exchanges a small header (shape and dtype), so
a rank that computed a wrong shape is named, with the op, instead of corrupting its
peers' buffers or hanging them; ``shardc verify`` turns it on.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from shardc.errors import ExecutionError, OptionError
from shardc.runtime.plandir import PlanDir
from shardc.runtime.program import CommRequest, RankProgram, attr, expected_shape, recv_dtype

_HEADER = 10  # ndim, up to 8 dims, dtype code


def pick_backend() -> str:
    """The torch.distributed backend for the device this process runs on."""
    chosen = os.environ.get("SHARDC_DIST_BACKEND")
    if chosen:
        return chosen
    import torch

    if torch.cuda.is_available():
        return "nccl"
    try:
        import torch_npu  # noqa: F401  (registers torch.npu and the hccl backend)

        if torch.npu.is_available():  # type: ignore[attr-defined]
            return "hccl"
    except ImportError:
        pass
    return "gloo"


def _device_for(backend: str, local_rank: int) -> Any:
    import torch

    if backend == "nccl":
        return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    if backend == "hccl":
        return torch.device("npu", local_rank)
    return torch.device("cpu")


def _providers(backend: str) -> tuple[str, ...]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if backend == "nccl" and "CUDAExecutionProvider" in available:
        return ("CUDAExecutionProvider", "CPUExecutionProvider")
    if backend == "hccl" and "CANNExecutionProvider" in available:
        return ("CANNExecutionProvider", "CPUExecutionProvider")
    return ("CPUExecutionProvider",)


class TorchComm:
    """Answers comm requests with torch.distributed calls on an initialised world."""

    def __init__(self, device: Any, *, check_shapes: bool = False):
        self.device = device
        self.check_shapes = check_shapes
        self.groups: dict[tuple[int, ...], Any] = {}
        self.sending: list[tuple[Any, Any]] = []
        """Sends in flight (work, tensor): a Send never waits for its Recv, so a ring in
        which every rank sends before it receives (ring attention) cannot deadlock;
        :meth:`drain` waits for them where a micro-batch ends."""

    def make_groups(self, mine: set[tuple[int, ...]]) -> None:
        """Create every group any rank uses, on every rank, in one agreed order."""
        import torch.distributed as dist

        everyone: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, sorted(mine))
        world = tuple(range(dist.get_world_size()))
        for group in sorted({tuple(g) for groups in everyone for g in groups}):
            key = tuple(sorted(group))
            if key in self.groups or len(key) < 2:
                continue
            self.groups[key] = None if key == world else dist.new_group(list(key))

    def _tensor(self, value: np.ndarray) -> Any:
        import torch

        return torch.from_numpy(np.ascontiguousarray(value).copy()).to(self.device)

    @staticmethod
    def _array(t: Any) -> np.ndarray:
        return t.detach().cpu().numpy()

    def answer(self, req: CommRequest) -> np.ndarray | None:
        """Perform ``req``; return what its output should hold."""
        import torch.distributed as dist

        if req.op == "Send":
            assert req.value is not None, "a Send carries its value"
            parts = [self._header(req.value)] if self.check_shapes else []
            parts.append(self._tensor(req.value))
            for t in parts:
                self.sending.append((dist.isend(t, dst=req.peer, tag=req.tag), t))
            return None
        if req.op == "Recv":
            want = expected_shape(req) or []
            dtype = recv_dtype(req.node)
            if self.check_shapes:
                got = self._array(self._recv_header(req.peer, req.tag))
                shape, code = _unpack(got)
                if shape != want or code != _code(dtype):
                    raise ExecutionError(
                        f"{req.describe()} expected {dtype}{want}, rank {req.peer} sent "
                        f"{_DTYPES[code] if code < len(_DTYPES) else code}{shape}",
                        where=f"rank {req.rank}",
                    )
            buf = self._tensor(np.empty(want, dtype=dtype))
            dist.recv(buf, src=req.peer, tag=req.tag)
            return self._array(buf)
        return self._collective(req)

    def drain(self) -> None:
        """Wait for every Send in flight."""
        while self.sending:
            work, _ = self.sending.pop(0)
            work.wait()

    def _header(self, value: np.ndarray | None) -> Any:
        assert value is not None
        if value.ndim > _HEADER - 2:
            raise ExecutionError(f"cannot check a {value.ndim}-d value (at most {_HEADER - 2})")
        head = np.zeros(_HEADER, dtype=np.int64)
        head[0] = value.ndim
        head[1 : 1 + value.ndim] = value.shape
        head[-1] = _code(value.dtype)
        return self._tensor(head)

    def _recv_header(self, src: int, tag: int) -> Any:
        import torch.distributed as dist

        head = self._tensor(np.zeros(_HEADER, dtype=np.int64))
        dist.recv(head, src=src, tag=tag)
        return head

    def _collective(self, req: CommRequest) -> np.ndarray:
        import torch.distributed as dist

        group = req.group
        value = req.value
        assert value is not None
        if len(group) < 2:
            return value
        # torch numbers a group's members in ascending rank order; the node lists them
        # in its own order, so pieces are permuted between the two.
        by_rank = sorted(group)
        if tuple(by_rank) not in self.groups:
            raise ExecutionError(
                f"{req.describe()}: group was never created", where=f"rank {req.rank}"
            )
        pg = self.groups[tuple(by_rank)]
        if self.check_shapes:
            heads = [self._tensor(np.zeros(_HEADER, dtype=np.int64)) for _ in group]
            dist.all_gather(heads, self._header(value), group=pg)
            seen = {r: _unpack(self._array(h))[0] for r, h in zip(by_rank, heads, strict=True)}
            if len({tuple(s) for s in seen.values()}) != 1:
                raise ExecutionError(
                    f"{req.describe()}: members disagree on the shape: {seen}",
                    where=f"rank {req.rank}",
                )
        n = len(group)
        axis = int(attr(req.node, "axis", -1))
        concat = attr(req.node, "concat_axis")
        cat_axis = axis if concat is None else int(concat)
        if req.op == "AllReduce":
            t = self._tensor(value)
            dist.all_reduce(t, group=pg)
            return self._array(t)
        if req.op == "AllGather":
            t = self._tensor(value)
            outs = [self._tensor(np.empty_like(value)) for _ in range(n)]
            dist.all_gather(outs, t, group=pg)
            got = dict(zip(by_rank, outs, strict=True))
            return np.concatenate([self._array(got[m]) for m in group], axis=axis)
        pieces = dict(zip(group, np.split(value, n, axis=axis), strict=True))
        ins = [self._tensor(pieces[m]) for m in by_rank]
        if req.op == "ReduceScatter":
            out = self._tensor(np.empty_like(pieces[group[0]]))
            dist.reduce_scatter(out, ins, group=pg)
            return self._array(out)
        if req.op == "AllToAll":
            outs = [self._tensor(np.empty_like(pieces[group[0]])) for _ in range(n)]
            dist.all_to_all(outs, ins, group=pg)
            got = dict(zip(by_rank, outs, strict=True))
            return np.concatenate([self._array(got[m]) for m in group], axis=cat_axis)
        raise ExecutionError(f"unknown collective {req.op!r}", where=f"rank {req.rank}")


_DTYPES = tuple(
    np.dtype(t)
    for t in ("float32", "float64", "float16", "int64", "int32", "int16", "int8", "uint8", "bool")
)
"""The dtypes a shape header can name, by code (99: any other)."""


def _code(dtype: np.dtype) -> int:
    return _DTYPES.index(np.dtype(dtype)) if np.dtype(dtype) in _DTYPES else 99


def _unpack(head: np.ndarray) -> tuple[list[int], int]:
    ndim = int(head[0])
    return [int(d) for d in head[1 : 1 + ndim]], int(head[-1])


class RankRunner:
    """The current rank's executor: ``runner.run(feeds)`` runs one micro-batch forward.

    Under ``torchrun`` the rank and world size come from ``RANK`` and ``WORLD_SIZE``
    (and the rendezvous from ``MASTER_ADDR``/``MASTER_PORT``); the process group is
    initialised unless the script already did. Every rank must call :meth:`run` the same
    number of times; ranks of later stages ignore their feeds.
    """

    def __init__(
        self,
        plan: str | Path | PlanDir,
        *,
        rank: int | None = None,
        world_size: int | None = None,
        backend: str | None = None,
        timeout: float = 300.0,
        check_shapes: bool = False,
    ):
        import torch.distributed as dist

        self.plan = plan if isinstance(plan, PlanDir) else PlanDir(plan)
        self.rank = _env_int("RANK", rank)
        world = _env_int("WORLD_SIZE", world_size)
        if world != self.plan.world_size:
            raise OptionError(
                f"the plan in {self.plan.path} has {self.plan.world_size} ranks, "
                f"but WORLD_SIZE is {world}",
                hint=f"launch with torchrun --nproc-per-node {self.plan.world_size}",
            )
        self.backend = backend or pick_backend()
        self._owns_group = not dist.is_initialized()
        if self._owns_group:
            dist.init_process_group(
                self.backend,
                rank=self.rank,
                world_size=world,
                timeout=_dt.timedelta(seconds=timeout),
            )
        local = int(os.environ.get("LOCAL_RANK", self.rank))
        threads = os.environ.get("SHARDC_ORT_THREADS")
        self.program = RankProgram(
            self.plan.device_model(self.rank),
            self.rank,
            providers=_providers(self.backend),
            threads=int(threads) if threads else None,
        )
        self.plan.check_order(self.rank, self.program.comm_nodes)
        device = _device_for(self.backend, local)
        if device.type in ("cuda", "npu"):
            # NCCL and HCCL object collectives (the group exchange) use the current device
            import torch

            getattr(torch, device.type).set_device(device)
        self.comm = TorchComm(device, check_shapes=check_shapes)
        self.comm.make_groups(_groups_of(self.program))
        info = self.plan.ranks[self.rank]
        self.stage = info.stage
        self.replica = info.replica

    @property
    def needs_inputs(self) -> bool:
        """Whether this rank reads the model's inputs (first pipeline stage)."""
        return bool(self.program.inputs)

    @property
    def produces_outputs(self) -> bool:
        """Whether this rank ends with the model's outputs (last pipeline stage)."""
        return bool(self.program.outputs)

    def run(self, feeds: Mapping[str, np.ndarray] | None = None, microbatch: int = 0) -> dict:
        """One micro-batch forward; the model's outputs on last-stage ranks, else ``{}``."""
        gen = self.program.forward(feeds or {}, microbatch)
        try:
            request = next(gen)
            while True:
                request = gen.send(self.comm.answer(request))
        except StopIteration as done:
            self.comm.drain()
            return done.value
        except ExecutionError:
            raise
        except Exception as exc:  # torch.distributed raises RuntimeError and friends
            what = str(exc).splitlines()[0] if str(exc) else repr(exc)
            raise ExecutionError(
                f"{self.program.position} failed: {what}",
                where=f"rank {self.rank}",
            ) from None

    def run_step(
        self, feeds: Mapping[int, Mapping[str, np.ndarray]] | Sequence[Mapping[str, np.ndarray]]
    ) -> dict[int, dict[str, np.ndarray]]:
        """The step's micro-batches in the schedule's order; outputs by micro-batch."""
        import torch.distributed as dist

        table = dict(enumerate(feeds)) if isinstance(feeds, Sequence) else dict(feeds)
        dist.barrier()  # start together, so comm times measure the step, not start-up skew
        return {m: self.run(table.get(m, {}), m) for m in self.plan.microbatch_order(self.rank)}

    def close(self) -> None:
        """Tear down the process group if this runner created it."""
        import torch.distributed as dist

        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self._owns_group = False


def _groups_of(program: RankProgram) -> set[tuple[int, ...]]:
    found: set[tuple[int, ...]] = set()
    for item in program.items:
        if isinstance(item, onnx.NodeProto) and attr(item, "group") is not None:
            found.add(tuple(int(g) for g in attr(item, "group")))
    return found


def _env_int(name: str, given: int | None) -> int:
    if given is not None:
        return given
    value = os.environ.get(name)
    if value is None:
        raise OptionError(
            f"{name} is not set", hint="launch with torchrun, or pass rank= and world_size="
        )
    try:
        return int(value)
    except ValueError:
        raise OptionError(f"{name}={value!r} is not an integer") from None


def runner_from_env(plan: str | Path | PlanDir, **options: Any) -> RankRunner:
    """The executor for the rank ``torchrun`` started this process as."""
    return RankRunner(plan, **options)
