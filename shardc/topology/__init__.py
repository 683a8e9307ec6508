"""shardc.topology: describe a cluster in a small language; query it as a graph.

Why a language and not JSON: a CloudMatrix384 is 384 NPUs, 192 CPUs, 384 L1 switch
ports and three planes, and its description must fit on a screen, carry its sources as
comments, and catch unit mistakes (bits for bytes, GB for GB/s) before they reach a cost
estimate. A tour, in one file::

    # Units are required: TFLOPS PFLOPS TOPS | GB GiB TB TiB | GB/s TB/s Gb/s | ns us ms s
    include "kinds/nvidia.topo"            # relative to this file, within the search path
    let nodes = 32                         # a parameter; `--set nodes=4` overrides it

    kind h100 {                            # a device kind (dense peaks, per device)
        compute bf16, fp16 989.4 TFLOPS
        compute fp8 1978.9 TFLOPS
        memory 80 GB
        memory_bandwidth 3.35 TB/s
        efficiency compute 0.6             # optional achievable fractions
        tag role train                     # free-form tags; `role host` = planner skips it
    }
    kind h800 extends h100 { }             # copy a kind, then override

    node[0..nodes-1] {                     # a group, elaborated once per index
        gpu[0..7]: h100                    # devices node0.gpu0 ... node31.gpu7
        switch nvswitch: nvlink {          # per-node fabric: replicated with the group
            members gpu[*]
            bandwidth 450 GB/s             # per direction, per member port
            latency 936.25 ns              # member to member through the switch
        }
    }
    network ib: ib {                       # leaf/spine network: a separate plane
        members node[*].gpu[*]
        bandwidth 400 Gb/s                 # bits! = 50 GB/s
        latency 1 us
        rails                              # gpu i of every node on rail i
        leaf 32                            # members per leaf switch
        oversubscription 1                 # leaf down:up ratio
    }
    link node0.gpu0 <-> node1.gpu0: pcie { bandwidth 64 GB/s; latency 1 us }

Statements end at a newline or ``;``. Fabrics: ``switch`` (members meet at one switch;
members may be switches, which builds multi-tier planes), ``mesh`` (a link per pair),
``network`` (leaf/spine, optionally rail-optimised and oversubscribed), ``link A <-> B``
(pairwise, or one to many). Every fabric has a link kind (nvlink, ub, hccs, pcie, rdma,
roce, ib, ethernet, vpc, loopback, sio, c2c ...) and a ``plane`` (default: the kind);
routes never mix planes. Patterns select members: ``node[*].gpu[0..3]``, ``node[2].*``;
a group stands for all its devices; ``*`` matches devices and groups, and a switch is
selected by its name (``members node[*].ub_l1``).

Devices of a kind tagged ``role host`` (the Kunpeng CPUs of CloudMatrix384, Grace) are
part of the topology — they have links and carry traffic — but
:attr:`Topology.compute_devices` leaves them out, and so does the planner.

Entry points: :func:`load_topology` (files or text; includes; ``--set`` overrides),
:func:`parse` (syntax only), and the :class:`Topology` it returns, with
:meth:`~Topology.route`, :meth:`~Topology.bandwidth_domains`,
:meth:`~Topology.collective`, :meth:`~Topology.canonical`, :meth:`~Topology.to_json`
and :attr:`~Topology.graph` (networkx). Errors are :class:`shardc.errors.TopologyError`
with ``file:line:col``, the offending line with a caret, and a hint.
"""

from __future__ import annotations

from shardc.topology.canonical import canonical, natural_key, to_dsl, to_json
from shardc.topology.fabrics import LINK_KINDS
from shardc.topology.loader import load_topology
from shardc.topology.model import DTYPES, Device, DeviceKind, Link, Switch, Topology
from shardc.topology.parser import parse
from shardc.topology.queries import CollectiveBandwidth, Domain, Route

__all__ = [
    "DTYPES",
    "LINK_KINDS",
    "CollectiveBandwidth",
    "Device",
    "DeviceKind",
    "Domain",
    "Link",
    "Route",
    "Switch",
    "Topology",
    "canonical",
    "load_topology",
    "natural_key",
    "parse",
    "to_dsl",
    "to_json",
]
