"""The compiler's passes, one module each; installed as ``shardc.passes``."""
