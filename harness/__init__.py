"""harness: the reference benchmark for natural-language explanations of sparse-coder latents."""

__version__ = "0.1.0"
