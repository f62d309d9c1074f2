"""Nsight Compute profile of the attention forward: the Triton kernel against cuDNN's.

    python -m repro.attention_profile --out OUT/profile.csv [--seqs 4096,16384] [--head-dim 128]

Runs itself under ``ncu`` (found on PATH or under /opt/nvidia/nsight-compute or /usr/local/cuda)
with the sections that say what limits a kernel (speed of light, compute and memory workload,
occupancy, launch statistics, warp state), for the forward of ``flash_attention`` and of
``jax.nn.dot_product_attention(implementation="cudnn")`` on the benchmark's shapes (B*S = 16k
tokens, 16 heads, bf16, not causal). ncu's CSV goes to ``--out``; a summary of the headline
metrics per kernel is printed (:func:`jax_cer.bench.ncu.summarize`; ``jax-cer report`` tabulates the
CSV too). ``--inner`` is the profiled program itself; ``--summarize CSV`` prints the summary of a
CSV written earlier.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jax_cer.bench.ncu import summarize
from jax_cer.kernels import flash_attention

SECTIONS = (
    "SpeedOfLight",
    "ComputeWorkloadAnalysis",
    "MemoryWorkloadAnalysis",
    "Occupancy",
    "LaunchStats",
    "WarpStateStats",
)
KERNELS = "regex:attn|sdpa|fmha|flash|fprop"


def find_ncu() -> str | None:
    found = shutil.which("ncu")
    if found:
        return found
    for pattern in (
        "/opt/nvidia/nsight-compute/*/ncu",
        "/usr/local/cuda*/bin/ncu",
        "/usr/local/cuda*/nsight-compute*/ncu",
    ):
        hits = sorted(glob.glob(pattern))
        if hits:
            return hits[-1]
    return None


def inner(seqs: list[int], d: int) -> None:
    """The profiled program: the Triton forward and cuDNN's on the benchmark's shapes, twice each."""
    heads, tokens = 16, 16384
    for s in seqs:
        b = max(tokens // s, 1)
        rng = np.random.default_rng(0)
        q, k, v = (jnp.asarray(rng.normal(size=(b, s, heads, d)), jnp.bfloat16) for _ in range(3))
        for name, fn in (
            ("flash_attention", jax.jit(lambda q, k, v: flash_attention(q, k, v, backend="triton"))),
            ("cudnn", jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="cudnn"))),
        ):
            for _ in range(2):
                jax.block_until_ready(fn(q, k, v))
            print(f"profiled {name} S={s} B={b} H={heads} D={d}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m repro.attention_profile", description=__doc__.split("\n\n")[1])
    p.add_argument("--out", type=Path, help="where ncu's CSV goes")
    p.add_argument("--seqs", default="4096,16384", help="sequence lengths (default 4096,16384)")
    p.add_argument("--head-dim", type=int, default=128, help="head dim (default 128)")
    p.add_argument("--inner", action="store_true", help="the profiled program (run by ncu)")
    p.add_argument("--summarize", type=Path, metavar="CSV", help="print the headline metrics of an ncu CSV and exit")
    args = p.parse_args(argv)
    if args.summarize is not None:
        if not args.summarize.is_file():
            p.error(f"--summarize: {args.summarize} does not exist")
        rows = summarize(args.summarize.read_text(errors="replace"))
        for row in rows:
            print(" | ".join(f"{k}: {v}" for k, v in row.items()))
        if not rows:
            print(f"{args.summarize}: no ncu metrics found", file=sys.stderr)
        return 0 if rows else 1
    seqs = [int(s) for s in args.seqs.split(",")]
    if args.inner:
        inner(seqs, args.head_dim)
        return 0
    if args.out is None:
        p.error("--out is required")
    ncu = find_ncu()
    if ncu is None:
        print("no ncu (Nsight Compute) on PATH, under /opt/nvidia/nsight-compute or /usr/local/cuda", file=sys.stderr)
        return 2
    cmd = [ncu, "--target-processes", "all", "--kernel-name", KERNELS, "--launch-count", str(4 * len(seqs))]
    cmd += ["--clock-control", "none", "--csv"]
    for s in SECTIONS:
        cmd += ["--section", s]
    cmd += [sys.executable, "-m", "repro.attention_profile", "--inner", "--seqs", args.seqs]
    cmd += ["--head-dim", str(args.head_dim)]
    print("$", " ".join(cmd), flush=True)
    res = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}, check=False
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(res.stdout)
    sys.stderr.write(res.stderr[-3000:])
    for row in summarize(res.stdout):
        print(" | ".join(f"{k}: {v}" for k, v in row.items()))
    print(f"ncu exit {res.returncode}; wrote {args.out}")
    return res.returncode


if __name__ == "__main__":
    sys.exit(main())
