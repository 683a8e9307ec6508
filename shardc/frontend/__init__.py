"""shardc.frontend."""
