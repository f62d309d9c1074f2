"""``jax-cer bench``: runs the benchmark cases in a pytest subprocess and writes one result file.

The cases ship inside the package (:mod:`jax_cer.bench.cases`). pytest runs them from a temporary
folder with an empty configuration (no project ``addopts`` apply), no cache and no bytecode files,
with plugin autoloading off and pytest-benchmark loaded explicitly (no xdist: timings are taken in
one process), so nothing is written anywhere but the result file: ``<out>/bench-<UTC time>.json``,
by default under ``./jax-cer-results/<machine>/``.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from jax_cer.bench import cases
from jax_cer.bench.cases.timing import ROUNDS_ENV, rounds_override
from jax_cer.machine import machine_record, machine_slug

CASES_DIR = Path(cases.__file__).resolve().parent
CALLER_PYTEST_VARIABLES = ("PYTEST_ADDOPTS", "PYTEST_PLUGINS", "PYTEST_CURRENT_TEST", "PYTEST_VERSION")
DEFAULT_RESULTS = Path("jax-cer-results")
"""The folder (relative to the working folder) that holds one folder per machine by default."""


def default_out() -> Path:
    """``./jax-cer-results/<machine>/`` in the working folder."""
    return Path.cwd() / DEFAULT_RESULTS / machine_slug(machine_record())


def pytest_command(result_json: Path, ini: Path, k: str | None = None) -> list[str]:
    """The pytest command line that runs the cases (``-k`` as pytest's) and writes ``result_json``."""
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        str(CASES_DIR),
        "-c",
        str(ini),
        "--rootdir",
        str(ini.parent),
        "--confcutdir",
        str(CASES_DIR),
        "-p",
        "pytest_benchmark.plugin",
        "-p",
        "no:cacheprovider",
        "--benchmark-enable",
        "--benchmark-save-data",
        f"--benchmark-json={result_json}",
        "--benchmark-columns=min,median,max,rounds",
        "--benchmark-sort=name",
        "-v",
        "-rs",
    ]
    return [*cmd, "-k", k] if k else cmd


def environment(rounds: int | None) -> tuple[dict[str, str], int | None]:
    """The subprocess's environment and the rounds override in force (``rounds``, else
    ``$JAX_CER_BENCH_ROUNDS``, else None). Raises ``ValueError`` for a bad count and
    ``ModuleNotFoundError`` when pytest-benchmark is missing."""
    if importlib.util.find_spec("pytest_benchmark") is None:
        raise ModuleNotFoundError("jax-cer bench needs pytest and pytest-benchmark: pip install 'jax-cer[bench]'")
    # a pytest session of the caller (its options, or an xdist worker's marks, which make
    # pytest-benchmark refuse to time) must not leak into the cases' session
    env = {
        k: v for k, v in os.environ.items() if k not in CALLER_PYTEST_VARIABLES and not k.startswith("PYTEST_XDIST_")
    }
    env |= {"PYTHONDONTWRITEBYTECODE": "1", "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    if rounds is None:
        return env, rounds_override()
    if rounds < 1:
        raise ValueError(f"--rounds {rounds}: a case needs at least 1 round")
    return {**env, ROUNDS_ENV: str(rounds)}, rounds


def _shown(folder: Path) -> str:
    """``folder`` relative to the working folder when it is inside it, else as given."""
    return str(folder.relative_to(Path.cwd())) if folder.is_relative_to(Path.cwd()) else str(folder)


def _outcome(rc: int, result: Path, k: str | None) -> int:
    if rc == 5:
        print(f"no benchmark case matches -k {k!r}", file=sys.stderr)
        return rc
    if not result.is_file():
        print(f"no result file written (pytest exit {rc}): every selected case was skipped or failed", file=sys.stderr)
        return rc or 1
    count = len(json.loads(result.read_text()).get("benchmarks", []))
    if rc != 0:
        print(f"some cases failed (pytest exit {rc}); {result} holds the {count} that ran", file=sys.stderr)
        return rc
    print(f"wrote {result} ({count} benchmark(s)); `jax-cer report {_shown(result.parent)}` tabulates it")
    return 0


def run(k: str | None = None, rounds: int | None = None, out: Path | None = None) -> int:
    """Runs the benchmark cases matching ``k`` (all when None) with ``rounds`` rounds each (None: each
    case's default, or ``$JAX_CER_BENCH_ROUNDS``) and writes ``<out>/bench-<time>.json`` (default
    ``out``: :func:`default_out`). Returns the exit status: pytest's, or 2 for a setup problem (on stderr)."""
    try:
        env, rounds = environment(rounds)
    except (ValueError, ModuleNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    folder = (Path(out) if out is not None else default_out()).resolve()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"error: cannot use {folder} as the results folder: {e.strerror or e}", file=sys.stderr)
        return 2
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    result = folder / f"bench-{stamp}.json"
    how = f"{rounds} round(s) per case (a quick run)" if rounds else "each case's default rounds"
    print(f"jax-cer bench: cases {'matching -k ' + repr(k) if k else 'all'}, {how} -> {result}", flush=True)
    with tempfile.TemporaryDirectory(prefix="jax-cer-bench-") as tmp:
        ini = Path(tmp) / "pytest.ini"
        ini.write_text("[pytest]\n")
        rc = subprocess.call(pytest_command(result, ini, k), cwd=tmp, env=env)
    return _outcome(rc, result, k)
