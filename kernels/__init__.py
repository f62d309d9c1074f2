"""Fused attention kernels in Triton, callable from JAX, and the XLA attention of the same semantics.

``from jax_cer.kernels import flash_attention`` (public API, stable)::

    out = flash_attention(q, k, v, kv_lengths=None, is_causal=False, scale=None, backend="auto")

q ``[B, Sq, H, D]``, k / v ``[B, Sk, H, D]`` -> ``[B, Sq, H, D]``; differentiable, jit- and
vmap-able, and a drop-in ``attention_fn`` for the fusion models and ``flax.nnx`` attention.
:func:`xla_attention` (the ``xla`` backend) and :func:`dot_product_attention` (the same with
Flax's signature, the models' default ``attention_fn``) live in :mod:`jax_cer.kernels.xla`.
Importing the package neither imports Triton nor initialises a JAX backend.
"""

from jax_cer.kernels.flash_attention import BACKENDS, flash_attention
from jax_cer.kernels.xla import AttentionFn, dot_product_attention, xla_attention

__all__ = ["BACKENDS", "AttentionFn", "dot_product_attention", "flash_attention", "xla_attention"]
