"""SO against Adam on the paper's trained CLIP ViT-B/16 matrices: optimizer state bytes and step time.

The parameter set: in_proj (3d x d), out_proj (d x d), c_fc (4d x d) and c_proj (d x 4d) of the 12
blocks of both encoders (vision d = 768, text d = 512), 96 float32 matrices, 122.7M weights.
One step = ``tx.update`` + ``optax.apply_updates`` under one ``jax.jit``, parameters and state
donated (as a training loop runs it), the same fixed gradients every call. ``so`` and
``optax.adam`` are timed in the same run and group (Adam once per density group, so each ratio
comes from adjacent measurements). State bytes are the sum of the state pytree's array bytes
(``extra_info["state_bytes"]``), so the report can set them against SO's bound
``so <= 1.5 * density * adam (+ a small constant)`` (12 bytes per kept entry against Adam's 8 per
weight). ``extra_info`` also records the parameter set (``parameter_set``, ``tensors``, ``weights``).

The ``so-parts`` cases time the pieces of one SO step on the same set, to show where the time
goes: drawing the masks, the sparse moment update and top-k pruning, and the dense O(n) part
(writing the update tensor and adding it to the parameters). On XLA:CPU, run the file a second
time with ``XLA_FLAGS=--xla_cpu_enable_concurrency_optimized_scheduler=false`` for the
memory-minimizing scheduler (the rows are labelled by scheduler).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jax_cer.bench.cases.timing import timed
from jax_cer.optim import so
from jax_cer.optim.so import random_subset, scale_by_so, sparse_k

pytestmark = pytest.mark.benchmark

ON_GPU = jax.default_backend() == "gpu"
FULL_ROUNDS = 30 if ON_GPU else 8
DENSITIES = (5e-5, 5e-4)
LR = 1e-4
REFRESH = 20
# XLA:CPU's default (concurrency-optimized) scheduler keeps every leaf's dense update tensor alive
# at once; XLA_FLAGS=--xla_cpu_enable_concurrency_optimized_scheduler=false (read once per process)
# schedules for memory. Recorded so that runs with either setting are tabulated side by side.
SCHEDULER = (
    "memory"
    if "xla_cpu_enable_concurrency_optimized_scheduler=false" in os.environ.get("XLA_FLAGS", "").lower()
    else "default"
)


def clip_vit_b16_matrices() -> dict[str, tuple[int, int]]:
    """The 96 trained matrices (PyTorch's [out, in] layout) by name."""
    shapes = {}
    for tower, d in (("visual", 768), ("text", 512)):
        for i in range(12):
            base = f"{tower}.resblocks.{i}"
            shapes[f"{base}.attn.in_proj_weight"] = (3 * d, d)
            shapes[f"{base}.attn.out_proj.weight"] = (d, d)
            shapes[f"{base}.mlp.c_fc.weight"] = (4 * d, d)
            shapes[f"{base}.mlp.c_proj.weight"] = (d, 4 * d)
    return shapes


SHAPES = clip_vit_b16_matrices()
N_WEIGHTS = sum(int(np.prod(s)) for s in SHAPES.values())
PARAMETER_SET = "CLIP ViT-B/16: in_proj, out_proj, c_fc and c_proj of the 12 blocks of both encoders"


@pytest.fixture(scope="module")
def problem():
    keys = jax.random.split(jax.random.PRNGKey(0), 2 * len(SHAPES))
    params = {n: 0.02 * jax.random.normal(keys[2 * i], s, jnp.float32) for i, (n, s) in enumerate(SHAPES.items())}
    grads = {n: jax.random.normal(keys[2 * i + 1], s, jnp.float32) for i, (n, s) in enumerate(SHAPES.items())}
    return params, grads


def state_bytes(state) -> int:
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state)))


def _optimizer(impl: str, density: float):
    if impl == "so":
        return so(LR, density=density, refresh_every=REFRESH)
    return optax.adam(LR)


