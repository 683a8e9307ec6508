"""shardc.emit."""
