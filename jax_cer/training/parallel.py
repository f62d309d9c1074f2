"""Data parallelism with ``jax.sharding``, on the devices of one host or of several.

A run's :class:`Placement` is a 1-D ``Mesh`` named ``"data"`` over its devices: every local device
by default, or ``devices`` of them per process (``jax-cer train --set devices=N``). Each global
batch is split along its leading axis over the mesh; parameters, optimizer state and frozen weights
are replicated. The jitted steps of :mod:`jax_cer.training.step` need no change: ``jax.jit``
follows the shardings of its arguments (GSPMD), so gradients, the loss and BatchNorm batch
statistics are reduced over the whole batch, and a step on several devices computes what one device
computes on the same batch (up to the order of the sums).

Several hosts: :func:`initialize_processes` starts ``jax.distributed`` (one process per host) with
short heartbeat and shutdown timeouts, so that no process outlives a dead peer for long. The mesh
then spans every process's devices, and each process materializes only its share of a global batch
(:meth:`Placement.rows`) and hands it to ``jax.make_array_from_process_local_data``
(:meth:`Placement.batch`). A batch whose row count the device count does not divide (the last,
partial batch of an epoch) is replicated instead: every device computes it whole, which is the
single-device computation.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, NoReturn

import jax
import numpy as np
from jax._src import distributed as _distributed  # the coordination service's key-value store (no public API)
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "data"

HEARTBEAT_TIMEOUT_S = 30
"""A process that stops sending heartbeats this long is declared dead; every other process then aborts."""
SHUTDOWN_TIMEOUT_S = 30
"""How long a finishing process waits for the others at the shutdown barrier."""
INITIALIZATION_TIMEOUT_S = 300
"""How long the processes wait for each other to start."""
FAILED_KEY = "jax_cer/failed"
"""The coordination service key under which a failing process leaves ``"<index>\\n<message>"``."""


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
    """Places every array of ``batch`` (held whole by this process) with its leading axis split over the mesh."""
    n = mesh.devices.size
    for path, x in jax.tree_util.tree_flatten_with_path(batch)[0]:
        if np.ndim(x) == 0 or np.shape(x)[0] % n:
            raise ValueError(
                f"batch entry {jax.tree_util.keystr(path)} has shape {tuple(np.shape(x))}: its leading (batch) axis "
                f"must be a multiple of the {n} devices of the mesh"
            )
    return jax.device_put(batch, batch_sharding(mesh))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places a copy of every array of ``tree`` (parameters, optimizer state) on every device of the mesh.

    Every process must pass the same values (a run's initial state is a function of its seed).
    """
    sharding = replicated(mesh)
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def put(x: Any) -> jax.Array:
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):  # dropout keys
            return jax.random.wrap_key_data(put(jax.random.key_data(x)), impl=jax.random.key_impl(x))
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree)


def cluster_detected() -> bool:
    """Whether this process was started as one of several by a launcher that ``jax.distributed``
    reads by itself: SLURM's ``srun`` (``SLURM_STEP_NUM_TASKS`` > 1) or Open MPI's ``mpirun``."""
    for var in ("SLURM_STEP_NUM_TASKS", "OMPI_COMM_WORLD_SIZE"):
        try:
            if int(os.environ.get(var, "1")) > 1:
                return True
        except ValueError:
            continue
    return False


def initialize_processes(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    heartbeat_timeout: int = HEARTBEAT_TIMEOUT_S,
    shutdown_timeout: int = SHUTDOWN_TIMEOUT_S,
    initialization_timeout: int = INITIALIZATION_TIMEOUT_S,
) -> bool:
    """Starts ``jax.distributed`` when this is one process of several; returns whether it did.

    With ``coordinator`` (``HOST:PORT`` of process 0), ``num_processes`` and ``process_id`` (the
    argument names of ``jax.distributed.initialize``), or with none of them under a launcher it
    detects itself (:func:`cluster_detected`). Must come before any other JAX call of the process.
    When a process dies or stops sending heartbeats, ``jax.distributed`` ends every other process
    (an abort that names the dead process) after ``heartbeat_timeout`` seconds at most.
    """
    given = [coordinator is not None, num_processes is not None, process_id is not None]
    if any(given) and not all(given):
        raise ValueError("--coordinator, --num-processes and --process-id go together: give all three or none")
    if not any(given) and not cluster_detected():
        return False
    if all(given):
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise ValueError(f"--process-id must be in [0, {num_processes}), got {process_id}")
        if num_processes == 1:
            return False
        host, sep, port = coordinator.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"--coordinator must be HOST:PORT (process 0's address), got {coordinator!r}")
    jax.distributed.initialize(
        coordinator_address=coordinator,
        num_processes=num_processes,
        process_id=process_id,
        heartbeat_timeout_seconds=heartbeat_timeout,
        shutdown_timeout_seconds=shutdown_timeout,
        initialization_timeout=initialization_timeout,
    )
    _watch_for_failures()
    return True


