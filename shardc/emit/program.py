"""The ``shardc`` ONNX domain of device files, and how every reader opens them.

Why apart from the programs (:mod:`shardc.plan.program`): this is the ONNX side only, the
comm node types and attributes device files carry and the onnxruntime session the
emitter's load check, the runtime and the reference run share.
"""

from __future__ import annotations

from typing import Any

from shardc.plan.program import COMM_OPS, DOMAIN, DOMAIN_VERSION

__all__ = ["COMM_OPS", "DOMAIN", "DOMAIN_VERSION", "ORT_DISABLED_OPTIMIZERS", "cpu_session",
           "node_attr"]


ORT_DISABLED_OPTIMIZERS = ("MatMulAddFusion",)
"""onnxruntime graph rewrites every session that runs a plan or its model turns off.

Why: onnxruntime's MatMulAddFusion rewrites a 3-D MatMul+Add into Reshape, Gemm, Reshape
and names its new shape constants ``gemm_input_shape``/``gemm_output_shape`` (plus a
``_token_N`` suffix) without looking at the names already in the graph. A file that
onnxruntime's own transformer optimizer wrote (opt_level 1) already holds those names, so
a second session either refuses the file ("Attempt to replace the existing tensor") or,
where the constants arrive as graph inputs as they do in a device program's run, silently
uses its own shape for the file's ("cannot reshape {128,256} to {4,32,1024}"). The fusion
only changes speed, so turning it off keeps every session on the numbers the file means.
"""


def cpu_session(model: Any, *, log_level: int) -> Any:
    """An onnxruntime CPU session on ``model`` with :data:`ORT_DISABLED_OPTIMIZERS` off: the
    reference run of the original and the load check of a device program must see the
    same graph rewrites the runtime does. Raises what onnxruntime raises.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = log_level
    return ort.InferenceSession(
        model.SerializeToString(),
        options,
        providers=["CPUExecutionProvider"],
        disabled_optimizers=list(ORT_DISABLED_OPTIMIZERS),
    )


def node_attr(node: Any, name: str, default: Any = None) -> Any:
    """An ONNX node attribute's Python value (strings decoded), or ``default``: how the
    checker, the runtime and ``explain`` read comm nodes' ``group``/``peer``/``tag``/``axis``.
    """
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            value = helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default
