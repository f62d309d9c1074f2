"""Correctness of the attention kernels at long sequences (``python -m repro.kernel_check``).

The suite of the kernels' specification at the sizes only a GPU reaches: S from 512 to 16k (and the
awkward 1025, with per-example key lengths, and a query block shorter than its keys), D 64 and 128,
causal and not. Each case runs the kernel forward and backward (``jax.vjp``) and judges it by the
FlashAttention rule against a float64 reference: the kernel's max error must be at most 2x (forward)
or 3x (dQ, dK, dV) the error of plain JAX attention computed in the same low dtype, plus the dtype's
rounding floor at the output's magnitude (eps x max |ref|). float32 cases must be within the
``kernel_fp32`` tolerance (full-precision dots). NaN anywhere fails the case.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from jax_cer.kernels import flash_attention
from jax_cer.parity.attention import attention64, low_precision_attention
from jax_cer.parity.tolerances import TOLERANCES, flash_rule_bound

SEQS = (512, 1024, 2048, 4096, 8192, 16384)
HEAD_DIMS = (64, 128)
DTYPES = ("bfloat16", "float16")
NAMES = ("out", "dq", "dk", "dv")


@dataclasses.dataclass(frozen=True)
class Case:
    """One attention problem: dtype, head dim, masking, batch, heads, query and key lengths, and
    per-example key lengths (None: every key is real)."""

    dtype: str
    d: int
    causal: bool
    b: int
    h: int
    sq: int
    sk: int
    lens: tuple[int, ...] | None = None

    @property
    def label(self) -> str:
        lens = f" lens={list(self.lens)}" if self.lens else ""
        causal = "causal" if self.causal else "full"
        return f"{self.dtype} D={self.d} {causal} B={self.b} H={self.h} Sq={self.sq} Sk={self.sk}{lens}"


def plan(
    seqs=SEQS, head_dims=HEAD_DIMS, dtypes=DTYPES, heads: int = 2, fp32_seqs=(1025, 4096), awkward: bool = True
) -> list[Case]:
    """The cases, cheapest first. B*H >= 3 where memory allows (B = 2 up to S = 4k, else 1)."""
    cases = []
    for dtype in dtypes:
        for d in head_dims:
            for causal in (False, True):
                for s in seqs:
                    b = 2 if s <= 4096 else 1
                    cases.append(Case(dtype, d, causal, b, heads, s, s))
            if awkward:  # not a multiple of any block, lengths 0 / 1 / partial, Sq != Sk both ways
                cases.append(Case(dtype, d, True, 3, heads, 1025, 1025, (1025, 1, 700)))
                cases.append(Case(dtype, d, False, 3, heads, 1025, 1025, (0, 1025, 513)))
                cases.append(Case(dtype, d, True, 2, heads, 257, 1025, None))
                cases.append(Case(dtype, d, True, 2, heads, 1025, 257, (257, 100)))
    for s in fp32_seqs:
        for d in head_dims:
            cases.append(Case("float32", d, True, 2, heads, s, s, (s, s // 3) if s % 2 else None))
    return sorted(cases, key=lambda c: c.b * c.h * c.sq * c.sk * c.d)


# -- the float64 reference (same semantics as jax_cer.parity.attention.attention64) ----------------------
def reference64(q, k, v, do, lens, causal: bool) -> tuple[np.ndarray, ...]:
    """out, dq, dk, dv in float64 (inputs ``[B, S, H, D]``, ``lens`` ``[B]`` or None): in PyTorch on the
    GPU when there is one (fast), else in numpy."""
    try:
        import torch  # noqa: PLC0415 - optional: the float64 reference runs in PyTorch on a GPU

        dev = "cuda" if torch.cuda.is_available() else None
    except ImportError:
        torch, dev = None, None
    if dev is None:
        return attention64(q, k, v, lens, causal, do=do)
    t = [torch.from_numpy(np.asarray(x, np.float64)).to(dev) for x in (q, k, v, do)]
    q64, k64, v64, do64 = t
    b, sq, _, d = q64.shape
    sk = k64.shape[1]
    scale = d**-0.5
    j = torch.arange(sk, device=dev)
    ok = torch.ones((b, 1, sq, sk), dtype=torch.bool, device=dev)
    if causal:
        ok &= j[None, None, None, :] <= torch.arange(sq, device=dev)[None, None, :, None] + (sk - sq)
    if lens is not None:
        ok &= j[None, None, None, :] < torch.as_tensor(lens, device=dev)[:, None, None, None]
    s = torch.einsum("bqhd,bkhd->bhqk", q64, k64) * scale
    s = s.masked_fill(~ok, float("-inf"))
    m = s.amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    p = torch.where(ok, torch.exp(s - m), torch.zeros_like(s))
    del s
    total = p.sum(-1, keepdim=True)
    p = p / torch.where(total > 0, total, torch.ones_like(total))
    o = torch.einsum("bhqk,bkhd->bqhd", p, v64)
    dv = torch.einsum("bhqk,bqhd->bkhd", p, do64)
    dp = torch.einsum("bqhd,bkhd->bhqk", do64, v64)
    delta = torch.einsum("bqhd,bqhd->bhq", do64, o)[..., None]
    ds = p * (dp - delta)
    del dp, p
    dq = torch.einsum("bhqk,bkhd->bqhd", ds, k64) * scale
    dk = torch.einsum("bhqk,bqhd->bkhd", ds, q64) * scale
    out = tuple(x.cpu().numpy() for x in (o, dq, dk, dv))
    del ds, ok
    torch.cuda.empty_cache()
    return out


def _vjp(fn, q, k, v, do):
    out, pull = jax.vjp(fn, q, k, v)
    return tuple(np.asarray(x.astype(np.float32), np.float64) for x in (out, *pull(do)))


def run_case(case: Case, backend: str, seed: int = 0, attention=flash_attention) -> dict:
    """Runs one case forward and backward through ``attention`` (the kernels' signature: q, k, v,
    ``kv_lengths``, ``is_causal``, ``backend``) and judges out, dq, dk and dv by the FlashAttention rule
    against float64 (float32 cases: within ``TOLERANCES["kernel_fp32"]``). Returns the case's fields,
    ``label``, ``checks`` (per output: error, low-precision error, bound, nan, passed), ``passed``, ``seconds``."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    dtype = jnp.dtype(case.dtype)
    shapes = [
        (case.b, case.sq, case.h, case.d),
        *[(case.b, case.sk, case.h, case.d)] * 2,
        (case.b, case.sq, case.h, case.d),
    ]
    host = [rng.normal(size=s).astype(np.float32) for s in shapes]
    q, k, v, do = (jnp.asarray(x, dtype) for x in host)
    # the reference sees exactly the rounded low-precision inputs
    q64, k64, v64, do64 = (np.asarray(x.astype(jnp.float32), np.float64) for x in (q, k, v, do))
    lens = None if case.lens is None else jnp.asarray(case.lens, jnp.int32)
    ref = reference64(q64, k64, v64, do64, case.lens, case.causal)

    def kernel(q, k, v):
        return attention(q, k, v, kv_lengths=lens, is_causal=case.causal, backend=backend)

    with jax.default_matmul_precision("highest"):
        got = _vjp(jax.jit(kernel), q, k, v, do)
        low = (
            None
            if case.dtype == "float32"
            else _vjp(jax.jit(lambda q, k, v: low_precision_attention(q, k, v, lens, case.causal)), q, k, v, do)
        )
    rows = {}
    for i, name in enumerate(NAMES):
        err = float(np.max(np.abs(got[i] - ref[i]))) if got[i].size else 0.0
        nan = bool(np.isnan(got[i]).any())
        if low is None:
            low_err, bound = None, TOLERANCES["kernel_fp32"]
        else:
            low_err = float(np.max(np.abs(low[i] - ref[i]))) if low[i].size else 0.0
            ref_max = float(np.max(np.abs(ref[i]))) if ref[i].size else 0.0
            bound = flash_rule_bound(name, low_err, ref_max, dtype)
        rows[name] = {
            "error": err,
            "low_precision_error": low_err,
            "bound": bound,
            "nan": nan,
            "passed": (not nan) and err <= bound,
        }
    return {
        **dataclasses.asdict(case),
        "label": case.label,
        "checks": rows,
        "passed": all(r["passed"] for r in rows.values()),
        "seconds": round(time.perf_counter() - t0, 2),
    }
