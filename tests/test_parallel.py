"""Data parallelism: a training step on 4 (forced CPU) devices equals the single-device step (``-m slow``);
the placement of a run (device count, batch split, errors); the launchers ``jax.distributed`` reads itself.

``--xla_force_host_platform_device_count`` must be set before JAX starts, so the 4-device comparison
runs in a subprocess with its own XLA_FLAGS.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from jax_cer.training.parallel import Placement, cluster_detected, data_mesh, initialize_processes, shard_batch
from tests.conftest import REPO

SCRIPT = r"""
import json
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from jax_cer.models import build_model
from jax_cer.training.parallel import data_mesh, replicate, shard_batch
from jax_cer.training.step import make_train_step, sgd_nesterov

assert len(jax.devices()) == 4, jax.devices()
name, batch, frames = "can", 8, 40
rng = np.random.default_rng(0)
x = {m: jnp.asarray(rng.normal(size=(batch, frames, d)), jnp.float32)
     for m, d in {"video": 512, "vggish": 128, "bert": 768}.items()}
y = jnp.asarray(rng.integers(0, 7, size=(batch, frames)))
key = jax.random.key(1)
out = {}
with jax.default_matmul_precision("highest"):
    for mode in ("single", "mesh"):
        model = build_model(name, rngs=nnx.Rngs(0))
        step, (params, stats, opt, frozen) = make_train_step(model, name, sgd_nesterov(1e-2))
        xs, ys = x, y
        if mode == "mesh":
            mesh = data_mesh()
            params, stats, opt, frozen = replicate((params, stats, opt, frozen), mesh)
            xs, ys = shard_batch(x, mesh), shard_batch(y, mesh)
            assert len(xs["bert"].sharding.device_set) == 4
            assert xs["bert"].addressable_shards[0].data.shape == (2, frames, 768)
        else:
            xs, ys = jax.device_put((x, y), jax.devices()[0])
        losses = []
        for _ in range(3):
            params, stats, opt, loss = step(params, stats, opt, frozen, xs, ys, key)
            losses.append(float(loss))
        out[mode] = {"losses": losses,
                     "leaves": [np.asarray(a) for a in jax.tree.leaves((params, stats, opt))]}
        out[mode + "_devices"] = len(jax.tree.leaves(params)[0].sharding.device_set)
worst = 0.0
for a, b in zip(out["single"]["leaves"], out["mesh"]["leaves"], strict=True):
    worst = max(worst, float(np.max(np.abs(np.asarray(a) - np.asarray(b)), initial=0.0)))
print(json.dumps({"losses": [out["single"]["losses"], out["mesh"]["losses"]], "worst": worst,
                  "n_leaves": len(out["single"]["leaves"]), "devices": out["mesh_devices"]}))
"""


@pytest.mark.slow  # the default run compares 2 processes x 2 devices with one device (tests/test_multiprocess.py)
def test_step_on_four_devices_equals_one_device() -> None:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    single, mesh = res["losses"]
    np.testing.assert_allclose(mesh, single, atol=1e-6)
    assert res["devices"] == 4  # the updated parameters stay on the mesh
    assert res["n_leaves"] > 10 and res["worst"] <= 1e-6, res["worst"]
    assert single[2] < single[0]  # the steps did train


def test_shard_batch_names_a_batch_that_does_not_split() -> None:
    mesh = data_mesh(jax.devices()[:1])
    assert shard_batch({"x": np.zeros((3, 2))}, mesh)["x"].shape == (3, 2)
    if len(jax.devices()) == 1:
        fake = type("M", (), {"devices": np.empty(4, object)})()
        with pytest.raises(ValueError, match=r"\['x'\] has shape \(3, 2\).*multiple of the 4 devices"):
            shard_batch({"x": np.zeros((3, 2))}, fake)


def test_placement_names_a_batch_or_device_count_that_does_not_fit() -> None:
    n_local = len(jax.local_devices())
    with pytest.raises(ValueError, match=rf"devices={n_local + 1}: this process has {n_local} device"):
        Placement(n_local + 1)
    with pytest.raises(ValueError, match="devices=-1"):
        Placement(-1)
    placement = Placement(1)
    assert placement.size == 1 and placement.describe() == "1 device (cpu)"
    placement.check_batch_size(3)
    placement.size = 4  # as on a host with 4 devices
    with pytest.raises(
        ValueError, match=r"batch_size=6 does not split over the 4 devices \(cpu\): set batch_size to a multiple of 4"
    ):
        placement.check_batch_size(6)
    placement.check_batch_size(8)


def test_placement_feeds_and_replicates_on_one_process() -> None:
    placement = Placement(1)
    assert placement.rows(6) == slice(0, 6)
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    placed = placement.batch({"x": x}, 6)
    np.testing.assert_array_equal(np.asarray(placed["x"]), x)
    state = placement.replicate({"w": np.ones(3, np.float32)})
    assert placement.local(state)["w"].devices() == {jax.local_devices()[0]}


def test_launchers_that_jax_distributed_reads_itself(monkeypatch) -> None:
    for var in ("SLURM_STEP_NUM_TASKS", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert not cluster_detected()
    assert initialize_processes() is False  # no flags, no launcher: one process
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "1")  # srun with one task
    assert not cluster_detected()
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "4")
    assert cluster_detected()
    monkeypatch.delenv("SLURM_STEP_NUM_TASKS")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    assert cluster_detected()
    with pytest.raises(ValueError, match="go together: give all three or none"):
        initialize_processes("127.0.0.1:1234", 2)
    with pytest.raises(ValueError, match=r"--process-id must be in \[0, 2\), got 2"):
        initialize_processes("127.0.0.1:1234", 2, 2)
    with pytest.raises(ValueError, match="--coordinator must be HOST:PORT"):
        initialize_processes("127.0.0.1", 2, 0)
    assert initialize_processes("127.0.0.1:1234", 1, 0) is False  # one process: nothing to start
