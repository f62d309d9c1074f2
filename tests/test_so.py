"""The SO optimizer (jax_cer.optim): parity with the PyTorch reference's golden trajectory, the spec's
worked examples, the dense formulation, Adam at density 1, its invariants and the optax contract."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jax_cer.optim import random_subset, so, sparse_k
from jax_cer.parity import so_trajectory as traj
from jax_cer.parity.golden import GoldenFileError, default_golden_dir
from jax_cer.parity.tolerances import TOLERANCES
from tests.conftest import REPO
from tests.so_reference import DenseSO

GOLDEN = default_golden_dir() / "so"
W0 = np.array([[1.0, -2.0, 0.5], [0.25, -1.5, 3.0]])
G = [
    np.array([[0.3, -1.2, 0.8], [-0.5, 2.0, 0.1]]),
    np.array([[-0.7, 0.4, 1.5], [0.9, -0.6, -2.5]]),
    np.array([[1.1, 0.2, -0.3], [-1.4, 0.5, 0.6]]),
]


def _apply(tx, params, grads, masks=None):
    """Runs ``tx`` over a list of gradients; returns the parameters after every step and the state."""
    state = tx.init(params)
    out = []
    for i, g in enumerate(grads):
        kw = {} if masks is None else {"masks": masks[i]}
        updates, state = tx.update(g, state, params, **kw)
        params = optax.apply_updates(params, updates)
        out.append(params)
    return out, state


def _so_state(state):
    """The ScaleBySOState inside an so(...) chain state."""
    return next(s for s in state if hasattr(s, "leaves"))


# -- the PyTorch reference's golden trajectory ----------------------------------------------------
def test_matches_the_reference_trajectory() -> None:
    """Supports exactly, m and v within 1e-6, W within 1e-6 + 1e-5 |W| (spec §6.3), every step."""
    rows = traj.check(GOLDEN)
    assert [r.check for r in rows] == ["supports", "params", "moment m", "moment v"], rows
    for r in rows:
        assert r.passed, r
    assert rows[0].count == traj.CONFIG["steps"] * 4  # four sparse leaves (one of them with k = 0)


def test_edited_trajectory_is_refused(tmp_path) -> None:
    manifest = json.loads((GOLDEN / "manifest.json").read_text())
    with np.load(GOLDEN / "trajectory.npz") as f:
        arrays = {k: f[k] for k in f.files}
    arrays["m0"] = arrays["m0"] + 1e-3
    np.savez(tmp_path / "trajectory.npz", **arrays)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(GoldenFileError, match="differ from the manifest"):
        traj.load(tmp_path)
    rows = traj.check(tmp_path)
    assert len(rows) == 1 and not rows[0].passed and "m0" in rows[0].detail


def test_wrong_trajectory_fails_the_check(tmp_path, monkeypatch) -> None:
    """A reference that differs in one moment value fails exactly the moment check (not vacuous)."""
    manifest, arrays = traj.load(GOLDEN)
    arrays["v2"] = arrays["v2"].copy()
    arrays["v2"][10, 3] += 1e-5
    monkeypatch.setattr(traj, "load", lambda folder=None: (manifest, arrays))
    rows = {r.check: r for r in traj.check(GOLDEN)}
    assert not rows["moment v"].passed and rows["moment v"].key == "v2 step 11"
    assert rows["supports"].passed and rows["params"].passed and rows["moment m"].passed


# -- the spec's worked examples (§9) --------------------------------------------------------------
EXAMPLES = {
    # name: (b1, weight_decay, T, masks per step, W after step 3 to 10 digits at indices 0, 1, 2, 5, S, m, v)
    "A": (0.9, 0.0, 2, [[1, 5], [1, 5], [5, 0]], {0: 0.9680593205, 1: -1.914520566, 5: 3.005325719}, [0, 5],
          [0.110000, 0, 0, 0, 0, -0.156900], [0.001210, 0, 0, 0, 0, 0.006614]),
    "B": (0.9, 0.1, 1, [[1, 5], [5, 0], [2, 1]], {0: 1.03720684, 1: -1.890790399, 2: 0.5319406778, 5: 3.004312039},
          [1, 5], [0, -0.112565, 0, 0, 0, -0.166050], [0, 0.001956, 0, 0, 0, 0.005017]),
    "C": (0.4, 0.0, 2, [[1, 5], [1, 5], [5, 0]], {0: 0.944513, 1: -1.945400, 5: 3.007933}, [0, 5],
          [0.660000, 0, 0, 0, 0, -0.230400], [0.001210, 0, 0, 0, 0, 0.006614]),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_worked_examples_float64(name: str) -> None:
    b1, wd, T, masks, w3, support, m3, v3 = EXAMPLES[name]
    with jax.enable_x64(True):
        tx = so(0.05, density=0.4, refresh_every=T, b1=b1, b2=0.999, eps=1e-8, weight_decay=wd, inject_masks=True)
        ws, state = _apply(tx, jnp.asarray(W0), [jnp.asarray(g) for g in G], [jnp.asarray(m, jnp.int32) for m in masks])
        st = _so_state(state).leaves
        w = np.asarray(ws[-1]).ravel()
        for i, value in w3.items():
            six_decimals = abs(value * 1e6 - round(value * 1e6)) <= 1e-9  # printed to 6 decimals, else 10 digits
            digits = TOLERANCES["spec_6_decimals"] if six_decimals else TOLERANCES["spec_10_digits"]
            assert abs(w[i] - value) <= digits, (i, w[i], value)
        np.testing.assert_array_equal(st.support, support)
        dense_m = np.zeros(6)
        dense_m[support] = np.asarray(st.mu)
        dense_v = np.zeros(6)
        dense_v[support] = np.asarray(st.nu)
        np.testing.assert_allclose(dense_m, m3, atol=TOLERANCES["spec_6_decimals"])
        np.testing.assert_allclose(dense_v, v3, atol=TOLERANCES["spec_6_decimals"])


def test_worked_example_a_float32() -> None:
    """Spec §9.1 in fp32: W after step 3 = [0.9680593014, -1.914520621, ..., 3.005325794] (1e-6)."""
    tx = so(0.05, density=0.4, refresh_every=2, b1=0.9, b2=0.999, eps=1e-8, inject_masks=True)
    masks = [jnp.asarray(m, jnp.int32) for m in ([1, 5], [1, 5], [5, 0])]
    ws, _ = _apply(tx, jnp.asarray(W0, jnp.float32), [jnp.asarray(g, jnp.float32) for g in G], masks)
    w = np.asarray(ws[-1]).ravel()
    np.testing.assert_allclose(w[[0, 1, 5]], [0.9680593014, -1.914520621, 3.005325794], atol=TOLERANCES["so"])
    assert ws[-1].dtype == jnp.float32


def test_dense_path_faithful_and_fixed() -> None:
    """Spec §9.4: the original's dense path (faithful) vs torch Adam (the default)."""
    faithful_w = [
        [0.500000, -1.500000, 0.000000, 0.750000, -2.000000, 2.500000],
        [0.610575, -1.394679, -0.255753, 0.664399, -2.112592, 2.688625],
        [0.547752, -1.356726, -0.371754, 0.731896, -2.199403, 2.760533],
    ]
    adam_w = [
        [0.950000, -1.950000, 0.450000, 0.300000, -1.550000, 2.950000],
        [0.971009, -1.929989, 0.401407, 0.283736, -1.571392, 2.985839],
        [0.953984, -1.919704, 0.369971, 0.302028, -1.594918, 3.005326],
    ]
    with jax.enable_x64(True):
        for faithful, want in ((True, faithful_w), (False, adam_w)):
            tx = so(0.05, density=0.4, refresh_every=2, dense=True, faithful=faithful)
            ws, _ = _apply(tx, jnp.asarray(W0), [jnp.asarray(g) for g in G])
            for w, ref in zip(ws, want, strict=True):
                np.testing.assert_allclose(np.asarray(w).ravel(), ref, atol=TOLERANCES["spec_6_decimals"])


