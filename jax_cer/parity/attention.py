"""References for the attention kernels' correctness rules (spec attention-kernels.md).

- :func:`attention64`: the kernels' semantics in float64 numpy (output, and dQ/dK/dV given dO).
- :func:`low_precision_attention`: plain JAX attention computed in the inputs' own dtype, the
  baseline of the FlashAttention rule for float16 / bfloat16.

Used by the kernel tests and by ``python -m repro.kernel_check``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def visible(b: int, sq: int, sk: int, lens=None, causal: bool = False) -> np.ndarray:
    """``[B, 1, Sq, Sk]`` boolean: key j visible to query i."""
    j = np.arange(sk)
    ok = np.ones((b, 1, sq, sk), bool)
    if causal:
        ok &= j[None, None, None, :] <= np.arange(sq)[None, None, :, None] + (sk - sq)
    if lens is not None:
        ok &= j[None, None, None, :] < np.asarray(lens)[:, None, None, None]
    return ok


def attention64(q, k, v, lens=None, causal=False, scale=None, do=None):
    """Output (and, with ``do``, dq, dk, dv) in float64. Shapes ``[B, S, H, D]``."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    b, sq, _, d = q.shape
    sk = k.shape[1]
    scale = d**-0.5 if scale is None else scale
    s = np.einsum("bqhd,bkhd->bhqk", q, k) * scale
    ok = visible(b, sq, sk, lens, causal)
    s = np.where(ok, s, -np.inf)
    m = np.max(s, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    p = np.where(ok, np.exp(s - m), 0.0)
    total = p.sum(-1, keepdims=True)
    p = p / np.where(total > 0, total, 1.0)
    o = np.einsum("bhqk,bkhd->bqhd", p, v)
    if do is None:
        return o
    do = np.asarray(do, np.float64)
    dv = np.einsum("bhqk,bqhd->bkhd", p, do)
    dp = np.einsum("bqhd,bkhd->bhqk", do, v)
    delta = np.einsum("bqhd,bqhd->bhq", do, o)[..., None]
    ds = p * (dp - delta)
    dq = np.einsum("bhqk,bkhd->bqhd", ds, k) * scale
    dk = np.einsum("bhqk,bqhd->bkhd", ds, q) * scale
    return o, dq, dk, dv


def low_precision_attention(q, k, v, lens, causal: bool):
    """Plain JAX attention computed in the inputs' own dtype: the FlashAttention rule's baseline."""
    sq, sk, d = q.shape[1], k.shape[1], q.shape[-1]
    s = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=q.dtype) * jnp.asarray(d**-0.5, q.dtype)
    j = jnp.arange(sk)
    ok = jnp.ones((1, 1, sq, sk), bool)
    if causal:
        ok = ok & (j[None, :] <= jnp.arange(sq)[:, None] + (sk - sq))
    if lens is not None:
        ok = ok & (j < lens[:, None, None, None])
    s = jnp.where(ok, s, -jnp.inf)
    m = jax.lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True))
    m = jnp.where(jnp.isfinite(m), m, 0)
    p = jnp.where(ok, jnp.exp(s - m), 0)
    total = jnp.sum(p, axis=-1, keepdims=True)
    p = (p / jnp.where(total > 0, total, 1)).astype(q.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", p, v, preferred_element_type=q.dtype)
