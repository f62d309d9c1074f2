"""The default attention function of the models: XLA, with the signature of
:func:`flax.nnx.dot_product_attention`.

Same maths as Flax's (``softmax(q k^T / sqrt(d) + bias) v`` over ``[batch..., length, heads,
head_dim]``), laid out as head-major batched matrix products. XLA:CPU turns Flax's einsums
(and ``jax.nn.dot_product_attention``) into poorly laid-out dot products when the models' single
128-wide head sits between the length and feature axes: this form is 1.5-3x faster for
forward+backward on CPU at the models' shapes (see ``repro/benchmark_notes.md``). Any function
with this signature plugs into the models' ``attention_fn`` hook instead (e.g. the Triton kernel).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax.nnx.nn import dtypes


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

    ``bias`` / ``mask`` broadcast to ``[batch..., heads, q_len, kv_len]`` (mask ``False`` = masked);
    ``is_causal`` lets query ``i`` see keys ``j <= i`` (as :func:`jax.nn.dot_product_attention`).
    ``kv_lengths`` (integer, the leading batch shape): keys at positions ``>= kv_lengths[b]`` are
    hidden, as the Triton kernel's argument of that name (right padding).
    The softmax runs in float32 for lower-precision inputs. ``module`` (sowing the attention
    weights) is not supported.
    """
    if module is not None:
        raise NotImplementedError("jax_cer's dot_product_attention does not sow attention weights (module=...)")
    query, key, value = promote_dtype((query, key, value), dtype=dtype)
    if query.shape[-1] != key.shape[-1] or key.shape[-3] != value.shape[-3]:
        raise ValueError(f"incompatible q/k/v shapes {query.shape}, {key.shape}, {value.shape}")
    scale = jnp.asarray(1.0 / math.sqrt(query.shape[-1]), query.dtype)
    # One head (MT/JMT): drop the head axis instead of transposing around it; XLA:CPU then
    # emits plain batched matmuls (2x faster forward+backward at the faithful final attention).
    single = query.shape[-2] == 1 and key.shape[-2] == 1

    def heads_first(x):
        return x[..., 0, :] if single else jnp.swapaxes(x, -3, -2)

    def drop_head_axis(x):  # bias / mask broadcast to [..., heads, q, kv]
        return x[..., 0, :, :] if single and x is not None and x.ndim >= 3 else x

    q, k, v = heads_first(query) * scale, heads_first(key), heads_first(value)
    logits = jnp.matmul(q, jnp.swapaxes(k, -1, -2), precision=precision)  # [..., (heads,) q, kv]
    bias, mask = drop_head_axis(bias), drop_head_axis(mask)
    if kv_lengths is not None:
        lens = jnp.asarray(kv_lengths)
        if not jnp.issubdtype(lens.dtype, jnp.integer):
            raise TypeError(f"kv_lengths must be integers, got {lens.dtype}")
        visible = jnp.arange(key.shape[-3]) < lens[..., None]  # [batch..., kv]
        visible = visible[..., None, :] if single else visible[..., None, None, :]
        mask = visible if mask is None else jnp.logical_and(mask, visible)
    if bias is not None:
        logits = logits + bias
    big_neg = jnp.finfo(logits.dtype).min
    if mask is not None:
        logits = jnp.where(mask, logits, big_neg)
    if is_causal:
        q_len, kv_len = logits.shape[-2:]
        logits = jnp.where(jnp.tril(jnp.ones((q_len, kv_len), bool)), logits, big_neg)
    weights = jax.nn.softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), axis=-1)
    weights = weights.astype(value.dtype)
    if not deterministic and dropout_rate > 0.0:
        if dropout_rng is None:
            raise ValueError("attention dropout needs dropout_rng")
        shape = list(weights.shape)
        if broadcast_dropout:
            shape[:-2] = [1] * (len(shape) - 2)
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, shape)
        weights = jnp.where(keep, weights / (1.0 - dropout_rate), jnp.zeros((), weights.dtype))
    out = jnp.matmul(weights, v, precision=precision)  # [..., (heads,) q, d_v]
    if single:
        return out[..., None, :]
    return jnp.swapaxes(out, -3, -2)
