"""Parity of every model against the committed golden files of the PyTorch reference.

Tolerances live in ``jax_cer.parity.tolerances.TOLERANCES``: per layer 1e-5 (each stored
intermediate from the reference values of its inputs), end to end 1e-4, gradients 1e-4
relative (float64), training-mode BatchNorm statistics 1e-4. Regenerate the files with
``python repro/make_golden.py``.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from jax_cer.parity import golden
from jax_cer.parity.weights import sha256

MANIFEST = golden.load_manifest()


def _report(results) -> str:
    return "\n".join(
        f"{r.check}: worst {r.key} err {r.max_error:.3e} (tol {r.tolerance:.0e}) {r.detail}"
        for r in results
        if not r.passed
    )


# Covered by another default case of the same model (and by `jax-cer repro`, which runs every case):
# kept out of the default run for time, run with `pytest -m slow`.
SLOW_CASES = {"lfan_frames", "jmt", "mt", "lfan_train"}


@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW_CASES else c for c in MANIFEST["cases"]]
)
def test_golden_case(case: str) -> None:
    results = golden.run_case(golden.load_case(case, MANIFEST))
    checks = {r.check for r in results}
    expected = {"forward", "grad input", "grad params"}
    expected |= {"state"} if MANIFEST["cases"][case]["mode"] == "train" else {"layer"}
    assert checks == expected, f"checks run: {checks}; {_report(results)}"
    assert [r.check for r in results] == golden.case_checks(MANIFEST["cases"][case])  # what the plugin collects
    assert all(r.passed for r in results), _report(results)
    assert all(r.count > 0 for r in results)


def test_golden_files_small_and_complete() -> None:
    """All golden files together stay under 20 MB; every case has a manifest entry."""
    folder = golden.default_golden_dir()
    total = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert total < 20e6, f"golden files take {total / 1e6:.1f} MB"
    files = {p.name for p in folder.glob("*.npz")}
    assert files == {c["file"] for c in MANIFEST["cases"].values()}
    for key in ("command", "producer", "weights", "weights_sha256"):
        assert key in MANIFEST


def test_edited_golden_file_is_rejected(tmp_path) -> None:
    """A golden array that differs from its manifest sha256 is refused, not compared."""
    folder = golden.default_golden_dir()
    for name in ("manifest.json", "tcn.npz"):
        shutil.copy(folder / name, tmp_path / name)
    with np.load(tmp_path / "tcn.npz") as f:
        arrays = {k: f[k] for k in f.files}
    arrays["output"] = arrays["output"] + 1e-3
    np.savez(tmp_path / "tcn.npz", **arrays)
    with pytest.raises(golden.GoldenFileError, match="differ from the manifest"):
        golden.load_case("tcn", golden.load_manifest(tmp_path), tmp_path)


def test_missing_golden_file_is_named(tmp_path) -> None:
    """A case file the manifest lists but the folder lacks: the error names it and where golden files come from."""
    shutil.copy(golden.default_golden_dir() / "manifest.json", tmp_path / "manifest.json")
    with pytest.raises(golden.GoldenFileError, match=r"tcn\.npz is missing .*ship with the jax-cer package"):
        golden.load_case("tcn", golden.load_manifest(tmp_path), tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(golden.GoldenFileError, match="manifest.json is not valid JSON"):
        golden.load_manifest(tmp_path)


@pytest.mark.parametrize(
    ("array", "failing"),
    [
        ("output", {"forward"}),
        ("inter/network.2", {"layer", "forward"}),  # network.2 itself, and network.3 computed from it
        ("grad_input/x", {"grad input"}),
        ("grad_param/network.3.conv2.weight_v", {"grad params"}),
    ],
)
def test_wrong_reference_fails_its_checks(tmp_path, array: str, failing: set) -> None:
    """A consistent but wrong golden array (manifest updated) fails exactly the checks that read it."""
    folder = golden.default_golden_dir()
    manifest = json.loads((folder / "manifest.json").read_text())
    with np.load(folder / "tcn.npz") as f:
        arrays = {k: f[k] for k in f.files}
    arrays[array] = arrays[array] * 1.01 + 1e-3
    np.savez(tmp_path / "tcn.npz", **arrays)
    manifest["cases"]["tcn"]["arrays"][array]["sha256"] = sha256(arrays[array])
    manifest["cases"] = {"tcn": manifest["cases"]["tcn"]}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    results = {r.check: r for r in golden.run_case(golden.load_case("tcn", manifest, tmp_path))}
    assert {name for name, r in results.items() if not r.passed} == failing
    if failing != {"layer", "forward"}:
        assert results[next(iter(failing))].key == array.split("/", 1)[-1]
