"""jax-cer: compound / multimodal emotion recognition models in JAX, with parity to the originals."""

__version__ = "0.1.0"
