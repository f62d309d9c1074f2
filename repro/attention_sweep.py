"""Block-size sweep of the attention kernels on a GPU: which configuration is fastest, and by how much.

    python -m repro.attention_sweep --json OUT/sweep.json [--kernels fwd,bwd_dkdv,bwd_dq]
    python -m repro.attention_sweep --json sweep-aot.json --aot-only     # resources only, no GPU needed

For each kernel (the forward, and the backward's dK/dV and dQ kernels) at one dtype and head dim
(default bf16, D=128), the candidates are BLOCK_M x BLOCK_N x warps x stages around the shipped
configuration (``kernels/configs.py``). Each is first compiled ahead of time for sm_90 and dropped
if it spills registers or needs more shared memory than the chip has (``jax_cer.kernels.aot``). The rest
are timed on the GPU through :func:`jax_cer.kernels.configs.override` on the benchmark's shapes (B*S = 16k
tokens, 16 heads, S = 4k and 16k, causal and not): the forward alone for ``fwd``, forward and
backward for the backward kernels, medians of wall-clock time around ``block_until_ready`` with
three rotating input sets. Each figure is given as TFLOP/s and as a ratio to the shipped
configuration and to cuDNN (``jax.nn.dot_product_attention``) in the same run. The JSON is
rewritten after every candidate; ``--budget-s`` stops starting new ones.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import functools
import itertools
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jax_cer.kernels import flash_attention
from jax_cer.kernels.aot import compile_one, problems
from jax_cer.kernels.configs import KernelConfig, block_d, gpu_config, override
from jax_cer.machine import machine_record

KERNELS = ("fwd", "bwd_dkdv", "bwd_dq")
SHARED_TARGET = 90


def candidates(kernel: str, shipped) -> list:
    """The configurations tried for ``kernel`` (the shipped one first)."""
    if kernel == "fwd":
        grid = itertools.product((64, 128), (32, 64, 128), (4, 8), (2, 3, 4))
    elif kernel == "bwd_dkdv":  # BLOCK_M queries per step, BLOCK_N keys per program
        grid = itertools.product((16, 32, 64), (64, 128), (4, 8), (2, 3, 4, 5))
    else:  # bwd_dq: BLOCK_M queries per program, BLOCK_N keys per step
        grid = itertools.product((64, 128), (16, 32, 64), (4, 8), (2, 3, 4, 5))
    out = [shipped]
    out += [c for c in (KernelConfig(*g) for g in grid) if c != shipped]
    return out


def _compile(args):
    kernel, dtype, bd, cfg = args
    try:
        return compile_one(kernel, dtype, bd, cfg, SHARED_TARGET, "aligned"), None
    except Exception as e:  # a configuration Triton cannot build is not a candidate
        return None, f"{type(e).__name__}: {str(e)[:200]}"


def prefilter(kernel: str, dtype: str, bd: int, configs: list, workers: int) -> list[dict]:
    """``[{config, resources or error, viable}]``: compiled for sm_90 in parallel processes."""
    jobs = [(kernel, dtype, bd, c) for c in configs]
    ctx = multiprocessing.get_context("spawn")  # never fork a process that holds JAX (or CUDA)
    with concurrent.futures.ProcessPoolExecutor(max(1, min(workers, len(jobs))), mp_context=ctx) as pool:
        results = list(pool.map(_compile, jobs))
    rows = []
    for cfg, (res, err) in zip(configs, results, strict=True):
        row = {"config": dataclasses.asdict(cfg), "viable": bool(res is not None and not problems(res))}
        if res is not None:
            row["resources"] = {
                "registers": res.registers,
                "spills": res.spill_stores + res.spill_loads,
                "shared_kib": round(res.shared_bytes / 1024, 1),
                "wgmma": res.wgmma,
                "mma_sync": res.mma_sync,
                "cp_async": res.cp_async,
            }
            if problems(res):
                row["problems"] = problems(res)
        else:
            row["error"] = err
        rows.append(row)
    return rows


def _time(fn, sets, rounds: int) -> float:
    jax.block_until_ready(fn(*sets[0]))
    jax.block_until_ready(fn(*sets[1]))
    times = []
    for i in range(rounds):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*sets[i % len(sets)]))
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3


def _fn(kernel: str, impl: str, causal: bool):
    if impl == "cudnn":
        attn = functools.partial(jax.nn.dot_product_attention, is_causal=causal, implementation="cudnn")
    else:
        attn = functools.partial(flash_attention, is_causal=causal, backend="triton")
    if kernel == "fwd":
        return jax.jit(lambda q, k, v, do: attn(q, k, v))
    return jax.jit(lambda q, k, v, do: jax.vjp(attn, q, k, v)[1](do))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m repro.attention_sweep",
        description=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", type=Path, required=True, metavar="PATH", help="where the results go")
    p.add_argument("--kernels", default=",".join(KERNELS), help=f"which kernels (default {','.join(KERNELS)})")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16"), help="default bfloat16")
    p.add_argument("--head-dim", type=int, default=128, help="default 128")
    p.add_argument("--seqs", default="4096,16384", help="sequence lengths (default 4096,16384)")
    p.add_argument("--rounds", type=int, default=15, help="timed calls per figure (default 15)")
    p.add_argument("--budget-s", type=float, default=0, help="start no candidate after this many seconds (0: none)")
    p.add_argument("--aot-only", action="store_true", help="only the ahead-of-time resource check (no GPU needed)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="compile processes")
    p.add_argument("--max-candidates", type=int, default=0, help="only the first N per kernel (0: all)")
    args = p.parse_args(argv)
    kernels_wanted = [k for k in args.kernels.split(",") if k]
    for k in kernels_wanted:
        if k not in KERNELS:
            p.error(f"--kernels: {k!r} is not one of {KERNELS}")
    if args.aot_only:
        os.environ["TRITON_INTERPRET"] = "0"  # compile for a GPU target, also on a CPU machine
    t0 = time.perf_counter()
    bd = block_d(args.head_dim)
    seqs = [int(s) for s in args.seqs.split(",")]
    record = {"kind": "sweep", "machine": machine_record(), "dtype": args.dtype, "head_dim": args.head_dim}
    record |= {"seqs": seqs, "rounds": args.rounds, "kernels": {}, "not_run": []}
    args.json.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        record["seconds"] = round(time.perf_counter() - t0, 1)
        args.json.write_text(json.dumps(record, indent=1))

    for kernel in kernels_wanted:
        shipped = gpu_config(kernel, args.dtype, bd)
        every = candidates(kernel, shipped)
        tried = every[: args.max_candidates or None]
        rows = prefilter(kernel, args.dtype, bd, tried, args.workers)
        record["kernels"][kernel] = {
            "shipped": dataclasses.asdict(shipped),
            "candidates_total": len(every),
            "candidates": rows,
        }
        viable = sum(r["viable"] for r in rows)
        print(f"{kernel}: {viable}/{len(rows)} configurations compile for sm_90 without spills", flush=True)
        save()
    if args.aot_only:
        return 0
    if jax.default_backend() != "gpu":
        print("the timing needs a GPU (JAX sees none); --aot-only checks resources without one", file=sys.stderr)
        return 2
    heads, tokens = 16, 16384
    cases = [(s, causal) for s in seqs for causal in (False, True)]
    inputs = {}
    for s in seqs:
        rng = np.random.default_rng(s)
        b = max(tokens // s, 1)
        inputs[s] = [
            [jnp.asarray(rng.normal(size=(b, s, heads, args.head_dim)), args.dtype) for _ in range(4)] for _ in range(3)
        ]

    def flops(s: int, causal: bool, kernel: str) -> float:
        b = max(tokens // s, 1)
        return 4 * b * heads * s * s * args.head_dim * (0.5 if causal else 1.0) * (1.0 if kernel == "fwd" else 3.5)

    for kernel in kernels_wanted:
        entry = record["kernels"][kernel]
        entry["cudnn_ms"] = {}
        for s, causal in cases:
            try:
                entry["cudnn_ms"][f"{s}-{'causal' if causal else 'full'}"] = _time(
                    _fn(kernel, "cudnn", causal), inputs[s], args.rounds
                )
            except Exception as e:
                entry["cudnn_ms"][f"{s}-{'causal' if causal else 'full'}"] = None
                print(f"cudnn S={s} causal={causal}: {type(e).__name__}: {str(e)[:160]}", flush=True)
        shipped_ms: dict[str, float] = {}
        for row in entry["candidates"]:
            if not row["viable"]:
                continue
            if args.budget_s and time.perf_counter() - t0 > args.budget_s:
                record["not_run"].append(f"{kernel} {row['config']}")
                continue
            cfg = KernelConfig(**row["config"])
            row["cases"] = {}
            for s, causal in cases:
                key = f"{s}-{'causal' if causal else 'full'}"
                try:
                    with override(kernel, args.dtype, bd, cfg):
                        ms = _time(_fn(kernel, "flash", causal), inputs[s], args.rounds)
                except Exception as e:
                    row["cases"][key] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
                    continue
                if cfg == KernelConfig(**entry["shipped"]):
                    shipped_ms[key] = ms
                cudnn = entry["cudnn_ms"].get(key)
                row["cases"][key] = {
                    "ms": ms,
                    "tflops": flops(s, causal, kernel) / (ms / 1e3) / 1e12,
                    "vs_shipped": shipped_ms[key] / ms if key in shipped_ms else None,
                    "vs_cudnn": cudnn / ms if cudnn else None,
                }
            summary = ", ".join(
                f"{k} {v['tflops']:.0f} TF/s" if "ms" in v else f"{k} error" for k, v in row["cases"].items()
            )
            print(f"{kernel} {row['config']}: {summary}", flush=True)
            save()
        best = {}
        for key in entry["cudnn_ms"]:
            timed = [
                (r["cases"][key]["ms"], r["config"])
                for r in entry["candidates"]
                if "ms" in r.get("cases", {}).get(key, {})
            ]
            if timed:
                ms, cfg = min(timed, key=lambda t: t[0])
                best[key] = {"config": cfg, "ms": ms, "vs_shipped": shipped_ms.get(key, float("nan")) / ms}
        entry["best"] = best
        for key, b in best.items():
            print(f"{kernel} {key}: best {b['config']} at {b['ms']:.3f} ms ({b['vs_shipped']:.2f}x the shipped)")
        save()
    save()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    sys.exit(main())
