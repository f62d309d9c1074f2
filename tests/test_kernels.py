"""The Triton attention kernels in Triton's CPU interpreter (``backend="interpret"``), and the XLA path.

Correctness rules (spec attention-kernels.md): float32 within 1e-5 of a float64 reference for the
output and dQ/dK/dV; float16 / bfloat16 by the FlashAttention rule (the kernel's error against
float64 at most 2x, for gradients 3x, the error of plain JAX in the same dtype, plus the dtype's
rounding floor); awkward shapes; masked keys without influence; fully masked rows zero, never NaN.
Inputs are normal with std 1; the kernel's output buffers are NaN-poisoned before each launch.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jax_cer.kernels import flash_attention, xla_attention
from jax_cer.kernels.flash_attention import alignment, contiguous_strides, launch_hints
from jax_cer.kernels.xla import dot_product_attention as xla_dot_product_attention
from jax_cer.models import build_model
from jax_cer.parity.attention import attention64, low_precision_attention
from jax_cer.parity.tolerances import TOLERANCES, flash_rule_bound
from tests.kernel_asserts import assert_close

# JAX_CER_KERNEL_BACKEND=triton runs the same checks on a GPU (the interpreter needs torch tensors)
KERNEL_BACKEND = os.environ.get("JAX_CER_KERNEL_BACKEND", "interpret")
pytestmark = pytest.mark.torch if KERNEL_BACKEND == "interpret" else []
interp = functools.partial(flash_attention, backend=KERNEL_BACKEND)
FP32_TOL = TOLERANCES["kernel_fp32"]


def _qkv(b, sq, sk, h, d, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(b, sq, h, d))
    k = rng.normal(size=(b, sk, h, d))
    v = rng.normal(size=(b, sk, h, d))
    do = rng.normal(size=(b, sq, h, d))
    return [jnp.asarray(x, dtype) for x in (q, k, v, do)]


def _run(fn, q, k, v, do, **kw):
    out, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, **kw), q, k, v)
    return (out, *vjp(do))


# (B, Sq, Sk, H, D, causal, lengths): primes, one past a power of two, Sq != Sk both ways,
# non-power-of-two D, lengths 0 / 1 / full
SHAPES = [
    (1, 1, 1, 3, 16, False, None),
    (2, 7, 97, 2, 59, True, None),
    (2, 97, 7, 2, 64, True, (7, 1)),
    (1, 128, 128, 3, 64, False, None),
    (3, 97, 128, 1, 128, False, (0, 128, 57)),
    (1, 257, 257, 1, 16, True, (200,)),
    (2, 33, 17, 2, 24, False, (1, 17)),
]


@pytest.mark.parametrize(("b", "sq", "sk", "h", "d", "causal", "lens"), SHAPES)
def test_float32_matches_float64(b, sq, sk, h, d, causal, lens) -> None:
    q, k, v, do = _qkv(b, sq, sk, h, d)
    lengths = None if lens is None else jnp.asarray(lens, jnp.int32)
    want = attention64(q, k, v, lens, causal, do=do)
    got = _run(interp, q, k, v, do, kv_lengths=lengths, is_causal=causal)
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want, strict=True):
        assert_close(f"{name} {(b, sq, sk, h, d, causal, lens)}", g, w, FP32_TOL)


def test_xla_backend_matches_float64() -> None:
    q, k, v, do = _qkv(2, 37, 53, 3, 24)
    lens = (53, 9)
    want = attention64(q, k, v, lens, True, do=do)
    with jax.default_matmul_precision("highest"):
        got = _run(flash_attention, q, k, v, do, kv_lengths=jnp.asarray(lens), is_causal=True, backend="xla")
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want, strict=True):
        assert_close(name, g, w, FP32_TOL)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
@pytest.mark.parametrize(("causal", "backend"), [(False, KERNEL_BACKEND), (True, KERNEL_BACKEND), (True, "xla")])
def test_low_precision_flashattention_rule(dtype, causal: bool, backend: str) -> None:
    q, k, v, do = _qkv(2, 97, 130, 2, 64, dtype=dtype, seed=3)
    want = attention64(q, k, v, None, causal, do=do)
    base = _run(lambda q, k, v: low_precision_attention(q, k, v, None, causal), q, k, v, do)
    got = _run(flash_attention, q, k, v, do, is_causal=causal, backend=backend)
    for i, name in enumerate(("out", "dq", "dk", "dv")):
        ref = np.asarray(want[i], np.float64)
        base_err = float(np.max(np.abs(np.asarray(base[i], np.float64) - ref)))
        err = np.max(np.abs(np.asarray(got[i], np.float64) - ref))
        bound = flash_rule_bound(name, base_err, float(np.max(np.abs(ref))), dtype)
        assert got[i].dtype == dtype
        assert err <= bound, (
            f"{name} {jnp.dtype(dtype).name}: kernel error {err:.3e} > {bound:.3e} (plain JAX {base_err:.3e})"
        )


def test_masked_keys_have_no_influence() -> None:
    q, k, v, do = _qkv(2, 20, 40, 2, 32, seed=5)
    lens = jnp.asarray([13, 40], jnp.int32)
    out1, dq1, _, _ = _run(interp, q, k, v, do, kv_lengths=lens)
    noise = jnp.asarray(np.random.default_rng(6).normal(size=k.shape) * 100, jnp.float32)
    hidden = jnp.arange(40)[None, :, None, None] >= lens[:, None, None, None]
    k2, v2 = jnp.where(hidden, k + noise, k), jnp.where(hidden, v - noise, v)
    out2, dq2, dk2, dv2 = _run(interp, q, k2, v2, do, kv_lengths=lens)
    np.testing.assert_array_equal(out1, out2)
    np.testing.assert_array_equal(dq1, dq2)
    assert not np.any(np.asarray(dk2)[0, 13:]) and not np.any(np.asarray(dv2)[0, 13:])


def test_fully_masked_rows_are_zero_not_nan() -> None:
    q, k, v, do = _qkv(2, 9, 5, 2, 16, seed=7)
    # batch 0: no key at all; causal with Sq > Sk: the first Sq - Sk rows of batch 1 see nothing
    out, dq, dk, dv = _run(interp, q, k, v, do, kv_lengths=jnp.asarray([0, 5]), is_causal=True)
    for x in (out, dq, dk, dv):
        assert not np.isnan(np.asarray(x)).any()
    assert not np.any(np.asarray(out)[0]) and not np.any(np.asarray(dq)[0]) and not np.any(np.asarray(dk)[0])
    assert not np.any(np.asarray(out)[1, :4]) and not np.any(np.asarray(dq)[1, :4])
    assert np.all(np.abs(np.asarray(out)[1, 4:]) > 0)


def test_grad_of_scalar_loss_under_jit_and_vmap() -> None:
    q, k, v, _ = _qkv(3, 11, 19, 2, 32, seed=8)

    def loss(q, k, v, backend):
        return jnp.sum(jnp.tanh(flash_attention(q, k, v, is_causal=True, backend=backend)))

    with jax.default_matmul_precision("highest"):
        g_ref = jax.grad(loss, argnums=(0, 1, 2))(q, k, v, "xla")
    g = jax.jit(jax.grad(loss, argnums=(0, 1, 2)), static_argnums=3)(q, k, v, KERNEL_BACKEND)
    for a, b in zip(g, g_ref, strict=True):
        assert_close("jit(grad)", a, b, FP32_TOL)
    # vmap over a leading axis: the same as a Python loop, forward and backward
    per_batch = jax.vmap(lambda q, k, v: interp(q[None], k[None], v[None])[0])(q, k, v)
    assert_close("vmap", per_batch, interp(q, k, v), FP32_TOL)
    gv = jax.vmap(jax.grad(lambda q, k, v: jnp.sum(interp(q[None], k[None], v[None]) ** 2)))(q, k, v)
    gl = jax.grad(lambda q: jnp.sum(interp(q, k, v) ** 2))(q)
    assert_close("vmap(grad)", gv, gl, FP32_TOL)


def test_extra_batch_axes_and_kv_lengths_shape() -> None:
    q, k, v, _ = _qkv(6, 5, 8, 2, 16, seed=9)
    lens = jnp.asarray([8, 3, 0, 1, 8, 5], jnp.int32)
    flat = interp(q, k, v, kv_lengths=lens)
    nested = interp(
        q.reshape(2, 3, 5, 2, 16), k.reshape(2, 3, 8, 2, 16), v.reshape(2, 3, 8, 2, 16), kv_lengths=lens.reshape(2, 3)
    )
    assert_close("nested batch", nested.reshape(flat.shape), flat, 0.0)


@pytest.mark.parametrize(
    ("name", "t", "faithful"),
    [("lfan", 6, False), ("mt", 12, False), ("mt", 12, True), ("jmt", 12, False), ("jmt", 12, True)],
)
def test_models_with_the_kernel_match_xla(name: str, t: int, faithful: bool) -> None:
    """Every attention user in the repo: the same outputs with ``attention_fn=flash_attention``."""
    cfg = {"window_length": t} if name == "lfan" else {"faithful": faithful}
    rng = np.random.default_rng(10)
    x = {
        m: jnp.asarray(rng.normal(size=(2, t, d)).astype(np.float32))
        for m, d in (("video", 512), ("vggish", 128), ("bert", 768))
    }
    xla_model = build_model(name, rngs=nnx.Rngs(1), **cfg)
    kernel_model = build_model(name, rngs=nnx.Rngs(1), attention_fn=interp, **cfg)
    with jax.default_matmul_precision("highest"):
        want = xla_model(x)
    assert_close(f"{name} logits", kernel_model(x), want, FP32_TOL)


def test_drop_in_for_flax_multihead_attention() -> None:
    kw = {"num_heads": 2, "in_features": 32, "decode": False}
    plain = nnx.MultiHeadAttention(**kw, rngs=nnx.Rngs(0))
    fused = nnx.MultiHeadAttention(**kw, rngs=nnx.Rngs(0), attention_fn=interp)
    x = jnp.asarray(np.random.default_rng(11).normal(size=(2, 9, 32)).astype(np.float32))
    with jax.default_matmul_precision("highest"):
        want = plain(x)
    assert_close("nnx.MultiHeadAttention", fused(x), want, FP32_TOL)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"q": (1, 4, 2, 300), "k": (1, 5, 2, 300)}, ValueError, "head dim 300 is not supported"),
        ({"dtype": jnp.int32}, ValueError, "int32 is not supported"),
        ({"k": (1, 5, 3, 16)}, ValueError, "must share batch axes, heads and head dim"),
        ({"q": (4, 2, 16)}, ValueError, r"q must be \[B, S, H, D\]"),
        ({"kv_lengths": jnp.asarray([1, 2])}, ValueError, "kv_lengths must have the batch shape"),
        ({"kv_lengths": jnp.asarray([1.5])}, ValueError, "kv_lengths must be integers"),
        ({"mask": jnp.ones((1, 1, 4, 5), bool)}, NotImplementedError, "no general bias or mask"),
        ({"dropout_rate": 0.1, "deterministic": False}, NotImplementedError, "no attention dropout"),
        ({"backend": "cuda"}, ValueError, "backend must be one of"),
        ({"backend": "triton"}, RuntimeError, "needs a GPU"),
    ],
)
def test_clear_errors(kwargs: dict, error, match: str) -> None:
    shapes = {"q": (1, 4, 2, 16), "k": (1, 5, 2, 16), "v": (1, 5, 2, 16)}
    dtype = kwargs.pop("dtype", jnp.float32)
    shapes.update({n: kwargs.pop(n) for n in ("q", "k") if n in kwargs})
    shapes["v"] = shapes["k"]
    arrays = {n: jnp.ones(s, dtype) for n, s in shapes.items()}
    if kwargs.get("backend") == "triton" and jax.default_backend() == "gpu":
        pytest.skip("this machine has a GPU: backend='triton' is available")
    kwargs.setdefault("backend", KERNEL_BACKEND)
    with pytest.raises(error, match=match):
        flash_attention(arrays["q"], arrays["k"], arrays["v"], **kwargs)


def test_xla_backend_serves_masks_and_bias() -> None:
    q, k, v, _ = _qkv(1, 6, 6, 2, 16, seed=12)
    mask = jnp.asarray(np.random.default_rng(13).uniform(size=(1, 2, 6, 6)) > 0.4)
    with jax.default_matmul_precision("highest"):
        got = flash_attention(q, k, v, mask=mask, backend="xla")
        want = nnx.dot_product_attention(q, k, v, mask=mask)
    rows_seen = np.asarray(mask).any(-1)  # Flax returns the mean of v for rows that see nothing
    np.testing.assert_allclose(
        np.asarray(got).transpose(0, 2, 1, 3)[rows_seen],
        np.asarray(want).transpose(0, 2, 1, 3)[rows_seen],
        atol=FP32_TOL,
    )
    assert xla_attention is not None


def test_launch_hints_follow_the_real_strides() -> None:
    """``ALIGN`` divides every batch / sequence / head stride (else the kernel's alignment claim
    would be false); ``EVEN_D`` only when the head dim fills its tile."""
    for shape, want in [((2, 97, 3, 128), 16), ((1, 7, 2, 64), 16), ((2, 33, 2, 24), 8), ((2, 7, 2, 59), 1)]:
        strides = contiguous_strides(shape)
        got = alignment(strides * 3)  # q, k, v
        assert got == want, (shape, got)
        assert all(s % got == 0 for s in strides[:3])
    assert launch_hints(128, contiguous_strides((1, 5, 2, 128)))["EVEN_D"]
    assert not launch_hints(96, contiguous_strides((1, 5, 2, 96)))["EVEN_D"]


# Keys hidden from every query in each masking mode (B=2, Sq=5, Sk=9): batch 0's keys 4..8 by
# kv_lengths, keys 2 and 6 by a mask or a -inf bias; causal (bottom-right) hides keys 7 and 8 from
# queries 0..2 only (queries 3 and 4 see them).
_HIDDEN_SQ, _HIDDEN_SK = 5, 9


def _hiding(kind: str):
    """(xla_attention kwargs, visibility [B, H, Sq, Sk], the poisoned keys of batch 0)."""
    b, h, sq, sk = 2, 2, _HIDDEN_SQ, _HIDDEN_SK
    rng = np.random.default_rng(20)
    j = np.arange(sk)
    vis = np.ones((b, h, sq, sk), bool)
    if kind == "lengths":
        lens = np.asarray([4, 9])
        vis &= j < lens[:, None, None, None]
        return {"lengths": jnp.asarray(lens, jnp.int32)}, vis, [4, 5, 6, 7, 8]
    if kind == "causal":
        vis &= j[None, :] <= np.arange(sq)[:, None] + sk - sq
        return {"is_causal": True}, vis, [7, 8]
    hide = rng.uniform(size=(b, 1, sq, sk)) > 0.7
    hide[0, :, :, [2, 6]] = True
    hide[:, :, :, 0] = False  # every row sees a key
    vis &= ~hide
    if kind == "mask":
        return {"mask": jnp.asarray(~hide)}, vis, [2, 6]
    bias = np.where(np.broadcast_to(hide, vis.shape), -np.inf, rng.normal(size=vis.shape))
    return {"bias": jnp.asarray(bias, jnp.float32)}, vis, [2, 6]


@pytest.mark.parametrize(
    "value", [np.nan, pytest.param(np.inf, marks=pytest.mark.slow), pytest.param(-np.inf, marks=pytest.mark.slow)]
)
@pytest.mark.parametrize("target", ["k", "v"])
@pytest.mark.parametrize("kind", ["lengths", "causal", "mask", "bias"])
def test_xla_hidden_nonfinite_keys_have_no_influence(kind: str, target: str, value: float) -> None:
    """A NaN / +-inf in hidden key or value rows changes no output a hidden key is kept from, and
    no gradient: the same numbers as with ordinary values there, all finite, zero for those rows.
    The loss covers the queries that do not see a poisoned key (under causal masking some do,
    and get a non-finite output: a NaN key then also makes their softmax, and through it dK and
    dV, NaN, as in any plain product, so only the other queries' dQ is compared there)."""
    kw, vis, poisoned = _hiding(kind)
    q, k, v, do = _qkv(2, _HIDDEN_SQ, _HIDDEN_SK, 2, 16, seed=21)
    clean = {"k": k, "v": v}
    dirty = dict(clean)
    dirty[target] = clean[target].at[0, jnp.asarray(poisoned)].set(value)
    sees = vis[:, :, :, poisoned].any(-1)  # [B, H, Sq]
    sees[1] = False  # batch 1 keeps its values
    keep = jnp.asarray(~sees.transpose(0, 2, 1)[..., None])  # [B, Sq, H, 1]

    def loss_and_grads(k, v):
        def loss(q, k, v):
            return jnp.sum(jnp.where(keep, xla_attention(q, k, v, **kw), 0.0) * do)

        return (xla_attention(q, k, v, **kw), *jax.grad(loss, argnums=(0, 1, 2))(q, k, v))

    want = loss_and_grads(clean["k"], clean["v"])
    got = loss_and_grads(dirty["k"], dirty["v"])
    rows = np.broadcast_to(np.asarray(keep), want[0].shape)
    names = ("out", "dq", "dk", "dv") if target == "v" or not sees.any() else ("out", "dq")
    for name, g, w in zip(names, got, want, strict=False):
        g, w = np.asarray(g), np.asarray(w)
        if name in ("out", "dq"):
            g, w = g[rows], w[rows]
        assert np.isfinite(g).all(), f"{kind} {target}={value}: {name} not finite"
        np.testing.assert_array_equal(g, w, err_msg=f"{kind} {target}={value}: {name}")
    if not sees.any():
        for name, g in zip(("dk", "dv"), got[2:], strict=True):
            assert not np.any(np.asarray(g)[0, poisoned]), f"{kind}: {name} of hidden rows not zero"
    if sees.any():  # queries that do see a poisoned key do get a non-finite output
        assert not np.isfinite(np.asarray(got[0])[~rows]).any()


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("kind", ["none", "lengths", "causal", "mask"])
def test_xla_visible_nonfinite_values_still_propagate(kind: str, value: float) -> None:
    """A NaN / inf in a visible value entry reaches exactly the outputs that see it, with IEEE
    arithmetic's value (+-inf for an infinity times a positive weight); a NaN in a visible key
    makes the whole output row of every query that sees it NaN."""
    kw, vis, _ = _hiding("lengths" if kind == "none" else kind)
    if kind == "none":
        kw, vis = {}, np.ones_like(vis)
    q, k, v, _ = _qkv(2, _HIDDEN_SQ, _HIDDEN_SK, 2, 16, seed=22)
    head, col = 1, 5
    partly = [j for j in range(_HIDDEN_SK) if vis[0, head, :, j].any() and not vis[0, head, :, j].all()]
    j = 3 if kind in ("none", "lengths") else partly[0]  # batch 0's key j: some queries see it (causal, mask: not all)
    sees = vis[0, head, :, j]
    assert sees.any()
    clean = np.asarray(xla_attention(q, k, v, **kw))

    out = np.asarray(xla_attention(q, k, v.at[0, j, head, col].set(value), **kw))
    want = clean.copy()
    want[0, sees, head, col] = value
    np.testing.assert_array_equal(out, want)

    if np.isnan(value):
        out = np.asarray(xla_attention(q, k.at[0, j, head, col].set(value), v, **kw))
        assert np.isnan(out[0, sees, head]).all()
        want = clean.copy()
        want[0, sees, head] = np.nan
        np.testing.assert_array_equal(out, want)


def test_xla_hidden_nonfinite_under_jit_vmap_jvp_and_dropout() -> None:
    """NaN in batch 0's hidden key and value rows (a mask with causal masking): jit, grad of vmap
    (a select over both paths), vmap of grad, forward-mode jvp and attention dropout give the
    numbers of clean rows, finite."""
    kw, _, poisoned = _hiding("mask")
    kw["is_causal"] = True
    q, k, v, do = _qkv(2, _HIDDEN_SQ, _HIDDEN_SK, 2, 16, seed=23)
    dirty_k, dirty_v = (x.at[0, jnp.asarray(poisoned)].set(jnp.nan) for x in (k, v))
    mask = kw.pop("mask")

    def one(q, k, v, mask, **extra):  # one example: [Sq, H, D]
        return xla_attention(q[None], k[None], v[None], mask=mask[None], **kw, **extra)[0]

    def loss(q, k, v):
        return jnp.sum(jax.vmap(one)(q, k, v, mask) * do)

    def per_example_grads(q, k, v):
        return jax.vmap(jax.grad(lambda q, k, v, m, do: jnp.sum(one(q, k, v, m) * do), argnums=(0, 1, 2)))(
            q, k, v, mask, do
        )

    tangents = _qkv(2, _HIDDEN_SQ, _HIDDEN_SK, 2, 16, seed=24)[:3]
    key = jax.random.key(25)
    checks = {
        "jit(grad(vmap))": jax.jit(jax.grad(loss, argnums=(0, 1, 2))),
        "vmap(grad)": jax.jit(per_example_grads),
        "jvp": lambda q, k, v: jax.jvp(lambda *a: jax.vmap(one)(*a, mask), (q, k, v), tuple(tangents)),
        "dropout": lambda q, k, v: _run(
            functools.partial(xla_attention, mask=mask, **kw, dropout_rate=0.3, dropout_rng=key), q, k, v, do
        ),
    }
    for name, fn in checks.items():
        want = jax.tree.leaves(fn(q, k, v))
        got = jax.tree.leaves(fn(q, dirty_k, dirty_v))
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert np.isfinite(np.asarray(g)).all(), f"{name}[{i}] not finite"
            np.testing.assert_array_equal(g, w, err_msg=f"{name}[{i}]")


_EMPTY = {"xla_attention": xla_attention, "flash_attention": functools.partial(flash_attention, backend="xla")}


@pytest.mark.parametrize("dtype", [jnp.float32, pytest.param(jnp.bfloat16, marks=pytest.mark.slow)])
@pytest.mark.parametrize("hide", ["none", "lengths", "causal", "mask"])
@pytest.mark.parametrize("fn", ["xla_attention", "flash_attention", "dot_product_attention"])
@pytest.mark.parametrize(("sq", "sk"), [(5, 0), (0, 7), pytest.param(0, 0, marks=pytest.mark.slow)])
def test_xla_no_keys_or_no_queries_give_zeros_and_zero_gradients(sq, sk, fn: str, hide: str, dtype) -> None:
    """Sk = 0: zeros of shape [B, Sq, H, D] in q's dtype, zero gradients (dK, dV of shape
    [B, 0, H, D]); Sq = 0: an empty output. Through every entry point and masking mode."""
    b, h, d = 2, 3, 16
    q, k, v, _ = _qkv(b, sq, sk, h, d, dtype=dtype, seed=26)
    kw: dict = {
        "none": {},
        "lengths": {"lengths": jnp.zeros((b,), jnp.int32)},
        "causal": {"is_causal": True},
        "mask": {"mask": jnp.ones((b, 1, sq, sk), bool)},
    }[hide]
    if fn == "xla_attention":
        call = xla_attention
    else:
        if "lengths" in kw:
            kw["kv_lengths"] = kw.pop("lengths")
        call = xla_dot_product_attention if fn == "dot_product_attention" else _EMPTY[fn]

    def attend(q, k, v):
        return call(q, k, v, **kw)

    out = attend(q, k, v)
    assert out.shape == (b, sq, h, d) and out.dtype == dtype
    assert not np.any(np.asarray(out, np.float32))
    grads = jax.grad(lambda q, k, v: jnp.sum(attend(q, k, v).astype(jnp.float32) ** 2 + attend(q, k, v)), (0, 1, 2))(
        q, k, v
    )
    for g, x in zip(grads, (q, k, v), strict=True):
        assert g.shape == x.shape and g.dtype == dtype
        assert not np.any(np.asarray(g, np.float32))