# -- equivalences -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("shape", "density", "refresh", "wd"),
    [
        ((64, 48), 0.05, 5, 0.0),
        ((300, 200), 0.01, 10, 0.01),
        ((64, 48), 0.1, 1, 0.01),
        ((2304, 768), 1 - 0.99995, 5, 0.0),
    ],
)
def test_equals_dense_formulation(shape, density: float, refresh: int, wd: float) -> None:
    """Random problems against spec §4 (float64): Adam on g*1_M, then keep the top-k |m|."""
    rng = np.random.default_rng(sum(shape))
    n = int(np.prod(shape))
    k = sparse_k(n, density)
    steps = 3 * refresh + 2
    w0 = rng.normal(size=shape)
    grads = [rng.normal(size=shape) for _ in range(steps)]
    masks = [rng.permutation(n)[:k] for _ in range(steps)]
    ref = DenseSO(w0, k, 1e-2, 0.9, 0.999, 1e-8, wd, refresh)
    with jax.enable_x64(True):
        tx = so(1e-2, density=density, refresh_every=refresh, weight_decay=wd, inject_masks=True)
        update = jax.jit(tx.update)
        params, state = jnp.asarray(w0), tx.init(jnp.asarray(w0))
        for g, m in zip(grads, masks, strict=True):
            ref.step(g, m)
            updates, state = update(jnp.asarray(g), state, params, masks=jnp.asarray(m, jnp.int32))
            params = optax.apply_updates(params, updates)
            np.testing.assert_allclose(np.asarray(params), ref.w, atol=TOLERANCES["so_dense_params"])
            st = _so_state(state).leaves
            np.testing.assert_array_equal(np.asarray(st.support), np.flatnonzero(ref.support))
            np.testing.assert_allclose(np.asarray(st.mu), ref.m[ref.support], atol=TOLERANCES["so_dense_moments"])


