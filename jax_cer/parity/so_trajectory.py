"""Inputs of the SO golden trajectories: leaf shapes, per-step gradients and injected masks.

Both sides (``repro/make_so_golden.py`` with the PyTorch reference, and the JAX test) draw them
from numpy with the recorded seed, so the golden file stores only outputs. Masks follow spec
§6.3: ``default_rng([seed, refresh j, leaf l]).permutation(n)[:k]``, row-major flat indices.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jax_cer.optim import so
from jax_cer.parity.golden import GoldenFileError, default_golden_dir, load_arrays, missing_golden_hint, read_json
from jax_cer.parity.result import CheckResult, error_result
from jax_cer.parity.tolerances import TOLERANCES

CONFIG = {
    "shapes": [(64, 48), (4, 1000), (37, 29), (48,), (2, 7)],
    "density": 0.05,
    "refresh_every": 5,
    "steps": 32,
    "lr": 1e-2,
    "b1": 0.9,
    "b2": 0.999,
    "eps": 1e-8,
    "weight_decay": 0.01,
    "seed": 7,
}
"""Three sparse matrices (k = 153, 200, 53: k >= 17 with many same-row overlaps, the case the
original mispairs), a 1-D leaf (dense path) and a matrix with k = 0 (frozen)."""


def initial_params(cfg=CONFIG) -> list[np.ndarray]:
    rng = np.random.default_rng([cfg["seed"], 0])
    return [rng.normal(size=s).astype(np.float32) for s in cfg["shapes"]]


def gradient(step: int, cfg=CONFIG) -> list[np.ndarray]:
    """Gradients fed at (1-based) ``step``."""
    rng = np.random.default_rng([cfg["seed"], 1, step])
    return [rng.normal(size=s).astype(np.float32) for s in cfg["shapes"]]


def mask(leaf_id: int, refresh: int, n: int, k: int, cfg=CONFIG) -> np.ndarray:
    """The mask of sparse leaf ``leaf_id`` (counting sparse leaves only) at refresh ``refresh``."""
    return np.random.default_rng([cfg["seed"], 2, refresh, leaf_id]).permutation(n)[:k].astype(np.int64)


def k_of(n: int, cfg=CONFIG) -> int:
    return int(np.float64(n) * np.float64(cfg["density"]))


# -- the check (used by ``jax-cer repro`` and tests/test_so.py) --------------------------------------
TOLERANCE = TOLERANCES["so"]
RELATIVE = TOLERANCES["so_relative"]
"""Spec §6.3: supports exactly; m and v within 1e-6; W within 1e-6 + 1e-5 |W| (the two sides
factor the learning rate differently, so W can round one ulp apart at a step)."""

CASE = "so"
"""The case name of the trajectory's rows."""
CHECKS = ("supports", "params", "moment m", "moment v")
"""The rows :func:`check` reports, in order."""


def golden_dir() -> Path:
    """The SO golden folder: ``so/`` inside :func:`jax_cer.parity.golden.default_golden_dir`."""
    return default_golden_dir() / "so"


