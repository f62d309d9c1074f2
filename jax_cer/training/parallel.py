"""Data parallelism with ``jax.sharding``: a 1-D ``Mesh`` over the devices, the batch split along
its leading axis, parameters and optimizer state replicated.

The jitted steps of :mod:`jax_cer.training.step` need no change: ``jax.jit`` follows the shardings
of its arguments (GSPMD), so gradients and BatchNorm batch statistics are reduced over the whole
batch, and a step on several devices computes what one device computes on the same batch.

Several GPUs of one host: ``data_mesh()`` takes ``jax.devices()``. Several hosts: call
``jax.distributed.initialize()`` first in every process (one per host), then ``data_mesh()``
spans every host's devices, and each process feeds its share of the batch, e.g. with
``jax.make_array_from_process_local_data(batch_sharding(mesh), local_batch)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "data"


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh named ``"data"`` over ``devices`` (default: every device of every process)."""
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("data_mesh needs at least one device")
    return Mesh(np.array(devices), (AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the mesh, the rest whole."""
    return NamedSharding(mesh, PartitionSpec(AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Places every array of ``batch`` with its leading axis split over the mesh's devices."""
    n = mesh.devices.size
    for path, x in jax.tree_util.tree_flatten_with_path(batch)[0]:
        if np.ndim(x) == 0 or np.shape(x)[0] % n:
            raise ValueError(
                f"batch entry {jax.tree_util.keystr(path)} has shape {tuple(np.shape(x))}: its leading (batch) axis "
                f"must be a multiple of the {n} devices of the mesh"
            )
    return jax.device_put(batch, batch_sharding(mesh))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places a copy of every array of ``tree`` (parameters, optimizer state) on every device."""
    return jax.device_put(tree, replicated(mesh))
