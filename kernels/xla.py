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
- A hidden key has no influence, not even when its row of k or v holds NaN or inf: on the
  outputs of the queries it is hidden from, and on every gradient. Keys hidden by ``kv_lengths``
  get their rows of k and v zeroed; keys hidden from some queries only (causal masking, ``mask``,
  ``bias``) go through products whose derivatives take non-finite entries as zero, and a second
  path, run only when some value is not finite, that keeps hidden ones out of the output. When
  all is finite the numbers are the plain products'. A non-finite entry of a visible key reaches
  the outputs that see it as IEEE arithmetic says (NaN, or +-inf).

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

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax.nnx.nn import dtypes
from jax.custom_derivatives import SymbolicZero

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
    lens = None if lengths is None else jnp.asarray(lengths)
    if lens is not None and not jnp.issubdtype(lens.dtype, jnp.integer):
        raise ValueError(f"kv_lengths must be integers, got {lens.dtype}")
    sq, sk = q.shape[-3], k.shape[-3]
    out_dtype = q.dtype
    if sk == 0:  # no key at all: every row sees nothing (zeros, and so zero gradients)
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

    seen = None  # [batch..., Sk]: the keys kv_lengths leaves visible
    if lens is not None:
        seen = jnp.arange(sk) < lens[..., None]
        # A hidden key must not act through 0 * NaN (or 0 * inf) in the products, forward or
        # backward: zero its rows of k and v (one select each, exact for the visible rows; here,
        # before the head transpose, XLA fuses it into that copy).
        rows = seen[..., :, None, None]
        k, v = jnp.where(rows, k, jnp.zeros((), k.dtype)), jnp.where(rows, v, jnp.zeros((), v.dtype))
    q, k, v = heads_first(q), heads_first(k), heads_first(v)  # k, v: [..., (H,) Sk, D]
    # Causal masking, mask and bias hide a key from some queries only, so its rows cannot be
    # zeroed: both products then go through _scores and _weigh_values, which keep a hidden key's
    # non-finite entries out of the output and the gradients.
    partial = is_causal or mask is not None or bias is not None
    if q.dtype != acc and jax.default_backend() == "cpu":  # no 16-bit dot with a float32 result
        q, k = q.astype(acc), k.astype(acc)
    preferred = None
    if q.dtype == acc:  # fold the scale into q: Sq*D multiplies instead of Sq*Sk
        q = q * scale
    else:
        preferred = acc
    logits = (_scores if partial else _qk)(q, k, precision, preferred)
    if preferred is not None:
        logits = logits * scale  # [..., (H,) Sq, Sk]

    visible = None  # which keys each query sees, broadcastable to the logits
    if mask is not None:
        visible = drop_head_axis(mask).astype(bool)
    if seen is not None:
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
    if partial:
        out = _weigh_values(weights, v.astype(acc), visible, precision)
    else:
        out = jnp.matmul(weights, v.astype(acc), precision=precision)  # [..., (H,) Sq, Dv]
    if visible is not None:  # a row that sees no key: zeros (its softmax would be uniform), zero gradients
        out = jnp.where(jnp.any(visible, axis=-1, keepdims=True), out, jnp.zeros((), out.dtype))
    out = out.astype(out_dtype)
    return out[..., None, :] if single else jnp.swapaxes(out, -3, -2)


def _finite_or_zero(x: jax.Array) -> jax.Array:
    return jnp.where(jnp.isfinite(x), x, jnp.zeros((), x.dtype))


def _qk(q: jax.Array, k: jax.Array, precision, preferred) -> jax.Array:
    return jnp.matmul(q, jnp.swapaxes(k, -1, -2), precision=precision, preferred_element_type=preferred)


