"""Parity of every model against the committed golden files of the PyTorch reference.

Tolerances live in ``jax_cer.parity.tolerances.TOLERANCES``: per layer 1e-5 (each stored
intermediate from the reference values of its inputs), end to end 1e-4, gradients 1e-4
relative (float64), training-mode BatchNorm statistics 1e-4. Regenerate the files with
``python repro/make_golden.py``.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from jax_cer.parity import golden
from jax_cer.parity.repro import run_repro
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
    checksum = r"tcn\.npz does not match the checksum in manifest\.json for key\(s\) \['output'\]"
    with pytest.raises(golden.GoldenFileError, match=checksum + ": the arrays differ from the manifest"):
        golden.load_case("tcn", golden.load_manifest(tmp_path), tmp_path)


def test_missing_golden_file_is_named(tmp_path) -> None:
    """A case file the manifest lists but the folder lacks: the error names it and where golden files come from."""
    shutil.copy(golden.default_golden_dir() / "manifest.json", tmp_path / "manifest.json")
    with pytest.raises(golden.GoldenFileError, match=r"tcn\.npz is missing .*ship with the jax-cer package"):
        golden.load_case("tcn", golden.load_manifest(tmp_path), tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(golden.GoldenFileError, match=r"manifest.json is not valid JSON \(.* at line 1 column 2\)"):
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


# -- damaged golden files: one failed row naming the file and key, never a traceback ----------------
def _golden_copy(folder: Path) -> Path:
    """A copy of the shipped manifest, tcn.npz and the so/ and text/ folders (enough for tcn, so, text)."""
    src = golden.default_golden_dir()
    folder.mkdir()
    for name in ("manifest.json", "tcn.npz"):
        shutil.copy(src / name, folder / name)
    for name in ("so", "text"):
        shutil.copytree(src / name, folder / name)
    return folder


def _edit_npz(path: Path, edit) -> None:
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    edit(arrays)
    np.savez(path, **arrays)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:1000])


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: _edit_npz(d / "tcn.npz", lambda a: a.pop("labels")), r"tcn\.npz lacks the key\(s\) \['labels'\]"),
        (
            lambda d: _edit_npz(d / "tcn.npz", lambda a: a.update(extra=np.zeros(1))),
            r"tcn\.npz holds key\(s\) \['extra'\] not listed in manifest\.json",
        ),
        (
            lambda d: _edit_npz(d / "tcn.npz", lambda a: a.update(output=a["output"][:1])),
            r"tcn\.npz: key 'output' has shape \[1, 64, 128\], manifest\.json lists \[2, 64, 128\]",
        ),
        (
            lambda d: _truncate(d / "tcn.npz"),
            r"tcn\.npz is not a readable \.npz archive \(BadZipFile: .*\); truncated or corrupted\?",
        ),
        (
            lambda d: _edit_json(d / "manifest.json", lambda m: m["cases"]["tcn"].pop("file")),
            r"manifest\.json: case 'tcn' lacks the required key\(s\) \['file'\]",
        ),
        (
            lambda d: _edit_json(d / "manifest.json", lambda m: m["cases"]["tcn"]["arrays"]["output"].pop("sha256")),
            r"manifest\.json: key 'output' of tcn\.npz lacks the required key\(s\) \['sha256'\]",
        ),
    ],
    ids=["key removed", "key added", "shape", "truncated", "no file entry", "no checksum"],
)
def test_damaged_case_file_names_file_and_key(tmp_path, damage, message: str) -> None:
    folder = _golden_copy(tmp_path / "golden")
    damage(folder)
    with pytest.raises(golden.GoldenFileError, match=message):
        golden.load_case("tcn", golden.load_manifest(folder), folder)


def test_repro_reports_each_damaged_case_as_one_failed_row(tmp_path, capsys) -> None:
    """Damaged files of tcn, so and text: each case gets one failed row naming its file, the others still
    run, exit 1 (nothing is compared: every case stops at its golden file)."""
    folder = _golden_copy(tmp_path / "golden")
    _edit_npz(folder / "tcn.npz", lambda a: a.update(output=a["output"] + 1e-3))
    _truncate(folder / "so" / "trajectory.npz")
    (folder / "text" / "manifest.json").write_text('{"arrays": {}\n  "npz_sha256": ""}')
    assert run_repro(["tcn,so,text"], golden_dir=folder, layers=False) == 1
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if " FAIL " in line]
    assert [line.split()[:3] for line in rows] == [[case, "error", "GoldenFileError"] for case in ("tcn", "so", "text")]
    assert f"{folder / 'tcn.npz'} does not match the checksum in manifest.json for key(s) ['output']" in out
    assert f"{folder / 'so' / 'trajectory.npz'} is not a readable .npz archive (BadZipFile: " in out
    assert f"{folder / 'text' / 'manifest.json'} is not valid JSON (Expecting ',' delimiter at line 2 column 3)" in out
    assert "0/3 checks passed" in out and "FAILED: 3" in out


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ('{"cases": {\n  "tcn": oops}', r"manifest\.json is not valid JSON \(Expecting value at line 2 column 10\)"),
        ('{"command": "python repro/make_golden.py"}', r"manifest\.json lacks the required key\(s\) \['cases'\]"),
        ('{"cases": {"tcn": [1]}}', r"manifest\.json: case 'tcn' is a JSON array, expected an object"),
        ('["cases"]', r"manifest\.json holds a JSON array, expected an object"),
        (b"\xff\xfe", r"manifest\.json is not UTF-8 text \(byte 0\)"),
        (None, r"no golden manifest at .*manifest\.json \(.*missing does not exist\): the golden files ship"),
    ],
    ids=["not json", "no cases", "case not an object", "not an object", "not text", "no folder"],
)
def test_repro_refuses_an_unreadable_golden_folder(tmp_path, capsys, manifest, message: str) -> None:
    """A manifest that cannot be read: one line on stderr naming it, exit 2, nothing runs."""
    folder = tmp_path / "missing"
    if manifest is not None:
        folder = _golden_copy(tmp_path / "golden")
        path = folder / "manifest.json"
        if isinstance(manifest, bytes):
            path.write_bytes(manifest)
        else:
            path.write_text(manifest)
    assert run_repro(["tcn"], golden_dir=folder, layers=False) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith("jax-cer repro: error: ") and re.search(message, line), line
