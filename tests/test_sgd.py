"""jax_cer.optim.sgd: the one SGD of the trainers (coupled weight decay, as torch.optim.SGD; the torch
comparison is in test_traps). Its state layout is the chain the checkpoints hold, it works under
inject_hyperparams (the fusion trainer's per-epoch learning rate), and the old import paths give it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jax_cer.train_step
from jax_cer.optim import sgd, sgd_nesterov
from jax_cer.training import step

PARAMS = {"a": jnp.asarray(np.random.default_rng(0).normal(size=(3, 2)), jnp.float32), "b": jnp.ones(2, jnp.float32)}
GRADS = [jax.tree.map(lambda x, i=i: jnp.full_like(x, 0.1 * i - 0.15), PARAMS) for i in range(4)]


def _trajectory(tx: optax.GradientTransformation, state: optax.OptState | None = None) -> list[list[np.ndarray]]:
    """The parameters and optimizer state (leaves) after each of the GRADS steps."""
    params = PARAMS
    state = tx.init(PARAMS) if state is None else state
    out = []
    for g in GRADS:
        updates, state = tx.update(g, state, params)
        params = optax.apply_updates(params, updates)
        out.append([np.asarray(x) for x in jax.tree.leaves((params, state))])
    return out


@pytest.mark.parametrize(
    "ours, inline",
    [
        (sgd_nesterov(0.05, 1e-4), optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(0.05, 0.9, nesterov=True))),
        (sgd(0.05, weight_decay=0.01), optax.chain(optax.add_decayed_weights(0.01), optax.sgd(0.05))),
        (sgd(0.05), optax.chain(optax.add_decayed_weights(0.0), optax.sgd(0.05))),
    ],
    ids=["nesterov", "plain", "no-decay"],
)
def test_state_layout_and_numbers_of_the_optax_chain(ours, inline) -> None:
    """The same state tree as the chain the trainers built inline (old checkpoints restore) and the same bits."""
    assert jax.tree.structure(ours.init(PARAMS)) == jax.tree.structure(inline.init(PARAMS))
    for a, b in zip(_trajectory(ours), _trajectory(inline), strict=True):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)


def test_injected_learning_rate_equals_a_fixed_one() -> None:
    """Under inject_hyperparams (the fusion trainer sets the lr per epoch) the float32 lr gives the same steps."""
    injected = optax.inject_hyperparams(lambda learning_rate: sgd_nesterov(learning_rate, 1e-4))(learning_rate=0.1)
    state = injected.init(PARAMS)
    state.hyperparams["learning_rate"] = jnp.asarray(0.025, jnp.float32)
    n_params = len(jax.tree.leaves(PARAMS))
    ours = _trajectory(injected, state)
    ref = _trajectory(sgd_nesterov(np.float32(0.025), 1e-4))
    for a, b in zip(ours, ref, strict=True):
        for x, y in zip(a[:n_params], b[:n_params], strict=True):
            np.testing.assert_array_equal(x, y)


def test_arguments_and_import_paths() -> None:
    with pytest.raises(ValueError, match="nesterov=True needs a momentum > 0"):
        sgd(0.1, nesterov=True)
    with pytest.raises(ValueError, match="momentum must be >= 0 or None, got -0.5"):
        sgd(0.1, momentum=-0.5)
    assert step.sgd_nesterov is sgd_nesterov and jax_cer.train_step.sgd_nesterov is sgd_nesterov
