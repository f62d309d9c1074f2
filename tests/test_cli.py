"""The ``jax-cer`` command line: help, the repro table, --only, --json, exit codes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from jax_cer.cli import main
from jax_cer.parity import golden
from jax_cer.parity.tolerances import TOLERANCES
from jax_cer.parity.weights import sha256


def test_help_explains_commands() -> None:
    out = subprocess.run([sys.executable, "-m", "jax_cer.cli", "--help"], capture_output=True, text=True, check=True)
    assert "repro" in out.stdout and "bench" in out.stdout and "report" in out.stdout
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
    assert data["kind"] == "repro" and data["tolerances"] == dict(TOLERANCES)
    # the machine record by which the benchmark report groups results
    assert {"device", "platform", "cpu", "versions", "commit", "date"} <= set(data["machine"])


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
    assert main(["repro", "--golden-dir", str(tmp_path), "--no-layers", "--only", "tcn"]) == 1
    out = capsys.readouterr().out
    assert "tcn            forward" in out and "tcn            layer" not in out  # --no-layers
    assert "2/3 checks passed" in out and "FAILED: 1" in out


def test_repro_reports_a_corrupted_golden_file_as_a_failed_row(tmp_path, capsys) -> None:
    folder = golden.default_golden_dir()
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["cases"] = {"tcn": manifest["cases"]["tcn"]}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with np.load(folder / "tcn.npz") as f:
        arrays = {k: f[k] for k in f.files}
    arrays["output"] = arrays["output"] + 1e-3  # the manifest's sha256 no longer matches
    np.savez(tmp_path / "tcn.npz", **arrays)
    assert main(["repro", "--golden-dir", str(tmp_path), "--only", "tcn"]) == 1
    out = capsys.readouterr().out
    assert "GoldenFileError" in out and "differ from the manifest" in out and "0/1 checks passed" in out


def test_repro_without_golden_files_says_where_they_come_from(tmp_path, capsys) -> None:
    assert main(["repro", "--golden-dir", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "no golden manifest" in err and "ship with the jax-cer package" in err and "--golden-dir" in err
    assert "python repro/make_golden.py" not in err  # not a command a wheel user has


@pytest.mark.parametrize(
    ("command", "flags"),
    [
        ("bench", ("-k EXPR", "--rounds N", "--out DIR", "jax-cer-results/<machine>/")),
        ("report", ("--out FILE", "--plots DIR", "--notes FILE", "jax-cer-report/BENCHMARKS.md")),
    ],
)
def test_bench_and_report_help_name_their_flags(command, flags, capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # argparse wraps at the terminal's width (also inside a path)
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    for flag in flags:
        assert flag in out, (command, flag)


def _bench_results(folder) -> None:
    folder.mkdir(parents=True)
    record = {"device": "Test CPU (2 cores)", "platform": "cpu", "cpu": "Test CPU (2 cores)", "versions": {}}
    info = {"component": "tcn", "variant": "forward", "shapes": {"x": [2, 300, 512]}, "frames": 600}
    rows = [
        {"stats": {"data": [t] * 3, "median": t, "q1": t, "q3": t}, "extra_info": {**info, "impl": impl}}
        for impl, t in (("jax", 0.01), ("torch", 0.02))
    ]
    (folder / "bench-20260101T000000Z.json").write_text(
        json.dumps({"machine_info": {"jax_cer": record}, "benchmarks": rows})
    )


def test_report_writes_into_the_working_folder_by_default(tmp_path, monkeypatch, capsys) -> None:
    _bench_results(tmp_path / "results" / "m")
    monkeypatch.chdir(tmp_path)
    assert main(["report", "results"]) == 0
    text = (tmp_path / "jax-cer-report" / "BENCHMARKS.md").read_text()
    assert "| tcn | forward: PyTorch / JAX time | 2.00x |" in text
    assert "- `../results/m/bench-20260101T000000Z.json`" in text
    assert "wrote jax-cer-report/BENCHMARKS.md from 1 result files" in capsys.readouterr().out


def test_report_names_what_is_wrong(tmp_path, capsys) -> None:
    assert main(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "B.md")]) == 2
    assert "missing" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "B.md")]) == 2
    assert "no result files" in capsys.readouterr().err
    _bench_results(tmp_path / "r")
    notes = tmp_path / "no-notes.md"
    assert main(["report", str(tmp_path / "r"), "--out", str(tmp_path / "B.md"), "--notes", str(notes)]) == 2
    assert "no-notes.md" in capsys.readouterr().err and not (tmp_path / "B.md").exists()


def test_bench_rejects_a_bad_round_count(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--rounds", "0"])
    assert exit_info.value.code == 2 and "positive number of rounds" in capsys.readouterr().err


def test_train_list_and_eval_errors(tmp_path, capsys) -> None:
    assert main(["train", "--list"]) == 0
    listed = capsys.readouterr().out
    assert "synthetic-can          model=can  dataset=synthetic optimizer=sgd" in listed
    assert "meld-fewshot-so        text so   dataset=meld      optimizer=so    lr=0.001 steps=100" in listed
    assert main(["eval", str(tmp_path)]) == 2  # not a work directory
    assert f"error: {tmp_path / 'config.json'} is missing: is {tmp_path} a jax-cer train work directory?" in (
        capsys.readouterr().err
    )
    (tmp_path / "config.json").write_text('{"kind": "audio"}')
    assert main(["eval", str(tmp_path)]) == 2
    assert "unknown run kind 'audio'" in capsys.readouterr().err
    (tmp_path / "config.json").write_text('{"kind": "text", "lr": 0.1, "momentum": 0.9}')
    assert main(["eval", str(tmp_path)]) == 2
    assert "unknown text configuration keys ['momentum']" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        ([], "the following arguments are required: command"),
        (["train", "--config", "nope"], "unknown configuration 'nope'"),
        (["train", "--set", "epochs=abc"], "--set 'epochs=abc': 'abc' is not a valid int"),
        (["train", "--set", "nokey=1"], "--set 'nokey=1': expected KEY=VALUE"),
        (["train", "--set", "epochs=-1"], "invalid configuration: epochs must be >= 1, got -1"),
        (["train", "--set", "lr=nan"], "invalid configuration: lr must be a finite number > 0, got nan"),
        (["train", "--set", "gamma=2"], "invalid configuration: gamma must be a finite number in (0, 1], got 2.0"),
        (["train", "--num-processes", "2"], "--coordinator, --num-processes and --process-id go together"),
        (["train", "--workdir", "{file}"], "work directory {file} is a file, not a folder"),
        (["train", "--config", "meld-text-lora", "--data-dir", "{missing}"], "MELD folder {missing}"),
        (["train", "--config", "synthetic-text", "--manual-dir", "x"], "--manual-dir does not apply"),
        (["eval", "{file}"], "is missing: is {file} a jax-cer train work directory?"),
        (["report", "{missing}"], "results folder {missing} does not exist"),
        (["repro", "--only", "nope"], "unknown golden case(s) ['nope']"),
        (["bench", "--rounds", "0"], "0 is not a positive number of rounds"),
        (["bench", "--out", "afile/results"], "cannot use"),
    ],
)
def test_user_errors_exit_2_with_one_line(argv, says, tmp_path, monkeypatch, capsys) -> None:
    """Every mistake in a command line, or in the files it names, ends with exit status 2 and one
    line on stderr that says what is wrong, never a traceback."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("")
    names = {"file": "afile", "missing": str(tmp_path / "missing")}
    argv = [a.format(**names) for a in argv]
    try:
        code = main(argv)
    except SystemExit as exit_info:  # argparse's own errors
        code = exit_info.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert says.format(**names) in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_an_internal_error_keeps_its_traceback(monkeypatch) -> None:
    """Only user errors become one line: a bug in the package still shows where it happened."""

    def broken(*args, **kwargs):
        raise RuntimeError("internal")

    monkeypatch.setattr("jax_cer.cli.evaluate_checkpoint", broken)
    monkeypatch.setattr("jax_cer.cli.read_run_config", lambda workdir: None)
    with pytest.raises(RuntimeError, match="internal"):
        main(["eval", "somewhere"])
