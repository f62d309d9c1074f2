"""Reading result files: what each file is (its kind), which machine measured it, and when.

Any folder can be given: one machine's folder (``jax-cer bench --out``), or a folder of such folders
(``repro/results``); it is searched recursively for ``*.json`` and ``*.csv``. A file's kind comes from
its content:

========== ================================================================================
kind       what wrote it
========== ================================================================================
bench      ``jax-cer bench`` (pytest-benchmark JSON; machine record in ``machine_info.jax_cer``)
repro      ``jax-cer repro --json`` (machine record in ``machine``)
kernelcheck ``python -m repro.kernel_check`` (long-sequence kernel correctness)
sweep      ``python -m repro.attention_sweep`` (block-size sweep)
campaign   ``python -m repro.gpu_campaign run`` (a part's step log)
text-meld  ``python -m repro.text_meld`` (MELD text results; machine name in ``machine``)
text-parity ``python -m repro.text_parity`` (text encoder parity; machine name in ``machine``)
aot        ``python -m jax_cer.kernels.aot --json`` (register and shared-memory table; no machine)
profile    ``profile-*.csv``: Nsight Compute output of ``python -m repro.attention_profile``
========== ================================================================================

Files are grouped by the machine recorded inside them (:func:`jax_cer.machine.machine_slug` of the
record), not by folder name, so folders from several machines can be read together; a file that
records no machine (an old ``repro`` file, a profile CSV) takes its folder's name.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from jax_cer.machine import machine_slug

KINDS = ("bench", "repro", "kernelcheck", "sweep", "campaign", "profile", "text-meld", "text-parity", "aot")
MACHINE_FREE = ("aot",)
"""Kinds that describe no machine (compiled for GPU targets anywhere)."""

_STAMP = re.compile(r"(\d{8}T\d{6}Z)")


class ResultFileError(ValueError):
    """A result file that cannot be read: names the file and what is wrong with it."""


@dataclasses.dataclass(frozen=True)
class ResultFile:
    """One result file: ``kind`` (see :data:`KINDS`), ``machine`` (a slug, None for machine-free kinds),
    ``when`` (``YYYYMMDDTHHMMSSZ``, for ordering; empty when unknown), the parsed JSON ``data`` (for a
    profile CSV: ``{"text": <the CSV>}``) and the machine ``record`` when the file carries one."""

    path: Path
    kind: str
    machine: str | None
    when: str
    data: dict[str, Any]
    record: dict[str, Any] | None = None


Machines = dict[str, dict[str, list[ResultFile]]]
"""``{machine: {kind: [file, ...]}}``, each list oldest first (every kind present, maybe empty)."""


def classify(path: Path, data: Any) -> str | None:
    """The kind of a parsed result file (see :data:`KINDS`), or None when it is not one."""
    if not isinstance(data, dict):
        return None
    kind = data.get("kind")
    if kind in KINDS:
        return kind
    if isinstance(data.get("benchmarks"), list) and isinstance(data.get("machine_info"), dict):
        return "bench"
    results = data.get("results")
    if isinstance(results, list):
        first = results[0] if results and isinstance(results[0], dict) else {}
        if "triton" in data and ("kernel" in first or not results):
            return "aot"
        if "tolerances" in data or ("case" in first and "check" in first):
            return "repro"
    return None


def _record(kind: str, path: Path, data: dict) -> dict | None:
    if kind == "bench":
        record = data["machine_info"].get("jax_cer")
    else:
        record = data.get("machine")
    if record is None or isinstance(record, str):
        return None
    if not isinstance(record, dict):
        raise ResultFileError(f"{path}: its machine record is a {type(record).__name__}, not an object")
    return record


def _machine(kind: str, path: Path, data: dict, record: dict | None) -> str | None:
    if kind in MACHINE_FREE:
        return None
    if record is not None:
        try:
            return machine_slug(record)
        except ValueError as e:
            raise ResultFileError(f"{path}: {e}") from None
    if isinstance(data.get("machine"), str):  # the text scripts record the slug itself
        return data["machine"]
    return path.parent.name


def _when(path: Path, data: dict, record: dict | None) -> str:
    found = _STAMP.search(path.name) or _STAMP.search(str(data.get("created", "")))
    if found:
        return found.group(1)
    date = str((record or {}).get("date", ""))
    digits = re.match(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)", date)
    return "{}{}{}T{}{}{}Z".format(*digits.groups()) if digits else ""


def read(path: Path) -> ResultFile | None:
    """One file as a :class:`ResultFile`, or None when it is not a result file (unknown JSON, another
    CSV). Raises :class:`ResultFileError` for a file that is not valid JSON or lacks what its kind needs."""
    if path.suffix == ".csv":
        if not path.name.startswith("profile-"):
            return None
        data = {"text": path.read_text(errors="replace")}
        return ResultFile(path, "profile", path.parent.name, _when(path, data, None), data)
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ResultFileError(f"{path}: not valid JSON ({e})") from None
    kind = classify(path, data)
    if kind is None:
        return None
    record = _record(kind, path, data)
    return ResultFile(path, kind, _machine(kind, path, data, record), _when(path, data, record), data, record)


def find(folders: Iterable[Path]) -> list[Path]:
    """Every ``*.json`` and ``*.csv`` under the folders (recursively), each once, sorted. Raises
    ``FileNotFoundError`` naming a folder that does not exist."""
    found: set[Path] = set()
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"results folder {folder} does not exist (or is not a folder)")
        found |= {p.resolve() for p in folder.rglob("*") if p.suffix in (".json", ".csv") and p.is_file()}
    return sorted(found)


def load_files(folders: Iterable[Path], *, warn: bool = True) -> list[ResultFile]:
    """Every result file under the folders, oldest first; other files are left out (with a note on
    stderr when ``warn``)."""
    files, skipped = [], []
    for path in find(folders):
        result = read(path)
        if result is None:
            skipped.append(path)
        else:
            files.append(result)
    if warn and skipped:
        names = ", ".join(str(p) for p in skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        print(f"not result files, left out: {names}", file=sys.stderr)
    return sorted(files, key=lambda f: (f.when, f.path.name))


def by_machine(files: Iterable[ResultFile]) -> Machines:
    """The machine files grouped as ``{machine: {kind: [file, ...]}}`` (oldest first; machine-free
    kinds such as ``aot`` are left out: see :func:`machine_free`)."""
    out: dict[str, dict[str, list[ResultFile]]] = defaultdict(lambda: {k: [] for k in KINDS})
    for f in files:
        if f.machine is not None:
            out[f.machine][f.kind].append(f)
    return dict(sorted(out.items()))


def machine_free(files: Iterable[ResultFile], kind: str = "aot") -> list[ResultFile]:
    """The files of a machine-free kind, oldest first."""
    return [f for f in files if f.kind == kind]


def load_results(*folders: Path) -> Machines:
    """The result files under the folders, grouped by machine (see :func:`by_machine`)."""
    return by_machine(load_files(folders, warn=False))


def newest_record(files: Mapping[str, list[ResultFile]]) -> dict | None:
    """The newest machine record among one machine's files, or None when none carries one."""
    recorded = [f for kind in files.values() for f in kind if f.record is not None]
    return max(recorded, key=lambda f: f.when).record if recorded else None