@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("impl", ["so", "adam"])
def test_so_vs_adam_step(benchmark, problem, impl: str, density: float) -> None:
    assert len(SHAPES) == 96 and abs(N_WEIGHTS - 122.7e6) < 0.1e6
    params0, grads = problem
    tx = _optimizer(impl, density)

    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    step = jax.jit(step, donate_argnums=(0, 1))
    params = jax.tree.map(jnp.copy, params0)
    state = tx.init(params)
    nbytes = state_bytes(state)
    params, state = step(params, state, grads)  # compile and first step outside the timing
    jax.block_until_ready(params)
    holder = [params, state]

    def run():
        holder[0], holder[1] = step(holder[0], holder[1], grads)
        jax.block_until_ready(holder[0])

    k_total = sum(sparse_k(int(np.prod(s)), density) for s in SHAPES.values())
    benchmark.group = f"so-density{density:g}-{SCHEDULER}"
    benchmark.extra_info.update(
        component="optimizer",
        variant=f"density {density:g}",
        scheduler=SCHEDULER,
        impl=impl,
        density=density,
        refresh_every=REFRESH,
        parameter_set=PARAMETER_SET,
        tensors=len(SHAPES),
        weights=N_WEIGHTS,
        k_total=k_total if impl == "so" else N_WEIGHTS,
        state_bytes=nbytes,
        dtype="float32",
        device=jax.devices()[0].device_kind,
    )
    timed(benchmark, run, full_rounds=FULL_ROUNDS, warmup_rounds=1)
    # the step ran: parameters moved and stayed finite
    moved = holder[0]["visual.resblocks.0.mlp.c_fc.weight"]
    assert bool(jnp.all(jnp.isfinite(moved)))


@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("part", ["masks", "moments_and_pruning", "dense_update_and_apply"])
def test_so_step_parts(benchmark, problem, part: str, density: float) -> None:
    """Pieces of one SO step over the 96 matrices, each jitted on its own:

    - ``masks``: drawing the 96 random masks (batched per shape);
    - ``moments_and_pruning``: ``scale_by_so``'s state update only (masks, gathers, moments on
      S ∪ M, top-k pruning); XLA drops the unused dense output;
    - ``dense_update_and_apply``: the O(n) part: a zero tensor per leaf, the scatter of the 2k
      values of U, the learning rate and the addition to the (donated) parameters.
    """
    params0, grads = problem
    ks = {n: sparse_k(int(np.prod(s)), density) for n, s in SHAPES.items()}
    if part == "masks":
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (name, shape) in enumerate(SHAPES.items()):
            groups.setdefault((int(np.prod(shape)), ks[name]), []).append(i)

        def masks(key):
            return [
                jax.vmap(lambda i, n=n, k=k: random_subset(jax.random.fold_in(key, i), n, k))(
                    jnp.asarray(ids, jnp.uint32)
                )
                for (n, k), ids in groups.items()
            ]

        fn = jax.jit(masks)
        args = (jax.random.PRNGKey(0),)
    elif part == "moments_and_pruning":
        tx = scale_by_so(density, REFRESH)
        fn = jax.jit(lambda state, grads: tx.update(grads, state)[1], donate_argnums=(0,))
        args = (tx.init(params0), grads)
    else:
        rng = np.random.default_rng(0)
        idx = {
            n: jnp.asarray(np.sort(rng.choice(int(np.prod(s)), 2 * ks[n], replace=False)), jnp.int32)
            for n, s in SHAPES.items()
        }
        vals = {n: jnp.ones((2 * ks[n],), jnp.float32) for n in SHAPES}

        def dense_apply(params, idx, vals):
            out = {}
            for n, p in params.items():
                u = jnp.zeros((p.size,), jnp.float32).at[idx[n]].add(vals[n], mode="drop")
                out[n] = p - LR * u.reshape(p.shape)
            return out

        fn = jax.jit(dense_apply, donate_argnums=(0,))
        args = (jax.tree.map(jnp.copy, params0), idx, vals)
    holder = [args]

    def run():
        out = fn(*holder[0])
        jax.block_until_ready(out)
        if part != "masks":  # feed the donated output back
            holder[0] = (out, *holder[0][1:])

    run()  # compile
    benchmark.group = f"so-parts-density{density:g}"
    benchmark.extra_info.update(
        component="optimizer-part",
        variant=f"density {density:g}",
        impl=part,
        density=density,
        scheduler=SCHEDULER,
        parameter_set=PARAMETER_SET,
        tensors=len(SHAPES),
        weights=N_WEIGHTS,
        device=jax.devices()[0].device_kind,
    )
    timed(benchmark, run, full_rounds=FULL_ROUNDS, warmup_rounds=1)
