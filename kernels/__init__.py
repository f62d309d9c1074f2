"""Fused attention kernels in Triton, callable from JAX.

``from jax_cer.kernels import flash_attention`` (public API, stable)::

    out = flash_attention(q, k, v, kv_lengths=None, is_causal=False, scale=None, backend="auto")

q ``[B, Sq, H, D]``, k / v ``[B, Sk, H, D]`` -> ``[B, Sq, H, D]``; differentiable, jit- and
vmap-able, and a drop-in ``attention_fn`` for the fusion models and ``flax.nnx`` attention.
"""

from jax_cer.kernels.flash_attention import BACKENDS, flash_attention
from jax_cer.kernels.reference import xla_attention

__all__ = ["BACKENDS", "flash_attention", "xla_attention"]
