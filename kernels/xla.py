"""Attention in plain JAX/XLA: the ``xla`` backend of :func:`jax_cer.kernels.flash_attention` and
the models' default ``attention_fn``, one implementation for both.

``softmax(scale * q k^T + bias) v`` over ``q [batch..., Sq, H, D]`` and ``k``, ``v``
``[batch..., Sk, H, D]``. Semantics are the Triton kernels' (chosen over Flax's where the two
differ, so that swapping the kernel in for this function never changes a result beyond rounding):

- Key ``j`` is visible to query ``i`` when ``j < kv_lengths[b]`` (right padding), ``mask`` allows
  it (``False`` hides), a ``bias`` entry is not ``-inf``, and, with ``is_causal``,
  ``j <= i + Sk - Sq``: causal masking is aligned to the bottom-right corner, as in
  FlashAttention 2.1+ and cuDNN. For ``Sq == Sk`` this is the usual lower triangle; for
  ``Sq != Sk`` Flax and ``jax.nn`` align it to the top-left instead.
- A query row that sees no key (every key hidden, ``kv_lengths`` 0, the first ``Sq - Sk`` rows
  of a causal ``Sq > Sk``) returns zeros, with zero gradients, never NaN. Flax returns the mean
  of ``v`` there.
- Logits and softmax run in float32 (float64 for float64 inputs) whatever the input dtype, and
  the output has q's dtype. XLA:CPU has no 16-bit dot product with a float32 result, so on the
  CPU 16-bit q and k are upcast before the product.

Layout: head-major batched matmuls (``[..., H, S, D]``), and with a single head (MT/JMT) the head
axis is dropped instead of transposed around. XLA:CPU lowers Flax's einsums (and
``jax.nn.dot_product_attention``) into poorly laid-out dot products when one 128-wide head sits
between the length and feature axes; this form is 1.5-3x faster forward+backward on the CPU at
the models' shapes (``repro/benchmark_notes.md``).

- :func:`xla_attention`: the keyword API of the kernels (``lengths``, ``is_causal``, ``scale``).
- :func:`dot_product_attention`: the signature of :func:`flax.nnx.dot_product_attention` plus
  ``kv_lengths``, the models' default ``attention_fn``; adds attention dropout and ``dtype``.
- :data:`AttentionFn`: the type of an ``attention_fn`` hook.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax.nnx.nn import dtypes

AttentionFn = Callable[..., jax.Array]
"""An ``attention_fn`` hook: the signature of :func:`flax.nnx.dot_product_attention`,
``(query, key, value, ...) -> out`` with ``query [batch..., q_len, heads, head_dim]``, optionally
taking ``kv_lengths`` (integer, the leading batch shape) as :func:`dot_product_attention` and
:func:`jax_cer.kernels.flash_attention` do."""


def _both(a: jax.Array | None, b: jax.Array) -> jax.Array:
    return b if a is None else jnp.logical_and(a, b)


def xla_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    lengths: jax.Array | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    bias: jax.Array | None = None,
    mask: jax.Array | None = None,
    precision=None,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
    broadcast_dropout: bool = True,
) -> jax.Array:
    """Attention of ``q [..., Sq, H, D]`` over ``k [..., Sk, H, D]``, ``v [..., Sk, H, Dv]``: ``[..., Sq, H, Dv]``.

    The output has q's dtype.

    Args:
      lengths: optional integer ``[...]`` (the leading batch shape, or a scalar): keys at
        positions ``>= lengths[b]`` are hidden.
      is_causal: query ``i`` sees keys ``j <= i + Sk - Sq`` (bottom-right aligned).
      scale: defaults to ``1/sqrt(D)``.
      bias, mask: broadcast to ``[..., H, Sq, Sk]``; ``mask`` False (and a ``-inf`` bias) hides a key.
      precision: of both matrix products.
      dropout_rate, dropout_rng, broadcast_dropout: attention-weight dropout (Flax's semantics:
        inverted dropout, the mask shared over the batch and head axes when broadcasting).

    The module docstring gives the semantics (rows that see no key return zeros).
    """
    if q.shape[-1] != k.shape[-1] or k.shape[-3] != v.shape[-3]:
        raise ValueError(f"incompatible q/k/v shapes {q.shape}, {k.shape}, {v.shape} ([..., S, H, D])")
    sq, sk = q.shape[-3], k.shape[-3]
    out_dtype = q.dtype
    if sk == 0:  # no key at all: every row sees nothing
        return jnp.zeros((*q.shape[:-1], v.shape[-1]), out_dtype)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    acc = jnp.promote_types(q.dtype, jnp.float32)
    # One head (MT/JMT): drop the head axis instead of transposing around it; XLA:CPU then
    # emits plain batched matmuls (2x faster forward+backward at the faithful final attention).
    single = q.shape[-2] == 1 and k.shape[-2] == 1

    def heads_first(x: jax.Array) -> jax.Array:
        return x[..., 0, :] if single else jnp.swapaxes(x, -3, -2)

    def drop_head_axis(x: jax.Array) -> jax.Array:  # bias / mask broadcast to [..., heads, q, kv]
        x = jnp.asarray(x)
        return x[..., 0, :, :] if single and x.ndim >= 3 else x

    q, k, v = heads_first(q), heads_first(k), heads_first(v)
    if q.dtype != acc and jax.default_backend() == "cpu":  # no 16-bit dot with a float32 result
        q, k = q.astype(acc), k.astype(acc)
    kt = jnp.swapaxes(k, -1, -2)
    if q.dtype == acc:  # fold the scale into q: Sq*D multiplies instead of Sq*Sk
        logits = jnp.matmul(q * scale, kt, precision=precision)  # [..., (H,) Sq, Sk]
    else:
        logits = jnp.matmul(q, kt, precision=precision, preferred_element_type=acc) * scale

    visible = None  # which keys each query sees, broadcastable to the logits
    if mask is not None:
        visible = drop_head_axis(mask).astype(bool)
    if lengths is not None:
        lens = jnp.asarray(lengths)
        if not jnp.issubdtype(lens.dtype, jnp.integer):
            raise TypeError(f"kv_lengths must be integers, got {lens.dtype}")
        seen = jnp.arange(sk) < lens[..., None]  # [batch..., Sk]
        visible = _both(visible, seen[..., None, :] if single else seen[..., None, None, :])
    if is_causal:
        visible = _both(visible, jnp.tril(jnp.ones((sq, sk), bool), k=sk - sq))
    if bias is not None:
        bias = drop_head_axis(bias)
        logits = logits + bias.astype(acc)
        visible = _both(visible, bias != -jnp.inf)
    if visible is not None:
        logits = jnp.where(visible, logits, jnp.finfo(acc).min)
    weights = jax.nn.softmax(logits, axis=-1)
    if dropout_rate > 0.0:
        if dropout_rng is None:
            raise ValueError("attention dropout needs dropout_rng")
        shape = list(weights.shape)
        if broadcast_dropout:
            shape[:-2] = [1] * (len(shape) - 2)
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, shape)
        weights = jnp.where(keep, weights / (1.0 - dropout_rate), jnp.zeros((), weights.dtype))
    out = jnp.matmul(weights, v.astype(acc), precision=precision)  # [..., (H,) Sq, Dv]
    if visible is not None:  # a row that sees no key: zeros (its softmax would be uniform), zero gradients
        out = jnp.where(jnp.any(visible, axis=-1, keepdims=True), out, jnp.zeros((), out.dtype))
    out = out.astype(out_dtype)
    return out[..., None, :] if single else jnp.swapaxes(out, -3, -2)


def dot_product_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    bias: jax.Array | None = None,
    mask: jax.Array | None = None,
    broadcast_dropout: bool = True,
    dropout_rng: jax.Array | None = None,
    dropout_rate: float = 0.0,
    deterministic: bool = False,
    dtype=None,
    precision=None,
    module=None,
    promote_dtype=dtypes.promote_dtype,
    is_causal: bool = False,
    kv_lengths: jax.Array | None = None,
) -> jax.Array:
    """``[batch..., q_len, heads, d]`` x ``[batch..., kv_len, heads, d]`` -> ``[batch..., q_len, heads, d_v]``.

    :func:`flax.nnx.dot_product_attention`'s signature and maths, with this module's semantics:
    ``bias`` / ``mask`` broadcast to ``[batch..., heads, q_len, kv_len]`` (mask ``False`` =
    hidden); ``is_causal`` lets query ``i`` see keys ``j <= i + kv_len - q_len`` (the usual lower
    triangle when the lengths are equal); ``kv_lengths`` (integer, the leading batch shape) hides
    keys at positions ``>= kv_lengths[b]``, as the Triton kernel's argument of that name; a query
    that sees no key gives zeros. ``module`` (sowing the attention weights) is not supported.
    """
    if module is not None:
        raise NotImplementedError("jax_cer's dot_product_attention does not sow attention weights (module=...)")
    query, key, value = promote_dtype((query, key, value), dtype=dtype)
    return xla_attention(
        query,
        key,
        value,
        lengths=kv_lengths,
        is_causal=is_causal,
        bias=bias,
        mask=mask,
        precision=precision,
        dropout_rate=0.0 if deterministic else dropout_rate,
        dropout_rng=dropout_rng,
        broadcast_dropout=broadcast_dropout,
    )
