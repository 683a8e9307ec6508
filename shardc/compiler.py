"""The top-level recipe: model in, analysed (and later partitioned) state out.

The pass order is declared here in one place; the CLI and the Python API both call
:func:`analyse`, so a plan made from the shell and one made in a script are the same.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from shardc.frontend import ModelLike, load_model
from shardc.passes import annotate_costs
from shardc.pipeline import CompileOptions, CompileState, Pass, Pipeline, PipelineResult


def default_passes() -> list[Pass]:
    """The passes ``shardc compile`` runs, in order."""
    return [annotate_costs.PASS]


def analyse(
    model: ModelLike,
    *,
    dims: Mapping[str, int] | None = None,
    custom_flops: Mapping[str, float] | None = None,
    topology: Any = None,
    example_inputs: Any = None,
    dump_after: Sequence[str] = (),
    verify: bool = False,
    on_pass: Callable[[str, int, int], None] | None = None,
) -> PipelineResult:
    """Load ``model`` and run the default passes over it."""
    options = CompileOptions(dims=dict(dims or {}), custom_flops=dict(custom_flops or {}))
    loaded = load_model(model, dims=options.dims, example_inputs=example_inputs)
    state = CompileState(model=loaded, graph=loaded.graph, options=options, topology=topology)
    return Pipeline(default_passes()).run(
        state, verify=verify, dump_after=dump_after, on_pass=on_pass
    )
