"""The GPU campaign (``python -m repro.gpu_campaign``) and its scripts, run as commands on a CPU: what a GPU
machine would run, at tiny sizes; and the long-sequence kernel check (jax_cer.bench.kernel_check)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from jax_cer.bench import kernel_check
from jax_cer.kernels import flash_attention
from jax_cer.kernels.configs import KernelConfig, gpu_config, override
from tests.conftest import REPO

BUDGET_S = 540


def _run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m <args>`` at the repository root."""
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, check=False, timeout=timeout
    )


def test_plan_covers_every_component_within_the_budget() -> None:
    proc = _run("repro.gpu_campaign", "plan", "--commands")
    assert proc.returncode == 0, proc.stderr[-2000:]
    parts = re.findall(r"^(\w+) \(about [\d.]+ min of \d+\):$", proc.stdout, re.M)
    assert parts == ["parity", "attention", "models", "profile", "tune"]
    for block in re.split(r"^\w+ \(about [\d.]+ min of \d+\):$", proc.stdout, flags=re.M)[1:]:
        estimates = [int(s) for s in re.findall(r"^  \S+\s+~\s*(\d+)s", block, re.M)]
        assert estimates and sum(estimates) <= BUDGET_S
    steps = set(re.findall(r"^  (\S+)\s+~", proc.stdout, re.M))
    expected = {"repro", "kernel-check", "text-parity", "models", "train-loop", "so", "text", "profile", "sweep-fwd"}
    expected |= {"sweep-bwd"} | {
        f"attention-{p}-{t}-d{d}" for p in ("fwd", "fwd+bwd") for t in ("bfloat16", "float16") for d in (64, 128)
    }
    assert expected <= steps
    # the benchmark steps run jax-cer bench into the machine's folder (one result file each)
    assert "$ python -m jax_cer.cli bench -k test_bench_so --out '$OUT/<machine>'" in proc.stdout


def test_run_refuses_a_machine_without_a_gpu(tmp_path) -> None:
    proc = _run("repro.gpu_campaign", "run", "parity", "--out", str(tmp_path))
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    (log,) = tmp_path.glob("*/campaign-parity-*.json")
    record = json.loads(log.read_text())
    assert record["steps"] == [] and any("JAX sees no GPU" in p for p in record["problems"])
    assert record["environment"]["backend"] == "cpu" and record["environment"]["versions"]["jax"]
    assert record["machine"]["platform"] == "cpu" and log.parent.name.startswith("cpu-")


@pytest.mark.slow
def test_smoke_run_writes_the_kernel_check_and_collect_reports_it(tmp_path) -> None:
    out = tmp_path / "out"
    proc = _run(
        "repro.gpu_campaign", "run", "parity", "--out", str(out), "--allow-cpu", "--smoke", "--only", "kernel-check"
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (check,) = out.glob("*/kernelcheck-*.json")
    data = json.loads(check.read_text())
    assert data["backend"] == "interpret" and data["passed"] and len(data["cases"]) == 2
    (log,) = out.glob("*/campaign-parity-*.json")
    assert [(s["name"], s["rc"]) for s in json.loads(log.read_text())["steps"]] == [("kernel-check", 0)]
    results, md = tmp_path / "results", tmp_path / "report" / "B.md"
    collect = ("collect", str(out), "--results", str(results), "--report", str(md), "--notes", "")
    proc = _run("repro.gpu_campaign", *collect)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (results / check.parent.name / check.name).is_file()
    text = md.read_text()
    assert f"#### {check.parent.name} (`{check.name}`, backend interpret): 2/2 cases pass" in text


def test_kernel_check_fails_a_wrong_kernel() -> None:
    """The rule bites: attention with a 2% wrong scale is outside 2x the low-precision error."""

    def wrong(q, k, v, **kw):
        return flash_attention(q, k, v, **{**kw, "scale": 1.02 / np.sqrt(q.shape[-1]), "backend": "xla"})

    case = kernel_check.Case("bfloat16", 32, False, 2, 2, 64, 64)
    row = kernel_check.run_case(case, backend="xla", attention=wrong)
    assert not row["passed"] and not row["checks"]["out"]["passed"]
    good = kernel_check.run_case(kernel_check.Case("bfloat16", 32, True, 2, 2, 64, 64, (64, 9)), backend="interpret")
    assert good["passed"], good


def test_kernel_check_plan_runs_cheapest_first() -> None:
    cases = kernel_check.plan(seqs=(512, 1024), head_dims=(64,), dtypes=("bfloat16",), fp32_seqs=(1025,))
    sizes = [c.b * c.h * c.sq * c.sk * c.d for c in cases]
    assert sizes == sorted(sizes)
    assert {c.dtype for c in cases} == {"bfloat16", "float32"} and any(c.lens for c in cases)


def test_kernel_check_rejects_bad_arguments(tmp_path) -> None:
    proc = _run("repro.kernel_check", "--json", str(tmp_path / "k.json"), "--dtypes", "int8")
    assert proc.returncode == 2 and "'int8' is not float16, bfloat16 or float32" in proc.stderr
    assert not (tmp_path / "k.json").exists()


def test_config_override_is_scoped_and_validated() -> None:
    shipped = gpu_config("fwd", "bfloat16", 128)
    other = KernelConfig(128, 32, 4, 4)
    with override("fwd", "bfloat16", 128, other):
        assert gpu_config("fwd", "bfloat16", 128) == other
        assert gpu_config("fwd", "float16", 128) != other  # only the key named
    assert gpu_config("fwd", "bfloat16", 128) == shipped
    with pytest.raises(ValueError, match="powers of two"), override("fwd", "bfloat16", 128, KernelConfig(96, 64, 4, 2)):
        pass
    with pytest.raises(ValueError, match="no configuration"), override("fwd", "int8", 128, other):
        pass


def test_sweep_checks_candidates_ahead_of_time(tmp_path) -> None:
    """Without a GPU the sweep compiles its candidates for sm_90 and records their resources."""
    out = tmp_path / "sweep.json"
    proc = _run(
        "repro.attention_sweep", "--json", str(out), "--aot-only", "--kernels", "fwd", "--max-candidates", "2",
        "--workers", "2",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    entry = json.loads(out.read_text())["kernels"]["fwd"]
    rows = entry["candidates"]
    assert rows[0]["config"] == entry["shipped"] and rows[0]["viable"]
    assert len(rows) == 2 and all(r["resources"]["registers"] > 0 for r in rows)
    assert entry["candidates_total"] == 36


def test_profile_summarizes_a_saved_ncu_csv(tmp_path) -> None:
    csv = tmp_path / "profile.csv"
    csv.write_text(
        '"ID","Process ID","Kernel Name","Section Name","Metric Name","Metric Unit","Metric Value"\n'
        '"0","1","_attn_fwd_kernel","GPU Speed Of Light Throughput","Duration","us","812.3"\n'
    )
    proc = _run("repro.attention_profile", "--summarize", str(csv))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "id: 0 | kernel: _attn_fwd_kernel | Duration: 812.3 us"
    (tmp_path / "empty.csv").write_text("nothing\n")
    assert _run("repro.attention_profile", "--summarize", str(tmp_path / "empty.csv")).returncode == 1
