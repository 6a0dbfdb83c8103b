"""sbitnet: Sparse-BitNet (1.58-bit, N:M-sparse) language models in JAX."""

__version__ = "0.1.0"
