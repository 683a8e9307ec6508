"""shardc.synth."""
