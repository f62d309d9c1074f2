"""A jitted training step for any jax_cer model: per-frame cross-entropy, an optax optimizer.

The model is split once (``nnx.split``) into a static graph, its trainable parameters and the
rest (BatchNorm statistics, frozen weights); the step is a pure function of those, compiled
with plain :func:`jax.jit` (``nnx.jit`` walks the object graph in Python on every call).
:func:`sgd_nesterov`, the original's optimizer, lives in :mod:`jax_cer.optim.sgd` and is importable here too.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jax_cer.models.graph import run_stages
from jax_cer.optim.sgd import sgd_nesterov

FUSION_MODELS = ("lfan", "can", "mt", "jmt")

__all__ = [
    "FUSION_MODELS",
    "cross_entropy",
    "graph_forward",
    "make_forward",
    "make_train_step",
    "parameter_paths",
    "path_names",
    "sgd_nesterov",
    "trainable_filter",
    "unreached_parameters",
]


def trainable_filter(name: str):
    """Parameters the original trains: all, except the frozen IR-50 inside fusion models."""
    if name in FUSION_MODELS:
        return nnx.All(nnx.Param, nnx.Not(nnx.PathContains("spatial")))
    return nnx.Param


def cross_entropy(logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """Mean cross-entropy over every frame: logits ``[..., K]``, integer labels ``[...]``.

    ``weights`` ``[...]`` (e.g. the pipeline's ``valid`` mask): a weighted mean instead, so padded
    frames can be left out of the loss (the fixed recipe; the original counts them).
    """
    logp = jax.nn.log_softmax(logits.reshape(-1, logits.shape[-1]), axis=-1)
    nll = -jnp.take_along_axis(logp, labels.reshape(-1, 1).astype(jnp.int32), axis=-1)[:, 0]
    if weights is None:
        return jnp.mean(nll)
    w = weights.reshape(-1).astype(nll.dtype)
    return jnp.sum(w * nll) / jnp.maximum(jnp.sum(w), 1.0)


def path_names(path: Sequence[Any]) -> tuple:
    """A JAX key path (``jax.tree_util`` keys) as a tuple of plain names and indices (``("bn", "bert", "scale")``)."""
    names = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                names.append(getattr(k, attr))
                break
        else:
            names.append(str(k))
    return tuple(names)


def parameter_paths(tree: Any) -> list[tuple]:
    """The key path of every leaf of a parameter tree, as tuples of names (:func:`path_names`)."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [path_names(path) for path, _ in leaves]


def unreached_parameters(model: Any, name: str) -> Callable[[tuple], bool]:
    """Whether a parameter (by key path) is one the original optimizer never touches (spec §5.2).

    PyTorch skips parameters whose gradient is ``None``: modules that are never called (CAN
    ``conv_c``, MT ``reduce_feats_dim``) and the TCN and BatchNorm of modalities the fusion
    discards (MT/JMT ``bert``); they get no weight decay and no momentum. JAX gives them zero
    gradients instead, so the trainer masks them out to keep them exactly as loaded. Parameters
    that are connected to the loss but dead (MT/JMT streams other than the last) get zero
    gradients in both frameworks and do decay.
    """
    if name not in FUSION_MODELS:
        return lambda path: False
    unused = set(model.config.modalities) - set(model.required_modalities())
    never_called = {"conv_c"} if name == "can" else {"reduce_feats_dim"} if name == "mt" else set()

    def skipped(path: tuple) -> bool:
        if not path:
            return False
        if path[0] in never_called:
            return True
        return len(path) > 1 and path[0] in ("temporal", "bn") and path[1] in unused

    return skipped


def graph_forward(model: Any, inputs: Mapping[str, jax.Array], rngs: nnx.Rngs | None = None) -> dict[str, jax.Array]:
    """Runs a model's stage graph; returns every named value, the logits under ``__output__``."""
    shapes = {k: tuple(v.shape) for k, v in inputs.items()}
    if hasattr(model, "check_inputs"):
        model.check_inputs(inputs)
    stages, out = model.graph(shapes, rngs)
    env = run_stages(stages, inputs)
    env["__output__"] = env[out]
    return env


def make_train_step(model: Any, name: str, tx: optax.GradientTransformation) -> tuple[Callable, Any]:
    """A compiled step ``(params, stats, opt_state, frozen, inputs, labels, key, weights=None) ->
    (params, stats, opt_state, loss)`` of ``model`` in training mode, and the initial ``(params,
    stats, opt_state, frozen)``. ``weights``: optional per-frame loss weights (see :func:`cross_entropy`).

    ``params``: the trainable parameters (:func:`trainable_filter`); ``stats``: BatchNorm
    statistics, updated by the batch-statistic forward; ``frozen``: everything else (the IR-50
    of fusion models), read but never returned, so a step copies nothing it does not change.
    ``params``, ``stats`` and ``opt_state`` are donated. Dropout draws from ``key``.
    """
    model.train()
    graphdef, params, stats, frozen = nnx.split(model, trainable_filter(name), nnx.BatchStat, ...)
    model.eval()

    def loss_fn(params, stats, frozen, inputs, labels, key, weights):
        # fresh Variables at this trace level: BatchNorm writes its statistics in training mode
        m = nnx.merge(graphdef, params, jax.tree.map(lambda x: x, stats), frozen)
        env = graph_forward(m, inputs, nnx.Rngs(dropout=key))
        return cross_entropy(env["__output__"], labels, weights), nnx.state(m, nnx.BatchStat)

    @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
    def step(params, stats, opt_state, frozen, inputs, labels, key, weights=None):
        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, stats, frozen, inputs, labels, key, weights
        )
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), stats, opt_state, loss

    return step, (params, stats, tx.init(params), frozen)


def make_forward(model: Any) -> tuple[Callable, Any]:
    """A compiled inference forward ``(state, inputs) -> logits`` and the model's state."""
    model.eval()
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, inputs):
        return graph_forward(nnx.merge(graphdef, state), inputs)["__output__"]

    return forward, state
