"""Attention in plain JAX with the kernels' exact semantics: the ``xla`` backend.

``softmax(scale * q k^T + bias) v`` over ``[batch..., S, H, D]``, with the masks of the kernels:
key ``j`` is visible to query ``i`` when ``j < kv_lengths[b]``, ``mask`` allows it and, if causal,
``j <= i + Sk - Sq`` (bottom-right aligned, as FlashAttention 2.1+ and cuDNN). A query row that
sees no key returns zeros, with zero gradients. Logits and softmax run in float32 (or float64)
whatever the input dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def visible(sq: int, sk: int, *, lengths=None, is_causal: bool = False, batch_shape=()) -> jax.Array:
    """Boolean ``[batch..., 1, Sq, Sk]`` (heads broadcast): which keys each query sees."""
    j = jnp.arange(sk)
    ok = jnp.ones((sq, sk), bool)
    if is_causal:
        ok = ok & (j[None, :] <= jnp.arange(sq)[:, None] + (sk - sq))
    ok = jnp.broadcast_to(ok, (*batch_shape, 1, sq, sk))
    if lengths is not None:
        ok = ok & (j < jnp.asarray(lengths)[..., None, None, None])
    return ok


def xla_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    lengths=None,
    is_causal: bool = False,
    scale: float | None = None,
    bias: jax.Array | None = None,
    mask: jax.Array | None = None,
    precision=None,
) -> jax.Array:
    """``q [..., Sq, H, D]``, ``k``/``v`` ``[..., Sk, H, D]`` -> ``[..., Sq, H, D]`` in q's dtype.

    ``lengths``: integer ``[...]`` key lengths; ``bias`` / ``mask`` broadcast to
    ``[..., H, Sq, Sk]`` (``mask`` False = hidden).
    """
    sq, sk, d = q.shape[-3], k.shape[-3], q.shape[-1]
    scale = d**-0.5 if scale is None else scale
    out_dtype, acc = q.dtype, jnp.promote_types(q.dtype, jnp.float32)
    if jax.default_backend() == "cpu":  # XLA:CPU has no 16-bit dot with a float32 result
        q, k = q.astype(acc), k.astype(acc)
    logits = jnp.einsum("...qhd,...khd->...hqk", q, k, precision=precision, preferred_element_type=acc) * scale
    if bias is not None:
        logits = logits + bias.astype(acc)
    ok = visible(sq, sk, lengths=lengths, is_causal=is_causal, batch_shape=q.shape[:-3])
    if mask is not None:
        ok = ok & mask
    logits = jnp.where(ok, logits, -jnp.inf)
    m = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    p = jnp.exp(logits - m)  # exp(-inf) = 0 for hidden keys
    total = jnp.sum(p, axis=-1, keepdims=True)
    p = p / jnp.where(total > 0, total, 1.0)  # rows with no visible key: all zeros
    out = jnp.einsum("...hqk,...khd->...qhd", p, v.astype(acc), precision=precision)
    return out.astype(out_dtype)