def test_density_one_is_adam_with_coupled_l2() -> None:
    rng = np.random.default_rng(0)
    params = {
        "w": jnp.asarray(rng.normal(size=(7, 11)), jnp.float32),
        "b": jnp.asarray(rng.normal(size=(11,)), jnp.float32),
    }
    grads = [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params) for _ in range(12)]
    mine, _ = _apply(so(1e-2, density=1.0, refresh_every=3, weight_decay=0.05), params, grads)
    adam = optax.chain(optax.add_decayed_weights(0.05), optax.adam(1e-2))
    theirs, _ = _apply(adam, params, grads)
    for a, b in zip(mine, theirs, strict=True):
        for key in params:
            np.testing.assert_allclose(a[key], b[key], atol=TOLERANCES["so"])


# -- invariants -----------------------------------------------------------------------------------------
def test_refresh_steps_support_size_and_changed_entries() -> None:
    n_rows, n_cols, density, T = 20, 30, 0.05, 3
    k = sparse_k(n_rows * n_cols, density)
    rng = np.random.default_rng(1)
    params = jnp.asarray(rng.normal(size=(n_rows, n_cols)), jnp.float32)
    tx = so(1e-2, density=density, refresh_every=T, inject_masks=True)
    state = tx.init(params)
    used = []
    for step in range(1, 11):
        mask = jnp.asarray(rng.permutation(n_rows * n_cols)[:k], jnp.int32)  # offered every step
        updates, state = tx.update(jnp.asarray(rng.normal(size=params.shape), jnp.float32), state, params, masks=mask)
        new = optax.apply_updates(params, updates)
        assert int(jnp.sum(new != params)) <= 2 * k
        params = new
        st = _so_state(state).leaves
        assert int(jnp.sum(st.support < n_rows * n_cols)) == k  # |S| = k after every step
        used.append(tuple(np.asarray(st.mask)))
        if (step - 1) % T == 0:
            assert used[-1] == tuple(np.asarray(mask))  # consumed on refresh steps
        else:
            assert used[-1] == used[-2]  # ignored otherwise
    assert [s for s in range(1, 11) if (s - 1) % T == 0] == [1, 4, 7, 10]


