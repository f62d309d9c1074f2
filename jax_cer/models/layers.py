"""Layers shared by the fusion models, with PyTorch semantics and a PyTorch key mapping.

Each layer declares ``TORCH_PARAMS``: rows ``(original name, attribute, rule)`` that say which
Flax variable holds which original parameter and how the layout differs. Containers declare
``torch_children()``: ``(original name, attribute path, alias_of)`` (``alias_of`` names the
child this one repeats, for modules registered twice, else None) in the original's
registration order. :mod:`jax_cer.models.convert` walks both to build the strict conversion
table, so the layer definitions are the single source of the key layout.

Conventions: channels last (``[B, T, C]``, NHWC), float32 parameters, and every numeric
default of PyTorch (BatchNorm eps 1e-5 / momentum 0.1 with the unbiased running variance,
LayerNorm eps 1e-5 with the biased variance, LeakyReLU slope 0.01, exact GELU-free layers).
Modules are built in inference mode; ``model.train()`` / ``model.eval()`` switch them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_cer.kernels.xla import AttentionFn
from jax_cer.statedict.rules import (
    CONV1D,
    CONV2D,
    COUNTER,
    IDENTITY,
    LINEAR,
    WEIGHT_G,
    ParamRow,
)

Array = jax.Array

LEAKY_SLOPE = 0.01


@jax.jit
def _extrema(x: Array) -> Array:
    """``[min, max]`` of ``x`` in one dispatch (NaN if ``x`` holds one)."""
    return jnp.stack([jnp.min(x), jnp.max(x)])


def check_input(x: Any, name: str, dtype: Any) -> None:
    """Raises ValueError unless ``x`` is a floating-point array that a model computing in ``dtype``
    (its parameters' dtype) can take.

    Any floating dtype is accepted (the models cast their input to ``dtype``; float16 and bfloat16
    are upcast exactly); integer and bool arrays are refused (e.g. uint8 frames not scaled to
    [-1, 1]). Concrete values must be finite and within ``dtype``'s range (a float64 ``1e39``
    would become inf in float32). Traced values (under ``jax.jit``) cannot be read and are only
    checked for their dtype. ``name`` names the argument in the message.
    """
    try:
        x_dtype = jnp.dtype(x.dtype)
        shape = tuple(x.shape)
    except (AttributeError, TypeError):
        raise ValueError(f"{name}: expected a numpy or jax array, got {type(x).__name__}") from None
    dtype = jnp.dtype(dtype)
    if not jnp.issubdtype(x_dtype, jnp.floating):
        raise ValueError(
            f"{name}: dtype {x_dtype}, expected floating point (float16, bfloat16, float32 or float64; "
            f"the model computes in {dtype})"
        )
    if isinstance(x, jax.core.Tracer) or not math.prod(shape):
        return
    lo, hi = (float(v) for v in (np.asarray(_extrema(x)) if isinstance(x, jax.Array) else (np.min(x), np.max(x))))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        values = np.asarray(x).astype(np.float64)
        bad = ~np.isfinite(values)
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        value = values[first]
        what = "NaN" if np.isnan(value) else "inf" if value > 0 else "-inf"
        n = int(bad.sum())
        raise ValueError(f"{name}: holds {what} at index {list(first)} ({n} NaN/inf value{'s' * (n > 1)} in all)")
    limit = float(jnp.finfo(dtype).max)
    if max(-lo, hi) > limit:
        raise ValueError(
            f"{name}: holds values up to {max(-lo, hi):.3g}, beyond {dtype}'s range ({limit:.3g}): "
            "they would become inf"
        )


def leaky_relu(x: Array) -> Array:
    """LeakyReLU with PyTorch's default slope 0.01."""
    return jnp.where(x >= 0, x, LEAKY_SLOPE * x)


def _uniform(key: Array, shape: Sequence[int], bound: float) -> Array:
    """``U(-bound, bound)`` float32 of ``shape``, deterministic in ``key``.

    Drawn with numpy from the key's bits when the key is concrete: ``jax.random`` compiles one
    program per distinct shape, which made building the IR-50-carrying models take ~15 s.
    Under tracing (``nnx.eval_shape``) it falls back to ``jax.random`` (nothing is computed).
    """
    if isinstance(key, jax.core.Tracer):
        return jax.random.uniform(key, tuple(shape), jnp.float32, -bound, bound)
    bits = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    rng = np.random.default_rng(np.asarray(bits, dtype=np.uint32).ravel())
    return jnp.asarray(rng.uniform(-bound, bound, tuple(shape)).astype(np.float32))


def xavier_uniform(key: Array, fan_in: int, fan_out: int, shape: Sequence[int], gain: float = 1.0):
    """PyTorch's ``xavier_uniform_``: ``U(+-gain*sqrt(6/(fan_in+fan_out)))``."""
    return _uniform(key, shape, gain * math.sqrt(6.0 / (fan_in + fan_out)))


