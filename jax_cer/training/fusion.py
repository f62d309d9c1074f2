"""Training and evaluation of the fusion models: ``jax-cer train`` and ``jax-cer eval``.

One run = a :class:`~jax_cer.training.configs.TrainConfig` and a work directory (layout:
:mod:`jax_cer.training.checkpoints`). :func:`train` runs a :class:`FusionTask` through the training
loop of every run (:func:`jax_cer.training.loop.run`).

Recipe (spec ``fusion-models.md`` §5): per-frame cross-entropy; SGD with Nesterov momentum 0.9 and
coupled L2 1e-4 (:func:`jax_cer.optim.sgd_nesterov`); the per-epoch step schedule
``lr_e = max(lr * gamma^floor(e / lr_step), min_lr)``; training windows of 300 frames with hop
200, shuffled per epoch; validation on whole clips after each epoch; the best model by the
validation metric (``>=``: ties go to the later epoch); on C-EXPR-DB and MELD the untrained model
is validated first and starts the tracker, as the original; the best checkpoint is scored on the
test split at the end. ``faithful_lr`` reproduces the original's bug of ignoring the configured
learning rate (base 1e-3 whatever ``lr`` says). ``optimizer`` may also be ``adamw`` or ``so``
(:func:`jax_cer.optim.so`).

Resuming: the state (parameters, BatchNorm statistics, optimizer state) and the position (epoch,
batch, step) come from the newest intact checkpoint; the data order is a function of (seed, epoch)
and dropout keys of (seed, step), so a resumed run continues exactly where it stopped: on CPU its
parameters, optimizer state and metrics equal an uninterrupted run's bit for bit. Checkpoints,
their checksums and the crash guarantees: :mod:`jax_cer.training.checkpoints`; devices and hosts:
:mod:`jax_cer.training.parallel`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jax_cer.data.pipeline import WindowBatches
from jax_cer.models import build_model, from_original_state_dict
from jax_cer.optim import sgd_nesterov, so
from jax_cer.training.checkpoints import CheckpointStore, MetricsLog, prepare_workdir
from jax_cer.training.configs import (
    CONFIGS,
    MODELS,
    OPTIMIZERS,
    SUPERVISION,
    VIDEO_RULES,
    TrainConfig,
    config_json,
    metric_names,
    read_run_config,
)
from jax_cer.training.evaluate import evaluate, predict, score
from jax_cer.training.fusion_data import frame_targets, load_data, model_inputs
from jax_cer.training.loop import Schedule, Task, finite_loss, run
from jax_cer.training.parallel import Placement, is_main, sync
from jax_cer.training.step import make_forward, make_train_step, path_names, trainable_filter, unreached_parameters

# the names of this module before the training package was split (``jax_cer.train`` is this module)
__all__ = [
    "CONFIGS",
    "MODELS",
    "OPTIMIZERS",
    "SUPERVISION",
    "VIDEO_RULES",
    "CheckpointStore",
    "FusionTask",
    "MetricsLog",
    "TrainConfig",
    "build",
    "build_run_model",
    "eval_state",
    "evaluate",
    "evaluate_checkpoint",
    "finite_loss",
    "frame_targets",
    "load_data",
    "make_optimizer",
    "metric_names",
    "model_inputs",
    "predict",
    "prepare_workdir",
    "score",
    "train",
]


def make_optimizer(cfg: TrainConfig, skipped: Callable[[tuple], bool] | None = None) -> optax.GradientTransformation:
    """The run's optimizer with an injectable learning rate (set per epoch by the schedule).

    ``skipped``: optional predicate on a parameter's key path (see
    :func:`jax_cer.training.step.unreached_parameters`); those parameters get zero updates.
    """
    if cfg.optimizer == "sgd":

        def inner(learning_rate):
            return sgd_nesterov(learning_rate, cfg.weight_decay)

    elif cfg.optimizer == "adamw":

        def inner(learning_rate):
            return optax.adamw(learning_rate, weight_decay=cfg.weight_decay)

    else:

        def inner(learning_rate):
            return so(
                learning_rate,
                density=cfg.density,
                refresh_every=cfg.refresh_every,
                weight_decay=cfg.weight_decay,
                seed=cfg.seed,
                allow_nd=True,
            )

    if skipped is None:
        return optax.inject_hyperparams(inner)(learning_rate=cfg.lr_at(0))

    def labels(params):
        return jax.tree_util.tree_map_with_path(
            lambda path, _: "skip" if skipped(path_names(path)) else "train", params
        )

    def masked(learning_rate):
        return optax.multi_transform({"train": inner(learning_rate), "skip": optax.set_to_zero()}, labels)

    return optax.inject_hyperparams(masked)(learning_rate=cfg.lr_at(0))


def _load_backbone(model: nnx.Module, path: str) -> None:
    """Loads the IR-50 weights (``res50_ir_0.887.pth`` layout: ``backbone.*``, ``logits.*``) into a fusion model."""
    ir50 = from_original_state_dict("ir50", path)
    nnx.update(model.spatial.visual, nnx.state(ir50))


def build_run_model(cfg: TrainConfig) -> nnx.Module:
    """The run's fusion model: fresh (seeded), or from ``init_from``; the IR-50 from ``backbone``."""
    kwargs: dict[str, Any] = {
        "num_classes": cfg.classes(),
        "modalities": cfg.modalities,
        "backbone_follows_train": cfg.backbone_train_mode,
    }
    if cfg.model == "lfan":
        kwargs["window_length"] = cfg.window
    if cfg.model in ("mt", "jmt"):
        kwargs.update(faithful=cfg.faithful_model, compute_unused_modalities=cfg.faithful_model)
    frames = cfg.dataset != "synthetic" and "video" in cfg.modalities
    if frames and not (cfg.backbone or cfg.init_from):
        raise ValueError(
            "the frozen IR-50 needs its pretrained weights: set backbone=/path/to/res50_ir_0.887.pth "
            "(or init_from=<original model.pt>); backbone=random trains on a random IR-50 (a pipeline check only)"
        )
    if cfg.init_from:
        model = from_original_state_dict(cfg.model, cfg.init_from, **kwargs)
    else:
        model = build_model(cfg.model, rngs=nnx.Rngs(cfg.seed), **kwargs)
    if cfg.backbone and cfg.backbone != "random":
        _load_backbone(model, cfg.backbone)
    return model


