"""``shardc synth``: the ONNX graph of a transformer of any size, weights declared not written.

Users plan for models they do not have: a 1 T-parameter GPT cannot be exported here with
weights, but its graph -- every op, shape and dtype, each weight an external-data
reference into a file that is never written -- is a few MB, and the frontend plans from
shapes and dtypes alone (``onnx.load(path, load_external_data=False)``). Small models can
be given real seeded random weights instead, through the same builder, so the graph the
planner reads is the graph that runs in onnxruntime.

API::

    from shardc.synth import SynthConfig, build, save, parameter_count, forward_flops
    cfg = SynthConfig(layers=128, hidden=25600, heads=160, vocab=51200, dtype="bf16")
    model = build("gpt", cfg)                 # onnx.ModelProto, weights declared
    save(model, "gpt1t.onnx")                 # gpt1t.onnx; gpt1t.weights.bin not written
    parameter_count("gpt", cfg)               # closed form, equals the graph's
    forward_flops("gpt", cfg, batch=1, seq=2048)

Modules: `config` (options, defaults, validation), `weights` (declared vs random
weights, external-data layout), `graph` (the builder), `layers` and `moe` (the blocks),
`models` (the three architectures and `build`), `counts` (closed forms), `store` (`save`).
"""

from __future__ import annotations

from shardc.synth.config import ARCHS, DTYPES, Resolved, SynthConfig, capacity, resolve
from shardc.synth.counts import (
    active_parameter_count,
    flops_per_token,
    forward_flops,
    parameter_count,
    weight_bytes,
)
from shardc.synth.models import build, build_phases
from shardc.synth.store import Saved, graph_parameters, save, weights_path_for

__all__ = [
    "ARCHS",
    "DTYPES",
    "Resolved",
    "Saved",
    "SynthConfig",
    "active_parameter_count",
    "build",
    "build_phases",
    "capacity",
    "flops_per_token",
    "forward_flops",
    "graph_parameters",
    "parameter_count",
    "resolve",
    "save",
    "weight_bytes",
    "weights_path_for",
]
