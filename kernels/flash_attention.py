"""``flash_attention``: the fused Triton attention, callable from JAX, differentiable.

Backends:

* ``triton``: the Triton kernels on a GPU through ``jax_triton.triton_call`` (the ``gpu`` extra;
  imported only on this path).
* ``interpret``: the same kernel source in Triton's interpreter on the CPU, bridged with
  ``jax.pure_callback`` (needs torch, whose tensors the interpreter takes). For tests: slow.
* ``xla``: plain JAX with the same semantics (:func:`jax_cer.kernels.xla.xla_attention`, also the
  models' default attention); the only backend that serves ``bias`` and ``mask``.
* ``auto``: ``triton`` on a GPU, ``xla`` otherwise.

The kernel backends share one ``jax.custom_vjp``: the forward saves the log-sum-exp, the
backward runs the preprocess (``delta = rowsum(dO * O)``), dK/dV and dQ kernels. Leading batch
dimensions (and ``jax.vmap``) are folded into the kernels' batch axis.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jax_cer.kernels.configs import KernelConfig, block_d, gpu_config, interpret_config, target_of, variant_of
from jax_cer.kernels.loader import require_mode
from jax_cer.kernels.xla import xla_attention

BACKENDS = ("auto", "triton", "interpret", "xla")
KERNEL_DTYPES = {
    jnp.dtype(jnp.float32): "float32",
    jnp.dtype(jnp.float16): "float16",
    jnp.dtype(jnp.bfloat16): "bfloat16",
}
LOG2E = math.log2(math.e)


def flash_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    kv_lengths: jax.Array | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    backend: str = "auto",
    bias: jax.Array | None = None,
    mask: jax.Array | None = None,
    broadcast_dropout: bool = True,
    dropout_rng: jax.Array | None = None,
    dropout_rate: float = 0.0,
    deterministic: bool = True,
    dtype=None,
    precision=None,
    module=None,
    promote_dtype=None,
) -> jax.Array:
    """Scaled dot-product attention ``softmax(scale * q k^T) v``, fused.

    Args:
      q: ``[B, Sq, H, D]`` (more leading batch axes are allowed: ``[..., Sq, H, D]``).
      k, v: ``[B, Sk, H, D]``. Sq and Sk are arbitrary; 1 <= D <= 256 (padded internally).
      kv_lengths: optional integer ``[B]`` (or the leading batch shape): keys at positions
        ``>= kv_lengths[b]`` are hidden.
      is_causal: query ``i`` sees keys ``j <= i + Sk - Sq`` (bottom-right aligned).
      scale: defaults to ``1/sqrt(D)``.
      backend: ``auto`` | ``triton`` | ``interpret`` | ``xla`` (see the module docstring).
      bias, mask, dropout_*, deterministic, dtype, precision, module, promote_dtype: the rest of
        :func:`flax.nnx.dot_product_attention`'s signature, so this is a drop-in ``attention_fn``.
        ``dtype`` casts the inputs; ``bias`` and ``mask`` (False = hidden) are served by the ``xla``
        backend only; attention dropout and ``module`` (sowing weights) are not supported.

    Returns:
      ``[B, Sq, H, D]`` in q's dtype. A query row that sees no key is zero, with zero gradients.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    _check_arrays(q, k, v)
    if dtype is not None:
        q, k, v = (x.astype(dtype) for x in (q, k, v))
    if module is not None:
        raise NotImplementedError("flash_attention does not sow attention weights (module=...)")
    if dropout_rate > 0.0 and not deterministic:
        raise NotImplementedError("flash_attention has no attention dropout; use dropout_rate=0 or deterministic=True")
    _check_inputs(q, k, v, kv_lengths, scale)
    if backend == "auto":
        backend = "triton" if jax.default_backend() == "gpu" else "xla"
    if backend == "xla":
        return xla_attention(
            q, k, v, lengths=kv_lengths, is_causal=is_causal, scale=scale, bias=bias, mask=mask, precision=precision
        )
    if bias is not None or mask is not None:
        raise NotImplementedError(
            f"the {backend!r} kernel takes no general bias or mask: express padding with kv_lengths and "
            "causality with is_causal, or use backend='xla'"
        )
    if backend == "triton" and jax.default_backend() != "gpu":
        raise RuntimeError(
            f"backend='triton' needs a GPU (JAX's default backend is {jax.default_backend()!r}); "
            "use backend='interpret' to run the same kernels on the CPU, or 'xla'"
        )
    batch = q.shape[:-3]
    sq, h, d = q.shape[-3:]
    sk = k.shape[-3]
    b = math.prod(batch)
    has_lens = kv_lengths is not None
    lens = jnp.broadcast_to(jnp.asarray(kv_lengths if has_lens else sk, jnp.int32), batch).reshape(b)
    scale = float(d**-0.5 if scale is None else scale)
    out = _attention(
        q.reshape(b, sq, h, d),
        k.reshape(b, sk, h, d),
        v.reshape(b, sk, h, d),
        lens,
        bool(is_causal),
        scale,
        has_lens,
        backend,
    )
    return out.reshape(*batch, sq, h, d)


