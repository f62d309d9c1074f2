"""The ``jax-cer`` command line: help, the repro table, --only, --json, exit codes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np

from jax_cer.cli import main
from jax_cer.parity import golden
from jax_cer.parity.weights import sha256


def test_help_explains_commands() -> None:
    out = subprocess.run([sys.executable, "-m", "jax_cer.cli", "--help"], capture_output=True, text=True, check=True)
    assert "repro" in out.stdout and "bench" in out.stdout
    out = subprocess.run(
        [sys.executable, "-m", "jax_cer.cli", "repro", "--help"], capture_output=True, text=True, check=True
    )
    for flag in ("--only", "--json", "--golden-dir", "--no-layers"):
        assert flag in out.stdout


def test_repro_only_and_json(tmp_path, capsys) -> None:
    out = tmp_path / "repro.json"
    assert main(["repro", "--only", "tcn", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "tcn" in table and "PASS" in table and "FAIL" not in table.split("checks passed")[0]
    data = json.loads(out.read_text())
    assert data["passed"] and {r["check"] for r in data["results"]} == {"layer", "forward", "grad input", "grad params"}
    assert all(r["max_error"] <= r["tolerance"] for r in data["results"])


def test_repro_unknown_case(capsys) -> None:
    assert main(["repro", "--only", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown golden case(s) ['nope']" in err and "'so'" in err


def test_repro_so_trajectory(capsys) -> None:
    assert main(["repro", "--only", "so"]) == 0
    table = capsys.readouterr().out
    for check in ("supports", "params", "moment m", "moment v"):
        assert f"so             {check}" in table
    assert "4/4 checks passed" in table


def test_repro_exits_nonzero_on_failure(tmp_path, capsys) -> None:
    folder = golden.default_golden_dir()
    manifest = json.loads((folder / "manifest.json").read_text())
    shutil.copy(folder / "tcn.npz", tmp_path / "tcn.npz")
    with np.load(tmp_path / "tcn.npz") as f:
        arrays = {k: f[k] for k in f.files}
    arrays["output"] = arrays["output"] * 1.01
    np.savez(tmp_path / "tcn.npz", **arrays)
    manifest["cases"] = {"tcn": manifest["cases"]["tcn"]}
    manifest["cases"]["tcn"]["arrays"]["output"]["sha256"] = sha256(arrays["output"])
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert main(["repro", "--golden-dir", str(tmp_path), "--no-layers"]) == 1
    assert "FAIL" in capsys.readouterr().out
