"""Starting runs of the training loop as several fresh Python processes (``jax.distributed`` on CPU).

``jax.distributed.initialize`` must come before any other JAX call of a process, and the forced
CPU device count (``--xla_force_host_platform_device_count``) is read when JAX starts, so every
process of a multi-process run is a new interpreter: ``python -m tests.multiprocess SPEC`` (this
module's :func:`main`) or ``jax-cer train``. The test side (:class:`Job`) starts them with
``subprocess.Popen``, writes their output to files (no pipe can fill up), waits with a deadline,
and kills whatever is still running when it leaves.

``SPEC`` is a JSON object: ``coordinator``, ``num_processes`` and ``process_id`` (omitted for a
single process), then either ``runs``, a list of
``{"kind": "fusion" | "text", "config": NAME, "overrides": {...}, "workdir": DIR, "stop_after": K | null}``
run one after the other through :func:`jax_cer.training.fusion.train` or
:func:`jax_cer.training.text.train_text` (``stop_after``: stop after saving at step K, as an
interruption; process 0 prints one JSON line per run on stdout: the step reached, whether it
stopped, the steps it trained (fewer than the step reached when it resumed) and its devices), or
``cli``, the arguments of ``jax-cer`` (:func:`jax_cer.cli.main`). ``raise_at``:
``{"process": I, "step": K}`` makes the K-th training step of process I's launch raise
``RuntimeError`` (a peer that fails with an error rather than dying; the hook is installed before
anything else, from the spec's ``process_id``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jax_cer.cli import main as cli_main
from jax_cer.training.configs import CONFIGS, TEXT_CONFIGS, RunConfig
from jax_cer.training.fusion import FusionTask, train
from jax_cer.training.parallel import Placement, initialize_processes, is_main
from jax_cer.training.text import TextTask, train_text

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port of the loopback interface that no one listens on now (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(local_devices: int) -> dict[str, str]:
    """The environment of a child process: the CPU platform with ``local_devices`` devices."""
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={local_devices}"])
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def spec(
    *,
    runs: Sequence[dict[str, Any]] | None = None,
    cli: Sequence[str] | None = None,
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    raise_at: dict[str, int] | None = None,
) -> str:
    """The command-line argument of :func:`main` (see the module docstring)."""
    if (runs is None) == (cli is None):
        raise ValueError("give runs or cli")
    body: dict[str, Any] = {"coordinator": coordinator, "num_processes": num_processes, "process_id": process_id}
    body.update({"runs": list(runs)} if runs is not None else {"cli": list(cli)})
    if raise_at is not None:
        body["raise_at"] = raise_at
    return json.dumps(body)


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a text file ('' when it does not exist)."""
    if not path.is_file():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@dataclasses.dataclass
class Child:
    """One started process, its output files and (once it ended) its exit code."""

    name: str
    proc: subprocess.Popen
    stdout: Path
    stderr: Path

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def describe(self) -> str:
        return (
            f"--- {self.name} (exit code {self.proc.poll()}) stdout:\n{tail(self.stdout)}\n"
            f"--- {self.name} stderr:\n{tail(self.stderr)}"
        )