class Linear(nnx.Module):
    """``y = x @ kernel + bias`` over the last axis; kernel ``[in, out]`` (torch ``weight.T``).

    Init is PyTorch's default (``U(+-1/sqrt(in))`` for weight and bias) unless ``init`` is
    ``"xavier"`` (xavier-uniform weight, zero bias).
    """

    TORCH_PARAMS = (("weight", "kernel", LINEAR), ("bias", "bias", IDENTITY))

    def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs, init: str = "torch"):
        bound = 1.0 / math.sqrt(in_features)
        if init == "xavier":
            kernel = xavier_uniform(rngs.params(), in_features, out_features, (in_features, out_features))
            bias = jnp.zeros((out_features,), jnp.float32)
        else:
            kernel = _uniform(rngs.params(), (in_features, out_features), bound)
            bias = _uniform(rngs.params(), (out_features,), bound)
        self.kernel = nnx.Param(kernel)
        self.bias = nnx.Param(bias)

    def __call__(self, x: Array) -> Array:
        return jnp.matmul(x, self.kernel[...]) + self.bias[...]


class Conv1d(nnx.Module):
    """Plain 1-D convolution with bias, ``[B, T, C_in] -> [B, T', C_out]``, kernel ``(k, in, out)``.

    Used for the TCN ``downsample`` (k=1) and CAN's unused ``conv_c``.
    """

    TORCH_PARAMS = (("weight", "kernel", CONV1D), ("bias", "bias", IDENTITY))

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 1, *, rngs: nnx.Rngs, init: str = "torch"):
        fan_in = in_ch * kernel_size
        shape = (kernel_size, in_ch, out_ch)
        if init == "xavier_relu":  # xavier_uniform_(gain=sqrt(2)) as the TCN's downsample
            kernel = xavier_uniform(rngs.params(), fan_in, out_ch * kernel_size, shape, math.sqrt(2.0))
        else:
            kernel = _uniform(rngs.params(), shape, 1.0 / math.sqrt(fan_in))
        self.kernel = nnx.Param(kernel)
        self.bias = nnx.Param(_uniform(rngs.params(), (out_ch,), 1.0 / math.sqrt(fan_in)))

    def __call__(self, x: Array) -> Array:
        y = jax.lax.conv_general_dilated(x, self.kernel[...], (1,), [(0, 0)], dimension_numbers=("NWC", "WIO", "NWC"))
        return y + self.bias[...]


class WeightNormCausalConv1d(nnx.Module):
    """Causal dilated conv with legacy ``weight_norm(dim=0)``: ``[B, T, C_in] -> [B, T, C_out]``.

    ``W = g * v / ||v||`` with the norm over (k, in) per output channel and no epsilon; g and v
    stay the trainable parameters. Causality: ``(k-1)*d`` zeros on the left, then a valid conv,
    i.e. ``y[t] = b + sum_j W[j] x[t - (k-1-j)*d]`` (identical to the original's pad-both-sides
    then chomp).
    """

    TORCH_PARAMS = (("bias", "bias", IDENTITY), ("weight_g", "g", WEIGHT_G), ("weight_v", "v", CONV1D))

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, dilation: int, *, rngs: nnx.Rngs):
        self.kernel_size = kernel_size
        self.dilation = dilation
        bound = 1.0 / math.sqrt(in_ch * kernel_size)
        v = _uniform(rngs.params(), (kernel_size, in_ch, out_ch), bound)
        # Effective init of the original: default Conv1d init copied into v, g = ||v||.
        self.v = nnx.Param(v)
        self.g = nnx.Param(jnp.sqrt(jnp.sum(v * v, axis=(0, 1))))
        self.bias = nnx.Param(_uniform(rngs.params(), (out_ch,), bound))

    def kernel(self) -> Array:
        """The effective kernel ``(k, in, out)`` = ``v * (g / ||v||)``."""
        v = self.v[...]
        norm = jnp.sqrt(jnp.sum(v * v, axis=(0, 1)))
        return v * (self.g[...] / norm)

    def __call__(self, x: Array) -> Array:
        pad = (self.kernel_size - 1) * self.dilation
        y = jax.lax.conv_general_dilated(
            x,
            self.kernel(),
            window_strides=(1,),
            padding=[(pad, 0)],
            rhs_dilation=(self.dilation,),
            dimension_numbers=("NWC", "WIO", "NWC"),
        )
        return y + self.bias[...]


