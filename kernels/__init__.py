"""Fused attention kernels in Triton, callable from JAX, and the XLA attention of the same semantics.

``from jax_cer.kernels import flash_attention`` (public API, stable)::

    out = flash_attention(q, k, v, kv_lengths=None, is_causal=False, scale=None, backend="auto")

q ``[B, Sq, H, D]``, k / v ``[B, Sk, H, D]`` -> ``[B, Sq, H, D]``; differentiable, jit- and
vmap-able, and a drop-in ``attention_fn`` for the fusion models and ``flax.nnx`` attention.
:func:`xla_attention` (the ``xla`` backend) and :func:`dot_product_attention` (the same with
Flax's signature, the models' default ``attention_fn``) live in :mod:`jax_cer.kernels.xla`.
Importing the package neither imports Triton nor initialises a JAX backend.
"""

import importlib.machinery
import importlib.util
import os
import sys

if __name__ == "kernels":
    # This folder installs as jax_cer.kernels. Run from the repository's root, the root is on sys.path
    # and the folder would shadow the PyPI package ``kernels`` (which transformers imports): load
    # that package in its place, or say what this folder is.
    _root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    _spec = importlib.machinery.PathFinder.find_spec(
        "kernels", [p for p in sys.path if os.path.abspath(p or os.curdir) != _root]
    )
    if _spec is None or _spec.loader is None:
        raise ImportError("the repository's kernels/ folder is the package jax_cer.kernels: import jax_cer.kernels")
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["kernels"] = _module
    _spec.loader.exec_module(_module)
else:
    from jax_cer.kernels.flash_attention import BACKENDS, flash_attention
    from jax_cer.kernels.xla import AttentionFn, dot_product_attention, xla_attention

    __all__ = ["BACKENDS", "AttentionFn", "dot_product_attention", "flash_attention", "xla_attention"]
