"""Triton kernels of the fused attention (FlashAttention-2 style), forward and backward.

Layout: q ``[B, Sq, H, D]``, k / v ``[B, Sk, H, D]`` (any element strides), o like q,
log-sum-exp ``[B, H, Sq]`` float32 in base 2 (``lse2 = m2 + log2(l)``, ``+inf`` for a query row
that sees no key). Scores are ``s = scale * q.k``; the kernels work in the exp2 domain with
``scale * log2(e)`` folded in. A key ``j`` is visible to query ``i`` when ``j < kv_len[b]`` and,
if causal, ``j <= i + Sk - Sq`` (bottom-right aligned). Tiles are padded to ``BLOCK_D``, the next
power of two >= D, with masked loads. Accumulation is float32; ``IEEE`` asks for full-precision
fp32 dots (TF32 is not float32); ``UPCAST`` casts tiles to float32 before every dot (the CPU
interpreter multiplies raw bits for bfloat16 ``tl.dot``). Two hints let the compiler vectorize
loads and stores along D (16-byte accesses, asynchronous copies, software pipelining) instead of
moving one element at a time: ``EVEN_D`` (D == BLOCK_D, so the head-dim mask is known to be
all-true at compile time) and ``ALIGN`` (a power of two that divides every batch, sequence and
head stride, in elements; 1 when nothing is known). The caller computes both from the real shapes.

This module is loaded twice by :mod:`jax_cer.kernels.loader`: once with ``TRITON_INTERPRET=1`` (CPU
tests) and once without (GPU, ahead-of-time compilation). It imports nothing but Triton.

Parameter order is fixed for ``jax_triton.triton_call``: input arrays, runtime scalars, then the
output arrays, then the ``tl.constexpr`` parameters.
"""

import triton
import triton.language as tl