def test_k_is_computed_in_float64_like_the_original() -> None:
    rho = 1 - 0.99995  # not exactly 5e-5
    assert [sparse_k(n, rho) for n in (2304 * 768, 768 * 768, 3072 * 768, 1536 * 512, 512 * 512)] == [
        88,
        29,
        117,
        39,
        13,
    ]
    assert sparse_k(2 * 768, 1e-4) == 0 and sparse_k(30522 * 768, 1e-2) == 234_408


def test_leaves_with_k_zero_are_frozen_with_a_warning(caplog) -> None:
    params = {"tiny": jnp.ones((2, 7)), "big": jnp.ones((40, 50))}
    with caplog.at_level(logging.WARNING, logger="jax_cer.optim.so"):
        tx = so(0.1, density=0.05, refresh_every=2)
        state = tx.init(params)
    assert "['tiny']" in caplog.text and "frozen" in caplog.text
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
    assert not np.any(updates["tiny"]) and np.any(updates["big"])


@pytest.mark.parametrize("refresh_every", [0, 1.5, True, "2", None])
def test_refresh_every_must_be_a_positive_integer(refresh_every) -> None:
    with pytest.raises(ValueError, match=r"refresh_every must be an integer >= 1, got " + repr(refresh_every)):
        so(0.1, density=0.1, refresh_every=refresh_every)


def test_low_rank_leaves_are_dense_and_high_rank_leaves_sparse() -> None:
    params = {"bias": jnp.ones((5,)), "scale": jnp.ones(()), "conv": jnp.ones((3, 3, 4, 8))}
    with pytest.raises(ValueError, match=r"\['conv'\] has shape \(3, 3, 4, 8\).*allow_nd=True"):
        so(0.1, density=0.1, refresh_every=2).init(params)
    with pytest.raises(ValueError, match=r"\['bias'\] has shape \(5,\)"):  # 1-D forced onto the sparse path
        so(0.1, density=0.1, refresh_every=2, dense={"bias": False, "scale": True, "conv": True}).init(params)
    tx = so(0.1, density=0.1, refresh_every=2, allow_nd=True)
    state = tx.init(params)
    leaves = _so_state(state).leaves
    assert type(leaves["bias"]).__name__ == "DenseLeafState" and type(leaves["scale"]).__name__ == "DenseLeafState"
    assert leaves["conv"].support.shape == (sparse_k(3 * 3 * 4 * 8, 0.1),)
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
    assert np.all(updates["bias"] != 0) and int(jnp.sum(updates["conv"] != 0)) == sparse_k(288, 0.1)


def test_random_masks_are_uniform_distinct_subsets() -> None:
    n, k, draws = 50, 5, 4000
    keys = jax.random.split(jax.random.PRNGKey(0), draws)
    subsets = np.asarray(jax.vmap(lambda key: random_subset(key, n, k))(keys))
    assert all(len(set(s)) == k for s in subsets) and subsets.min() >= 0 and subsets.max() < n
    counts = np.bincount(subsets.ravel(), minlength=n)
    expected = draws * k / n
    chi2 = float(np.sum((counts - expected) ** 2 / expected))
    assert chi2 < 100, chi2  # 49 degrees of freedom: p < 1e-4 beyond 100
    big = np.asarray(random_subset(jax.random.PRNGKey(1), 2304 * 768, 88))
    assert len(set(big)) == 88 and big.max() < 2304 * 768


def test_state_is_o_k_and_masks_come_from_the_key() -> None:
    params = {"w": jnp.zeros((2304, 768))}
    k = 88
    lean = so(1e-3, density=1 - 0.99995, refresh_every=5).init(params)
    injectable = so(1e-3, density=1 - 0.99995, refresh_every=5, inject_masks=True).init(params)
    size = lambda tree: sum(x.nbytes for x in jax.tree.leaves(tree))  # noqa: E731
    assert size(_so_state(lean).leaves) == 12 * k and size(_so_state(injectable).leaves) == 16 * k
    with pytest.raises(ValueError, match="inject_masks=True"):
        so(1e-3, density=0.1, refresh_every=5).update(params, lean, params, masks={"w": jnp.zeros(88, jnp.int32)})


