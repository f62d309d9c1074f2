"""The GPU campaign (``python -m repro.gpu_campaign``) and its scripts, run as commands on a CPU: what a GPU
machine would run, at tiny sizes; and the long-sequence kernel check (jax_cer.bench.kernel_check)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jax_cer.bench import kernel_check, runner
from jax_cer.kernels import flash_attention
from jax_cer.kernels.configs import KernelConfig, gpu_config, override
from repro import gpu_campaign
from tests.conftest import REPO

BUDGET_S = 540
ESSENTIALS_BUDGET_S = 480
"""``essentials`` must end within 8 minutes: a 15-minute machine window less the machine's start."""


def _run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m <args>`` at the repository root."""
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, check=False, timeout=timeout
    )


def test_plan_covers_every_component_within_the_budget() -> None:
    proc = _run("repro.gpu_campaign", "plan", "--commands")
    assert proc.returncode == 0, proc.stderr[-2000:]
    parts = re.findall(r"^(\w+) \(about [\d.]+ min of \d+\):$", proc.stdout, re.M)
    assert parts == ["essentials", "parity", "attention", "models", "profile", "tune"]
    blocks = re.split(r"^\w+ \(about [\d.]+ min of \d+\):$", proc.stdout, flags=re.M)[1:]
    for part, block in zip(parts, blocks, strict=True):
        estimates = [int(s) for s in re.findall(r"^  \S+\s+~\s*(\d+)s", block, re.M)]
        # essentials: its steps and the set-up before them (wheels, environment check) within 8 minutes
        budget = ESSENTIALS_BUDGET_S - gpu_campaign.SETUP_S if part == "essentials" else BUDGET_S
        assert estimates and sum(estimates) <= budget, part
    steps = set(re.findall(r"^  (\S+)\s+~", proc.stdout, re.M))
    expected = {"repro", "kernel-check", "text-parity", "models", "train-loop", "so", "text", "profile", "sweep-fwd"}
    expected |= {"sweep-bwd"} | {
        f"attention-{p}-{t}-d{d}" for p in ("fwd", "fwd+bwd") for t in ("bfloat16", "float16") for d in (64, 128)
    }
    assert expected <= steps
    # the benchmark steps run jax-cer bench into the machine's folder (one result file each)
    assert "$ python -m jax_cer.cli bench -k test_bench_so --out '$OUT/<machine>'" in proc.stdout


@pytest.mark.parametrize(
    ("part", "budget"),
    [pytest.param("parity", BUDGET_S, marks=pytest.mark.slow), ("essentials", ESSENTIALS_BUDGET_S)],
)
def test_run_refuses_a_machine_without_a_gpu(tmp_path, part: str, budget: int) -> None:
    proc = _run("repro.gpu_campaign", "run", part, "--out", str(tmp_path))
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    (log,) = tmp_path.glob(f"*/campaign-{part}-*.json")
    record = json.loads(log.read_text())
    assert record["steps"] == [] and any("JAX sees no GPU" in p for p in record["problems"])
    assert record["budget_s"] == budget  # the part's default --budget-s
    assert record["environment"]["backend"] == "cpu" and record["environment"]["versions"]["jax"]
    assert record["machine"]["platform"] == "cpu" and log.parent.name.startswith("cpu-")


ESSENTIAL_SEQS = (1024, 2048, 4096, 8192)
FUSION_MODELS = ("lfan", "can", "mt", "jmt")
ESSENTIAL_STEPS = [
    "kernel-check-8k",
    "attention-fwd-bfloat16",
    "attention-fwd+bwd-bfloat16",
    "models-fusion",
    "so-vs-adam",
]

COLLECT = r"""
import json, sys
import jax
if sys.argv[1] == "gpu":  # the GPU's case grid: the case modules read the platform when they are imported
    class _Gpu:
        platform = "gpu"
        device_kind = "collection only"
    jax.default_backend = lambda *a, **k: "gpu"
    jax.devices = lambda *a, **k: [_Gpu()]
import pytest

class Selected:
    names = []
    def pytest_collection_finish(self, session):
        self.names = [item.nodeid.rsplit("/", 1)[-1] for item in session.items]

