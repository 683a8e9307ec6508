"""Exporting a ``torch.nn.Module`` on the fly.

Uses the dynamo exporter at opset 18, the combination that works with the pinned torch
(down-converting to 17 breaks exported graphs). torch is imported only here, so planning
ONNX files never pays for it.
"""

from __future__ import annotations

from typing import Any

import onnx

from shardc.errors import ModelError

OPSET = 18


def export_module(module: Any, example_inputs: Any) -> onnx.ModelProto:
    """Export ``module`` called on ``example_inputs`` (a tensor, tuple, or kwargs dict)."""
    if example_inputs is None:
        raise ModelError(
            f"cannot export {type(module).__name__}: no example inputs",
            hint="pass example_inputs=(tensor, ...) matching the module's forward()",
        )
    try:
        import torch
    except ImportError:
        raise ModelError(
            "exporting a torch.nn.Module needs torch", hint="pip install 'shardc[torch]'"
        ) from None
    args, kwargs = _split_inputs(example_inputs)
    try:
        module.eval()
        with torch.no_grad():
            program = torch.onnx.export(
                module,
                args,
                kwargs=kwargs,
                dynamo=True,
                opset_version=OPSET,
                external_data=False,
                verbose=False,
            )
        if program is None:
            raise RuntimeError("the exporter returned no program")
        return program.model_proto
    except ModelError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"torch.onnx.export failed for {type(module).__name__}: {first[:300]}",
            hint="check that example_inputs match forward(); for transformers MoE models call "
            "model.set_experts_implementation('batched_mm') first; or export yourself "
            "and pass the .onnx file",
        ) from exc


def _split_inputs(example_inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, tuple | list):
        return tuple(example_inputs), {}
    return (example_inputs,), {}