def test_bad_masks_are_named() -> None:
    params = jnp.zeros((4, 5))
    tx = so(1e-3, density=0.2, refresh_every=2, inject_masks=True)
    state = tx.init(params)
    with pytest.raises(ValueError, match=r"duplicate index 1; needs 4 distinct flat indices in \[0, 20\)"):
        tx.update(params, state, params, masks=jnp.asarray([1, 1, 2, 3], jnp.int32))
    with pytest.raises(ValueError, match=r"expected int32\[4\]"):
        tx.update(params, state, params, masks=jnp.asarray([1, 2], jnp.int32))
    with pytest.raises(ValueError, match="density must be in"):
        so(1e-3, density=1.5, refresh_every=2).init(params)


MASKED_PARAMS = {"w": jnp.zeros((4, 5)), "b": {"k": jnp.zeros((6, 5))}}  # k = 4 and 6 at density 0.2
GOOD_MASKS = {"w": jnp.asarray([0, 3, 7, 19], jnp.int32), "b": {"k": jnp.asarray([0, 1, 2, 3, 4, 29], jnp.int32)}}
BAD_MASKS = [  # a mask of ['b']['k'] (30 entries) and the problem the error names
    ([0, 1, 1, 2, 3, 4], "duplicate index 1"),
    ([0, 1, -3, 2, 3, 4], "negative index -3"),
    ([0, 1, 2, 3, 4, 999], "index 999 is out of range"),
    ([5, -2, 7, 7, 40, 6], "negative index -2"),  # several problems: the first of negative, out of range, duplicate
]


def _bad_mask_message(problem: str) -> str:
    return re.escape(
        f"mask for ['b']['k'] (shape (6, 5), 30 entries): {problem}; needs 6 distinct flat indices in [0, 30)"
    )


def test_bad_masks_raise_under_jit() -> None:
    """A jitted update fails on a refresh step with the eager check's message; on other steps masks are not read."""
    tx = so(1e-3, density=0.2, refresh_every=2, inject_masks=True)
    state = tx.init(MASKED_PARAMS)
    update = jax.jit(tx.update)
    for mask, problem in BAD_MASKS:
        masks = {"w": GOOD_MASKS["w"], "b": {"k": jnp.asarray(mask, jnp.int32)}}
        with pytest.raises(ValueError, match=_bad_mask_message(problem)):
            tx.update(MASKED_PARAMS, state, MASKED_PARAMS, masks=masks)
        with pytest.raises(jax.errors.JaxRuntimeError, match=_bad_mask_message(problem)):
            jax.block_until_ready(update(MASKED_PARAMS, state, MASKED_PARAMS, masks=masks))
    _, state = update(MASKED_PARAMS, state, MASKED_PARAMS, masks=GOOD_MASKS)  # step 1
    masks = {"w": GOOD_MASKS["w"], "b": {"k": jnp.asarray(BAD_MASKS[0][0], jnp.int32)}}
    _, state = jax.block_until_ready(update(MASKED_PARAMS, state, MASKED_PARAMS, masks=masks))  # step 2: not read
    np.testing.assert_array_equal(_so_state(state).leaves["b"]["k"].mask, GOOD_MASKS["b"]["k"])


def test_bad_masks_raise_under_jit_with_donated_state() -> None:
    tx = so(1e-3, density=0.2, refresh_every=2, inject_masks=True)

    def step(params, state, masks):
        updates, state = tx.update(params, state, params, masks=masks)
        return optax.apply_updates(params, updates), state

    step = jax.jit(step, donate_argnums=(0, 1))
    params = jax.tree.map(jnp.copy, MASKED_PARAMS)
    masks = {"w": jnp.asarray([0, 3, 20, 7], jnp.int32), "b": GOOD_MASKS["b"]}
    with pytest.raises(
        jax.errors.JaxRuntimeError, match=re.escape("mask for ['w'] (shape (4, 5), 20 entries): index 20")
    ):
        jax.block_until_ready(step(params, tx.init(params), masks))


