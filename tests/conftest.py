"""Shared test helpers: paths to ``../shared``, the original state-dict listings, torch detection."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import jax
import pytest
from hypothesis import HealthCheck, settings

# Triton fixes interpreter-or-compiled when it is first imported, and some test modules import it at
# collection: on a machine without a GPU, choose the interpreter before any of them (as the kernels do
# at their first call).
if "TRITON_INTERPRET" not in os.environ and jax.default_backend() != "gpu":
    os.environ["TRITON_INTERPRET"] = "1"

# Property-based tests (tests/test_properties.py): the default profile keeps the default run short; the
# "slow" profile (HYPOTHESIS_PROFILE=slow) tries many more malformed inputs, new ones at each run.
_SUPPRESSED = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture]
settings.register_profile(
    "default", max_examples=12, deadline=None, derandomize=True, suppress_health_check=_SUPPRESSED
)  # derandomized: every run of the default suite tries the same examples
settings.register_profile("slow", max_examples=200, deadline=None, suppress_health_check=_SUPPRESSED)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
STATE_DICT_DIR = SHARED / "spec" / "original-state-dicts"
MELD_DIR = SHARED / "data" / "meld"
MELD_TABLES = ("train_sent_emo.csv", "dev_sent_emo.csv", "test_sent_emo.csv")
HAS_TORCH = importlib.util.find_spec("torch") is not None

# spec §4.4: trainable parameters (backbone excluded, duplicates once) for K = 7 and K = 2, and
# state-dict entries (backbone, duplicates and BatchNorm buffers included); spec §2.2: IR-50.
TRAINABLE = {
    "lfan": {7: 5_002_503, 2: 5_001_378},
    "can": {7: 5_818_439, 2: 5_816_514},
    "jmt": {7: 6_348_231, 2: 6_347_586},
    "mt": {7: 5_984_455, 2: 5_983_810},
}
STATE_DICT_ENTRIES = {"lfan": 534, "can": 551, "jmt": 621, "mt": 593}
IR50_PARAMS = 37_287_624


def read_tsv(name: str) -> list[tuple[str, str, str]]:
    """Rows ``(key, shape, dtype)`` of ``original-state-dicts/<name>.tsv`` ('#' lines skipped);
    skips the test when the listing is not beside the checkout."""
    path = STATE_DICT_DIR / f"{name}.tsv"
    if not path.is_file():
        pytest.skip(f"original state-dict listing not found: {path} (needs ../shared beside the checkout)")
    rows = []
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, shape, dtype = line.split("\t")
            rows.append((key, shape.strip(), dtype.strip()))
    return rows


@pytest.fixture
def meld_dir(monkeypatch: pytest.MonkeyPatch) -> Path:
    """The real MELD tables (``../shared/data/meld``), with ``$JAX_CER_MELD_DIR`` pointing at them;
    skips the test when they are not beside the checkout."""
    missing = [name for name in MELD_TABLES if not (MELD_DIR / name).is_file()]
    if missing:
        pytest.skip(
            f"real MELD tables not found: {missing} missing in {MELD_DIR} (needs ../shared/data beside the checkout)"
        )
    monkeypatch.setenv("JAX_CER_MELD_DIR", str(MELD_DIR))
    return MELD_DIR


def pytest_collection_modifyitems(config, items):
    if HAS_TORCH:
        return
    skip = pytest.mark.skip(reason="needs PyTorch (pip install -e '.[test]' installs torch==2.13.0)")
    for item in items:
        if "torch" in item.keywords or "live" in item.keywords:
            item.add_marker(skip)