def build(cfg: TrainConfig) -> tuple[nnx.Module, Callable, Callable, tuple[Any, Any, Any], Any]:
    """Model, compiled train step and forward, the initial ``(params, stats, opt_state)`` and the frozen rest."""
    model = build_run_model(cfg)
    tx = make_optimizer(cfg, unreached_parameters(model, cfg.model))
    step, (params, stats, opt_state, frozen) = make_train_step(model, cfg.model, tx)
    forward, _ = make_forward(model)
    return model, step, forward, (params, stats, opt_state), frozen


def eval_state(model: nnx.Module, name: str, params: Any, stats: Any, frozen: Any) -> nnx.State:
    """The full model state for ``make_forward`` from the training split (``params``, ``stats``, ``frozen``)."""
    graphdef, *_ = nnx.split(model, trainable_filter(name), nnx.BatchStat, ...)
    merged = nnx.merge(graphdef, params, stats, frozen)
    return nnx.state(merged)


class FusionTask(Task):
    """A fusion run for the training loop: window batches, the jitted step, whole-clip validation.

    Builds the model, its step and forward (:func:`build`) and loads the data (:func:`load_data`,
    the z-score cache in ``workdir``); :attr:`initial_state` is ``(params, stats, opt_state)``. The
    learning rate of each epoch is set by the step schedule (``TrainConfig.lr_at``) before its
    first batch; the progress bar shows frames/s. ``placement``: the devices (default: ``cfg.devices``
    per process); each process reads only its windows of every batch.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        workdir: str | Path | None = None,
        progress: bool = False,
        placement: Placement | None = None,
    ):
        self.cfg, self.progress = cfg, progress
        self.placement = placement or Placement(cfg.devices)
        self.placement.check_batch_size(cfg.batch_size)
        self.model, self.step_fn, self.forward, self.initial_state, self.frozen = build(cfg)
        self.frozen_placed = self.placement.replicate(self.frozen)
        self.data = load_data(cfg, workdir)
        train_clips = self.data["train"]
        self.windows = WindowBatches(
            train_clips,
            cfg.batch_size,
            window=cfg.window,
            hop=cfg.hop,
            seed=cfg.seed,
            lengths=getattr(train_clips, "lengths", None),
        )
        n = len(self.windows)
        self.name = cfg.model
        self.select = cfg.select_metric()
        self.schedule = Schedule(
            steps_per_epoch=n,
            total_steps=cfg.epochs * n,
            log_every=cfg.log_every,
            eval_every=n,
            save_every=cfg.save_every,
            keep=cfg.keep,
            seed=cfg.seed,
            log_epoch_ends=True,
            # the original validates the untrained model first and starts the best-model tracker
            # with it (CER; BAH does not track it, so its first epoch always becomes the best)
            validate_untrained=cfg.spec.task == "cer",
        )

    def batches(self, epoch: int):
        cfg = self.cfg
        for n, part in self.windows.epoch_rows(epoch, self.placement.rows):
            x = {k: np.asarray(part[k], np.float32) for k in cfg.modalities}
            y = frame_targets(cfg, part)
            w = None if cfg.count_padding else np.asarray(part["valid"], np.float32)
            yield self.placement.batch((x, y, w), n)

    def begin_epoch(self, state: Any, epoch: int) -> Any:
        lr = self.placement.replicate(jnp.asarray(self.cfg.lr_at(epoch), jnp.float32))
        state[2].hyperparams["learning_rate"] = lr
        return state

    def step(self, state: Any, batch: Any, key: jax.Array) -> tuple[Any, jax.Array]:
        params, stats, opt_state = state
        x, y, w = batch
        params, stats, opt_state, loss = self.step_fn(params, stats, opt_state, self.frozen_placed, x, y, key, w)
        return (params, stats, opt_state), loss

    def log_fields(self, epoch: int) -> dict[str, Any]:
        return {"lr": self.cfg.lr_at(epoch)}

    def rate(self, steps: int, seconds: float) -> dict[str, str]:
        frames = self.cfg.batch_size * self.cfg.window * steps
        return {"frames_s": f"{frames / max(seconds, 1e-9):,.0f}"}

    def evaluate(self, state: Any, split: str) -> dict[str, float]:
        params, stats, _ = self.placement.local(state)
        full = eval_state(self.model, self.cfg.model, params, stats, self.frozen)
        return evaluate(
            self.cfg, self.forward, full, self.data[split], self.model, progress=self.progress and is_main()
        )

    def final_record(self, kept: Any, kept_step: int, step: int, last_val: dict[str, float]) -> dict[str, Any]:
        # as the original, the kept (best) model is finally scored on the test split
        return {"step": step, "epoch": self.cfg.epochs - 1, "best_step": kept_step, "test": self.evaluate(kept, "test")}


def train(
    cfg: TrainConfig,
    workdir: str | Path,
    *,
    resume: bool = True,
    stop_after_steps: int | None = None,
    progress: bool = True,
    placement: Placement | None = None,
) -> dict:
    """Trains (or resumes) a run; returns the final validation metrics and the step reached.

    ``stop_after_steps``: stop (after saving) once the global step reaches it, as an interruption.
    ``placement``: the devices (default: ``cfg.devices`` per process, see :class:`Placement`).
    """
    workdir = prepare_workdir(workdir, config_json(cfg), resume)
    if not resume and is_main():
        (workdir / "zscore.npz").unlink(missing_ok=True)
    sync("jax_cer:fusion:zscore")
    task = FusionTask(cfg, workdir, progress, placement)
    out = run(task, task.initial_state, workdir, resume=resume, stop_after_steps=stop_after_steps, progress=progress)
    if out.stopped:
        return {"step": out.step, "stopped": True, "val": out.val, "select": task.select}
    return {
        "step": out.step,
        "stopped": False,
        "val": out.val,
        "select": task.select,
        "best": out.best,
        "test": out.final["test"],
    }


def evaluate_checkpoint(
    workdir: str | Path, which: str = "best", split: str = "val", progress: bool = False
) -> dict[str, float]:
    """Metrics of a run's ``best`` or ``latest`` checkpoint on its ``val`` or ``test`` split.

    On C-EXPR-DB the test split is the validation split (the original protocol, spec §7.2); the
    synthetic data have no separate test split either.
    """
    workdir = Path(workdir)
    cfg = read_run_config(workdir)
    if not isinstance(cfg, TrainConfig):
        raise ValueError(f"{workdir} is a text run: score it with jax_cer.training.text.evaluate_text_checkpoint")
    if split not in ("val", "test"):
        raise ValueError(f"split must be 'val' or 'test', got {split!r}")
    store = CheckpointStore(workdir, cfg.keep)
    step = store.pick(which)
    task = FusionTask(cfg, workdir, progress, Placement(1))
    state = store.restore(step, task.initial_state)
    return task.evaluate(state, split)
