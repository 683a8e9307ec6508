"""shardc.ir."""