def _sum_terms(out: jax.Array, terms: list[jax.Array]) -> jax.Array:
    """The tangent: the sum of the terms of the perturbed inputs (zeros if none is)."""
    return sum(terms[1:], terms[0]) if terms else jnp.zeros_like(out)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _scores(q: jax.Array, k: jax.Array, precision, preferred) -> jax.Array:
    """``q @ k^T`` (``[..., Sq, D] x [..., Sk, D] -> [..., Sq, Sk]``), the one product of the plain
    path. The caller replaces the logits of hidden keys, so a NaN or inf in a hidden key is
    harmless forward; the derivatives take k's non-finite entries as zero, so that the zero
    cotangent of a hidden logit cannot make dq ``0 * NaN``. (A visible non-finite key makes its
    queries' softmax NaN, and their gradients with it.)"""
    return _qk(q, k, precision, preferred)


def _scores_jvp(precision, preferred, primals, tangents):
    q, k = primals
    dq, dk = tangents
    out = _qk(q, k, precision, preferred)
    terms = []
    if not isinstance(dq, SymbolicZero):
        terms.append(_qk(dq, _finite_or_zero(k), precision, preferred))
    if not isinstance(dk, SymbolicZero):
        terms.append(_qk(q, dk, precision, preferred))
    return out, _sum_terms(out, terms)


_scores.defjvp(_scores_jvp, symbolic_zeros=True)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def _weigh_values(weights: jax.Array, v: jax.Array, visible: jax.Array, precision) -> jax.Array:
    """``weights @ v`` (``[..., Sq, Sk] x [..., Sk, Dv]``) in which keys hidden by ``visible`` take
    no part even when their values are NaN or inf (their weights are 0, and ``0 * NaN`` is NaN).

    One product, with v's non-finite entries zeroed (the same numbers when all are finite). Only
    when some entry is not finite, a guarded second path puts back what the visible ones make of
    the result, as IEEE arithmetic says: NaN where a visible key brings a NaN (or ``0 * inf``, or
    both infinities), else +-inf where one brings that infinity; decided by products of 0/1
    indicators, which are exact. Under ``jax.vmap`` (a predicate per example) ``lax.cond``
    becomes a select that runs both paths; neither has a ``0 * NaN``, so the select is safe,
    forward and backward. The derivatives take v's non-finite entries as zero (the outputs they
    reach are NaN or inf)."""
    finite = jnp.isfinite(v)
    out = jnp.matmul(weights, jnp.where(finite, v, jnp.zeros((), v.dtype)), precision=precision)

    def restore(out: jax.Array) -> jax.Array:
        vis = jnp.broadcast_to(visible, weights.shape)

        def any_term(m: jax.Array, indicator: jax.Array) -> jax.Array:
            return jnp.matmul(m.astype(out.dtype), indicator.astype(out.dtype)) > 0

        zero = jnp.logical_and(vis, weights == 0)  # visible with weight 0 (dropped, underflowed): 0 * inf
        nan = jnp.logical_or(any_term(vis, jnp.isnan(v)), any_term(zero, jnp.isinf(v)))
        inf = any_term(jnp.logical_and(vis, weights > 0), jnp.concatenate([v == jnp.inf, v == -jnp.inf], axis=-1))
        pos_inf, neg_inf = inf[..., : v.shape[-1]], inf[..., v.shape[-1] :]
        nan = jnp.logical_or(nan, jnp.logical_and(pos_inf, neg_inf))
        out = jnp.where(neg_inf, jnp.asarray(-jnp.inf, out.dtype), out)
        out = jnp.where(pos_inf, jnp.asarray(jnp.inf, out.dtype), out)
        return jnp.where(nan, jnp.asarray(jnp.nan, out.dtype), out)

    return jax.lax.cond(jnp.all(finite), lambda x: x, restore, out)


def _weigh_values_jvp(precision, primals, tangents):
    weights, v, visible = primals
    dw, dv = tangents[:2]  # visible: boolean, no tangent
    out = _weigh_values(weights, v, visible, precision)
    terms = []
    if not isinstance(dw, SymbolicZero):
        terms.append(jnp.matmul(dw, _finite_or_zero(v), precision=precision))
    if not isinstance(dv, SymbolicZero):
        terms.append(jnp.matmul(weights, dv, precision=precision))
    return out, _sum_terms(out, terms)


_weigh_values.defjvp(_weigh_values_jvp, symbolic_zeros=True)


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
