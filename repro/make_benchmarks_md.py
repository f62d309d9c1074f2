"""Regenerates BENCHMARKS.md from every results file under ``repro/results/``.

Run from the repository root: ``python repro/make_benchmarks_md.py`` (``jax-cer bench`` runs it
after each benchmark run). BENCHMARKS.md is never edited by hand; analysis that belongs in it
goes into ``repro/benchmark_notes.md``, which is copied into its Notes section.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from jax_cer.bench import report  # noqa: E402

if __name__ == "__main__":
    out = report.write(ROOT / "repro" / "results", ROOT / "BENCHMARKS.md", ROOT / "repro" / "benchmark_notes.md")
    print(f"wrote {out}")
