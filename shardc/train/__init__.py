"""Training on torch with a shardc plan.

:func:`apply` turns a compiled plan into torch's own parallelism on every rank of a
``torchrun`` job (DeviceMesh, DTensor tensor/sequence parallelism, FSDP2, pipelining,
checkpointing); :func:`parallelize` compiles then applies. :mod:`shardc.train.export`
writes the plan as Megatron-LM arguments or a torchtitan config.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shardc.train.planview import PlanView, TrainPlanError, plan_view

if TYPE_CHECKING:
    from torch import nn

    from shardc.train.step import ParallelModel

__all__ = ["PlanView", "TrainPlanError", "apply", "parallelize", "plan_view"]


def apply(plan: Any, model: nn.Module, **options: Any) -> ParallelModel:
    """Shard ``model`` as ``plan`` says on this rank; see :func:`shardc.train.parallel.apply`."""
    from shardc.train.parallel import apply as _apply

    return _apply(plan, model, **options)


def parallelize(
    model: nn.Module,
    topology: Any,
    *,
    example_inputs: Any,
    loss_fn: Any = None,
    simulate_devices: bool = False,
    **compile_options: Any,
) -> ParallelModel:
    """Compile ``model`` for ``topology`` and apply the plan on this rank.

    Every rank compiles (the compiler is deterministic: same inputs, same plan), so no
    plan has to be shipped between processes. ``compile_options`` go to
    :func:`shardc.compile` (``pins``, ``devices``, ``microbatches``, ``zero`` ...).
    """
    from shardc.api import compile as compile_plan

    compile_options.setdefault("quiet", True)
    plan = compile_plan(model, topology, example_inputs=example_inputs, **compile_options)
    model.train()  # the exporter left it in eval mode
    return apply(plan, model, loss_fn=loss_fn, simulate_devices=simulate_devices)
