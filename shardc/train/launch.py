"""torchrun commands whose node and local ranks are the plan's placement, and the start-up
check that a running rank is where the plan put it.

torchrun numbers ranks node by node (global rank = node rank x processes per node + local
rank), so a plan maps onto it when each node's ranks are one contiguous run of equal
length; the accelerator a local rank opens (``cuda:LOCAL_RANK``) is made the plan's device
by listing the node's devices in local-rank order in ``CUDA_VISIBLE_DEVICES``.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
import warnings
from dataclasses import dataclass

from shardc.errors import ShardcWarning
from shardc.train.planview import PlanView, TrainPlanError, node_of

_INDEX = re.compile(r"(\d+)$")


@dataclass(frozen=True)
class NodeLaunch:
    """What to run on one node of the plan."""

    node: str
    """The plan's node name (empty for a single-host topology)."""
    node_rank: int
    ranks: tuple[int, ...]
    """Global ranks the node runs, local rank 0 first."""
    visible_devices: str | None
    """``CUDA_VISIBLE_DEVICES`` making local rank i the plan's device (None on CPUs)."""
    argv: tuple[str, ...]

    def command(self) -> str:
        """The shell line to run on the node."""
        env = f"CUDA_VISIBLE_DEVICES={self.visible_devices} " if self.visible_devices else ""
        return env + shlex.join(self.argv)


def node_layout(view: PlanView) -> list[tuple[str, tuple[int, ...]]]:
    """(node, its global ranks) in rank order; TrainPlanError when torchrun cannot number
    the plan's ranks that way.
    """
    nodes: list[tuple[str, list[int]]] = []
    for r in view.ranks:
        node = node_of(r.device)
        if nodes and nodes[-1][0] == node:
            nodes[-1][1].append(r.rank)
        elif any(n == node for n, _ in nodes):
            raise TrainPlanError(
                f"rank {r.rank} on {r.device} returns to node {node!r} after other nodes; "
                "torchrun gives each node one contiguous run of ranks"
            )
        else:
            nodes.append((node, [r.rank]))
    sizes = {len(rs) for _, rs in nodes}
    if len(sizes) > 1:
        raise TrainPlanError(
            f"the plan runs {sorted(sizes)} ranks on different nodes; torchrun starts the same "
            "number of processes on every node"
        )
    return [(n, tuple(rs)) for n, rs in nodes]


def torchrun_commands(
    view: PlanView,
    script: list[str],
    *,
    master_addr: str = "127.0.0.1",
    master_port: int = 29500,
    simulate_devices: bool = False,
) -> list[NodeLaunch]:
    """One torchrun command per node of the plan."""
    layout = node_layout(view)
    out = []
    for i, (node, ranks) in enumerate(layout):
        argv = [sys.executable, "-m", "torch.distributed.run"]
        if len(layout) == 1:
            argv += ["--standalone"]
        else:
            argv += [f"--nnodes={len(layout)}", f"--node-rank={i}",
                     f"--master-addr={master_addr}", f"--master-port={master_port}"]  # fmt: skip
        argv += [f"--nproc-per-node={len(ranks)}", *script]
        devices = [view.rank(r).device for r in ranks]
        visible = None
        if not simulate_devices and not devices[0].startswith("cpu"):
            idx = [_INDEX.search(d) for d in devices]
            visible = ",".join(m.group(1) for m in idx if m) if all(idx) else None
        out.append(NodeLaunch(node, i, ranks, visible, tuple(argv)))
    return out


def read_hostfile(path: str, nodes: list[NodeLaunch]) -> list[str]:
    """Hosts for the plan's nodes from a DeepSpeed/MPI-style hostfile (``host [slots=N]`` per
    line, ``#`` comments), node i on line i; slots, when given, must be the node's ranks.
    """
    hosts: list[tuple[str, int | None, int]] = []
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.split("#", 1)[0].split()
            if not line:
                continue
            slots = None
            for extra in line[1:]:
                key, _, value = extra.partition("=")
                if key != "slots" or not value.isdigit():
                    raise TrainPlanError(f"{path}:{lineno}: expected `host [slots=N]`")
                slots = int(value)
            hosts.append((line[0], slots, lineno))
    if len(hosts) < len(nodes):
        raise TrainPlanError(f"{path}: {len(hosts)} host(s) for the plan's {len(nodes)} nodes")
    for (host, slots, lineno), n in zip(hosts, nodes, strict=False):
        if slots is not None and slots != len(n.ranks):
            raise TrainPlanError(
                f"{path}:{lineno}: {host} has slots={slots} and the plan runs {len(n.ranks)} "
                f"ranks on node {n.node or n.node_rank}"
            )
    return [h for h, _, _ in hosts[: len(nodes)]]


def check_placement(view: PlanView, rank: int) -> None:
    """Warn when torchrun started ``rank`` on another node or local rank than the plan's."""
    local = os.environ.get("LOCAL_RANK")
    group = os.environ.get("GROUP_RANK")
    if local is None:
        return
    try:
        layout = node_layout(view)
    except TrainPlanError as exc:
        warnings.warn(f"placement not checked: {exc.message}", ShardcWarning, stacklevel=3)
        return
    for node_rank, (_node, ranks) in enumerate(layout):
        if rank in ranks:
            want_local = ranks.index(rank)
            where = view.rank(rank).device
            if int(local) != want_local or (group is not None and int(group) != node_rank):
                warnings.warn(
                    f"rank {rank} runs as node {group} local rank {local}; the plan puts it "
                    f"on {where} (node {node_rank}, local rank {want_local}): launch with "
                    "`shardc launch` so the measured step matches the plan",
                    ShardcWarning,
                    stacklevel=3,
                )
            return
