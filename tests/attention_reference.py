"""Float64 numpy attention with the kernels' semantics, its gradients, and assertion helpers."""

from __future__ import annotations

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


def assert_close(name: str, got, want, atol: float) -> None:
    """Fails with how many elements are off, where the first ones are, and the max / mean error."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    assert not np.isnan(got).any(), f"{name}: {int(np.isnan(got).sum())} NaN (unwritten or invalid) elements"
    err = np.abs(got - want)
    bad = np.argwhere(err > atol)
    if len(bad):
        first = ", ".join(str(tuple(int(i) for i in idx)) for idx in bad[:5])
        raise AssertionError(
            f"{name}: {len(bad)}/{err.size} elements off by > {atol:.1e}; first at {first}; "
            f"max {err.max():.3e}, mean {err.mean():.3e}"
        )
