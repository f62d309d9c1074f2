"""The GPU campaign's plumbing (repro/gpu_campaign.py) and the long-sequence kernel check
(repro/kernel_check.py), on a CPU: what a GPU session would run, at tiny sizes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from repro import gpu_campaign, kernel_check


def test_plan_covers_every_component_within_the_call_budget(capsys) -> None:
    assert gpu_campaign.main(["plan"]) == 0
    text = capsys.readouterr().out
    for part in ("parity", "attention", "models", "profile", "tune"):
        steps = gpu_campaign.steps_of(part, "/o", "m", "t")
        assert sum(s.estimate_s for s in steps) <= gpu_campaign.DEFAULT_BUDGET_S, part
        assert f"{part} (about" in text
    names = {s.name for s in gpu_campaign.steps_of("all", "/o", "m", "t")}
    assert {
        "repro",
        "kernel-check",
        "text-parity",
        "models",
        "train-loop",
        "so",
        "text",
        "profile",
        "sweep-fwd",
        "sweep-bwd",
    } <= names
    assert {
        f"attention-{p}-{t}-d{d}" for p in ("fwd", "fwd+bwd") for t in ("bfloat16", "float16") for d in (64, 128)
    } <= names


def test_repro_leaves_out_only_the_text_rows_without_the_checkpoint() -> None:
    (with_text,) = [
        s for s in gpu_campaign.steps_of("parity", "/o", "m", "t", text_checkpoint=True) if s.name == "repro"
    ]
    (without,) = [
        s for s in gpu_campaign.steps_of("parity", "/o", "m", "t", text_checkpoint=False) if s.name == "repro"
    ]
    assert "--only" not in with_text.argv
    cases = without.argv[without.argv.index("--only") + 1].split(",")
    assert "text" not in cases and {"so", "tcn", "ir50", "jmt_train"} <= set(cases)


def test_problems_name_what_is_missing() -> None:
    ok = {"backend": "gpu", "torch_cuda": True, "versions": {"flax": "0.12.8"}}
    ok |= {n: "ok" for n in ("jax_triton", "torch", "transformers", "pytest_benchmark", "xdist", "flax", "optax")}
    assert gpu_campaign.problems(ok, allow_cpu=False) == []
    bad = {**ok, "jax_triton": "ModuleNotFoundError: x", "versions": {"flax": "0.13.0"}, "torch_cuda": False}
    found = " ".join(gpu_campaign.problems(bad, allow_cpu=False))
    assert "jax_triton does not import" in found and "flax 0.13.0" in found and "no CUDA" in found
    assert "JAX sees no GPU" in " ".join(gpu_campaign.problems({**ok, "backend": "cpu"}, allow_cpu=False))


CPU_FOUND = {"backend": "cpu", "torch_cuda": False, "versions": {"flax": "0.12.8"}}
CPU_FOUND |= {n: "ok" for n in ("torch", "transformers", "pytest_benchmark", "xdist", "flax", "optax")}


def test_check_environment_asks_a_fresh_interpreter() -> None:
    found = gpu_campaign.check_environment(gpu_campaign.environment(None))
    assert found["backend"] == "cpu" and found["versions"]["jax"]
    assert found["jax_triton"] != "ok"  # it refuses to import without a GPU jaxlib


def test_run_refuses_a_machine_without_a_gpu(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(gpu_campaign, "check_environment", lambda env: CPU_FOUND)
    assert gpu_campaign.main(["run", "parity", "--out", str(tmp_path)]) == 2
    (log,) = tmp_path.glob("*/campaign-parity-*.json")
    record = json.loads(log.read_text())
    assert record["steps"] == [] and any("JAX sees no GPU" in p for p in record["problems"])


def test_smoke_run_writes_the_kernel_check_and_collect_files_it(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(gpu_campaign, "check_environment", lambda env: CPU_FOUND)
    out = tmp_path / "out"
    argv = ["run", "parity", "--out", str(out), "--allow-cpu", "--smoke", "--only", "kernel-check"]
    assert gpu_campaign.main(argv) == 0
    (check,) = out.glob("*/kernelcheck-*.json")
    data = json.loads(check.read_text())
    assert data["backend"] == "interpret" and data["passed"] and len(data["cases"]) == 2
    (log,) = out.glob("*/campaign-parity-*.json")
    assert [(s["name"], s["rc"]) for s in json.loads(log.read_text())["steps"]] == [("kernel-check", 0)]
    results = tmp_path / "results"
    assert gpu_campaign.main(["collect", str(out), "--results", str(results), "--no-report"]) == 0
    assert (results / check.parent.name / check.name).is_file()


def test_kernel_check_fails_a_wrong_kernel(monkeypatch) -> None:
    """The rule bites: attention with a 2% wrong scale is outside 2x the low-precision error."""
    import jax_cer.kernels as k

    real = k.flash_attention
    monkeypatch.setattr(
        k,
        "flash_attention",
        lambda q, kk, v, **kw: real(q, kk, v, **{**kw, "scale": 1.02 / np.sqrt(q.shape[-1]), "backend": "xla"}),
    )
    row = kernel_check.run_case(kernel_check.Case("bfloat16", 32, False, 2, 2, 64, 64), backend="xla")
    assert not row["passed"] and not row["checks"]["out"]["passed"]
    good = kernel_check.run_case(kernel_check.Case("bfloat16", 32, True, 2, 2, 64, 64, (64, 9)), backend="interpret")
    assert good["passed"], good


@pytest.mark.parametrize("bad", [["--dtypes", "int8"]])
def test_kernel_check_rejects_bad_arguments(tmp_path, bad) -> None:
    with pytest.raises(SystemExit):
        kernel_check.main(["--json", str(tmp_path / "k.json"), *bad])


def test_a_parts_benchmark_files_are_joined_into_one(tmp_path) -> None:
    old = tmp_path / "bench-20260101T000000Z.json"
    old.write_text(json.dumps({"machine_info": {}, "benchmarks": [{"name": "old"}]}))
    before = {old}
    for i, names in enumerate((["a", "b"], ["c"])):
        data = {"machine_info": {"m": 1}, "benchmarks": [{"name": n} for n in names]}
        (tmp_path / f"bench-20260102T00000{i}Z.json").write_text(json.dumps(data))
    merged = gpu_campaign.merge_benchmarks(tmp_path, before, "20260102T000009Z")
    assert sorted(p.name for p in tmp_path.iterdir()) == [old.name, merged.name]
    assert [b["name"] for b in json.loads(merged.read_text())["benchmarks"]] == ["a", "b", "c"]
    assert gpu_campaign.merge_benchmarks(tmp_path, {old, merged}, "x") is None


def test_config_override_is_scoped_and_validated() -> None:
    from jax_cer.kernels.configs import KernelConfig, gpu_config, override

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
    import subprocess
    import sys

    from repro.attention_sweep import candidates
    from tests.conftest import REPO

    out = tmp_path / "sweep.json"
    cmd = [sys.executable, "-m", "repro.attention_sweep", "--json", str(out), "--aot-only", "--kernels", "fwd"]
    cmd += ["--max-candidates", "2", "--workers", "2"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["kernels"]["fwd"]["candidates"]
    assert rows[0]["config"] == json.loads(out.read_text())["kernels"]["fwd"]["shipped"] and rows[0]["viable"]
    assert len(rows) == 2 and all(r["resources"]["registers"] > 0 for r in rows)
    from jax_cer.kernels.configs import gpu_config

    tried = candidates("fwd", gpu_config("fwd", "bfloat16", 128))
    assert len(tried) == len(set(tried)) == 36


def test_profile_summary_reads_ncu_csv() -> None:
    from repro.attention_profile import summarize

    head = '"ID","Process ID","Kernel Name","Section Name","Metric Name","Metric Unit","Metric Value"\n'
    rows = [
        '"0","1","_attn_fwd_kernel","GPU Speed Of Light Throughput","Duration","us","812.3"\n',
        '"0","1","_attn_fwd_kernel","GPU Speed Of Light Throughput","Compute (SM) Throughput","%","61.2"\n',
        '"0","1","_attn_fwd_kernel","Launch Statistics","Registers Per Thread","register/thread","131"\n',
        '"1","1","cudnn_sdpa","GPU Speed Of Light Throughput","Duration","us","500.0"\n',
        '"1","1","cudnn_sdpa","GPU Speed Of Light Throughput","L1 Hit Rate","%","3"\n',
    ]
    text = "==PROF== Connected to process 1\nprofiled flash_attention S=4096\n" + head + "".join(rows)
    got = summarize(text)
    assert got[0] == {"id": "0", "kernel": "_attn_fwd_kernel", "Duration": "812.3 us",
                      "Compute (SM) Throughput": "61.2 %", "Registers Per Thread": "131 register/thread"}  # fmt: skip
    assert got[1] == {"id": "1", "kernel": "cudnn_sdpa", "Duration": "500.0 us"}
    assert summarize("no csv here") == []
