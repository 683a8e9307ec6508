"""Turning the IR (and later a plan) back into files people and runtimes use."""

from shardc.frontend.onnx_model import graph_proto, model_proto, node_proto

__all__ = ["graph_proto", "model_proto", "node_proto"]
