"""shardc.topology."""
