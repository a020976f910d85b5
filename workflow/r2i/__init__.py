"""Region-to-Image Distillation (R2I) pipeline library."""
__version__ = "0.1.0"
