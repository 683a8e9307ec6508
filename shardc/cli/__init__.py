"""The ``shardc`` command line (filled in by shardc.cli.main)."""

from shardc.cli.main import main

__all__ = ["main"]
