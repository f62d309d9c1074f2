"""Correctness of the attention kernels at long sequences, in float16 and bfloat16 (and float32).

    python -m repro.kernel_check --json OUT/kernelcheck.json [--max-seq 16384] [--backend auto]

Runs the cases of :mod:`jax_cer.bench.kernel_check` (S from 512 to 16k, D 64 and 128, causal and
not, awkward lengths; each judged by the FlashAttention rule against float64). The float64 reference
runs in PyTorch on the GPU when there is one (fast), otherwise in numpy. Results go to the JSON after
every case, so a run stopped by ``--budget-s`` or a kill keeps what it measured; ``jax-cer report``
tabulates them. Exit status 1 if any case fails. On a CPU, ``--backend interpret --seqs 97,128``
runs the same checks through Triton's interpreter (small sizes only).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import jax

from jax_cer.bench.kernel_check import DTYPES, HEAD_DIMS, SEQS, plan, run_case
from jax_cer.machine import machine_record
from jax_cer.parity.tolerances import TOLERANCES


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