args, found = json.loads(sys.argv[2]), {}
for k in json.loads(sys.argv[3]):
    selected = Selected()
    pytest.main([*args, "--collect-only", "-q", "-k", k], plugins=[selected])
    found[k] = selected.names
from jax_cer.bench.cases import test_bench_models
found["batch"] = test_bench_models.BATCH
with open(sys.argv[4], "w") as f:
    json.dump(found, f)
"""


def _selected(tmp_path, platform: str, ks: list[str]) -> dict:
    """The benchmark cases each ``jax-cer bench -k K`` runs, collected as ``jax-cer bench`` collects them
    (nothing runs). ``platform`` "gpu": the GPU's grid, collected here with JAX reporting a GPU (the case
    modules build their parameter lists from the platform at import); "cpu": this machine's grid."""
    ini = tmp_path / "pytest.ini"
    ini.write_text("[pytest]\n")
    args = runner.pytest_command(tmp_path / "unused.json", ini)[3:]
    env, _ = runner.environment(None)
    out = tmp_path / f"selected-{platform}.json"
    cmd = [sys.executable, "-c", COLLECT, platform, json.dumps(args), json.dumps(ks), str(out)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, check=False, timeout=600)
    assert proc.returncode == 0 and out.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def _essentials(out: str = "$OUT") -> dict[str, gpu_campaign.Step]:
    return {s.name: s for s in gpu_campaign.steps_of("essentials", out, "m", "t")}


def _k(step: gpu_campaign.Step) -> str:
    return step.argv[step.argv.index("-k") + 1]


def test_essentials_fit_eight_minutes_in_order_of_priority() -> None:
    steps = _essentials()
    assert list(steps) == ESSENTIAL_STEPS
    total = sum(s.estimate_s for s in steps.values())
    assert total + gpu_campaign.SETUP_S <= ESSENTIALS_BUDGET_S
    assert gpu_campaign.part_budget("essentials") == ESSENTIALS_BUDGET_S
    assert all(gpu_campaign.part_budget(p) == BUDGET_S for p in gpu_campaign.FULL_PARTS)
    # the kernel check stops starting cases in time for the benchmarks after it
    check = steps["kernel-check-8k"]
    assert check.argv[1] in gpu_campaign.SELF_STOPPING and 0 < check.own_budget_s < check.estimate_s * 1.5
    # all: every other part, each step once
    every = [s.name for p in gpu_campaign.FULL_PARTS for s in gpu_campaign.steps_of(p, "$OUT", "m", "t")]
    assert [s.name for s in gpu_campaign.steps_of("all", "$OUT", "m", "t")] == every


def test_essentials_kernel_check_plans_bf16_and_fp32_up_to_8k(tmp_path) -> None:
    """The step's own command, with a budget spent before its first case: the JSON lists what it would check."""
    step = _essentials(str(tmp_path))["kernel-check-8k"]
    proc = _run(*step.argv[1:], "--budget-s", "1e-9")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (path,) = tmp_path.glob("m/kernelcheck-t.json")
    record = json.loads(path.read_text())
    assert record["cases"] == [] and record["planned"] == len(record["not_run"]) == 32
    cases = [
        re.fullmatch(r"(\w+) D=(\d+) (causal|full) B=\d+ H=\d+ Sq=(\d+) Sk=(\d+)( lens=.*)?", label).groups()
        for label in record["not_run"]
    ]
    assert {c[0] for c in cases} == {"bfloat16", "float32"}
    assert {int(c[1]) for c in cases} == {64, 128} and {c[2] for c in cases} == {"causal", "full"}
    assert max(max(int(c[3]), int(c[4])) for c in cases) == 8192
    assert {int(c[3]) for c in cases if c[0] == "bfloat16" and c[3] == c[4] and not c[5]} >= set(ESSENTIAL_SEQS)
    assert any(c[5] for c in cases)  # per-example key lengths


