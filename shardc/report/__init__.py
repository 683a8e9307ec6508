"""shardc.report."""