def _check_arrays(q, k, v) -> None:
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not (hasattr(x, "ndim") and hasattr(x, "dtype") and hasattr(x, "astype")):
            raise ValueError(f"{name} must be an array [B, S, H, D], got {type(x).__name__}")


def _check_inputs(q, k, v, kv_lengths, scale) -> None:
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.ndim < 4:
            raise ValueError(f"{name} must be [B, S, H, D] (or with more leading batch axes), got shape {x.shape}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {k.shape} and {v.shape}")
    if q.shape[:-3] != k.shape[:-3] or q.shape[-2:] != k.shape[-2:]:
        raise ValueError(
            f"q {q.shape} and k {k.shape} must share batch axes, heads and head dim ([B, Sq, H, D] vs [B, Sk, H, D])"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must have one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.dtype not in KERNEL_DTYPES:
        raise ValueError(f"q, k, v: dtype {q.dtype} is not supported: use float32, float16 or bfloat16")
    block_d(q.shape[-1])  # raises for an unsupported head dim
    if scale is not None and not isinstance(scale, jax.core.Tracer):
        try:
            ok = not isinstance(scale, (str, bytes)) and math.isfinite(float(scale))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"scale must be a finite number, got {scale!r}")
    if kv_lengths is not None:
        try:
            lens = jnp.asarray(kv_lengths)
        except (TypeError, ValueError) as err:
            raise ValueError(f"kv_lengths must be an integer array, got {type(kv_lengths).__name__}: {err}") from None
        if not jnp.issubdtype(lens.dtype, jnp.integer):
            raise ValueError(f"kv_lengths must be integers, got {lens.dtype}")
        if lens.shape not in (q.shape[:-3], ()):
            raise ValueError(f"kv_lengths must have the batch shape {q.shape[:-3]}, got {lens.shape}")


# -- custom_vjp over the kernel backends ----------------------------------------------------
@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def _attention(q, k, v, lens, causal, scale, has_lens, backend):
    return _forward(q, k, v, lens, causal, scale, has_lens, backend)[0]


def _attention_fwd(q, k, v, lens, causal, scale, has_lens, backend):
    o, lse = _forward(q, k, v, lens, causal, scale, has_lens, backend)
    return o, (q, k, v, lens, o, lse)


def _attention_bwd(causal, scale, has_lens, backend, res, do):
    q, k, v, lens, o, lse = res
    dq, dk, dv = _backward(q, k, v, lens, o, lse, do.astype(q.dtype), causal, scale, has_lens, backend)
    return dq, dk, dv, None


_attention.defvjp(_attention_fwd, _attention_bwd)


