"""``jax-cer bench``: the cases run from the package, write only under --out, and record their rounds."""

from __future__ import annotations

import json
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from jax_cer.bench import runner, train_throughput
from jax_cer.bench.cases import timing


class _Benchmark:
    """Stands in for pytest-benchmark's fixture: records what ``pedantic`` was asked to do."""

    def __init__(self) -> None:
        self.extra_info: dict = {}
        self.asked: tuple = ()

    def pedantic(self, fn, rounds, warmup_rounds, iterations) -> None:
        self.asked = (rounds, warmup_rounds, iterations)
        fn()


def test_timed_records_the_rounds_used_and_the_cases_default(monkeypatch) -> None:
    monkeypatch.delenv(timing.ROUNDS_ENV, raising=False)
    calls = []
    full = _Benchmark()
    timing.timed(full, lambda: calls.append(1), full_rounds=8, warmup_rounds=2)
    assert full.asked == (8, 2, 1) and full.extra_info == {"rounds": 8, "full_rounds": 8} and calls == [1]
    monkeypatch.setenv(timing.ROUNDS_ENV, "1")
    quick = _Benchmark()
    timing.timed(quick, lambda: None, full_rounds=8, warmup_rounds=2)
    assert quick.asked == (1, 2, 1) and quick.extra_info == {"rounds": 1, "full_rounds": 8}


@pytest.mark.parametrize("value", ["x", "0", "-3", "1.5"])
def test_a_bad_rounds_override_is_named(monkeypatch, value) -> None:
    monkeypatch.setenv(timing.ROUNDS_ENV, value)
    with pytest.raises(ValueError, match=timing.ROUNDS_ENV):
        timing.rounds_override()


