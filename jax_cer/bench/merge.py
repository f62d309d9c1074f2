"""Joining benchmark result files: several runs' pytest-benchmark JSON files into one."""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path


def merge_bench_files(folder: Path, before: Collection[Path], stamp: str) -> Path | None:
    """Joins the ``bench-*.json`` files in ``folder`` that are not in ``before`` (the runs of one
    campaign part, say) into ``bench-<stamp>.json``: the first file's machine record, every file's
    benchmarks. The joined files are removed; returns the new file, or None when there was nothing new.
    Raises ``ValueError`` naming a file that is not a pytest-benchmark JSON."""
    new = sorted(p for p in Path(folder).glob("bench-*.json") if p not in before)
    if not new:
        return None
    merged: dict | None = None
    for p in new:
        try:
            data = json.loads(p.read_text())
            benchmarks = data["benchmarks"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{p}: not a pytest-benchmark JSON ({type(e).__name__}: {e})") from None
        if merged is None:
            merged = data
        else:
            merged["benchmarks"] += benchmarks
    out = Path(folder) / f"bench-{stamp}.json"
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(merged))
    for p in new:
        p.unlink()
    tmp.replace(out)
    return out