def _folded(fn):
    """Wraps ``fn(*arrays) -> outputs`` (batch axis 0) so ``jax.vmap`` folds into that axis."""

    @jax.custom_batching.custom_vmap
    def call(*args):
        return fn(*args)

    @call.def_vmap
    def _rule(axis_size, in_batched, *args):
        args = [
            a if bat else jnp.broadcast_to(a, (axis_size, *a.shape)) for a, bat in zip(args, in_batched, strict=True)
        ]
        flat = [a.reshape(axis_size * a.shape[1], *a.shape[2:]) for a in args]
        outs = call(*flat)
        outs = jax.tree.map(lambda o: o.reshape(axis_size, -1, *o.shape[1:]), outs)
        return outs, jax.tree.map(lambda _: True, outs)

    return call


def _forward(q, k, v, lens, causal, scale, has_lens, backend):
    b, sq, h, _ = q.shape
    if sq == 0:
        return jnp.zeros_like(q), jnp.zeros((b, h, 0), jnp.float32)
    impl = _interpret_forward if backend == "interpret" else _triton_forward
    return _folded(functools.partial(impl, causal=causal, scale=scale, has_lens=has_lens))(q, k, v, lens)


def _backward(q, k, v, lens, o, lse, do, causal, scale, has_lens, backend):
    if q.shape[1] == 0 or k.shape[1] == 0:
        return jnp.zeros_like(q), jnp.zeros_like(k), jnp.zeros_like(v)
    impl = _interpret_backward if backend == "interpret" else _triton_backward
    fn = functools.partial(impl, causal=causal, scale=scale, has_lens=has_lens)
    return _folded(fn)(q, k, v, lens, o, lse, do)


# -- the interpreter path ------------------------------------------------------------------
def _interpret_configs(q, k, v, *kernels) -> list[KernelConfig]:
    """The interpreter's configuration of each of ``kernels`` for these arrays (chosen when traced)."""
    d = q.shape[-1]
    strides = [s for x in (q, k, v) for s in contiguous_strides(x.shape)]
    variant = _variant(d, strides)
    dtype = KERNEL_DTYPES[jnp.dtype(q.dtype)]
    return [interpret_config(kernel, dtype, block_d(d), variant) for kernel in kernels]


def _interpret_forward(q, k, v, lens, *, causal, scale, has_lens):
    b, sq, h, _ = q.shape
    out_types = (jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((b, h, sq), jnp.float32))
    (cfg,) = _interpret_configs(q, k, v, "fwd")
    host = functools.partial(_host_forward, causal=causal, scale=scale, has_lens=has_lens, cfg=cfg)
    return jax.pure_callback(host, out_types, q, k, v, lens, vmap_method="sequential")


def _interpret_backward(q, k, v, lens, o, lse, do, *, causal, scale, has_lens):
    out_types = tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in (q, k, v))
    cfgs = _interpret_configs(q, k, v, "bwd_preprocess", "bwd_dkdv", "bwd_dq")
    host = functools.partial(_host_backward, causal=causal, scale=scale, has_lens=has_lens, cfgs=cfgs)
    return jax.pure_callback(host, out_types, q, k, v, lens, o, lse, do, vmap_method="sequential")


def _torch():
    try:
        import torch  # noqa: PLC0415 - optional heavy package, only the interpreter backend needs it
    except ImportError as e:
        raise ImportError("backend='interpret' needs PyTorch (pip install torch==2.13.0)") from e
    return torch