def test_run_refuses_bad_rounds_before_running_anything(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv(timing.ROUNDS_ENV, "many")
    assert runner.run(k="tcn", out=tmp_path / "out") == 2
    assert "JAX_CER_BENCH_ROUNDS='many'" in capsys.readouterr().err
    monkeypatch.delenv(timing.ROUNDS_ENV)
    assert runner.run(k="tcn", rounds=0, out=tmp_path / "out") == 2
    assert not (tmp_path / "out").exists()


def test_the_pytest_command_ignores_the_projects_configuration(tmp_path) -> None:
    ini = tmp_path / "pytest.ini"
    cmd = runner.pytest_command(tmp_path / "bench.json", ini, "forward and tcn")
    assert cmd[cmd.index("-c") + 1] == str(ini) and cmd[cmd.index("--rootdir") + 1] == str(tmp_path)
    assert "no:cacheprovider" in cmd and "pytest_benchmark.plugin" in cmd
    assert cmd[-2:] == ["-k", "forward and tcn"] and f"--benchmark-json={tmp_path / 'bench.json'}" in cmd
    env, rounds = runner.environment(3)
    assert rounds == 3 and env[timing.ROUNDS_ENV] == "3"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1" and env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] == "1"


def test_bench_from_an_empty_folder_writes_only_under_out(tmp_path) -> None:
    """One tiny case, one round: the result file is the only thing written, in --out."""
    cwd, out = tmp_path / "cwd", tmp_path / "results" / "this-machine"
    cwd.mkdir()
    cmd = [sys.executable, "-m", "jax_cer.cli", "bench", "-k", "forward and tcn", "--rounds", "1", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "test_forward_jax[tcn] PASSED" in proc.stdout  # progress is visible
    assert list(cwd.iterdir()) == []
    (result,) = out.iterdir()
    assert result.name.startswith("bench-") and result.suffix == ".json"
    cases = runner.CASES_DIR
    assert not list(cases.rglob("test_bench_*.pyc")) and not (cases / ".pytest_cache").exists()
    assert not (cases / ".benchmarks").exists()
    data = json.loads(result.read_text())
    assert data["machine_info"]["jax_cer"]["rounds"] == 1 and data["machine_info"]["jax_cer"]["platform"]
    names = sorted(b["name"] for b in data["benchmarks"])
    assert names in (["test_forward_jax[tcn]", "test_forward_torch[tcn]"], ["test_forward_jax[tcn]"])
    for b in data["benchmarks"]:
        assert b["stats"]["rounds"] == 1 and b["extra_info"]["rounds"] == 1 and b["extra_info"]["full_rounds"] > 1
        assert b["extra_info"]["component"] == "tcn" and b["extra_info"]["variant"] == "forward"


@pytest.mark.slow  # the default run's bench test above collects every case module too (a collection error fails it)
def test_every_case_module_imports_and_collects(tmp_path) -> None:
    """The cases are not in the default test run: at least they import and collect, as jax-cer bench runs them."""
    ini = tmp_path / "pytest.ini"
    ini.write_text("[pytest]\n")
    env, _ = runner.environment(None)
    cmd = [*runner.pytest_command(tmp_path / "unused.json", ini), "--collect-only", "-q"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, check=False, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("attention", "models", "so", "text", "train"):
        assert f"<Module test_bench_{name}.py>" in proc.stdout, name
    assert not (tmp_path / "unused.json").exists()


def test_throughput_workers_force_cpu_devices_and_keep_the_batch() -> None:
    """On a CPU each worker forces its device count (replacing a count already in XLA_FLAGS); on a GPU
    it uses the real devices, powers of two up to all of them, with one global batch for every count."""
    base = {"XLA_FLAGS": "--xla_cpu_foo=1 --xla_force_host_platform_device_count=8", "PATH": "/bin"}
    env = train_throughput.worker_env("cpu", 2, base)
    assert env["XLA_FLAGS"] == "--xla_cpu_foo=1 --xla_force_host_platform_device_count=2"
    assert env["JAX_PLATFORMS"] == "cpu" and env["PATH"] == "/bin"
    gpu = train_throughput.worker_env("gpu", 2, base)
    assert gpu["XLA_FLAGS"] == base["XLA_FLAGS"] and "JAX_PLATFORMS" not in gpu
    assert gpu["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    assert train_throughput.device_counts("cpu", 1) == (1, 2, 4)
    assert train_throughput.device_counts("gpu", 1) == (1,) and train_throughput.device_counts("gpu", 6) == (1, 2, 4)
    assert train_throughput.device_counts("gpu", 8) == (1, 2, 4, 8)
    for task in train_throughput.TASKS:
        assert train_throughput.default_batch(task, "cpu", 4) % 4 == 0
        assert train_throughput.default_batch(task, "gpu", 8) % 8 == 0
    with pytest.raises(ValueError, match="task must be one of"):
        train_throughput.default_batch("vision", "cpu", 4)


@pytest.mark.slow  # a worker process compiles the text model's step (about 20 s on 2 cores)
def test_a_throughput_worker_trains_on_two_forced_devices() -> None:
    with train_throughput.Worker("text", 2, 8, platform="cpu", steps=2, warmup_steps=0) as worker:
        assert worker.info["placement"] == "2 devices (cpu)" and worker.info["forced_devices"]
        assert worker.info["samples_per_step"] == 8 and worker.info["sample_unit"] == "examples"
        assert worker.info["train_examples"] == 56  # the 28 sentences twice: every batch of 8 is full
        assert worker.run() > 0 and worker.worker_seconds == [pytest.approx(worker.worker_seconds[0])]
    assert worker.proc.returncode == 0
    # a failing worker (8 examples do not split over 3 devices) is named, with its error
    with pytest.raises(train_throughput.WorkerError, match=r"worker \(text, 3 devices\) ended \(exit status 1\)") as e:
        train_throughput.Worker("text", 3, 8, platform="cpu", steps=1)
    assert "batch_size=8" in str(e.value)


def test_the_throughput_trainer_steps_full_batches_only() -> None:
    """An epoch's partial batch (another shape) is passed over; an epoch without a full batch is an error."""

    class Task:
        placement = type("P", (), {"replicate": staticmethod(lambda tree: tree)})()
        initial_state = 0

        def __init__(self, sizes):
            self.sizes, self.seen = sizes, []

        def begin_epoch(self, state, epoch):
            return state

        def batches(self, epoch):
            for n in self.sizes:
                yield np.zeros((n, 3), np.float32)

        def step(self, state, batch, key):
            self.seen.append(batch.shape[0])
            return state + 1, jnp.float32(0.5)

    task = Task([4, 4, 2])
    trainer = train_throughput.Trainer(task, 4)
    assert trainer.run(5) > 0 and task.seen == [4, 4, 4, 4, 4] and trainer.state == 5
    with pytest.raises(ValueError, match="epoch 0 has no full batch of 4"):
        train_throughput.Trainer(Task([2]), 4).run(1)
