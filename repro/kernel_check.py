"""Correctness of the attention kernels at long sequences, in float16 and bfloat16 (and float32).

    python -m repro.kernel_check --json OUT/kernelcheck.json [--max-seq 16384] [--backend auto]

The suite of spec/attention-kernels.md at the sizes only a GPU reaches: S from 512 to 16k
(and the awkward 1025, with per-example key lengths, and a query block shorter than its keys),
D 64 and 128, causal and not. Each case runs the kernel forward and backward (``jax.vjp``) and
judges it by the FlashAttention rule against a float64 reference: the kernel's max error must be
at most 2x (forward) or 3x (dQ, dK, dV) the error of plain JAX attention computed in the same
low dtype, plus the dtype's rounding floor at the output's magnitude (eps x max |ref|). float32
cases must be within 1e-5 (full-precision dots). NaN anywhere fails the case.

The float64 reference runs in PyTorch on the GPU when there is one (fast), otherwise in numpy.
Results go to the JSON after every case, so a run stopped by ``--budget-s`` or a kill keeps what
it measured. Exit status 1 if any case fails. On a CPU, ``--backend interpret --seqs 97,128``
runs the same checks through Triton's interpreter (small sizes only; CI does this).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from jax_cer.parity.attention import attention64, low_precision_attention
from jax_cer.parity.tolerances import TOLERANCES, flash_rule_bound

SEQS = (512, 1024, 2048, 4096, 8192, 16384)
HEAD_DIMS = (64, 128)
DTYPES = ("bfloat16", "float16")
NAMES = ("out", "dq", "dk", "dv")


@dataclasses.dataclass(frozen=True)
class Case:
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


# -- the float64 reference (same semantics as jax_cer.kernels.reference) --------------------------------
def _reference64(q, k, v, do, lens, causal: bool):
    """out, dq, dk, dv in float64: torch on the GPU if one is there, else numpy."""
    try:
        import torch

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
    import jax

    out, pull = jax.vjp(fn, q, k, v)
    return tuple(np.asarray(x.astype(np.float32), np.float64) for x in (out, *pull(do)))


def run_case(case: Case, backend: str, seed: int = 0) -> dict:
    import jax
    import jax.numpy as jnp

    from jax_cer.kernels import flash_attention

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
    ref = _reference64(q64, k64, v64, do64, case.lens, case.causal)

    def kernel(q, k, v):
        return flash_attention(q, k, v, kv_lengths=lens, is_causal=case.causal, backend=backend)

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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m repro.kernel_check",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--json", type=Path, required=True, metavar="PATH", help="where the results go (rewritten after each case)"
    )
    p.add_argument(
        "--backend",
        default="auto",
        choices=("auto", "triton", "interpret"),
        help="kernel backend (auto: triton on a GPU, interpret otherwise)",
    )
    p.add_argument("--max-seq", type=int, default=16384, help="longest S of the main grid")
    p.add_argument("--seqs", help="comma-separated S list instead of the main grid (e.g. 97,128 for the interpreter)")
    p.add_argument("--dtypes", default=",".join(DTYPES), help="low-precision dtypes of the main grid")
    p.add_argument("--head-dims", default=",".join(map(str, HEAD_DIMS)), help="head dims")
    p.add_argument("--no-awkward", action="store_true", help="skip the S=1025 / Sq != Sk / kv_lengths cases")
    p.add_argument("--no-fp32", action="store_true", help="skip the float32 cases (S 1025 and 4096)")
    p.add_argument("--budget-s", type=float, default=0, help="start no case after this many seconds (0: no limit)")
    args = p.parse_args(argv)

    import jax

    from jax_cer.machine import machine_record

    backend = args.backend
    if backend == "auto":
        backend = "triton" if jax.default_backend() == "gpu" else "interpret"
    seqs = tuple(int(s) for s in args.seqs.split(",")) if args.seqs else tuple(s for s in SEQS if s <= args.max_seq)
    dtypes = tuple(d for d in args.dtypes.split(",") if d)
    for d in dtypes:
        if d not in ("bfloat16", "float16", "float32"):
            p.error(f"--dtypes: {d!r} is not float16, bfloat16 or float32")
    head_dims = tuple(int(d) for d in args.head_dims.split(","))
    fp32 = () if args.no_fp32 else tuple(s for s in (1025, 4096) if args.seqs is None and s <= args.max_seq)
    cases = plan(seqs, head_dims, dtypes, fp32_seqs=fp32, awkward=not args.no_awkward and args.seqs is None)
    record = {
        "kind": "kernelcheck",
        "machine": machine_record(),
        "backend": backend,
        "rule": "FlashAttention rule against float64: error <= 2x (out) / 3x (dq, dk, dv) the plain-JAX "
        f"low-precision error + eps*max|ref|; float32 <= {TOLERANCES['kernel_fp32']:g}",
        "planned": len(cases),
        "cases": [],
        "not_run": [],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    failed = 0
    for i, case in enumerate(cases):
        if args.budget_s and time.perf_counter() - t0 > args.budget_s:
            record["not_run"] = [c.label for c in cases[i:]]
            print(f"budget of {args.budget_s:g}s spent: {len(cases) - i} cases not run", flush=True)
            break
        try:
            row = run_case(case, backend)
        except Exception as e:  # a crash is a failed case, with its reason
            row = {
                **dataclasses.asdict(case),
                "label": case.label,
                "passed": False,
                "error": f"{type(e).__name__}: {e}"[:500],
            }
        failed += not row["passed"]
        record["cases"].append(row)
        record["passed"] = failed == 0 and not record["not_run"]
        args.json.write_text(json.dumps(record, indent=1))
        worst = max(
            (c["error"] / c["bound"] for c in row.get("checks", {}).values() if c["bound"]), default=float("nan")
        )
        status = "ok" if row["passed"] else "FAIL"
        print(
            f"[{i + 1}/{len(cases)}] {status:4} {case.label}  worst error/bound {worst:.2f}  "
            f"({row.get('seconds', 0):.1f}s)" + (f"  {row['error']}" if "error" in row else ""),
            flush=True,
        )
    record["passed"] = failed == 0 and not record["not_run"]
    record["seconds"] = round(time.perf_counter() - t0, 1)
    args.json.write_text(json.dumps(record, indent=1))
    print(
        f"{len(record['cases']) - failed}/{len(cases)} cases pass ({failed} failed, "
        f"{len(record['not_run'])} not run); wrote {args.json}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # the float64 reference shares the GPU
    sys.exit(main())