def _to_torch(x: np.ndarray):
    torch = _torch()
    x = np.array(x, copy=True)
    if x.dtype == jnp.bfloat16:
        return torch.from_numpy(x.view(np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(x)


def _to_numpy(t, dtype) -> np.ndarray:
    torch = _torch()
    if t.dtype == torch.bfloat16:
        return t.view(torch.uint16).numpy().view(jnp.bfloat16)
    return t.numpy().astype(dtype, copy=False)


def _strides(*tensors) -> list[int]:
    return [s for t in tensors for s in t.stride()]


def _host_forward(q, k, v, lens, *, causal, scale, has_lens, cfg):
    torch = _torch()
    km = require_mode(interpret=True)
    tq, tk, tv, tl = (_to_torch(x) for x in (q, k, v, lens))
    b, sq, h, d = q.shape
    sk = k.shape[1]
    o = torch.full_like(tq, float("nan"))  # poisoned: an element the kernel does not write shows
    lse = torch.full((b, h, sq), float("nan"), dtype=torch.float32)
    strides = _strides(tq, tk, tv)
    km._attn_fwd_kernel[(math.ceil(sq / cfg.block_m), b * h)](
        tq, tk, tv, tl, *strides, h, sq, sk, d, scale * LOG2E, o, lse,
        **_flags(causal, has_lens, cfg, d, q.dtype, strides, interpret=True),
    )  # fmt: skip
    return _to_numpy(o, q.dtype), lse.numpy()


def _host_backward(q, k, v, lens, o, lse, do, *, causal, scale, has_lens, cfgs):
    torch = _torch()
    km = require_mode(interpret=True)
    tq, tk, tv, tl, to, tlse, tdo = (_to_torch(x) for x in (q, k, v, lens, o, lse, do))
    b, sq, h, d = q.shape
    sk = k.shape[1]
    pre, kv_cfg, q_cfg = cfgs
    delta = torch.full((b, h, sq), float("nan"), dtype=torch.float32)
    km._attn_bwd_preprocess_kernel[(math.ceil(sq / pre.block_m), b * h)](
        to, tdo, *tq.stride(), h, sq, d, delta, BLOCK_M=pre.block_m, BLOCK_D=block_d(d), **launch_hints(d, tq.stride())
    )
    dq, dk, dv = (torch.full_like(t, float("nan")) for t in (tq, tk, tv))
    strides = _strides(tq, tk, tv)
    common = (*strides, h, sq, sk, d, scale * LOG2E, scale)
    km._attn_bwd_dkdv_kernel[(math.ceil(sk / kv_cfg.block_n), b * h)](
        tq, tk, tv, tdo, tlse, delta, tl, *common, dk, dv,
        **_flags(causal, has_lens, kv_cfg, d, q.dtype, strides, interpret=True),
    )  # fmt: skip
    km._attn_bwd_dq_kernel[(math.ceil(sq / q_cfg.block_m), b * h)](
        tq, tk, tv, tdo, tlse, delta, tl, *common, dq,
        **_flags(causal, has_lens, q_cfg, d, q.dtype, strides, interpret=True),
    )  # fmt: skip
    return tuple(_to_numpy(t, x.dtype) for t, x in ((dq, q), (dk, k), (dv, v)))


def alignment(strides: Sequence[int]) -> int:
    """The largest power of two <= 16 that divides every stride but the head dim's (``ALIGN``)."""
    g = 0
    for i, s in enumerate(strides):
        if i % 4 != 3:  # [b, s, h, d] strides per array; d's is the element step
            g = math.gcd(g, int(s))
    return min(16, g & -g) if g else 16


def launch_hints(d: int, strides: Sequence[int]) -> dict:
    """The kernels' layout hints: ``EVEN_D`` (the head dim fills its tile) and ``ALIGN`` (:func:`alignment`)."""
    return {"EVEN_D": d == block_d(d), "ALIGN": alignment(strides)}


def _variant(d: int, strides: Sequence[int]) -> str:
    """The configuration variant of a launch on arrays with these strides (:func:`configs.variant_of`)."""
    hints = launch_hints(d, strides)
    return variant_of(hints["EVEN_D"], hints["ALIGN"])


def _target() -> int:
    """The configuration table of the GPU the kernels launch on (:func:`configs.target_of`): its
    compute capability, as jaxlib's CUDA devices report it (``"9.0"``); Hopper's when unknown."""
    cc = getattr(jax.local_devices()[0], "compute_capability", None)
    try:
        return target_of(cc)
    except (TypeError, ValueError):
        return 90


def _flags(
    causal: bool, has_lens: bool, cfg: KernelConfig, d: int, dtype, strides: Sequence[int], *, interpret: bool
) -> dict:
    return {
        "IS_CAUSAL": causal,
        "HAS_LENS": has_lens,
        "BLOCK_M": cfg.block_m,
        "BLOCK_N": cfg.block_n,
        "BLOCK_D": block_d(d),
        "IEEE": jnp.dtype(dtype) == jnp.float32,
        "UPCAST": interpret,
        **launch_hints(d, strides),
    }


# -- the GPU path --------------------------------------------------------------------------
def _jax_triton():
    try:
        import jax_triton  # noqa: PLC0415 - optional package (the gpu extra), only the triton backend needs it
    except ImportError as e:
        raise ImportError("backend='triton' needs jax-triton: pip install -e '.[gpu]'") from e
    return jax_triton


def contiguous_strides(shape: Sequence[int]) -> list[int]:
    """Element strides of a C-contiguous array of ``shape`` (what jax-triton passes)."""
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= n
    return strides[::-1]


def _triton_forward(q, k, v, lens, *, causal, scale, has_lens):
    jt = _jax_triton()
    km = require_mode(interpret=False)
    b, sq, h, d = q.shape
    sk = k.shape[1]
    dtype = KERNEL_DTYPES[jnp.dtype(q.dtype)]
    strides = [s for x in (q, k, v) for s in contiguous_strides(x.shape)]
    cfg = gpu_config("fwd", dtype, block_d(d), _variant(d, strides), _target())
    return jt.triton_call(
        q, k, v, lens, *strides, h, sq, sk, d, scale * LOG2E,
        kernel=km._attn_fwd_kernel,
        out_shape=(jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((b, h, sq), jnp.float32)),
        grid=(math.ceil(sq / cfg.block_m), b * h),
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
        **_flags(causal, has_lens, cfg, d, q.dtype, strides, interpret=False),
    )  # fmt: skip


def _triton_backward(q, k, v, lens, o, lse, do, *, causal, scale, has_lens):
    jt = _jax_triton()
    km = require_mode(interpret=False)
    b, sq, h, d = q.shape
    sk = k.shape[1]
    dtype = KERNEL_DTYPES[jnp.dtype(q.dtype)]
    bd = block_d(d)
    strides = [s for x in (q, k, v) for s in contiguous_strides(x.shape)]
    variant, target = _variant(d, strides), _target()
    pre = gpu_config("bwd_preprocess", dtype, bd, variant, target)
    o_strides = contiguous_strides(o.shape)
    (delta,) = jt.triton_call(
        o, do, *o_strides, h, sq, d,
        kernel=km._attn_bwd_preprocess_kernel,
        out_shape=(jax.ShapeDtypeStruct((b, h, sq), jnp.float32),),
        grid=(math.ceil(sq / pre.block_m), b * h),
        num_warps=pre.num_warps,
        num_stages=pre.num_stages,
        BLOCK_M=pre.block_m,
        BLOCK_D=bd,
        **launch_hints(d, o_strides),
    )  # fmt: skip
    common = (*strides, h, sq, sk, d, scale * LOG2E, scale)
    kv_cfg = gpu_config("bwd_dkdv", dtype, bd, variant, target)
    dk, dv = jt.triton_call(
        q, k, v, do, lse, delta, lens, *common,
        kernel=km._attn_bwd_dkdv_kernel,
        out_shape=(jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)),
        grid=(math.ceil(sk / kv_cfg.block_n), b * h),
        num_warps=kv_cfg.num_warps,
        num_stages=kv_cfg.num_stages,
        **_flags(causal, has_lens, kv_cfg, d, q.dtype, strides, interpret=False),
    )  # fmt: skip
    q_cfg = gpu_config("bwd_dq", dtype, bd, variant, target)
    (dq,) = jt.triton_call(
        q, k, v, do, lse, delta, lens, *common,
        kernel=km._attn_bwd_dq_kernel,
        out_shape=(jax.ShapeDtypeStruct(q.shape, q.dtype),),
        grid=(math.ceil(sq / q_cfg.block_m), b * h),
        num_warps=q_cfg.num_warps,
        num_stages=q_cfg.num_stages,
        **_flags(causal, has_lens, q_cfg, d, q.dtype, strides, interpret=False),
    )  # fmt: skip
    return dq, dk, dv
