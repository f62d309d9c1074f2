"""``jax-cer repro``: which parity cases run, their progress, the printed table and the JSON record.

A *case* is one of the fusion models' golden cases of the manifest (``tcn``, ``can``, ...; see
:mod:`jax_cer.parity.golden`), ``so`` (the SO optimizer's trajectory,
:mod:`jax_cer.parity.so_trajectory`) or ``text`` (the MiniLM encoder and the LoRA classifier,
:mod:`jax_cer.parity.text_golden`). A case reports rows (:class:`~jax_cer.parity.result.CheckResult`);
:func:`planned_checks` says which rows before it runs, from the manifest alone: the command line
reports a planned row the run did not produce as a failure, and the pytest plugin
(:mod:`jax_cer.parity.plugin`) collects one test item per planned row.

The golden folder is ``--golden-dir``, else ``$JAX_CER_GOLDEN``, else the files shipped inside the
package (``jax_cer/parity/golden``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import jax

from jax_cer.machine import machine_record
from jax_cer.parity import golden, so_trajectory, text_golden
from jax_cer.parity.golden import GoldenFileError
from jax_cer.parity.result import CheckResult, error_result
from jax_cer.parity.tolerances import TOLERANCES

SO = so_trajectory.CASE
"""The SO optimizer's trajectory (``golden/so``)."""
TEXT = text_golden.CASE
"""The text encoder and the LoRA classifier (``golden/text``)."""
EXTRA_CASES = (SO, TEXT)
"""The cases that are not in the fusion models' manifest; they run after the fusion cases."""

TEXT_CHECKS: tuple[tuple[str, str], ...] = (
    ("text_encoder", "layers"),
    ("text_encoder", "end_to_end"),
    ("text_lora", "logits"),
    ("text_lora", "sgd_step"),
)
"""The ``(case, check)`` rows of :func:`jax_cer.parity.text_golden.check`, in order."""

PROGRESS_LABELS = {SO: "so (optimizer trajectory)", TEXT: "text (MiniLM encoder and LoRA classifier)"}


class UnknownCaseError(ValueError):
    """A case name that is neither in the manifest nor one of :data:`EXTRA_CASES`."""

    def __init__(self, unknown: Sequence[str], valid: Sequence[str]) -> None:
        self.unknown = list(unknown)
        self.valid = list(valid)
        super().__init__(f"unknown golden case(s) {self.unknown}; cases are {self.valid}")


@dataclasses.dataclass(frozen=True)
class PlannedCheck:
    """A row a case will report: ``case`` and ``check`` as in its :class:`CheckResult`, ``run`` the
    case name that computes it (``text`` computes the ``text_encoder`` and ``text_lora`` rows)."""

    run: str
    case: str
    check: str

    @property
    def name(self) -> str:
        """``case::check``, as :attr:`CheckResult.name`."""
        return f"{self.case}::{self.check}"


def all_cases(manifest: Mapping[str, Any]) -> list[str]:
    """Every case name, in the order they run: the manifest's fusion cases, then ``so`` and ``text``."""
    return [*manifest["cases"], *EXTRA_CASES]


def parse_cases(values: Iterable[str] | None) -> list[str]:
    """Case names from option values, each a comma-separated list (``["tcn,so", "text"]``)."""
    return [name.strip() for value in values or () for name in value.split(",") if name.strip()]


def select_cases(only: Iterable[str] | None, manifest: Mapping[str, Any]) -> list[str]:
    """The cases to run, in :func:`all_cases` order: those named in ``only`` (comma-separated lists,
    see :func:`parse_cases`), or all when it names none. Raises :class:`UnknownCaseError`."""
    valid = all_cases(manifest)
    wanted = parse_cases(only)
    unknown = [name for name in wanted if name not in valid]
    if unknown:
        raise UnknownCaseError(unknown, valid)
    return [name for name in valid if not wanted or name in wanted]


def planned_checks(name: str, manifest: Mapping[str, Any], *, layers: bool = True) -> list[PlannedCheck]:
    """The rows case ``name`` reports when it runs normally, read from the manifest (nothing runs):
    for a fusion case :func:`jax_cer.parity.golden.case_checks` (``layers=False`` drops the
    per-layer check), for ``so`` :data:`jax_cer.parity.so_trajectory.CHECKS`, for ``text``
    :data:`TEXT_CHECKS`."""
    if name == SO:
        return [PlannedCheck(SO, so_trajectory.CASE, check) for check in so_trajectory.CHECKS]
    if name == TEXT:
        return [PlannedCheck(TEXT, case, check) for case, check in TEXT_CHECKS]
    if name not in manifest["cases"]:
        raise UnknownCaseError([name], all_cases(manifest))
    return [PlannedCheck(name, name, check) for check in golden.case_checks(manifest["cases"][name], layers=layers)]


def unreported_rows(planned: Sequence[PlannedCheck], results: Sequence[CheckResult]) -> list[CheckResult]:
    """Failed rows for the planned checks a run did not report, unless the run already failed with a
    row of its own that explains why (an ``error`` or ``load`` row)."""
    expected = {(p.case, p.check) for p in planned}
    if any(not r.passed and (r.case, r.check) not in expected for r in results):
        return []
    produced = {(r.case, r.check) for r in results}
    return [
        CheckResult(p.case, p.check, "-", float("nan"), 0.0, False, 0.0, 0, "the run did not report this check")
        for p in planned
        if (p.case, p.check) not in produced
    ]