class Conv2d(nnx.Module):
    """2-D convolution without bias, NHWC, kernel ``(kh, kw, in, out)``, explicit symmetric padding.

    Explicit ``((p, p), (p, p))`` padding, never ``"SAME"``: for stride 2 on an even size SAME
    pads (0, 1), which differs from PyTorch's ``padding=1``.
    """

    TORCH_PARAMS = (("weight", "kernel", CONV2D),)

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0, *, rngs: nnx.Rngs):
        self.stride = stride
        self.padding = padding
        fan_in = in_ch * kernel_size * kernel_size
        self.kernel = nnx.Param(
            _uniform(rngs.params(), (kernel_size, kernel_size, in_ch, out_ch), 1.0 / math.sqrt(fan_in))
        )

    def __call__(self, x: Array) -> Array:
        p = self.padding
        return jax.lax.conv_general_dilated(
            x,
            self.kernel[...],
            window_strides=(self.stride, self.stride),
            padding=((p, p), (p, p)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )


class BatchNorm(nnx.Module):
    """BatchNorm over the last axis with PyTorch semantics (``BatchNorm1d`` / ``BatchNorm2d``).

    Normalises each channel of ``[..., C]`` over every other axis (``[B, T, C]`` -> over B and T,
    like ``BatchNorm1d`` on ``[B, C, T]``; NHWC -> over N, H, W). Inference:
    ``(x - running_mean) / sqrt(running_var + eps) * weight + bias``. Training: batch
    statistics with the biased variance, and running statistics updated with momentum 0.1 and
    the *unbiased* variance (Flax's own BatchNorm uses the biased one), plus
    ``num_batches_tracked += 1``.
    """

    TORCH_PARAMS = (
        ("weight", "scale", IDENTITY),
        ("bias", "bias", IDENTITY),
        ("running_mean", "mean", IDENTITY),
        ("running_var", "var", IDENTITY),
        ("num_batches_tracked", "num_batches_tracked", COUNTER),
    )

    def __init__(self, num_features: int, *, eps: float = 1e-5, momentum: float = 0.1):
        self.eps = eps
        self.momentum = momentum
        self.use_running_average = True
        self.scale = nnx.Param(jnp.ones((num_features,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
        self.num_batches_tracked = nnx.BatchStat(jnp.zeros((), jnp.int32))

    def __call__(self, x: Array, *, use_running_average: bool | None = None) -> Array:
        use_ra = self.use_running_average if use_running_average is None else use_running_average
        if use_ra:
            mean, var = self.mean[...], self.var[...]
        else:
            axes = tuple(range(x.ndim - 1))
            n = math.prod(x.shape[:-1])
            if n < 2:
                raise ValueError(
                    f"BatchNorm in training mode needs more than 1 value per channel, got input shape {x.shape}"
                )
            mean = jnp.mean(x, axis=axes)
            var = jnp.mean(jnp.square(x - mean), axis=axes)
            m = self.momentum
            self.mean[...] = (1.0 - m) * self.mean[...] + m * mean
            self.var[...] = (1.0 - m) * self.var[...] + m * var * (n / (n - 1))
            self.num_batches_tracked[...] = self.num_batches_tracked[...] + 1
        return (x - mean) / jnp.sqrt(var + self.eps) * self.scale[...] + self.bias[...]


class LayerNorm(nnx.Module):
    """LayerNorm over the last axis, PyTorch defaults: eps 1e-5, biased variance ``mean((x-mu)^2)``."""

    TORCH_PARAMS = (("weight", "scale", IDENTITY), ("bias", "bias", IDENTITY))

    def __init__(self, num_features: int, *, eps: float = 1e-5):
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((num_features,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))

    def __call__(self, x: Array) -> Array:
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        return (x - mean) / jnp.sqrt(var + self.eps) * self.scale[...] + self.bias[...]


class PReLU(nnx.Module):
    """Per-channel PReLU over the last axis: ``x if x >= 0 else a[c] * x`` (init 0.25)."""

    TORCH_PARAMS = (("weight", "weight", IDENTITY),)

    def __init__(self, num_parameters: int):
        self.weight = nnx.Param(jnp.full((num_parameters,), 0.25, jnp.float32))

    def __call__(self, x: Array) -> Array:
        return jnp.where(x >= 0, x, self.weight[...] * x)


class Dropout(nnx.Module):
    """Dropout whose random key comes with the call (``rngs``), so modules hold no RNG state.

    Inactive in inference mode (``deterministic=True``, the default) and when ``rate == 0``.
    """

    def __init__(self, rate: float):
        self.rate = rate
        self.deterministic = True

    def __call__(self, x: Array, rngs: nnx.Rngs | None = None, *, deterministic: bool | None = None) -> Array:
        det = self.deterministic if deterministic is None else deterministic
        if det or self.rate == 0.0:
            return x
        if rngs is None:
            raise ValueError(
                "Dropout is in training mode but no random key was given: call the model with "
                "rngs=nnx.Rngs(dropout=seed), or switch it to inference with model.eval()."
            )
        keep = 1.0 - self.rate
        mask = jax.random.bernoulli(rngs.dropout(), keep, x.shape)
        return jnp.where(mask, x / keep, jnp.zeros_like(x))


class MultiheadAttention(nnx.Module):
    """``torch.nn.MultiheadAttention`` (bias on, no dropout) on batch-first ``[N, L, E]`` inputs.

    ``q = Xq Wq + bq``, ``k = Xkv Wk + bk``, ``v = Xkv Wv + bv`` with Wq/Wk/Wv the three column
    blocks of ``in_kernel [E, 3E]`` (the row blocks of torch's ``in_proj_weight``); the scaled
    dot-product attention over the ``L`` axis runs through ``attention_fn`` (signature of
    :func:`flax.nnx.dot_product_attention`), then ``out_proj``.
    """

    TORCH_PARAMS = (("in_proj_weight", "in_kernel", LINEAR), ("in_proj_bias", "in_bias", IDENTITY))

    def __init__(self, embed_dim: int, num_heads: int, *, attention_fn: AttentionFn, rngs: nnx.Rngs):
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.attention_fn = attention_fn
        self.in_kernel = nnx.Param(xavier_uniform(rngs.params(), embed_dim, 3 * embed_dim, (embed_dim, 3 * embed_dim)))
        self.in_bias = nnx.Param(jnp.zeros((3 * embed_dim,), jnp.float32))
        self.out_proj = Linear(embed_dim, embed_dim, rngs=rngs)
        self.out_proj.bias[...] = jnp.zeros((embed_dim,), jnp.float32)

    def torch_children(self):
        return [("out_proj", ("out_proj",), None)]

    def __call__(self, query: Array, key: Array, value: Array) -> Array:
        e, h = self.embed_dim, self.num_heads
        w, b = self.in_kernel[...], self.in_bias[...]
        q = jnp.matmul(query, w[:, :e]) + b[:e]
        k = jnp.matmul(key, w[:, e : 2 * e]) + b[e : 2 * e]
        v = jnp.matmul(value, w[:, 2 * e :]) + b[2 * e :]

        def heads(x):
            return x.reshape(*x.shape[:-1], h, e // h)

        out = self.attention_fn(heads(q), heads(k), heads(v))
        return self.out_proj(out.reshape(*out.shape[:-2], e))


class TransformerEncoderLayer(nnx.Module):
    """Post-norm encoder layer of the original: ``y = LN1(x + MHA(x,x,x))``, ``z = LN2(y + FF(y))``.

    ``FF = Linear(E, hidden) -> ReLU -> Linear(hidden, E)``; no dropout. Batch-first ``[N, L, E]``.
    """

    def __init__(self, embed_dim: int, num_heads: int, hidden: int, *, attention_fn: AttentionFn, rngs: nnx.Rngs):
        self.attention = MultiheadAttention(embed_dim, num_heads, attention_fn=attention_fn, rngs=rngs)
        self.ff_in = Linear(embed_dim, hidden, rngs=rngs)
        self.ff_out = Linear(hidden, embed_dim, rngs=rngs)
        self.layer_norm1 = LayerNorm(embed_dim)
        self.layer_norm2 = LayerNorm(embed_dim)

    def torch_children(self):
        return [
            ("attention", ("attention",), None),
            ("feed_forward.0", ("ff_in",), None),
            ("feed_forward.2", ("ff_out",), None),
            ("layer_norm1", ("layer_norm1",), None),
            ("layer_norm2", ("layer_norm2",), None),
        ]

    def __call__(self, x: Array) -> Array:
        y = self.layer_norm1(x + self.attention(x, x, x))
        return self.layer_norm2(y + self.ff_out(jax.nn.relu(self.ff_in(y))))


class TransformerEncoderBlock(nnx.Module):
    """The original ``TransformerEncoderBlock``: a stack (``layers.<i>``) of encoder layers."""

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        hidden: int,
        num_layers: int = 1,
        *,
        attention_fn: AttentionFn,
        rngs: nnx.Rngs,
    ):
        self.layers = nnx.List(
            [
                TransformerEncoderLayer(embed_dim, num_heads, hidden, attention_fn=attention_fn, rngs=rngs)
                for _ in range(num_layers)
            ]
        )

    def torch_children(self):
        return [(f"layers.{i}", ("layers", i), None) for i in range(len(self.layers))]

    def __call__(self, x: Array) -> Array:
        for layer in self.layers:
            x = layer(x)
        return x


def torch_params_of(module: Any) -> tuple[ParamRow, ...]:
    """The ``TORCH_PARAMS`` rows ``(original name, attribute, rule)`` of a module (empty for pure containers)."""
    return getattr(type(module), "TORCH_PARAMS", ())
