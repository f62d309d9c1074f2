"""The pytest plugin (``pytest --jax-cer-repro``): run as a user would, from an empty folder with no
test files and no ini file, in a subprocess; and the case planning it shares with ``jax-cer repro``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from jax_cer.parity import golden, plugin, repro, so_trajectory
from jax_cer.parity.result import CheckResult
from jax_cer.parity.weights import sha256

MANIFEST = golden.load_manifest()
TCN_ITEMS = ["layer", "forward", "grad input", "grad params"]


def _pytest(folder: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m pytest ARGS`` in ``folder``, without this repository's pytest settings."""
    base = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "JAX_CER_GOLDEN")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=folder,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )


def _junit(path: Path) -> dict[str, ET.Element]:
    """``classname::name`` -> testcase element of a JUnit XML file."""
    cases = ET.parse(path).getroot().iter("testcase")
    return {f"{c.get('classname')}::{c.get('name')}": c for c in cases}


def _tcn_copy(folder: Path, edit) -> Path:
    """A golden folder with the tcn case only, its arrays passed through ``edit(arrays, manifest_entry)``."""
    src = golden.default_golden_dir()
    manifest = json.loads((src / "manifest.json").read_text())
    manifest["cases"] = {"tcn": manifest["cases"]["tcn"]}
    with np.load(src / "tcn.npz") as f:
        arrays = {k: f[k] for k in f.files}
    edit(arrays, manifest["cases"]["tcn"])
    folder.mkdir()
    np.savez(folder / "tcn.npz", **arrays)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_tcn_items_pass_from_an_empty_folder(tmp_path) -> None:
    work = tmp_path / "empty"
    work.mkdir()
    proc = _pytest(work, "--jax-cer-repro", "--jax-cer-cases", "tcn", "-v", "--junitxml=report.xml")
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-2000:]
    assert f"rootdir: {work}" in out and "configfile" not in out
    for check in TCN_ITEMS:
        assert f"jax-cer-repro::tcn::{check} PASSED" in out
    assert "4 passed" in out
    cases = _junit(work / "report.xml")
    assert sorted(cases) == sorted(f"jax-cer-repro.tcn::{c}" for c in TCN_ITEMS)
    suite = ET.parse(work / "report.xml").getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("4", "0", "0")
    props = {p.get("name"): p.get("value") for p in cases["jax-cer-repro.tcn::forward"].iter("property")}
    assert float(props["max_error"]) <= float(props["tolerance"]) == 1e-4


@pytest.mark.slow  # the default run's damaged-file test covers how a failing case reaches its items
def test_a_wrong_reference_fails_only_its_item(tmp_path) -> None:
    """A consistent but wrong golden output (manifest updated, via $JAX_CER_GOLDEN): the forward item
    fails with the check's worst key and error; the other items of the case still pass."""

    def wrong_output(arrays, entry) -> None:
        arrays["output"] = arrays["output"] * 1.01 + 1e-3
        entry["arrays"]["output"]["sha256"] = sha256(arrays["output"])

    folder = _tcn_copy(tmp_path / "golden", wrong_output)
    work = tmp_path / "empty"
    work.mkdir()
    env = {"JAX_CER_GOLDEN": str(folder)}
    proc = _pytest(work, "--jax-cer-repro", "--jax-cer-cases=tcn", "--junitxml=report.xml", env=env)
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert "1 failed, 3 passed" in proc.stdout
    cases = _junit(work / "report.xml")
    (failure,) = cases["jax-cer-repro.tcn::forward"].iter("failure")
    assert "tcn::forward FAILED: worst output: max error" in failure.text and "tolerance 1e-04" in failure.text
    for check in ("layer", "grad input", "grad params"):
        assert not list(cases[f"jax-cer-repro.tcn::{check}"].iter("failure")), check


def test_damaged_golden_files_fail_every_item_of_their_case(tmp_path) -> None:
    """An array that differs from its manifest sha256 (tcn) and a truncated file (so), via
    --jax-cer-golden-dir: each item fails, naming its check and the file error; no internal error."""

    def corrupt(arrays, entry) -> None:
        arrays["output"] = arrays["output"] + 1e-3

    folder = _tcn_copy(tmp_path / "golden", corrupt)
    shutil.copytree(golden.default_golden_dir() / "so", folder / "so")
    npz = folder / "so" / "trajectory.npz"
    npz.write_bytes(npz.read_bytes()[:1000])
    work = tmp_path / "empty"
    work.mkdir()
    args = ("--jax-cer-repro", "--jax-cer-cases=tcn,so", f"--jax-cer-golden-dir={folder}", "--junitxml=r.xml")
    proc = _pytest(work, *args)
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert "8 failed" in proc.stdout and "INTERNALERROR" not in proc.stdout + proc.stderr
    cases = _junit(work / "r.xml")
    reasons = {
        "tcn": f"GoldenFileError: {folder / 'tcn.npz'} does not match the checksum in manifest.json for key(s) "
        "['output']: the arrays differ from the manifest",
        "so": f"GoldenFileError: {npz} is not a readable .npz archive (BadZipFile: ",
    }
    for case, checks in (("tcn", TCN_ITEMS), ("so", so_trajectory.CHECKS)):
        for check in checks:
            (failure,) = cases[f"jax-cer-repro.{case}::{check}"].iter("failure")
            assert f"{case}::{check} was not reported" in failure.text
            assert reasons[case] in failure.text, failure.text