_stopping = threading.Event()


def _client() -> Any:
    return getattr(_distributed.global_state, "client", None)


def _watch_for_failures() -> None:
    """A daemon thread that ends this process as soon as another one reports a failure
    (:func:`report_failure`), naming it, instead of waiting in a collective for the timeouts."""
    client, me = _client(), jax.process_index()
    if client is None:
        return

    def watch() -> None:
        while not _stopping.is_set():
            try:
                value = client.blocking_key_value_get(FAILED_KEY, 10_000)
            except Exception:  # a timeout (wait again) or the client shutting down
                time.sleep(0.5)
                continue
            index, _, message = value.partition("\n")
            if index != str(me) and not _stopping.is_set():
                _stop_because(message)
            return

    thread = threading.Thread(target=watch, name="jax-cer-peer-failures", daemon=True)

    def stop() -> None:
        # the thread must be out of the client's blocking call before the interpreter finalizes: a
        # daemon thread returning from it then aborts the process ("FATAL: exception not rethrown").
        # Shutting the client down here (jax's own exit hook would, later) cancels the call.
        _stopping.set()
        jax.distributed.shutdown()
        thread.join(timeout=5.0)

    atexit.register(stop)  # registered after jax's own shutdown hook, so it runs first
    thread.start()


def is_main() -> bool:
    """Whether this is process 0 (the one that writes logs, progress and the work directory's files)."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """A barrier of every process (nothing with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def agree(value: float) -> float:
    """Process 0's ``value``, in every process (itself with one process): decisions all processes must share."""
    if jax.process_count() == 1:
        return value
    return float(multihost_utils.broadcast_one_to_all(np.float64(value)))


class Placement:
    """Where a run's arrays live: a data mesh over ``devices`` local devices of every process (0: all).

    - :meth:`replicate`: parameters, optimizer state, frozen weights, on every device;
    - :meth:`rows` and :meth:`batch`: this process's share of a global batch, then the global array;
    - :meth:`local`: this process's copy of replicated arrays, on one local device (evaluation runs
      there, whole, in every process).
    """

    def __init__(self, devices: int = 0):
        local = jax.local_devices()
        if devices < 0 or devices > len(local):
            raise ValueError(
                f"devices={devices}: this process has {len(local)} device(s); use 0 (all) or 1..{len(local)}"
            )
        per_process = devices or len(local)
        if jax.process_count() == 1:
            chosen = local[:per_process]
        else:
            chosen = []
            for p in range(jax.process_count()):
                theirs = sorted((d for d in jax.devices() if d.process_index == p), key=lambda d: d.id)
                if len(theirs) < per_process:
                    raise ValueError(f"process {p} has {len(theirs)} device(s), fewer than devices={per_process}")
                chosen += theirs[:per_process]
        self.mesh = data_mesh(chosen)
        self.size = len(chosen)
        self.local_device = local[0]
        self._sharded = batch_sharding(self.mesh)
        self._replicated = replicated(self.mesh)

    def describe(self) -> str:
        """e.g. ``4 devices (cpu), 2 processes x 2``."""
        kind = self.local_device.platform
        if jax.process_count() == 1:
            return f"{self.size} device{'s' * (self.size > 1)} ({kind})"
        return f"{self.size} devices ({kind}), {jax.process_count()} processes x {self.size // jax.process_count()}"

    def check_batch_size(self, batch_size: int) -> None:
        """A global batch the device count does not divide is an error naming both."""
        if batch_size % self.size:
            raise ValueError(
                f"batch_size={batch_size} does not split over the {self.describe()}: set batch_size to a multiple of "
                f"{self.size}, or use fewer devices (--set devices=N, N devices per process)"
            )

    def rows(self, n: int) -> slice:
        """The rows of a global batch of ``n`` that this process feeds (all of them when the batch is replicated)."""
        if n % self.size or jax.process_count() == 1:
            return slice(0, n)
        spans = self._sharded.addressable_devices_indices_map((n,)).values()
        starts = sorted(s[0].start or 0 for s in spans)
        stops = sorted(s[0].stop if s[0].stop is not None else n for s in spans)
        return slice(starts[0], stops[-1])

    def batch(self, tree: Any, n: int) -> Any:
        """The global arrays of a batch of ``n`` rows from this process's rows (:meth:`rows`) of each array."""
        sharding = self._replicated if n % self.size else self._sharded

        def put(x: Any) -> jax.Array:
            x = np.asarray(x)
            return jax.make_array_from_process_local_data(sharding, x, (n, *x.shape[1:]))

        return jax.tree.map(put, tree)

    def replicate(self, tree: Any) -> Any:
        """Every array of ``tree`` on every device of the mesh."""
        return replicate(tree, self.mesh)

    def local(self, tree: Any) -> Any:
        """This process's copy of each replicated array, on its first device."""

        def one(x: Any) -> Any:
            if isinstance(x, jax.Array) and len(x.sharding.device_set) > 1:
                for shard in x.addressable_shards:
                    if shard.device == self.local_device:
                        return shard.data
                return x.addressable_shards[0].data
            return x

        return jax.tree.map(one, tree)


_exit_lock = threading.Lock()
"""Held by whichever thread ends the process (the watcher or the main thread): one message, one status."""


def _stop_because(message: str) -> NoReturn:
    """Ends this process (status 3) because another one failed or stopped."""
    with _exit_lock:
        print(f"error: stopping, because {message}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        if jax.process_index() == 0:  # the coordinator goes last: the failing process ends first, with its status
            time.sleep(2.0)
        os._exit(3)


def report_failure(err: BaseException) -> NoReturn:
    """A failing process of several: says so, tells the others (they stop at once, naming it, see
    :func:`initialize_processes`) and exits with status 2 without waiting for them."""
    with _exit_lock:
        message = f"process {jax.process_index()} of {jax.process_count()} failed: {err}"
        print(f"error: {message}", file=sys.stderr, flush=True)
        client = _client()
        if client is not None:
            _stopping.set()
            try:
                client.key_value_set(FAILED_KEY, f"{jax.process_index()}\n{message}", allow_overwrite=True)
            except Exception:  # the coordinator may already be gone; the heartbeats then end the others
                pass
            if jax.process_index() == 0:  # the key lives in this process: let the others read it first
                time.sleep(2.0)
        sys.stdout.flush()
        os._exit(2)


def _peer_trouble(client: Any, ask_live: bool) -> str | None:
    """Another process's reported failure, or (``ask_live``) the processes the coordination service no
    longer sees. Asking for the live processes waits until every live process asks too, so only
    processes that all saw a peer's connection drop may ask."""
    me, n = jax.process_index(), jax.process_count()
    try:
        index, _, message = client.key_value_try_get(FAILED_KEY).partition("\n")
        if index != str(me):
            return message
    except Exception:  # not set
        pass
    if not ask_live:
        return None
    try:
        dead = sorted(set(range(n)) - set(client.get_live_nodes(list(range(n)))))
    except Exception:  # the coordinator is gone: its own abort follows
        return None
    if dead:
        return f"process {', '.join(map(str, dead))} of {n} stopped (killed, or its host failed)"
    return None


def fail(err: BaseException) -> NoReturn:
    """A process of several whose run raised ``err``: whose fault is it?

    A collective that fails because a peer's connection dropped (gloo, NCCL) raises in the
    survivors too. So first look, for a grace period, for another process's report (a second) and,
    after a transport error, for processes the coordination service no longer sees (up to the
    heartbeat timeout), and stop naming them (:func:`_stop_because`); otherwise this process failed
    (:func:`report_failure`).
    """
    client = _client()
    if client is None:
        report_failure(err)
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    transport = any(word in str(err) for word in ("Gloo", "gloo", "NCCL", "Connection", "connection"))
    grace = HEARTBEAT_TIMEOUT_S + 5 if transport else 1
    if transport:
        print(
            f"error: process {jax.process_index()} of {jax.process_count()}: a collective with the other processes "
            f"failed ({first}); waiting up to {grace} s to learn which process stopped",
            file=sys.stderr,
            flush=True,
        )
    deadline = time.monotonic() + grace
    while True:
        trouble = _peer_trouble(client, ask_live=transport)
        if trouble is not None:
            _stop_because(trouble)
        if time.monotonic() > deadline:
            report_failure(err)
        time.sleep(0.5)