def load(folder: Path | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """The manifest and arrays of the SO golden trajectory, verified against the manifest's sha256
    (:func:`jax_cer.parity.golden.load_arrays`); raises GoldenFileError naming the damaged file."""
    folder = Path(folder or golden_dir())
    man_path, npz = folder / "manifest.json", folder / "trajectory.npz"
    for p in (man_path, npz):
        if not p.is_file():
            raise GoldenFileError(f"SO golden file {p} is missing: {missing_golden_hint('repro/make_so_golden.py')}")
    manifest = read_json(man_path, {"config": dict, "arrays": dict})
    arrays = load_arrays(npz, manifest["arrays"], man_path)
    shapes = manifest["config"].get("shapes")
    if isinstance(shapes, list):
        shapes = [tuple(s) if isinstance(s, list) else s for s in shapes]
    cfg = {**manifest["config"], "shapes": shapes}
    if cfg != CONFIG:
        raise GoldenFileError(f"{man_path}: configuration {cfg} differs from so_trajectory.CONFIG {CONFIG}")
    return manifest, arrays


def run_jax(cfg=CONFIG):
    """Runs ``jax_cer.optim.so`` over the trajectory's inputs; yields ``(step, params, leaf states)``."""
    params = tuple(jnp.asarray(p) for p in initial_params(cfg))
    tx = so(
        cfg["lr"], density=cfg["density"], refresh_every=cfg["refresh_every"], b1=cfg["b1"], b2=cfg["b2"],
        eps=cfg["eps"], weight_decay=cfg["weight_decay"], inject_masks=True,
    )  # fmt: skip
    update = jax.jit(tx.update)
    state = tx.init(params)
    ids = sparse_ids(cfg)
    for step in range(1, cfg["steps"] + 1):
        refresh = (step - 1) // cfg["refresh_every"]
        masks = tuple(
            jnp.asarray(mask(ids[i], refresh, p.size, k_of(p.size, cfg), cfg), jnp.int32)
            if i in ids and k_of(p.size, cfg) > 0
            else None
            for i, p in enumerate(params)
        )
        grads = tuple(jnp.asarray(g) for g in gradient(step, cfg))
        updates, state = update(grads, state, params, masks=masks)
        params = optax.apply_updates(params, updates)
        leaves = next(s for s in state if hasattr(s, "leaves")).leaves
        yield step, params, leaves


def sparse_ids(cfg=CONFIG) -> dict[int, int]:
    """Leaf index -> index among the sparse leaves (the mask's leaf id)."""
    return {i: j for j, i in enumerate(i for i, s in enumerate(cfg["shapes"]) if len(s) >= 2)}


def check(folder: Path | None = None) -> list[CheckResult]:
    """Parity rows of the SO trajectory for the ``jax-cer repro`` report: :data:`CHECKS`, or one
    failed ``error`` row when the golden files cannot be read or the run raises."""
    t0 = time.perf_counter()
    try:
        _, ref = load(folder)
        worst = {"W": (0.0, ""), "m": (0.0, ""), "v": (0.0, "")}
        support_mismatch = []
        frozen_moved = []
        raw_w = 0.0
        p0 = initial_params()
        ids = sparse_ids()
        for step, params, leaves in run_jax():
            for i, p in enumerate(params):
                w_ref = ref[f"W{i}"][step - 1]
                diff = np.abs(np.asarray(p) - w_ref)
                raw_w = max(raw_w, float(np.max(diff)))
                excess = float(np.max(diff - RELATIVE * np.abs(w_ref)))
                if excess > worst["W"][0]:
                    worst["W"] = (excess, f"W{i} step {step}")
                st = leaves[i]
                if st is None:  # k = 0: frozen
                    if not np.array_equal(np.asarray(p), p0[i]):
                        frozen_moved.append(f"W{i} step {step}")
                    continue
                if i in ids and not np.array_equal(np.asarray(st.support), ref[f"support{i}"][step - 1]):
                    support_mismatch.append(f"support{i} step {step}")
                for name, arr in (("m", st.mu), ("v", st.nu)):
                    err = float(np.max(np.abs(np.asarray(arr) - ref[f"{name}{i}"][step - 1])))
                    if err > worst[name][0]:
                        worst[name] = (err, f"{name}{i} step {step}")
    except Exception as e:
        return [error_result(CASE, e, t0)]
    secs = time.perf_counter() - t0
    n_leaves = len(CONFIG["shapes"])
    rows = [
        CheckResult(
            CASE,
            "supports",
            support_mismatch[0] if support_mismatch else "all",
            float(len(support_mismatch)),
            0.0,
            not support_mismatch,
            secs,
            CONFIG["steps"] * len(ids),
            "number of (leaf, step) supports that differ from the reference; must be 0",
        ),
        CheckResult(
            CASE,
            "params",
            worst["W"][1] or "-",
            worst["W"][0],
            TOLERANCE,
            worst["W"][0] <= TOLERANCE and not frozen_moved,
            0.0,
            CONFIG["steps"] * n_leaves,
            f"max of |W - W_ref| - {RELATIVE:g} |W_ref|; max |W - W_ref| = {raw_w:.2e}"
            + (f"; frozen leaves moved: {frozen_moved[:3]}" if frozen_moved else ""),
        ),
    ]
    for name in ("m", "v"):
        err, key = worst[name]
        rows.append(
            CheckResult(
                CASE, f"moment {name}", key or "-", err, TOLERANCE, err <= TOLERANCE, 0.0, CONFIG["steps"] * n_leaves
            )
        )
    return rows
