"""``jax-cer bench``: runs the benchmark cases and the parity checks, then regenerates BENCHMARKS.md."""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
from pathlib import Path

from jax_cer.bench import report
from jax_cer.machine import REPO_ROOT, machine_record, machine_slug

NOTES = REPO_ROOT / "repro" / "benchmark_notes.md"
AOT_JSON = "aot/kernels-aot.json"
OUTPUT = REPO_ROOT / "BENCHMARKS.md"


def main(args: argparse.Namespace) -> int:
    results_dir = Path(args.results_dir)
    if not args.report_only:
        bench_dir = REPO_ROOT / "tests" / "bench"
        if not bench_dir.is_dir():
            print(f"jax-cer bench needs the source checkout (no {bench_dir}); clone the repository", file=sys.stderr)
            return 2
        slug = machine_slug(machine_record())
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        folder = results_dir / slug
        folder.mkdir(parents=True, exist_ok=True)
        out = folder / f"bench-{stamp}.json"
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            str(bench_dir),
            "-m",
            "benchmark",
            "--benchmark-enable",
            "--benchmark-save-data",
            f"--benchmark-json={out}",
            "--benchmark-columns=min,median,max,rounds",
            "-p",
            "no:cacheprovider",
            "-n",
            "0",  # pytest-benchmark does not time under xdist
            "-q",
        ]
        if args.k:
            cmd += ["-k", args.k]
        print("running:", " ".join(cmd), flush=True)
        rc = subprocess.call(cmd, cwd=REPO_ROOT)
        if rc != 0:
            print(f"benchmarks failed (exit {rc}); {out} may be incomplete", file=sys.stderr)
            return rc
        print(f"wrote {out}")
        if not args.no_aot:
            env = {**os.environ, "TRITON_INTERPRET": "0"}
            cmd = [sys.executable, "-m", "jax_cer.kernels.aot", "--json", str(results_dir / AOT_JSON)]
            if subprocess.call(cmd, cwd=REPO_ROOT, env=env) != 0:
                print("ahead-of-time compile check failed; see above", file=sys.stderr)
        if not args.no_repro:
            from jax_cer.cli import main as cli_main

            rc = cli_main(["repro", "--json", str(folder / f"repro-{stamp}.json")])
            if rc != 0:
                print("parity checks failed; see the table above", file=sys.stderr)
    if not args.no_report:
        report.write(results_dir, OUTPUT, NOTES)
        print(f"regenerated {OUTPUT}")
    return 0