@triton.jit
def _dot(a, b, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def _d_mask(offs_d, D, EVEN_D: tl.constexpr, BLOCK_D: tl.constexpr):
    """Which of the tile's head-dim columns exist: all of them, known at compile time, when EVEN_D."""
    if EVEN_D:
        return offs_d < BLOCK_D
    return offs_d < D


@triton.jit
def _aligned(stride, ALIGN: tl.constexpr):
    """``stride``, visibly a multiple of ALIGN (elements) so that row starts are aligned. The caller
    guarantees the multiple; ``// ALIGN * ALIGN`` is what the compiler's divisibility analysis
    sees through (``tl.multiple_of`` on a scalar argument does not reach it)."""
    if ALIGN > 1:
        stride = (stride // ALIGN) * ALIGN
    return stride


@triton.jit
def _kv_length(LENS, b, SK, HAS_LENS: tl.constexpr):
    """Keys of batch ``b`` that exist: ``min(LENS[b], SK)``."""
    kv_len = SK
    if HAS_LENS:
        kv_len = tl.minimum(tl.load(LENS + b), SK)
    return kv_len


@triton.jit
def _key_end(kv_len, pid_m, SQ, SK, IS_CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr):
    """One past the last key that query block ``pid_m`` can see."""
    hi = kv_len
    if IS_CAUSAL:
        hi = tl.minimum(hi, (pid_m + 1) * BLOCK_M + SK - SQ)
    return hi


@triton.jit
def _visible(rows, cols, key_ok, SQ, SK, IS_CAUSAL: tl.constexpr):
    """``[rows, cols]``: the key exists and, if causal, ``col <= row + SK - SQ``."""
    valid = key_ok[None, :]
    if IS_CAUSAL:
        valid = valid & (cols[None, :] <= rows[:, None] + (SK - SQ))
    return valid


@triton.jit
def _unmasked_end(kv_len, m0, SQ, SK, IS_CAUSAL: tl.constexpr, BLOCK_N: tl.constexpr):
    """Key tiles ``[0, end)`` are visible to every query of the block starting at row ``m0``: they
    exist (below ``kv_len``) and, if causal, lie left of the block's first row's diagonal. A
    multiple of ``BLOCK_N``; the tiles from there to :func:`_key_end` need masks."""
    end = kv_len
    if IS_CAUSAL:
        end = tl.minimum(end, m0 + SK - SQ + 1)
    end = tl.maximum(end, 0)
    return (end // BLOCK_N) * BLOCK_N


@triton.jit
def _load(ptrs, mask, MASKED: tl.constexpr):
    """``ptrs``, zero where ``mask`` is false; no mask at all when ``MASKED`` is off."""
    if MASKED:
        return tl.load(ptrs, mask=mask, other=0.0)
    return tl.load(ptrs)


@triton.jit
def _fwd_tile(
    acc, l_i, m_i, q, k_base, v_base, start_n, offs_m, offs_n, offs_d, d_ok, kv_len,
    stride_ks, stride_kd, stride_vs, stride_vd, SQ, SK, scale_log2,
    IS_CAUSAL: tl.constexpr, MASKED: tl.constexpr, EVEN_D: tl.constexpr,
    IEEE: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    """One key tile of the online softmax. ``MASKED``: the tile may hold keys some rows must not
    see (past ``kv_len``, right of the causal diagonal); otherwise every key is visible to every
    row and the tile is loaded and used without masks."""
    cols = start_n + offs_n
    key_ok = cols < kv_len
    kt = _load(
        k_base + cols[None, :] * stride_ks + offs_d[:, None] * stride_kd,
        key_ok[None, :] & d_ok[:, None],
        MASKED or not EVEN_D,
    )
    qk = _dot(q, kt, IEEE, UPCAST) * scale_log2
    if MASKED:
        qk = tl.where(_visible(offs_m, cols, key_ok, SQ, SK, IS_CAUSAL), qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with no key yet
    else:
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        m_safe = m_new
    p = tl.exp2(qk - m_safe[:, None])
    alpha = tl.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    v = _load(
        v_base + cols[:, None] * stride_vs + offs_d[None, :] * stride_vd,
        key_ok[:, None] & d_ok[None, :],
        MASKED or not EVEN_D,
    )
    acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE, UPCAST)
    return acc, l_i, m_new


@triton.jit
def _attn_fwd_kernel(
    Q, K, V, LENS,
    stride_qb, stride_qs, stride_qh, stride_qd,
    stride_kb, stride_ks, stride_kh, stride_kd,
    stride_vb, stride_vs, stride_vh, stride_vd,
    H, SQ, SK, D, scale_log2,
    O, LSE,
    IS_CAUSAL: tl.constexpr, HAS_LENS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    IEEE: tl.constexpr, UPCAST: tl.constexpr, EVEN_D: tl.constexpr, ALIGN: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = _d_mask(offs_d, D, EVEN_D, BLOCK_D)
    stride_qb, stride_qs, stride_qh = _aligned(stride_qb, ALIGN), _aligned(stride_qs, ALIGN), _aligned(stride_qh, ALIGN)
    stride_kb, stride_ks, stride_kh = _aligned(stride_kb, ALIGN), _aligned(stride_ks, ALIGN), _aligned(stride_kh, ALIGN)
    stride_vb, stride_vs, stride_vh = _aligned(stride_vb, ALIGN), _aligned(stride_vs, ALIGN), _aligned(stride_vh, ALIGN)

    q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qs + offs_d[None, :] * stride_qd
    q = tl.load(q_ptrs, mask=(offs_m[:, None] < SQ) & d_ok[None, :], other=0.0)
    kv_len = _kv_length(LENS, b, SK, HAS_LENS)
    hi = _key_end(kv_len, pid_m, SQ, SK, IS_CAUSAL, BLOCK_M)
    mid = _unmasked_end(kv_len, pid_m * BLOCK_M, SQ, SK, IS_CAUSAL, BLOCK_N)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    # Rows past SQ hold zeros and are never stored, so the unmasked tiles need no row mask.
    for start_n in range(0, mid, BLOCK_N):
        acc, l_i, m_i = _fwd_tile(
            acc, l_i, m_i, q, k_base, v_base, start_n, offs_m, offs_n, offs_d, d_ok, kv_len,
            stride_ks, stride_kd, stride_vs, stride_vd, SQ, SK, scale_log2,
            IS_CAUSAL, False, EVEN_D, IEEE, UPCAST,
        )  # fmt: skip
    for start_n in range(mid, hi, BLOCK_N):  # the diagonal and the kv_len boundary
        acc, l_i, m_i = _fwd_tile(
            acc, l_i, m_i, q, k_base, v_base, start_n, offs_m, offs_n, offs_d, d_ok, kv_len,
            stride_ks, stride_kd, stride_vs, stride_vd, SQ, SK, scale_log2,
            IS_CAUSAL, True, EVEN_D, IEEE, UPCAST,
        )  # fmt: skip

    empty = l_i == 0.0  # every key masked: output 0, lse +inf (backward: exp2(x - inf) = 0)
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("inf"), m_i + tl.log2(tl.where(empty, 1.0, l_i)))
    # O shares q's strides (allocated like q by the caller).
    o_ptrs = O + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qs + offs_d[None, :] * stride_qd
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=(offs_m[:, None] < SQ) & d_ok[None, :])
    tl.store(LSE + pid_bh * SQ + offs_m, lse, mask=offs_m < SQ)


@triton.jit
def _attn_bwd_preprocess_kernel(
    O, DO,
    stride_ob, stride_os, stride_oh, stride_od,
    H, SQ, D,
    DELTA,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr, ALIGN: tl.constexpr,
):  # fmt: skip
    """``delta[b, h, i] = sum_d dO[i, d] * O[i, d]`` in float32."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m[:, None] < SQ) & _d_mask(offs_d, D, EVEN_D, BLOCK_D)[None, :]
    stride_ob, stride_os, stride_oh = _aligned(stride_ob, ALIGN), _aligned(stride_os, ALIGN), _aligned(stride_oh, ALIGN)
    off = b * stride_ob + h * stride_oh + offs_m[:, None] * stride_os + offs_d[None, :] * stride_od
    o = tl.load(O + off, mask=mask, other=0.0).to(tl.float32)
    do = tl.load(DO + off, mask=mask, other=0.0).to(tl.float32)
    tl.store(DELTA + pid_bh * SQ + offs_m, tl.sum(o * do, 1), mask=offs_m < SQ)


@triton.jit
def _dkdv_tile(
    dk, dv, k, v, q_base, do_base, LSE, DELTA, pid_bh, start_m, offs_m0, offs_n, offs_d, d_ok,
    stride_qs, stride_qd, SQ, SK, scale_log2,
    IS_CAUSAL: tl.constexpr, MASKED: tl.constexpr, EVEN_D: tl.constexpr,
    IEEE: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    """One query tile's contribution to a key block's dK and dV. ``MASKED``: the tile may hold
    rows past SQ or rows that must not see some of the block's keys (the causal diagonal); otherwise
    every row exists and sees every key. Keys past ``kv_len`` are zeroed by the caller at the end."""
    offs_m = start_m + offs_m0
    row_ok = offs_m < SQ
    rows = offs_m[:, None] * stride_qs + offs_d[None, :] * stride_qd
    q = _load(q_base + rows, row_ok[:, None] & d_ok[None, :], MASKED or not EVEN_D)
    do = _load(do_base + rows, row_ok[:, None] & d_ok[None, :], MASKED or not EVEN_D)
    if MASKED:  # rows past SQ: lse +inf, so exp2(qk - lse) = 0
        lse = tl.load(LSE + pid_bh * SQ + offs_m, mask=row_ok, other=float("inf"))
        delta = tl.load(DELTA + pid_bh * SQ + offs_m, mask=row_ok, other=0.0)
    else:
        lse = tl.load(LSE + pid_bh * SQ + offs_m)
        delta = tl.load(DELTA + pid_bh * SQ + offs_m)
    qkt = _dot(k, tl.trans(q), IEEE, UPCAST) * scale_log2  # [BLOCK_N, BLOCK_M]
    pt = tl.exp2(qkt - lse[None, :])
    if MASKED and IS_CAUSAL:
        pt = tl.where(offs_n[:, None] <= offs_m[None, :] + (SK - SQ), pt, 0.0)
    dv += _dot(pt.to(do.dtype), do, IEEE, UPCAST)
    dpt = _dot(v, tl.trans(do), IEEE, UPCAST)
    dst = pt * (dpt - delta[None, :])
    dk += _dot(dst.to(q.dtype), q, IEEE, UPCAST)
    return dk, dv


@triton.jit
def _attn_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, LENS,
    stride_qb, stride_qs, stride_qh, stride_qd,
    stride_kb, stride_ks, stride_kh, stride_kd,
    stride_vb, stride_vs, stride_vh, stride_vd,
    H, SQ, SK, D, scale_log2, scale,
    DK, DV,
    IS_CAUSAL: tl.constexpr, HAS_LENS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    IEEE: tl.constexpr, UPCAST: tl.constexpr, EVEN_D: tl.constexpr, ALIGN: tl.constexpr,
):  # fmt: skip
    """One block of keys: dV = sum_i P^T dO, dK = scale * sum_i dS^T Q over the query blocks.

    dO shares q's strides; dK / dV share k's / v's. A key's P column only reaches its own rows of
    dK and dV, so keys past ``kv_len`` (loaded as zeros) are handled by zeroing those rows at the
    end; the loop over queries masks only the causal diagonal and the last partial query tile, and
    a block whose keys are all past ``kv_len`` skips it.
    """
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m0 = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = _d_mask(offs_d, D, EVEN_D, BLOCK_D)
    stride_qb, stride_qs, stride_qh = _aligned(stride_qb, ALIGN), _aligned(stride_qs, ALIGN), _aligned(stride_qh, ALIGN)
    stride_kb, stride_ks, stride_kh = _aligned(stride_kb, ALIGN), _aligned(stride_ks, ALIGN), _aligned(stride_kh, ALIGN)
    stride_vb, stride_vs, stride_vh = _aligned(stride_vb, ALIGN), _aligned(stride_vs, ALIGN), _aligned(stride_vh, ALIGN)
    kv_len = _kv_length(LENS, b, SK, HAS_LENS)
    key_ok = offs_n < kv_len
    k_off = b * stride_kb + h * stride_kh + offs_n[:, None] * stride_ks + offs_d[None, :] * stride_kd
    v_off = b * stride_vb + h * stride_vh + offs_n[:, None] * stride_vs + offs_d[None, :] * stride_vd
    k = tl.load(K + k_off, mask=key_ok[:, None] & d_ok[None, :], other=0.0)
    v = tl.load(V + v_off, mask=key_ok[:, None] & d_ok[None, :], other=0.0)
    q_base = Q + b * stride_qb + h * stride_qh
    do_base = DO + b * stride_qb + h * stride_qh

    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    # Query tiles: [lo, mid) cross the causal diagonal (masked), [mid, full) see every key of
    # the block (unmasked), [full, SQ) is the last partial tile (masked).
    lo = 0
    mid = 0
    if IS_CAUSAL:
        lo = tl.maximum(pid_n * BLOCK_N - (SK - SQ), 0)  # the first query that sees the block's first key
        lo = (lo // BLOCK_M) * BLOCK_M
        mid = tl.maximum(pid_n * BLOCK_N + BLOCK_N - 1 - (SK - SQ), lo)  # sees the block's last key
        mid = tl.minimum((mid + BLOCK_M - 1) // BLOCK_M * BLOCK_M, (SQ + BLOCK_M - 1) // BLOCK_M * BLOCK_M)
    full = tl.maximum((SQ // BLOCK_M) * BLOCK_M, mid)
    end = SQ
    if HAS_LENS:  # a block of keys all past kv_len: no query sees them, their dK and dV are zero
        end = tl.where(pid_n * BLOCK_N < kv_len, SQ, 0)
        lo, mid, full = tl.minimum(lo, end), tl.minimum(mid, end), tl.minimum(full, end)
    for start_m in range(lo, mid, BLOCK_M):
        dk, dv = _dkdv_tile(
            dk, dv, k, v, q_base, do_base, LSE, DELTA, pid_bh, start_m, offs_m0, offs_n, offs_d, d_ok,
            stride_qs, stride_qd, SQ, SK, scale_log2, IS_CAUSAL, True, EVEN_D, IEEE, UPCAST,
        )  # fmt: skip
    for start_m in range(mid, full, BLOCK_M):
        dk, dv = _dkdv_tile(
            dk, dv, k, v, q_base, do_base, LSE, DELTA, pid_bh, start_m, offs_m0, offs_n, offs_d, d_ok,
            stride_qs, stride_qd, SQ, SK, scale_log2, IS_CAUSAL, False, EVEN_D, IEEE, UPCAST,
        )  # fmt: skip
    for start_m in range(full, end, BLOCK_M):
        dk, dv = _dkdv_tile(
            dk, dv, k, v, q_base, do_base, LSE, DELTA, pid_bh, start_m, offs_m0, offs_n, offs_d, d_ok,
            stride_qs, stride_qd, SQ, SK, scale_log2, IS_CAUSAL, True, EVEN_D, IEEE, UPCAST,
        )  # fmt: skip
    dk = tl.where(key_ok[:, None], dk, 0.0)
    dv = tl.where(key_ok[:, None], dv, 0.0)
    store_ok = (offs_n[:, None] < SK) & d_ok[None, :]
    tl.store(DK + k_off, (dk * scale).to(DK.dtype.element_ty), mask=store_ok)
    tl.store(DV + v_off, dv.to(DV.dtype.element_ty), mask=store_ok)


@triton.jit
def _dq_tile(
    dq, q, do, lse, delta, k_base, v_base, start_n, offs_m, offs_n0, offs_d, d_ok, kv_len,
    stride_ks, stride_kd, stride_vs, stride_vd, SQ, SK, scale_log2,
    IS_CAUSAL: tl.constexpr, MASKED: tl.constexpr, EVEN_D: tl.constexpr,
    IEEE: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    """One key tile's contribution to a query block's dQ (``MASKED`` as in :func:`_fwd_tile`; rows
    past SQ have lse +inf, so their P is 0 without a row mask)."""
    cols = start_n + offs_n0
    key_ok = cols < kv_len
    use_mask = MASKED or not EVEN_D
    tile_ok = key_ok[None, :] & d_ok[:, None]
    kt = _load(k_base + cols[None, :] * stride_ks + offs_d[:, None] * stride_kd, tile_ok, use_mask)
    vt = _load(v_base + cols[None, :] * stride_vs + offs_d[:, None] * stride_vd, tile_ok, use_mask)
    qk = _dot(q, kt, IEEE, UPCAST) * scale_log2
    p = tl.exp2(qk - lse[:, None])
    if MASKED:
        p = tl.where(_visible(offs_m, cols, key_ok, SQ, SK, IS_CAUSAL), p, 0.0)
    dp = _dot(do, vt, IEEE, UPCAST)
    ds = p * (dp - delta[:, None])
    dq += _dot(ds.to(kt.dtype), tl.trans(kt), IEEE, UPCAST)
    return dq


@triton.jit
def _attn_bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, LENS,
    stride_qb, stride_qs, stride_qh, stride_qd,
    stride_kb, stride_ks, stride_kh, stride_kd,
    stride_vb, stride_vs, stride_vh, stride_vd,
    H, SQ, SK, D, scale_log2, scale,
    DQ,
    IS_CAUSAL: tl.constexpr, HAS_LENS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    IEEE: tl.constexpr, UPCAST: tl.constexpr, EVEN_D: tl.constexpr, ALIGN: tl.constexpr,
):  # fmt: skip
    """One block of queries: dQ = scale * sum_j dS K over the key blocks (dO, dQ share q's strides)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = _d_mask(offs_d, D, EVEN_D, BLOCK_D)
    stride_qb, stride_qs, stride_qh = _aligned(stride_qb, ALIGN), _aligned(stride_qs, ALIGN), _aligned(stride_qh, ALIGN)
    stride_kb, stride_ks, stride_kh = _aligned(stride_kb, ALIGN), _aligned(stride_ks, ALIGN), _aligned(stride_kh, ALIGN)
    stride_vb, stride_vs, stride_vh = _aligned(stride_vb, ALIGN), _aligned(stride_vs, ALIGN), _aligned(stride_vh, ALIGN)
    row_ok = offs_m < SQ
    q_off = b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qs + offs_d[None, :] * stride_qd
    q = tl.load(Q + q_off, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    do = tl.load(DO + q_off, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    lse = tl.load(LSE + pid_bh * SQ + offs_m, mask=row_ok, other=float("inf"))
    delta = tl.load(DELTA + pid_bh * SQ + offs_m, mask=row_ok, other=0.0)
    kv_len = _kv_length(LENS, b, SK, HAS_LENS)
    hi = _key_end(kv_len, pid_m, SQ, SK, IS_CAUSAL, BLOCK_M)
    mid = _unmasked_end(kv_len, pid_m * BLOCK_M, SQ, SK, IS_CAUSAL, BLOCK_N)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh

    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(0, mid, BLOCK_N):
        dq = _dq_tile(
            dq, q, do, lse, delta, k_base, v_base, start_n, offs_m, offs_n0, offs_d, d_ok, kv_len,
            stride_ks, stride_kd, stride_vs, stride_vd, SQ, SK, scale_log2,
            IS_CAUSAL, False, EVEN_D, IEEE, UPCAST,
        )  # fmt: skip
    for start_n in range(mid, hi, BLOCK_N):
        dq = _dq_tile(
            dq, q, do, lse, delta, k_base, v_base, start_n, offs_m, offs_n0, offs_d, d_ok, kv_len,
            stride_ks, stride_kd, stride_vs, stride_vd, SQ, SK, scale_log2,
            IS_CAUSAL, True, EVEN_D, IEEE, UPCAST,
        )  # fmt: skip
    tl.store(DQ + q_off, (dq * scale).to(DQ.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