def test_essentials_benchmarks_select_their_cases_on_a_gpu(tmp_path) -> None:
    steps = _essentials()
    bench = {name: _k(s) for name, s in steps.items() if s.argv[:3] == ("-m", "jax_cer.cli", "bench")}
    assert list(bench) == ESSENTIAL_STEPS[1:]
    found = _selected(tmp_path, "gpu", list(bench.values()))
    selected = {name: set(found[k]) for name, k in bench.items()}
    for passes in ("fwd", "fwd+bwd"):
        assert selected[f"attention-{passes}-bfloat16"] == {
            f"test_bench_attention.py::test_attention[{impl}-{s}-{d}-bfloat16-{causal}-{passes}]"
            for impl in ("flash_attention", "xla", "cudnn")
            for s in ESSENTIAL_SEQS
            for d in (64, 128)
            for causal in (False, True)
        }
    assert selected["models-fusion"] == {
        f"test_bench_models.py::test_{variant}_{impl}[{m}]"
        for variant in ("forward", "train_step")
        for impl in ("jax", "torch")
        for m in FUSION_MODELS
    }
    assert found["batch"] == 16  # the models benchmark's batch on a GPU
    assert selected["so-vs-adam"] == {
        f"test_bench_so.py::test_so_vs_adam_step[{impl}-{density}]"
        for impl in ("so", "adam")
        for density in ("5e-05", "0.0005")
    }
    for name in set().union(*selected.values()):
        assert not re.search(r"-(512|16384)-", name) and "float16" not in name.replace("bfloat16", ""), name


def test_essentials_smoke_selects_cases_here(tmp_path) -> None:
    """``--smoke`` narrows each benchmark step to cases this CPU has (none would fail the step)."""
    smoke = {name: _k(gpu_campaign.smoke(s)) for name, s in _essentials().items() if "-k" in s.argv}
    found = _selected(tmp_path, "cpu", list(smoke.values()))
    for name, k in smoke.items():
        assert found[k], name
        assert gpu_campaign.smoke(_essentials()[name]).argv[-2:] == ("--rounds", "1")


def test_a_stopped_step_takes_its_children_with_it() -> None:
    """jax-cer bench times its cases in a pytest child: a step stopped by the budget must not leave it running."""
    child = (
        "import subprocess, sys\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        "print('grandchild', p.pid, flush=True)\n"
        "p.wait()\n"
    )
    t0 = time.monotonic()
    rc, text = gpu_campaign.run_step([sys.executable, "-c", child], dict(os.environ), timeout=3)
    assert rc == "timeout" and time.monotonic() - t0 < 30, text
    pid = int(re.search(r"grandchild (\d+)", text).group(1))

    def running() -> bool:
        try:
            state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return False
        return state != "Z"

    deadline = time.monotonic() + 10
    while running() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not running()
    assert gpu_campaign.run_step([sys.executable, "-c", "print('done')"], dict(os.environ), timeout=60) == (0, "done\n")


@pytest.mark.slow  # about 3 minutes on 2 cores: every step of the part at toy sizes
def test_essentials_smoke_run(tmp_path) -> None:
    proc = _run("repro.gpu_campaign", "run", "essentials", "--out", str(tmp_path), "--allow-cpu", "--smoke")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (log,) = tmp_path.glob("*/campaign-essentials-*.json")
    record = json.loads(log.read_text())
    assert [(s["name"], s["rc"]) for s in record["steps"]] == [(name, 0) for name in ESSENTIAL_STEPS]
    assert record["budget_s"] == ESSENTIALS_BUDGET_S and record["not_started"] == []
    (bench,) = tmp_path.glob("*/bench-*.json")
    names = {b["name"] for b in json.loads(bench.read_text())["benchmarks"]}
    assert {"test_forward_jax[lfan]", "test_train_step_torch[lfan]", "test_so_vs_adam_step[so-5e-05]"} <= names
    assert {
        f"test_attention[flash_attention-1024-{d}-bfloat16-False-{p}]" for d in (64, 128) for p in ("fwd", "fwd+bwd")
    } <= names
    (check,) = tmp_path.glob("*/kernelcheck-*.json")
    assert json.loads(check.read_text())["passed"]


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
