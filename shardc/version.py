"""The package version, in a module of its own.

Why not only in ``shardc/__init__.py``: the package root imports the whole public API, so
a module that reads the version from there (synth stamps it as the ONNX producer version,
the CLI prints it, plan.json records it) would import everything above it too.
"""

__version__ = "0.1.0"
