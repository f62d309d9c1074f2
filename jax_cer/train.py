"""Training and evaluation of the fusion models: ``jax-cer train`` and ``jax-cer eval``.

One run = a :class:`TrainConfig` and a work directory::

    <workdir>/config.json        the configuration (a resumed run must match it)
    <workdir>/metrics.jsonl      one JSON line per logged step and per validation
    <workdir>/checkpoints/latest orbax CheckpointManager: the newest states (periodic and per epoch)
    <workdir>/checkpoints/best   orbax CheckpointManager: the state with the best validation metric

Recipe (spec ``fusion-models.md`` §5): per-frame cross-entropy; SGD with Nesterov momentum 0.9 and
coupled L2 1e-4; the per-epoch step schedule ``lr_e = max(lr * gamma^floor(e / lr_step), min_lr)``;
training windows of 300 frames with hop 200, shuffled per epoch; validation on whole clips; the
best model by validation weighted F1 (``>=``: ties go to the later epoch). ``faithful_lr`` reproduces
the original's bug of ignoring the configured learning rate (base 1e-3 whatever ``lr`` says).
``optimizer`` may also be ``adamw`` or ``so`` (:func:`jax_cer.optim.so`).

Resuming: the state (parameters, BatchNorm statistics, optimizer state) and the position (epoch,
batch, step) come from the newest checkpoint; the data order is a function of (seed, epoch) and
dropout keys of (seed, step), so a resumed run continues exactly where it stopped: on CPU its
parameters, optimizer state and metrics equal an uninterrupted run's bit for bit. Orbax writes a
checkpoint into a temporary folder and renames it when complete, so a crash during a save leaves
the previous checkpoint as the newest restorable one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jax_cer import metrics
from jax_cer.data.pipeline import WindowBatches, apply_zscore, eval_sample, zscore_stats
from jax_cer.data.synthetic import synthetic_clips

OPTIMIZERS = ("sgd", "adamw", "so")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a run depends on (saved as ``config.json``)."""

    model: str = "can"
    dataset: str = "synthetic"
    num_classes: int = 7
    epochs: int = 3
    batch_size: int = 4
    window: int = 300
    hop: int = 200
    optimizer: str = "sgd"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    gamma: float = 0.1
    lr_step: int = 40
    min_lr: float = 1e-7
    faithful_lr: bool = False
    density: float = 5e-3
    refresh_every: int = 20
    seed: int = 0
    log_every: int = 10
    save_every: int = 0
    """Also save every N steps inside an epoch (0: at epoch ends only)."""
    keep: int = 2
    synthetic_clips: int = 24
    synthetic_lengths: tuple[int, int] = (80, 400)

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.dataset != "synthetic":
            raise ValueError(
                f"dataset {self.dataset!r}: only 'synthetic' trains from this module so far; the TFDS builders "
                "for C-EXPR-DB, MELD and BAH are being wired in (issue 5)"
            )
        for name in ("epochs", "batch_size", "window", "hop", "lr_step", "keep"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def base_lr(self) -> float:
        return 1e-3 if self.faithful_lr else self.lr

    def lr_at(self, epoch: int) -> float:
        """The step schedule ("MYSTEP") of spec §5.3, stepped once per epoch."""
        return max(self.base_lr() * self.gamma ** (epoch // self.lr_step), self.min_lr)


CONFIGS: dict[str, TrainConfig] = {
    # the synthetic data is learnable in a few epochs with a larger learning rate than the recipe's
    "synthetic-can": TrainConfig(model="can", lr=0.05),
    "synthetic-lfan": TrainConfig(model="lfan", lr=0.05),
    "synthetic-mt": TrainConfig(model="mt", lr=0.05),
    "synthetic-jmt": TrainConfig(model="jmt", lr=0.05),
    "synthetic-can-adamw": TrainConfig(model="can", optimizer="adamw", lr=1e-3, weight_decay=1e-4),
    "synthetic-can-so": TrainConfig(model="can", optimizer="so", lr=1e-3, weight_decay=0.0, density=0.05),
}


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """The run's optimizer with an injectable learning rate (set per epoch by the schedule)."""
    if cfg.optimizer == "sgd":

        def sgd(learning_rate):
            return optax.chain(
                optax.add_decayed_weights(cfg.weight_decay), optax.sgd(learning_rate, momentum=0.9, nesterov=True)
            )

        return optax.inject_hyperparams(sgd)(learning_rate=cfg.lr_at(0))
    if cfg.optimizer == "adamw":
        return optax.inject_hyperparams(optax.adamw)(learning_rate=cfg.lr_at(0), weight_decay=cfg.weight_decay)
    from jax_cer.optim import so

    def sparse(learning_rate):
        return so(
            learning_rate,
            density=cfg.density,
            refresh_every=cfg.refresh_every,
            weight_decay=cfg.weight_decay,
            seed=cfg.seed,
            allow_nd=True,
        )

    return optax.inject_hyperparams(sparse)(learning_rate=cfg.lr_at(0))


def load_data(cfg: TrainConfig) -> tuple[list[dict], list[dict]]:
    """Train and validation clips, z-scored with statistics over train + val (as the original)."""
    clips = synthetic_clips(
        cfg.synthetic_clips, num_classes=cfg.num_classes, seed=cfg.seed, lengths=cfg.synthetic_lengths
    )
    n_val = max(cfg.num_classes, len(clips) // 4)
    train, val = clips[n_val:], clips[:n_val]
    if not train or not val:
        raise ValueError(f"empty split: {len(train)} train and {len(val)} validation clips")
    stats = zscore_stats(train + val)
    return [apply_zscore(c, stats) for c in train], [apply_zscore(c, stats) for c in val]


def _inputs(sample: dict) -> dict[str, jax.Array]:
    return {k: jnp.asarray(sample[k], jnp.float32) for k in ("video", "vggish", "bert") if k in sample}


def evaluate(model_name: str, forward, state, clips: Sequence[dict], window: int, model=None) -> dict[str, float]:
    """Frame-level (pooled, real frames only) and video-level (mean-probs rule) metrics on whole clips."""
    labels, preds, clip_labels, clip_preds, losses = [], [], [], [], []
    for clip in clips:
        n = clip["label"].shape[0]
        x = {k: v[None] for k, v in _inputs(eval_sample(clip, window)).items()}
        if model_name == "lfan" and n > window:
            from jax_cer.models.lfan import sliding_window_logits

            logits = sliding_window_logits(model, x, forward=lambda inp: forward(state, inp))
        else:
            logits = forward(state, x)
        z = np.asarray(logits[0, :n], np.float64)
        y = clip["label"]
        logp = z - z.max(1, keepdims=True) - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True))
        losses.append(-logp[np.arange(n), y])
        labels.append(y)
        preds.append(np.argmax(z, axis=1))
        clip_labels.append(int(y[0]))
        clip_preds.append(metrics.aggregate_video(z, "mean_probs"))
    y, p = np.concatenate(labels), np.concatenate(preds)
    return {
        "loss": float(np.mean(np.concatenate(losses))),
        "accuracy": metrics.accuracy(y, p),
        "macro_f1": metrics.macro_f1(y, p),
        "weighted_f1": metrics.weighted_f1(y, p),
        "video_accuracy": metrics.accuracy(clip_labels, clip_preds),
        "video_weighted_f1": metrics.weighted_f1(clip_labels, clip_preds),
    }


class _Log:
    """``metrics.jsonl``: appended line by line; on resume, lines after the restored step are dropped."""

    def __init__(self, path: Path, upto_step: int | None):
        self.path = path
        lines = path.read_text().splitlines() if path.is_file() else []
        if upto_step is None:
            lines = []
        else:
            lines = [ln for ln in lines if ln.strip() and json.loads(ln)["step"] <= upto_step]
        path.write_text("".join(ln + "\n" for ln in lines))

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")


def _managers(workdir: Path, keep: int):
    import orbax.checkpoint as ocp

    latest = ocp.CheckpointManager(
        (workdir / "checkpoints" / "latest").absolute(),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
    )
    best = ocp.CheckpointManager(
        (workdir / "checkpoints" / "best").absolute(),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=1, best_fn=lambda m: m["weighted_f1"], best_mode="max", create=True
        ),
    )
    return latest, best


def _save(manager, step: int, state, meta: dict, metrics_: dict | None = None) -> None:
    import orbax.checkpoint as ocp

    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    manager.save(step, args=args, metrics=metrics_, force=True)


def restore(manager, target, step: int | None = None) -> tuple[Any, dict]:
    """The state (restored into ``target``'s structure and dtypes) and metadata of a checkpoint."""
    import orbax.checkpoint as ocp

    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {manager.directory}")
    out = manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore())
    )
    return out["state"], out["meta"]


