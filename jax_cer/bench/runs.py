"""Which run a table row comes from: the newest full run that measured it, else the newest quick run.

A benchmark file holds one run. Each benchmark records ``rounds`` (timed) and ``full_rounds`` (its
case's default on that platform) in ``extra_info``; a run with fewer rounds than the default is a
*quick* run (``jax-cer bench --rounds 1``). Files without these fields come from full runs. A row
is a *group* of implementations measured together (JAX and PyTorch of one model and step, say),
always taken whole from one run, so a ratio is never formed across runs.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from jax_cer.bench.load import ResultFile

QUICK_MARK = "†"


@dataclasses.dataclass(frozen=True)
class Group:
    """One row's measurements: ``impls`` maps an implementation to its pytest-benchmark entry, all
    from ``file``; ``quick_rounds`` is the rounds of a quick run, None for a full run."""

    impls: dict[str, dict[str, Any]]
    file: ResultFile
    quick_rounds: int | None = None

    @property
    def mark(self) -> str:
        """:data:`QUICK_MARK` for a row from a quick run, else empty."""
        return QUICK_MARK if self.quick_rounds is not None else ""


def rounds_of(bench: Mapping[str, Any]) -> tuple[int, int] | None:
    """``(rounds, full_rounds)`` recorded by a benchmark, or None for a file that predates them."""
    info = bench.get("extra_info", {})
    if "rounds" in info and "full_rounds" in info:
        return int(info["rounds"]), int(info["full_rounds"])
    return None


def is_full(bench: Mapping[str, Any]) -> bool:
    """Whether a benchmark ran its case's full rounds (true for files without the fields)."""
    rounds = rounds_of(bench)
    return rounds is None or rounds[0] >= rounds[1]


def newest_groups(
    files: Sequence[ResultFile], key: Callable[[dict[str, Any]], Hashable | None]
) -> dict[Hashable, Group]:
    """``{group: Group}`` over benchmark files (oldest first), where ``key(extra_info)`` names a
    benchmark's group (None: not a row of this table). Each group comes whole from the newest file
    whose run measured it in full; only a group no full run measured comes from the newest quick run."""
    full: dict[Hashable, Group] = {}
    quick: dict[Hashable, Group] = {}
    for f in reversed(files):
        found: dict[Hashable, dict[str, dict]] = defaultdict(dict)
        for b in f.data.get("benchmarks", []):
            info = b.get("extra_info", {})
            group = key(info) if "impl" in info else None
            if group is not None:
                found[group][info["impl"]] = b
        for group, impls in found.items():
            if all(is_full(b) for b in impls.values()):
                full.setdefault(group, Group(dict(impls), f))
            else:
                rounds = min(r[0] for b in impls.values() if (r := rounds_of(b)) is not None)
                quick.setdefault(group, Group(dict(impls), f, rounds))
    return {**{g: row for g, row in quick.items() if g not in full}, **full}


def percentiles_ms(bench: Mapping[str, Any]) -> tuple[float, float, float]:
    """``(median, p20, p80)`` of a benchmark's timed rounds in milliseconds (from the raw data when the
    file has it, else from pytest-benchmark's median and quartiles)."""
    stats = bench["stats"]
    data = stats.get("data")
    if data:
        p20, p50, p80 = np.percentile(np.asarray(data) * 1e3, [20, 50, 80])
        return float(p50), float(p20), float(p80)
    return stats["median"] * 1e3, stats["q1"] * 1e3, stats["q3"] * 1e3


def median_ms(bench: Mapping[str, Any]) -> float:
    """The median of a benchmark's timed rounds in milliseconds."""
    return percentiles_ms(bench)[0]


def quick_footnote(groups: Iterable[Group]) -> list[str]:
    """The footnote under a table with rows from quick runs (empty when there are none)."""
    rounds = sorted({g.quick_rounds for g in groups if g.quick_rounds is not None})
    if not rounds:
        return []
    counts = " or ".join(f"{r} round{'s' if r != 1 else ''}" for r in rounds)
    return [
        f"{QUICK_MARK} quick run: {counts}, fewer than the case's default; no full run has measured this row yet.",
        "",
    ]