class Job:
    """The processes a test starts; a context manager that kills every one still running when it exits."""

    def __init__(self, logdir: Path):
        self.logdir = logdir
        self.children: list[Child] = []
        logdir.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> Job:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill_all()

    def start(self, name: str, argv: Sequence[str], env: dict[str, str]) -> Child:
        out, err = self.logdir / f"{name}.out", self.logdir / f"{name}.err"
        with out.open("w") as fo, err.open("w") as fe:
            proc = subprocess.Popen(list(argv), cwd=REPO, env=env, stdout=fo, stderr=fe, stdin=subprocess.DEVNULL)
        child = Child(name, proc, out, err)
        self.children.append(child)
        return child

    def start_spec(self, name: str, argument: str, local_devices: int) -> Child:
        """A :func:`main` process with the :func:`spec` ``argument`` and ``local_devices`` CPU devices."""
        return self.start(name, [sys.executable, "-m", "tests.multiprocess", argument], child_env(local_devices))

    def start_processes(
        self,
        name: str,
        num_processes: int,
        local_devices: int,
        *,
        runs: Sequence[dict[str, Any]] | None = None,
        cli: Sequence[str] | None = None,
        raise_at: dict[str, int] | None = None,
    ) -> list[Child]:
        """The ``num_processes`` :func:`main` processes of one job (``runs`` or ``cli``), each with
        ``local_devices`` devices, on a fresh coordinator port; named ``<name>-p<I>``."""
        coordinator = f"127.0.0.1:{free_port()}"
        return [
            self.start_spec(
                f"{name}-p{i}",
                spec(
                    runs=runs,
                    cli=cli,
                    coordinator=coordinator,
                    num_processes=num_processes,
                    process_id=i,
                    raise_at=raise_at,
                ),
                local_devices,
            )
            for i in range(num_processes)
        ]

    def wait(self, children: Sequence[Child], timeout: float, grace: float = 60.0) -> None:
        """Waits for ``children`` to end and checks that each exited with code 0. Past ``timeout`` seconds,
        or ``grace`` seconds after one of them failed, it kills them all; a failure shows the tails of
        every child's output."""
        start, failed_at = time.monotonic(), None
        while any(c.returncode is None for c in children):
            now = time.monotonic()
            if failed_at is None and any(c.returncode not in (None, 0) for c in children):
                failed_at = now
            if now - start > timeout or (failed_at is not None and now - failed_at > grace):
                self.kill_all()
                why = f"{timeout:.0f} s" if failed_at is None else f"{grace:.0f} s after one failed"
                raise AssertionError(f"still running after {why}:\n" + self.describe(children))
            time.sleep(0.05)
        if any(c.returncode != 0 for c in children):
            self.kill_all()
            raise AssertionError("a process failed:\n" + self.describe(children))

    def describe(self, children: Sequence[Child] | None = None) -> str:
        return "\n".join(c.describe() for c in (self.children if children is None else children))

    def kill_all(self) -> None:
        """Kills every started process that is still running (by its own process id) and reaps it."""
        for child in self.children:
            if child.proc.poll() is None:
                try:
                    child.proc.send_signal(signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for child in self.children:
            try:
                child.proc.wait(30)
            except subprocess.TimeoutExpired:
                pass


def read_metrics(workdir: Path) -> list[dict[str, Any]]:
    """The records of a run's ``metrics.jsonl``."""
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def loss_records(workdir: Path) -> list[tuple[int, float]]:
    """``(step, loss)`` of every loss record of a run's ``metrics.jsonl``."""
    return [(r["step"], r["loss"]) for r in read_metrics(workdir) if "loss" in r]


def max_relative_difference(a: Sequence[tuple[int, float]], b: Sequence[tuple[int, float]]) -> float:
    """The largest ``|x - y| / |y|`` of two runs' losses, which must be logged at the same steps."""
    if [s for s, _ in a] != [s for s, _ in b]:
        raise AssertionError(f"the loss records are at different steps: {[s for s, _ in a]} vs {[s for s, _ in b]}")
    return max((abs(x - y) / abs(y) for (_, x), (_, y) in zip(a, b, strict=True)), default=0.0)


def run_config(kind: str, name: str, overrides: dict[str, Any]) -> RunConfig:
    """A named fusion or text configuration with ``overrides`` (JSON lists become tuples)."""
    base = (CONFIGS if kind == "fusion" else TEXT_CONFIGS)[name]
    changes = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    return dataclasses.replace(base, **changes)


STEPS_TAKEN = [0]
"""The training steps this process has taken (every launch counts its own)."""


def _count_steps(raise_at: int | None = None) -> None:
    """Counts the training steps of this process in :data:`STEPS_TAKEN`; with ``raise_at``, the
    ``raise_at``-th step raises ``RuntimeError`` instead."""
    for task in (FusionTask, TextTask):
        original = task.step

        def counted(self: Any, *args: Any, _original: Any = original) -> Any:
            STEPS_TAKEN[0] += 1
            if STEPS_TAKEN[0] == raise_at:
                raise RuntimeError(f"injected failure at training step {raise_at} of this launch")
            return _original(self, *args)

        task.step = counted


def main(argv: Sequence[str] | None = None) -> int:
    """A child process: the command line, or ``jax.distributed`` (when the spec names several
    processes) and the runs."""
    body = json.loads((sys.argv[1:] if argv is None else argv)[0])
    raise_at = body.get("raise_at")
    mine = raise_at is not None and raise_at["process"] == (body.get("process_id") or 0)
    _count_steps(raise_at["step"] if mine else None)
    if "cli" in body:
        cli_args = list(body["cli"])
        if body.get("coordinator") is not None:
            cli_args += ["--coordinator", body["coordinator"], "--num-processes", str(body["num_processes"])]
            cli_args += ["--process-id", str(body["process_id"])]
        return cli_main(cli_args)
    initialize_processes(body.get("coordinator"), body.get("num_processes"), body.get("process_id"))
    for r in body["runs"]:
        cfg = run_config(r["kind"], r["config"], r.get("overrides", {}))
        placement = Placement(cfg.devices)
        trainer = train if r["kind"] == "fusion" else train_text
        before = STEPS_TAKEN[0]
        out = trainer(cfg, r["workdir"], stop_after_steps=r.get("stop_after"), progress=False, placement=placement)
        if is_main():
            line = {"workdir": r["workdir"], "step": out["step"], "stopped": out["stopped"]}
            line.update(trained=STEPS_TAKEN[0] - before, on=placement.describe())
            print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