def build(cfg: TrainConfig):
    """Model, compiled train step and forward, and the initial ``(params, stats, opt_state)``."""
    from flax import nnx

    from jax_cer.models import build_model
    from jax_cer.train_step import make_forward, make_train_step

    extra = {"window_length": cfg.window} if cfg.model == "lfan" else {}
    model = build_model(cfg.model, rngs=nnx.Rngs(cfg.seed), num_classes=cfg.num_classes, **extra)
    step, (params, stats, opt_state, frozen) = make_train_step(model, cfg.model, make_optimizer(cfg))
    forward, _ = make_forward(model)
    return model, step, forward, (params, stats, opt_state), frozen


def eval_state(model, name: str, params, stats, frozen):
    """The full model state for ``make_forward`` from the training split."""
    from flax import nnx

    from jax_cer.train_step import trainable_filter

    graphdef, *_ = nnx.split(model, trainable_filter(name), nnx.BatchStat, ...)
    merged = nnx.merge(graphdef, params, stats, frozen)
    return nnx.state(merged)


def train(
    cfg: TrainConfig,
    workdir: str | Path,
    *,
    resume: bool = True,
    stop_after_steps: int | None = None,
    progress: bool = True,
) -> dict:
    """Trains (or resumes) a run; returns the final validation metrics and the step reached.

    ``stop_after_steps``: stop (after saving) once the global step reaches it, as an interruption.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cfg_path = workdir / "config.json"
    cfg_json = json.loads(json.dumps(dataclasses.asdict(cfg)))
    if cfg_path.is_file() and resume and json.loads(cfg_path.read_text()) != cfg_json:
        raise ValueError(
            f"{cfg_path} holds a different configuration; use a new work directory or --no-resume to start over"
        )
    cfg_path.write_text(json.dumps(cfg_json, indent=1) + "\n")
    train_clips, val_clips = load_data(cfg)
    batches = WindowBatches(train_clips, cfg.batch_size, window=cfg.window, hop=cfg.hop, seed=cfg.seed)
    model, step_fn, forward, (params, stats, opt_state), frozen = build(cfg)
    latest, best = _managers(workdir, cfg.keep)
    epoch, start_batch, step, best_f1 = 0, 0, 0, -math.inf
    if resume and latest.latest_step() is not None:
        (params, stats, opt_state), meta = restore(latest, (params, stats, opt_state))
        epoch, start_batch, step, best_f1 = meta["epoch"], meta["batch"], meta["step"], meta["best_f1"]
    elif not resume:
        for m in (latest, best):
            for s in m.all_steps():
                m.delete(s)
    log = _Log(workdir / "metrics.jsonl", step if resume else None)
    key = jax.random.key(cfg.seed)
    total = cfg.epochs * len(batches)
    frames_per_batch = cfg.batch_size * cfg.window
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=step, desc=f"train {cfg.model}", unit="step", file=sys.stderr)
    last = {}
    try:
        while epoch < cfg.epochs:
            opt_state.hyperparams["learning_rate"] = jnp.asarray(cfg.lr_at(epoch), jnp.float32)
            t0 = time.perf_counter()
            for b, batch in enumerate(batches.epoch(epoch)):
                if b < start_batch:
                    continue
                x = _inputs(batch)
                y = jnp.asarray(batch["label"], jnp.int32)
                params, stats, opt_state, loss = step_fn(
                    params, stats, opt_state, frozen, x, y, jax.random.fold_in(key, step)
                )
                step += 1
                if step % cfg.log_every == 0 or b == len(batches) - 1:
                    loss_f = float(loss)
                    fps = frames_per_batch * (b + 1 - start_batch) / (time.perf_counter() - t0)
                    log.write({"step": step, "epoch": epoch, "loss": loss_f, "lr": cfg.lr_at(epoch)})
                    if bar is not None:
                        bar.set_postfix(epoch=epoch, loss=f"{loss_f:.4f}", frames_s=f"{fps:,.0f}")
                if bar is not None:
                    bar.update(1)
                position = {"epoch": epoch, "batch": b + 1, "step": step, "best_f1": best_f1}
                if b + 1 == len(batches):
                    position = {**position, "epoch": epoch + 1, "batch": 0}
                    state = eval_state(model, cfg.model, params, stats, frozen)
                    last = evaluate(cfg.model, forward, state, val_clips, cfg.window, model)
                    log.write({"step": step, "epoch": epoch, "val": last})
                    if last["weighted_f1"] >= best_f1:
                        best_f1 = last["weighted_f1"]
                        position["best_f1"] = best_f1
                        _save(best, step, (params, stats, opt_state), position, {"weighted_f1": best_f1})
                    _save(latest, step, (params, stats, opt_state), position)
                elif cfg.save_every and step % cfg.save_every == 0:
                    _save(latest, step, (params, stats, opt_state), position)
                if stop_after_steps is not None and step >= stop_after_steps:
                    if latest.latest_step() != step:
                        _save(latest, step, (params, stats, opt_state), position)
                    latest.wait_until_finished()
                    best.wait_until_finished()
                    return {"step": step, "stopped": True, "val": last}
            epoch, start_batch = epoch + 1, 0
    except KeyboardInterrupt:
        print(f"\ninterrupted at step {step}; resume with the same command", file=sys.stderr)
        raise
    finally:
        if bar is not None:
            bar.close()
        latest.wait_until_finished()
        best.wait_until_finished()
    return {"step": step, "stopped": False, "val": last, "best_weighted_f1": best_f1}


def evaluate_checkpoint(workdir: str | Path, which: str = "best") -> dict[str, float]:
    """Validation metrics of a run's ``best`` or ``latest`` checkpoint."""
    workdir = Path(workdir)
    cfg_path = workdir / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} is missing: is {workdir} a jax-cer train work directory?")
    raw = json.loads(cfg_path.read_text())
    raw["synthetic_lengths"] = tuple(raw["synthetic_lengths"])
    cfg = TrainConfig(**raw)
    _, val_clips = load_data(cfg)
    model, _, forward, init, frozen = build(cfg)
    latest, best = _managers(workdir, cfg.keep)
    manager = best if which == "best" else latest
    step = manager.best_step() if which == "best" else manager.latest_step()
    (params, stats, _opt), _meta = restore(manager, init, step)
    state = eval_state(model, cfg.model, params, stats, frozen)
    return evaluate(cfg.model, forward, state, val_clips, cfg.window, model)