def test_without_the_flag_the_plugin_adds_nothing(tmp_path) -> None:
    proc = _pytest(tmp_path)
    assert proc.returncode == 5 and "no tests ran" in proc.stdout, proc.stdout  # 5: nothing collected
    code = "import sys, jax_cer.parity.plugin; assert 'jax' not in sys.modules, 'the plugin imported jax'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)


def test_usage_errors_name_the_valid_cases(tmp_path) -> None:
    proc = _pytest(tmp_path, "--jax-cer-repro", "--jax-cer-cases", "tcn,nope")
    assert proc.returncode == 4, proc.stdout + proc.stderr  # 4: usage error
    assert "unknown golden case(s) ['nope']" in proc.stderr and "'so', 'text'" in proc.stderr
    proc = _pytest(tmp_path, "--jax-cer-cases", "tcn")
    assert proc.returncode == 4 and "need --jax-cer-repro" in proc.stderr
    proc = _pytest(tmp_path, "--jax-cer-repro", f"--jax-cer-golden-dir={tmp_path / 'none'}")
    assert proc.returncode == 4 and "ship with the jax-cer package" in proc.stderr


# -- the planning shared with jax-cer repro ---------------------------------------------------------
def test_select_cases_keeps_the_run_order() -> None:
    assert repro.select_cases(["so,tcn", "text"], MANIFEST) == ["tcn", "so", "text"]
    assert repro.select_cases(None, MANIFEST) == [*MANIFEST["cases"], "so", "text"]
    with pytest.raises(repro.UnknownCaseError, match=r"unknown golden case\(s\) \['nope'\]; cases are \['tcn'"):
        repro.select_cases(["tcn,nope"], MANIFEST)


def test_planned_checks_follow_the_manifest() -> None:
    names = {c: [p.name for p in repro.planned_checks(c, MANIFEST)] for c in MANIFEST["cases"]}
    assert names["tcn"] == [f"tcn::{c}" for c in TCN_ITEMS]
    assert names["can_train"] == [f"can_train::{c}" for c in ("forward", "state", "grad input", "grad params")]
    assert [p.check for p in repro.planned_checks("tcn", MANIFEST, layers=False)] == TCN_ITEMS[1:]
    assert [p.check for p in repro.planned_checks("so", MANIFEST)] == list(so_trajectory.CHECKS)
    text = repro.planned_checks("text", MANIFEST)
    assert {p.run for p in text} == {"text"} and {p.case for p in text} == {"text_encoder", "text_lora"}
    with pytest.raises(repro.UnknownCaseError):
        repro.planned_checks("nope", MANIFEST)


def test_a_planned_check_the_run_skipped_is_a_failure() -> None:
    planned = repro.planned_checks("tcn", MANIFEST)
    ok = [CheckResult("tcn", p.check, "-", 0.0, 1e-5, True, 0.0) for p in planned]
    assert repro.unreported_rows(planned, ok) == []
    (missing,) = repro.unreported_rows(planned, ok[:1] + ok[2:])
    assert (missing.name, missing.passed) == ("tcn::forward", False)
    error = [CheckResult("tcn", "error", "ValueError", float("nan"), 0.0, False, 0.0, 0, "boom")]
    assert repro.unreported_rows(planned, error) == []  # the error row already explains the rest


def test_a_case_runs_once_for_all_its_items(monkeypatch) -> None:
    calls = []

    def run_checks(name, manifest, folder, **kwargs):
        calls.append((name, folder))
        return ["rows"]

    monkeypatch.setattr(repro, "run_checks", run_checks)
    session = plugin.ReproSession(Path("golden"), MANIFEST, ["tcn", "so"])
    assert session.rows("so") == session.rows("so") == ["rows"]
    assert calls == [("so", Path("golden"))]


def test_golden_dir_without_manifest_is_named(tmp_path) -> None:
    with pytest.raises(golden.GoldenFileError, match="no golden manifest at .*ship with the jax-cer package"):
        golden.load_manifest(tmp_path)
