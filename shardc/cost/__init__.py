"""shardc.cost."""
