"""Nsight Compute's ``--csv`` output, reduced to the headline metrics of each profiled kernel."""

from __future__ import annotations

import csv
import io

HEADLINE = (
    "Duration",
    "Compute (SM) Throughput",
    "Memory Throughput",
    "Achieved Occupancy",
    "Registers Per Thread",
    "Dynamic Shared Memory Per Block",
    "Block Size",
    "Grid Size",
)
"""The metrics kept per kernel, in table order."""


def summarize(text: str) -> list[dict[str, str]]:
    """``[{"id", "kernel", <metric>: "<value> <unit>", ...}]``, one entry per profiled kernel launch,
    from ncu's ``--csv`` output (anything printed before its header line is skipped; no header: [])."""
    start = text.find('"ID"')
    if start < 0:
        return []
    rows: dict[tuple[str, str], dict[str, str]] = {}
    for r in csv.DictReader(io.StringIO(text[start:])):
        if r.get("Metric Name") in HEADLINE:
            key = (r["ID"], r["Kernel Name"][:80])
            rows.setdefault(key, {"id": r["ID"], "kernel": r["Kernel Name"][:80]})[r["Metric Name"]] = (
                f"{r['Metric Value']} {r.get('Metric Unit', '')}".strip()
            )
    return list(rows.values())