def test_valid_masks_under_jit_equal_eager() -> None:
    """The check leaves the computation alone: a jitted update (which checks its traced masks) gives what the
    eager one (which checks concrete masks) gives, over two refreshes."""
    rng = np.random.default_rng(6)
    params = {
        "w": jnp.asarray(rng.normal(size=(4, 5)), jnp.float32),
        "v": jnp.asarray(rng.normal(size=(4, 5)), jnp.float32),
    }
    grads = [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params) for _ in range(3)]
    masks = [{key: jnp.asarray(rng.permutation(20)[:4], jnp.int32) for key in params} for _ in range(3)]
    tx = so(1e-2, density=0.2, refresh_every=2, inject_masks=True)
    eager = _apply(tx, params, grads, masks)
    jitted = _apply(optax.GradientTransformationExtraArgs(tx.init, jax.jit(tx.update)), params, grads, masks)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
        if jnp.issubdtype(a.dtype, jnp.integer):
            np.testing.assert_array_equal(a, b)
        else:  # the same float32 operations, fused differently by XLA
            np.testing.assert_allclose(a, b, atol=TOLERANCES["so"])


MULTI_DEVICE_SCRIPT = r"""
import json
import jax, jax.numpy as jnp, numpy as np, optax
from jax_cer.optim import so
from jax_cer.training.parallel import data_mesh, replicate, shard_batch

assert len(jax.devices()) == 2, jax.devices()
mesh = data_mesh()
tx = so(1e-3, density=0.2, refresh_every=2, inject_masks=True)
params = {"w": jnp.ones((4, 6))}

def step(params, state, x, masks):
    grads = jax.grad(lambda p: jnp.sum((x @ p["w"]) ** 2))(params)
    updates, state = tx.update(grads, state, params, masks=masks)
    params = optax.apply_updates(params, updates)
    return params, state, jnp.sum((x @ params["w"]) ** 2)  # a collective after the update

step = jax.jit(step, donate_argnums=(0, 1))
x = shard_batch(np.ones((8, 4), np.float32), mesh)
out = {}
for name, mask in (("bad", [1, 2, 3, 24]), ("good", [0, 5, 2, 3])):
    args = replicate((jax.tree.map(jnp.copy, params), tx.init(params), {"w": jnp.asarray(mask, jnp.int32)}), mesh)
    try:
        new, _, loss = jax.block_until_ready(step(args[0], args[1], x, args[2]))
        out[name] = {"changed": np.flatnonzero(np.asarray(new["w"]) != 1).tolist(), "loss": float(loss)}
    except jax.errors.JaxRuntimeError as e:
        out[name] = {"error": str(e).splitlines()[-1]}
print(json.dumps(out))
"""


