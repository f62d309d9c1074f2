"""Training throughput against device count: the training loop's step with the batch split over
1, 2 and 4 devices (``Placement``, ``jax-cer train --set devices=K``). Run with
``jax-cer bench -k train_throughput``.

Two tasks: ``synthetic-can`` (CAN on the synthetic clips; samples are frames, batch x 300) and
``synthetic-text`` (the MiniLM-L6 LoRA classifier on the synthetic sentences; samples are
examples; the 28 training sentences are repeated until every batch is full of real ones). The
global batch is the same for every device count (4 windows and 8 examples on a CPU, divisible by
4). JAX fixes its devices when it starts, so each device count runs in its own process
(:mod:`jax_cer.bench.train_throughput`): on a CPU with that many forced CPU devices, which share
the host's cores (the overhead of splitting, not a speed-up); on a GPU over that many real devices
(the powers of two up to all of them).

One timed round = ``steps_per_round`` training steps as the loop runs them (the next batch of the
epoch split over the devices, the jitted step), up to ``jax.block_until_ready`` of the state and
the loss, measured after the compiling step and warm-up steps. ``extra_info`` records the config,
device count, batch, samples per step and their unit, the platform and whether the devices are
forced, the host's CPUs, and the worker's own timing of each round (``worker_round_s``).
"""

from __future__ import annotations

import jax
import pytest

from jax_cer.bench.cases.timing import timed
from jax_cer.bench.sections import DEVICES_COMPONENT
from jax_cer.bench.train_throughput import TASKS, Worker, default_batch, default_steps, device_counts

pytestmark = pytest.mark.benchmark

PLATFORM = jax.default_backend()
COUNTS = device_counts(PLATFORM, jax.local_device_count())
STEPS = default_steps(PLATFORM)
FULL_ROUNDS = 10
OPTIONAL_INFO = ("window", "synthetic_clips", "seq_length", "train_examples", "weights")
"""What a worker reports for one task only (fusion: window and clips; text: sequence length, examples, weights)."""


@pytest.mark.parametrize("devices", COUNTS, ids=lambda d: f"{d}dev")
@pytest.mark.parametrize("task", sorted(TASKS))
def test_train_throughput(benchmark, task: str, devices: int) -> None:
    batch = default_batch(task, PLATFORM, max(COUNTS))
    with Worker(task, devices, batch, platform=PLATFORM, steps=STEPS) as worker:
        info = worker.info
        benchmark.group = f"train_throughput-{info['config']}"
        benchmark.extra_info.update(
            component=DEVICES_COMPONENT,
            variant="data parallel",
            impl=f"devices={devices}",
            config=info["config"],
            model=info["model"],
            devices=devices,
            placement=info["placement"],
            batch=batch,
            samples_per_step=info["samples_per_step"],
            sample_unit=info["sample_unit"],
            steps_per_round=STEPS,
            platform=info["platform"],
            device=info["device"],
            forced_devices=info["forced_devices"],
            host_cpus=info["host_cpus"],
            first_step_s=info["first_step_s"],
            dtype="float32",
            **{k: info[k] for k in OPTIONAL_INFO if k in info},
        )
        timed(benchmark, worker.run, full_rounds=FULL_ROUNDS, warmup_rounds=1)
        benchmark.extra_info["worker_round_s"] = worker.worker_seconds[1:]  # after the warm-up round