def run_checks(
    name: str, manifest: Mapping[str, Any], golden_dir: Path | None = None, *, layers: bool = True
) -> list[CheckResult]:
    """Runs case ``name`` against the golden files in ``golden_dir`` (default
    :func:`jax_cer.parity.golden.default_golden_dir`) and returns its rows. A case that raises gives one
    failed ``error`` row naming the error: a missing or damaged golden file included (every case reads its
    files through :func:`jax_cer.parity.golden.load_arrays`, whose GoldenFileError names the file and key);
    see :func:`unreported_rows` for planned checks that do not appear."""
    golden_dir = Path(golden_dir or golden.default_golden_dir())
    planned = planned_checks(name, manifest, layers=layers)
    t0 = time.perf_counter()
    try:
        if name == SO:
            results = so_trajectory.check(golden_dir / "so")
        elif name == TEXT:
            results = text_golden.check(golden_dir / "text")
        else:
            results = golden.run_case(golden.load_case(name, manifest, golden_dir), layers=layers)
    except Exception as e:
        results = [error_result(name, e, t0)]
    return [*results, *unreported_rows(planned, results)]


# -- the report --------------------------------------------------------------------------------------
def format_error(x: float) -> str:
    """An error for the table: ``1.23e-06``, ``nan`` or ``inf``."""
    return "nan" if math.isnan(x) else ("inf" if math.isinf(x) else f"{x:.2e}")


def print_table(results: Sequence[CheckResult], verbose: bool = False, file: TextIO | None = None) -> None:
    """The parity table: case, check, worst key, max error, tolerance, PASS/FAIL and time, one line per
    row; a row's detail line follows when it failed, or always with ``verbose``."""
    header = f"{'case':<14} {'check':<12} {'worst key':<46} {'max err':>9} {'tol':>8}  {'status':<6} {'time':>7}"
    print(header, file=file)
    print("-" * len(header), file=file)
    for r in results:
        key = r.key if len(r.key) <= 46 else "..." + r.key[-43:]
        status = "PASS" if r.passed else "FAIL"
        print(
            f"{r.case:<14} {r.check:<12} {key:<46} {format_error(r.max_error):>9} {r.tolerance:>8.0e}  "
            f"{status:<6} {r.seconds:>6.1f}s",
            file=file,
        )
        if (verbose or not r.passed) and r.detail:
            print(f"{'':<14} {'':<12} {r.detail}", file=file)


def summary_line(results: Sequence[CheckResult], seconds: float) -> str:
    """``N/M checks passed in Xs`` and, when some failed, ``; FAILED: k``."""
    failed = sum(not r.passed for r in results)
    line = f"{len(results) - failed}/{len(results)} checks passed in {seconds:.1f}s"
    return line + (f"; FAILED: {failed}" if failed else "")


def repro_record(results: Sequence[CheckResult], golden_dir: Path) -> dict[str, Any]:
    """The JSON record of a run (``kind`` ``repro``): the device, versions and ``machine`` record
    (:func:`jax_cer.machine.machine_record`, by which the benchmark report groups parity results),
    the golden folder, the tolerance table, every row and whether all passed."""
    dev = jax.devices()[0]
    return {
        "kind": "repro",
        "device": f"{dev.platform}:{dev.device_kind}",
        "jax": jax.__version__,
        "python": platform.python_version(),
        "machine": machine_record(),
        "golden_dir": str(golden_dir),
        "tolerances": dict(TOLERANCES),
        "results": [r.as_dict() for r in results],
        "passed": all(r.passed for r in results),
    }


def run_repro(
    only: Iterable[str] | None = None,
    *,
    golden_dir: Path | str | None = None,
    layers: bool = True,
    verbose: bool = False,
    json_path: Path | str | None = None,
) -> int:
    """``jax-cer repro``: runs the selected cases (``only``: comma-separated lists of case names; all
    when empty), prints progress to stderr, then the table and the summary line to stdout, and writes
    :func:`repro_record` to ``json_path``. Returns the exit code: 0 when every check passed, 1 when
    one failed (a case whose golden file is missing or damaged fails with one row naming the file and
    key, and the other cases still run), 2 for an unknown case name or a golden folder that cannot be
    read (no folder, no ``manifest.json``, or one that is not valid JSON or lacks required keys), with
    one line on stderr."""
    golden_dir = Path(golden_dir) if golden_dir else golden.default_golden_dir()
    try:
        manifest = golden.load_manifest(golden_dir)
        names = select_cases(only, manifest)
    except (UnknownCaseError, GoldenFileError) as e:
        print(f"jax-cer repro: error: {e}", file=sys.stderr)
        return 2
    dev = jax.devices()[0]
    print(f"jax-cer repro: {len(names)} golden cases from {golden_dir}")
    print(f"device: {dev.platform} ({dev.device_kind}), jax {jax.__version__}, matmul precision: highest (fp32)")
    print(
        f"reference: {manifest.get('producer', {}).get('torch', '?')} torch, made by `{manifest.get('command', '?')}`"
    )
    print(flush=True)
    t0 = time.perf_counter()
    results = []
    for name in names:
        print(f"  running {PROGRESS_LABELS.get(name, name)} ...", file=sys.stderr, flush=True)
        results += run_checks(name, manifest, golden_dir, layers=layers)
    print()
    print_table(results, verbose)
    print()
    print(summary_line(results, time.perf_counter() - t0))
    if json_path:
        path = Path(json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(repro_record(results, golden_dir), indent=2))
        print(f"wrote {json_path}")
    return 0 if all(r.passed for r in results) else 1