@pytest.mark.slow  # a fresh process with 2 forced CPU devices
def test_bad_masks_raise_under_a_multi_device_jit() -> None:
    """Every device raises: none is left waiting in the collective that follows the update."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-c", MULTI_DEVICE_SCRIPT], check=False, cwd=REPO, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["bad"]["error"] == (
        "ValueError: mask for ['w'] (shape (4, 6), 24 entries): index 24 is out of range; "
        "needs 4 distinct flat indices in [0, 24)"
    )
    assert out["good"]["changed"] == [0, 2, 3, 5], out


# -- the optax contract -------------------------------------------------------------------------------------
SETTINGS = [
    {"density": 0.1, "refresh_every": 3},
    {"density": 0.02, "refresh_every": 1, "weight_decay": 0.01},
    {"density": 0.3, "refresh_every": 5, "faithful": True, "b1": 0.4},
]


def _problem(dtype=jnp.float32):
    rng = np.random.default_rng(3)
    return {"w": jnp.asarray(rng.normal(size=(30, 40)), dtype), "b": jnp.asarray(rng.normal(size=(40,)), dtype)}


@pytest.mark.parametrize("setting", SETTINGS)
def test_no_recompilation_on_the_second_step(setting) -> None:
    tx = so(1e-2, **setting)
    params = _problem()
    traces = []

    @jax.jit
    def step(params, state):
        traces.append(1)
        updates, state = tx.update(params, state, params)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    for _ in range(3):
        params, state = step(params, state)
    assert len(traces) == 1


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dtype_is_preserved(setting, dtype) -> None:
    tx = so(1e-2, **setting)
    params = _problem(dtype)
    state = tx.init(params)
    updates, state = tx.update(params, state, params)
    assert all(u.dtype == dtype for u in jax.tree.leaves(updates))
    leaves = _so_state(state).leaves
    assert leaves["w"].mu.dtype == dtype and leaves["b"].mu.dtype == dtype


@pytest.mark.parametrize("static", [True, False])
def test_inject_hyperparams_learning_rate_schedule(static: bool) -> None:
    schedule = optax.cosine_decay_schedule(1e-2, 20, alpha=0.1)
    kwargs = {"static_args": ("density", "refresh_every")} if static else {}
    tx = optax.inject_hyperparams(so, **kwargs)(learning_rate=schedule, density=0.1, refresh_every=3)
    params = _problem()
    state = tx.init(params)
    step = jax.jit(tx.update)
    for _ in range(4):
        _, state = step(params, state, params)
    # inject_hyperparams records the value used by the latest update: that of step 3 (0-based)
    assert np.isclose(float(state.hyperparams["learning_rate"]), float(schedule(3)))
    plain = so(schedule, density=0.1, refresh_every=3)
    p1, _ = _apply(plain, params, [params] * 4)
    p2, _ = _apply(tx, params, [params] * 4)
    # equivalence (the same optimizer built two ways), not parity against a reference: a local bound
    np.testing.assert_allclose(p1[-1]["w"], p2[-1]["w"], atol=1e-6)


def test_multisteps_masked_and_multi_transform() -> None:
    params = _problem()
    grads = [jax.tree.map(lambda p, i=i: p * (i + 1) * 0.1, params) for i in range(6)]
    acc = optax.MultiSteps(so(1e-2, density=0.1, refresh_every=2), every_k_schedule=3)
    out, _ = _apply(acc, params, grads)
    np.testing.assert_array_equal(out[0]["w"], params["w"])  # nothing until 3 gradients are in
    assert np.any(out[2]["w"] != params["w"])
    masked = optax.masked(so(1e-2, density=0.1, refresh_every=2), {"w": True, "b": False})
    out, _ = _apply(masked, params, grads[:2])
    # optax.masked passes the masked-out leaf's updates through untouched (an equivalence: a local bound)
    np.testing.assert_allclose(out[-1]["b"], params["b"] + grads[0]["b"] + grads[1]["b"], atol=1e-6)
    assert 0 < int(jnp.sum(out[-1]["w"] != params["w"])) <= 2 * 2 * sparse_k(30 * 40, 0.1)
    multi = optax.multi_transform(
        {"sparse": so(1e-2, density=0.1, refresh_every=2), "adam": optax.adam(1e-2)}, {"w": "sparse", "b": "adam"}
    )
    out, _ = _apply(multi, params, grads[:3])
    assert int(jnp.sum(out[-1]["w"] != params["w"])) <= 2 * sparse_k(30 * 40, 0.1) and np.all(
        out[-1]["b"] != params["b"]
    )


def test_converges_on_a_quadratic() -> None:
    rng = np.random.default_rng(4)
    target = jnp.asarray(rng.normal(size=(20, 30)), jnp.float32)
    tx = so(0.05, density=0.2, refresh_every=2)
    params = jnp.zeros((20, 30))
    state = tx.init(params)
    loss = lambda p: jnp.mean((p - target) ** 2)  # noqa: E731

    @jax.jit
    def step(params, state):
        updates, state = tx.update(jax.grad(loss)(params), state, params)
        return optax.apply_updates(params, updates), state

    start = float(loss(params))
    for _ in range(400):
        params, state = step(params, state)
    assert float(loss(params)) < 0.05 * start


def test_trains_a_small_mlp_on_digits() -> None:
    sklearn = pytest.importorskip("sklearn.datasets")
    data = sklearn.load_digits()
    x = jnp.asarray(data.data / 16.0, jnp.float32)
    y = jnp.asarray(data.target)
    rng = np.random.default_rng(5)
    params = {
        "w1": jnp.asarray(rng.normal(size=(64, 64)) / 8, jnp.float32),
        "b1": jnp.zeros(64),
        "w2": jnp.asarray(rng.normal(size=(64, 10)) / 8, jnp.float32),
        "b2": jnp.zeros(10),
    }

    def loss(p):
        h = jax.nn.relu(x @ p["w1"] + p["b1"])
        return optax.softmax_cross_entropy_with_integer_labels(h @ p["w2"] + p["b2"], y).mean()

    tx = so(1e-2, density=0.1, refresh_every=5)
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        value, grads = jax.value_and_grad(loss)(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, value

    first = None
    for _ in range(300):
        params, state, value = step(params, state)
        first = first if first is not None else float(value)
    h = jax.nn.relu(x @ params["w1"] + params["b1"])
    accuracy = float(jnp.mean(jnp.argmax(h @ params["w2"] + params["b2"], -1) == y))
    assert float(loss(params)) < 0.3 * first and accuracy > 0.9, (first, float(loss(params)), accuracy)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"b1": 1.0}, "b1 must be a number in [0, 1), got 1.0"),
        ({"b2": -0.1}, "b2 must be a number in [0, 1), got -0.1"),
        ({"eps": 0.0}, "eps must be a finite number > 0, got 0.0"),
        ({"eps": float("nan")}, "eps must be a finite number > 0, got nan"),
        ({"b1": "0.9"}, "b1 must be a number in [0, 1), got '0.9'"),
        ({"density": "0.1"}, "density must be a number in [0, 1], got '0.1'"),
    ],
)
def test_constants_that_would_give_nan_are_refused(kwargs, message) -> None:
    """b1 = 1 divides by 1 - b1^t = 0 and eps = 0 divides 0 by 0 where a gradient entry is 0."""
    params = {"w": jnp.ones((4, 5)), "b": jnp.ones(3)}
    with pytest.raises(ValueError) as err:
        so(1e-3, **{"density": 0.5, "refresh_every": 2, **kwargs}).init(params)
    assert str(err.value) == message


@pytest.mark.parametrize(
    ("grads", "message"),
    [
        ({"w": jnp.ones((4, 5))}, "not among the parameters: none; missing: ['b']"),
        ({"w": jnp.ones((4, 5)), "b": jnp.ones(3), "c": jnp.ones(2)}, "not among the parameters: ['c']; missing: none"),
        ({"w": jnp.ones((3, 5)), "b": jnp.ones(3)}, "update for ['w'] has shape (3, 5) (15 entries)"),
        ({"w": jnp.ones((4, 5)), "b": jnp.ones(4)}, "update for ['b'] has shape (4,), the parameter (3,)"),
        ({"w": jnp.ones((4, 5), jnp.int32), "b": jnp.ones(3)}, "update for ['w']: expected a floating-point array"),
    ],
)
def test_updates_that_do_not_fit_the_parameters_are_named(grads, message) -> None:
    """A gradient of another shape would gather outside the tensor (clamped silently by XLA)."""
    params = {"w": jnp.ones((4, 5)), "b": jnp.ones(3)}
    opt = so(1e-3, density=0.5, refresh_every=2)
    with pytest.raises(ValueError) as err:
        opt.update(grads, opt.init(params), params)
    assert message in str(err.value)
