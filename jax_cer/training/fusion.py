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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jax_cer import metrics
from jax_cer.data.clips import ClipSource, DatasetSpec, dataset_spec, open_splits
from jax_cer.data.pipeline import ZSCORE_KEYS, WindowBatches, apply_zscore, eval_sample, zscore_stats
from jax_cer.data.synthetic import synthetic_clips

OPTIMIZERS = ("sgd", "adamw", "so")
MODELS = ("lfan", "can", "mt", "jmt")
SUPERVISION = ("frame", "global")
VIDEO_RULES = ("vote", "mean_logits", "mean_probs")


def metric_names(task: str, ignore_class: int | None = None) -> tuple[str, ...]:
    """The validation metrics :func:`evaluate` reports for a task (``cer`` or ``bah``)."""
    if task == "bah":
        return ("loss", "accuracy", "f1_0", "f1_1", "avgf1", "weighted_f1", "ap")
    base = ("accuracy", "macro_f1", "weighted_f1")
    names = base + tuple(f"video_{r}_{m}" for r in VIDEO_RULES for m in base)
    if ignore_class is not None:
        names = names + tuple(f"{m}_ignore{ignore_class}" for m in names)
    return ("loss",) + names


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a run depends on (saved as ``config.json``; ``jax-cer train --set KEY=VALUE``).

    Data: ``dataset`` is ``synthetic`` (generated in memory) or ``c-expr-db``, ``meld``, ``bah``:
    built once by the TFDS builders from ``manual_dir`` (laid out as the original repos, spec §7)
    into ``data_dir`` (default ``~/tensorflow_datasets``), then read from there. ``fold`` picks the
    C-EXPR-DB fold; ``use_other_class`` keeps its Other clips (8 classes; the metrics are also
    reported with class 7 ignored). ``modalities``: the model's inputs, in order (the first is
    LFAN's leader). ``backbone``: the IR-50 weights (``res50_ir_0.887.pth``, or .npz/.safetensors)
    when frames are an input; ``random`` leaves it random (a pipeline check, not a result).
    ``init_from``: start from an original fusion checkpoint (``model.pt``) instead.

    Recipe (spec §5) and the original's quirks (fixed by default, reproduced under a flag):
    ``faithful_lr`` (base lr 1e-3 whatever ``lr`` says), ``count_padding`` (padded frames count in
    the loss and the metrics), ``backbone_train_mode`` (the frozen IR-50 runs in training mode:
    batch statistics, Dropout 0.4), ``faithful_model`` (MT/JMT attention over the original's axis,
    and the discarded bert TCN still runs). ``supervision``: ``frame`` targets, or ``global`` (BAH's
    ``video_global_sup``: every frame gets its window's max label). ``select``: the validation
    metric of the best checkpoint (empty: the dataset's, see :data:`jax_cer.data.clips.DATASETS`).
    """

    model: str = "can"
    dataset: str = "synthetic"
    manual_dir: str = ""
    data_dir: str = ""
    fold: int = 0
    use_other_class: bool = False
    modalities: tuple[str, ...] = ("video", "vggish", "bert")
    backbone: str = ""
    init_from: str = ""
    num_classes: int = 0
    """0: the dataset's (7, 8 with Other, 2 for BAH)."""
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
    supervision: str = "frame"
    count_padding: bool = False
    backbone_train_mode: bool = False
    faithful_model: bool = False
    select: str = ""
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
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {self.model!r}")
        if self.supervision not in SUPERVISION:
            raise ValueError(f"supervision must be one of {SUPERVISION}, got {self.supervision!r}")
        spec = dataset_spec(self.dataset)
        if spec.tfds_name is not None:
            spec.tfds_config(self.fold, self.use_other_class)  # checks the fold
        for name in ("epochs", "batch_size", "window", "hop", "lr_step", "keep"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        known = ("video", "vggish", "bert")
        if (
            not self.modalities
            or any(m not in known for m in self.modalities)
            or len(set(self.modalities)) != len(self.modalities)
        ):
            raise ValueError(f"modalities must be distinct names from {known}, got {self.modalities}")
        if self.model in ("mt", "jmt") and not {"video", "vggish"} <= set(self.modalities):
            raise ValueError(f"{self.model} needs the modalities video and vggish, got {self.modalities}")
        if self.num_classes and self.num_classes != len(self.class_names()) and self.dataset != "synthetic":
            raise ValueError(
                f"num_classes={self.num_classes} but dataset {self.dataset!r} has {len(self.class_names())} classes"
            )
        if self.num_classes < 0 or (self.dataset == "synthetic" and self.num_classes == 1):
            raise ValueError(f"num_classes must be 0 (the dataset's) or >= 2, got {self.num_classes}")
        names = metric_names(spec.task, self.ignore_class())
        if self.select_metric() not in names:
            raise ValueError(f"select={self.select_metric()!r} is not a validation metric of {self.dataset}: {names}")

    @property
    def spec(self) -> DatasetSpec:
        return dataset_spec(self.dataset)

    def class_names(self) -> tuple[str, ...]:
        return self.spec.class_names(self.use_other_class)

    def classes(self) -> int:
        """The number of classes K of the model's output."""
        if self.dataset == "synthetic":
            return self.num_classes or 7
        return len(self.class_names())

    def ignore_class(self) -> int | None:
        """C-EXPR-DB with Other: the class id whose second metric set ignores it (spec §6.1)."""
        if self.spec.other_class is not None and self.use_other_class:
            return self.spec.classes.index(self.spec.other_class)
        return None

    def select_metric(self) -> str:
        return self.select or self.spec.select

    def base_lr(self) -> float:
        return 1e-3 if self.faithful_lr else self.lr

    def lr_at(self, epoch: int) -> float:
        """The step schedule ("MYSTEP") of spec §5.3, stepped once per epoch."""
        return max(self.base_lr() * self.gamma ** (epoch // self.lr_step), self.min_lr)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> TrainConfig:
        """A config from its ``config.json`` (lists back to tuples; unknown keys are an error)."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - set(fields))
        if unknown:
            raise ValueError(f"config.json has unknown field(s) {unknown}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})


def _recipe(model: str, dataset: str, **kw) -> TrainConfig:
    return TrainConfig(model=model, dataset=dataset, **kw)


# The code defaults of the original (spec §5.3): 100 epochs, batch 16, lr 1e-3 (what the published runs
# effectively used), gamma 0.1 every 40 epochs; the BAH README's run: 60 epochs, batch 4, windows of
# 696 frames with hop 48, gamma 0.9 every 50 epochs. C-EXPR-DB and MELD also have the README's LFAN run.
_CER = {"epochs": 100, "batch_size": 16, "gamma": 0.1, "lr_step": 40}
_CER_README = {"epochs": 1000, "batch_size": 2, "gamma": 0.9, "lr_step": 50}
_BAH = {"epochs": 60, "batch_size": 4, "window": 696, "hop": 48, "gamma": 0.9, "lr_step": 50}

CONFIGS: dict[str, TrainConfig] = {
    # the synthetic data is learnable in a few epochs with a larger learning rate than the recipe's
    "synthetic-can": TrainConfig(model="can", lr=0.05),
    "synthetic-lfan": TrainConfig(model="lfan", lr=0.05),
    "synthetic-mt": TrainConfig(model="mt", lr=0.05),
    "synthetic-jmt": TrainConfig(model="jmt", lr=0.05),
    "synthetic-can-adamw": TrainConfig(model="can", optimizer="adamw", lr=1e-3, weight_decay=1e-4),
    "synthetic-can-so": TrainConfig(model="can", optimizer="so", lr=1e-3, weight_decay=0.0, density=0.05),
    **{f"c-expr-db-{m}": _recipe(m, "c-expr-db", **_CER) for m in MODELS},
    "c-expr-db-lfan-readme": _recipe("lfan", "c-expr-db", **_CER_README),
    **{f"meld-{m}": _recipe(m, "meld", **_CER) for m in MODELS},
    **{f"bah-{m}": _recipe(m, "bah", **_BAH) for m in MODELS},
}


def make_optimizer(cfg: TrainConfig, skipped=None) -> optax.GradientTransformation:
    """The run's optimizer with an injectable learning rate (set per epoch by the schedule).

    ``skipped``: optional predicate on a parameter's key path (see
    :func:`jax_cer.training.step.unreached_parameters`); those parameters get zero updates.
    """
    if cfg.optimizer == "sgd":

        def inner(learning_rate):
            return optax.chain(
                optax.add_decayed_weights(cfg.weight_decay), optax.sgd(learning_rate, momentum=0.9, nesterov=True)
            )

    elif cfg.optimizer == "adamw":

        def inner(learning_rate):
            return optax.adamw(learning_rate, weight_decay=cfg.weight_decay)

    else:
        from jax_cer.optim import so

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

    from jax_cer.training.step import _key_name

    def labels(params):
        return jax.tree_util.tree_map_with_path(
            lambda path, _: "skip" if skipped(tuple(_key_name(k) for k in path)) else "train", params
        )

    def masked(learning_rate):
        return optax.multi_transform({"train": inner(learning_rate), "skip": optax.set_to_zero()}, labels)

    return optax.inject_hyperparams(masked)(learning_rate=cfg.lr_at(0))


def _synthetic(cfg: TrainConfig) -> dict[str, list[dict]]:
    clips = synthetic_clips(
        cfg.synthetic_clips, num_classes=cfg.classes(), seed=cfg.seed, lengths=cfg.synthetic_lengths
    )
    n_val = max(cfg.classes(), len(clips) // 4)
    train, val = clips[n_val:], clips[:n_val]
    if not train or not val:
        raise ValueError(f"empty split: {len(train)} train and {len(val)} validation clips")
    return {"train": train, "val": val, "test": val}


def _open(cfg: TrainConfig) -> dict[str, Sequence]:
    """The built dataset's splits; builds it from ``manual_dir`` the first time."""
    data_dir = cfg.data_dir or "~/tensorflow_datasets"
    name = cfg.spec.tfds_config(cfg.fold, cfg.use_other_class)
    if not cfg.manual_dir:
        built = Path(data_dir).expanduser() / name
        if not built.is_dir():
            raise ValueError(
                f"dataset {cfg.dataset!r} is not built in {data_dir} ({built} is missing): set manual_dir to the "
                "folder that holds folds/<DS>/split-<k>/ and <DS>/features/compacted_48/ as in the original repos "
                "(README, Datasets), e.g. --manual-dir /data/cer"
            )
    return open_splits(
        cfg.dataset,
        manual_dir=cfg.manual_dir or None,
        data_dir=data_dir,
        fold=cfg.fold,
        use_other_class=cfg.use_other_class,
    )


def load_data(cfg: TrainConfig, workdir: str | Path | None = None) -> dict[str, Sequence]:
    """``{"train", "val", "test"}`` clips, z-scored with statistics over train + val (as the original).

    For the real datasets the clips are read lazily; the statistics (two passes over train and val)
    and the train clips' lengths are cached in ``<workdir>/zscore.npz``.
    """
    if cfg.dataset == "synthetic":
        splits = _synthetic(cfg)
        stats = zscore_stats(splits["train"] + splits["val"])
        return {k: [apply_zscore(c, stats) for c in v] for k, v in splits.items()}
    sources = _open(cfg)
    for split in ("train", "val"):
        if len(sources[split]) == 0:
            raise ValueError(f"dataset {cfg.dataset!r} fold {cfg.fold}: the {split} split is empty")
    raw = {k: ClipSource(v) for k, v in sources.items()}
    cache = Path(workdir) / "zscore.npz" if workdir is not None else None
    if cache is not None and cache.is_file():
        with np.load(cache) as z:
            stats = {k: {"mean": z[f"{k}_mean"], "std": z[f"{k}_std"]} for k in ZSCORE_KEYS}
            lengths = [int(n) for n in z["train_lengths"]]
    else:
        both = _Concat([raw["train"], raw["val"]])
        stats = zscore_stats(both)
        lengths = raw["train"].lengths
        if cache is not None:
            arrays = {f"{k}_{s}": stats[k][s] for k in ZSCORE_KEYS for s in ("mean", "std")}
            tmp = cache.with_suffix(".tmp.npz")
            np.savez(tmp, train_lengths=np.asarray(lengths, np.int64), **arrays)
            tmp.replace(cache)
    return {k: ClipSource(v, stats=stats, lengths=lengths if k == "train" else None) for k, v in sources.items()}


class _Concat(Sequence):
    """Raw clips of several sources, one after the other (for the statistics)."""

    def __init__(self, parts: Sequence[ClipSource]):
        self.parts = parts

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def __getitem__(self, i):
        for p in self.parts:
            if i < len(p):
                return p.raw(i)
            i -= len(p)
        raise IndexError(i)


def model_inputs(sample: dict, modalities: Sequence[str]) -> dict[str, jax.Array]:
    return {k: jnp.asarray(sample[k], jnp.float32) for k in modalities}


def predict(cfg: TrainConfig, forward, state, clips: Sequence[dict], model=None, progress: bool = False):
    """Per-clip ``(frame labels [n'], logits [n', K])`` on whole clips (one clip per batch, spec §1.5).

    ``n'`` is the clip's length, or the window length for shorter clips when ``count_padding``
    (the original scores the padded frames). LFAN runs the sliding-window evaluation on longer clips.
    """
    out = []
    it = range(len(clips))
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="eval", unit="clip", file=sys.stderr, leave=False)
    for i in it:
        clip = clips[i]
        n = clip["label"].shape[0]
        sample = eval_sample(clip, cfg.window)
        x = {k: v[None] for k, v in model_inputs(sample, cfg.modalities).items()}
        if cfg.model == "lfan" and n > cfg.window:
            from jax_cer.models.lfan import sliding_window_logits

            logits = sliding_window_logits(model, x, cfg.hop, forward=lambda inp: forward(state, inp))
        else:
            logits = forward(state, x)
        keep = max(n, cfg.window) if cfg.count_padding else n
        out.append((np.asarray(sample["label"][:keep], np.int64), np.asarray(logits[0, :keep], np.float64)))
    return out


def score(task: str, outputs: Sequence[tuple[np.ndarray, np.ndarray]], ignore_class: int | None = None) -> dict:
    """The papers' validation metrics (spec §6) from :func:`predict`'s per-clip labels and logits."""
    y = np.concatenate([lab for lab, _ in outputs])
    z = np.concatenate([logit for _, logit in outputs])
    logp = z - z.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    res = {"loss": float(-np.mean(logp[np.arange(y.size), y]))}
    p = np.argmax(z, axis=1)
    if task == "bah":
        res.update(
            accuracy=metrics.accuracy(y, p),
            f1_0=_binary_f1(y, p, 0),
            f1_1=_binary_f1(y, p, 1),
            avgf1=metrics.bah_avgf1(y, p),
            weighted_f1=metrics.weighted_f1(y, p),
            ap=metrics.bah_average_precision(metrics.stable_softmax(z)[:, 1], y),
        )
        return res
    res.update(_cer(outputs, None))
    if ignore_class is not None:
        res.update({f"{k}_ignore{ignore_class}": v for k, v in _cer(outputs, ignore_class).items()})
    return res


def _binary_f1(y: np.ndarray, p: np.ndarray, c: int) -> float:
    tp = int(np.sum((y == c) & (p == c)))
    denom = 2 * tp + int(np.sum((y != c) & (p == c))) + int(np.sum((y == c) & (p != c)))
    return 2 * tp / denom if denom else 0.0


def _cer(outputs, ignore: int | None) -> dict[str, float]:
    """Frame-level (pooled) and video-level metrics; ``ignore``: drop that logit column and the
    frames and clips labelled with it (C-EXPR-DB's "ignore 7")."""
    ys, preds, clip_y, clip_logits = [], [], [], []
    for lab, z in outputs:
        if ignore is not None:
            z = np.delete(z, ignore, axis=1)
            keep = lab != ignore
            lab, zk = lab[keep], z[keep]
        else:
            zk = z
        if lab.size:  # clips of the ignored class drop out entirely
            ys.append(lab)
            preds.append(np.argmax(zk, axis=1))
            clip_y.append(int(lab[0]))
            clip_logits.append(zk)
    if not ys:
        raise ValueError("no frame left to score" + (f" once class {ignore} is ignored" if ignore is not None else ""))
    y, p = np.concatenate(ys), np.concatenate(preds)
    out = {
        "accuracy": metrics.accuracy(y, p),
        "macro_f1": metrics.macro_f1(y, p),
        "weighted_f1": metrics.weighted_f1(y, p),
    }
    for rule in VIDEO_RULES:
        cp = metrics.aggregate_videos(clip_logits, rule)
        out[f"video_{rule}_accuracy"] = metrics.accuracy(clip_y, cp)
        out[f"video_{rule}_macro_f1"] = metrics.macro_f1(clip_y, cp)
        out[f"video_{rule}_weighted_f1"] = metrics.weighted_f1(clip_y, cp)
    return out


def evaluate(cfg: TrainConfig, forward, state, clips: Sequence[dict], model=None, progress: bool = False) -> dict:
    """Validation (or test) metrics of a model state on whole clips (:func:`predict`, :func:`score`)."""
    return score(cfg.spec.task, predict(cfg, forward, state, clips, model, progress), cfg.ignore_class())


class MetricsLog:
    """``metrics.jsonl``: appended line by line; on resume, lines after the restored step (and the
    final test record) are dropped."""

    def __init__(self, path: Path, upto_step: int | None):
        self.path = path
        lines = path.read_text().splitlines() if path.is_file() else []
        if upto_step is None:
            lines = []
        else:
            # the final test record is written again when the run ends
            lines = [ln for ln in lines if ln.strip() and json.loads(ln)["step"] <= upto_step and "test" not in ln]
        path.write_text("".join(ln + "\n" for ln in lines))

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")


def checkpoint_managers(workdir: Path, keep: int):
    import orbax.checkpoint as ocp

    latest = ocp.CheckpointManager(
        (workdir / "checkpoints" / "latest").absolute(),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
    )
    best = ocp.CheckpointManager(
        (workdir / "checkpoints" / "best").absolute(),
        options=ocp.CheckpointManagerOptions(max_to_keep=1, best_fn=lambda m: m["score"], best_mode="max", create=True),
    )
    return latest, best


def save_checkpoint(manager, step: int, state, meta: dict, metrics_: dict | None = None) -> None:
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


def _load_backbone(model, path: str) -> None:
    """Loads the IR-50 weights (``res50_ir_0.887.pth`` layout: ``backbone.*``, ``logits.*``) into a fusion model."""
    from flax import nnx

    from jax_cer.models import from_original_state_dict

    ir50 = from_original_state_dict("ir50", path)
    nnx.update(model.spatial.visual, nnx.state(ir50))


def build_run_model(cfg: TrainConfig):
    """The run's fusion model: fresh (seeded), or from ``init_from``; the IR-50 from ``backbone``."""
    from flax import nnx

    from jax_cer.models import build_model, from_original_state_dict

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


def build(cfg: TrainConfig):
    """Model, compiled train step and forward, and the initial ``(params, stats, opt_state)``."""
    from jax_cer.training.step import make_forward, make_train_step, unreached_parameters

    model = build_run_model(cfg)
    tx = make_optimizer(cfg, unreached_parameters(model, cfg.model))
    step, (params, stats, opt_state, frozen) = make_train_step(model, cfg.model, tx)
    forward, _ = make_forward(model)
    return model, step, forward, (params, stats, opt_state), frozen


def eval_state(model, name: str, params, stats, frozen):
    """The full model state for ``make_forward`` from the training split."""
    from flax import nnx

    from jax_cer.training.step import trainable_filter

    graphdef, *_ = nnx.split(model, trainable_filter(name), nnx.BatchStat, ...)
    merged = nnx.merge(graphdef, params, stats, frozen)
    return nnx.state(merged)


def frame_targets(cfg: TrainConfig, batch: Mapping[str, np.ndarray]) -> np.ndarray:
    y = np.asarray(batch["label"], np.int32)
    if cfg.supervision == "global":  # BAH video_global_sup: the window's max label at every frame
        y = np.broadcast_to(y.max(axis=1, keepdims=True), y.shape)
    return y


def prepare_workdir(workdir: str | Path, cfg_json: dict, resume: bool) -> Path:
    """Creates the work directory and writes ``config.json``; resuming under another configuration is an error."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cfg_path = workdir / "config.json"
    if cfg_path.is_file() and resume and json.loads(cfg_path.read_text()) != cfg_json:
        raise ValueError(
            f"{cfg_path} holds a different configuration; use a new work directory or --no-resume to start over"
        )
    cfg_path.write_text(json.dumps(cfg_json, indent=1) + "\n")
    return workdir


def finite_loss(loss, where: str, latest, workdir: Path) -> float:
    """The logged loss as a float; a non-finite one stops the run, naming the last good checkpoint."""
    value = float(loss)
    if not math.isfinite(value):
        raise FloatingPointError(
            f"the training loss is {value} at {where}; the last good checkpoint is step {latest.latest_step()} "
            f"in {workdir / 'checkpoints' / 'latest'}"
        )
    return value


def settle(bar, *managers) -> None:
    """End of a run, normal or not: close the progress bar, wait for the checkpoint writes."""
    if bar is not None:
        bar.close()
    for m in managers:
        m.wait_until_finished()


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
    workdir = prepare_workdir(workdir, json.loads(json.dumps(dataclasses.asdict(cfg))), resume)
    if not resume:
        (workdir / "zscore.npz").unlink(missing_ok=True)
    model, step_fn, forward, (params, stats, opt_state), frozen = build(cfg)
    data = load_data(cfg, workdir)
    train_clips, val_clips = data["train"], data["val"]
    lengths = getattr(train_clips, "lengths", None)
    batches = WindowBatches(train_clips, cfg.batch_size, window=cfg.window, hop=cfg.hop, seed=cfg.seed, lengths=lengths)
    latest, best = checkpoint_managers(workdir, cfg.keep)
    select = cfg.select_metric()
    epoch, start_batch, step, best_score = 0, 0, 0, -math.inf
    if resume and latest.latest_step() is not None:
        (params, stats, opt_state), meta = restore(latest, (params, stats, opt_state))
        epoch, start_batch, step, best_score = meta["epoch"], meta["batch"], meta["step"], meta["best"]
    elif not resume:
        for m in (latest, best):
            for s in m.all_steps():
                m.delete(s)
    log = MetricsLog(workdir / "metrics.jsonl", step if resume else None)
    key = jax.random.key(cfg.seed)
    total = cfg.epochs * len(batches)
    frames_per_batch = cfg.batch_size * cfg.window
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=step, desc=f"train {cfg.model}", unit="step", file=sys.stderr)
    last = {}
    if step == 0 and cfg.spec.task == "cer" and best.latest_step() is None:
        # the original validates the untrained model first and starts the best-model tracker with
        # it (CER; BAH does not track it, so its first epoch always becomes the best)
        state = eval_state(model, cfg.model, params, stats, frozen)
        first = evaluate(cfg, forward, state, val_clips, model, progress=progress)
        log.write({"step": 0, "epoch": -1, "val": first})
        best_score = first[select]
        save_checkpoint(best, 0, (params, stats, opt_state), {"epoch": 0, "batch": 0, "step": 0, "best": best_score},
              {"score": best_score})  # fmt: skip
    try:
        while epoch < cfg.epochs:
            opt_state.hyperparams["learning_rate"] = jnp.asarray(cfg.lr_at(epoch), jnp.float32)
            t0 = time.perf_counter()
            for b, batch in enumerate(batches.epoch(epoch)):
                if b < start_batch:
                    continue
                x = model_inputs(batch, cfg.modalities)
                y = jnp.asarray(frame_targets(cfg, batch))
                w = None if cfg.count_padding else jnp.asarray(batch["valid"], jnp.float32)
                params, stats, opt_state, loss = step_fn(
                    params, stats, opt_state, frozen, x, y, jax.random.fold_in(key, step), w
                )
                step += 1
                if step % cfg.log_every == 0 or b == len(batches) - 1:
                    loss_f = finite_loss(loss, f"step {step} (epoch {epoch})", latest, workdir)
                    fps = frames_per_batch * (b + 1 - start_batch) / (time.perf_counter() - t0)
                    log.write({"step": step, "epoch": epoch, "loss": loss_f, "lr": cfg.lr_at(epoch)})
                    if bar is not None:
                        bar.set_postfix(epoch=epoch, loss=f"{loss_f:.4f}", frames_s=f"{fps:,.0f}")
                if bar is not None:
                    bar.update(1)
                position = {"epoch": epoch, "batch": b + 1, "step": step, "best": best_score}
                if b + 1 == len(batches):
                    position = {**position, "epoch": epoch + 1, "batch": 0}
                    state = eval_state(model, cfg.model, params, stats, frozen)
                    last = evaluate(cfg, forward, state, val_clips, model, progress=progress)
                    log.write({"step": step, "epoch": epoch, "val": last})
                    if last[select] >= best_score:  # ties go to the later epoch, as the original
                        best_score = last[select]
                        position["best"] = best_score
                        save_checkpoint(best, step, (params, stats, opt_state), position, {"score": best_score})
                    save_checkpoint(latest, step, (params, stats, opt_state), position)
                elif cfg.save_every and step % cfg.save_every == 0:
                    save_checkpoint(latest, step, (params, stats, opt_state), position)
                if stop_after_steps is not None and step >= stop_after_steps:
                    if latest.latest_step() != step:
                        save_checkpoint(latest, step, (params, stats, opt_state), position)
                    latest.wait_until_finished()
                    best.wait_until_finished()
                    return {"step": step, "stopped": True, "val": last, "select": select}
            epoch, start_batch = epoch + 1, 0
    except KeyboardInterrupt:
        print(f"\ninterrupted at step {step}; resume with the same command", file=sys.stderr)
        raise
    finally:
        settle(bar, latest, best)
    # as the original, the kept (best) model is finally scored on the test split
    best_step = best.best_step()
    (b_params, b_stats, _), _ = restore(best, (params, stats, opt_state), best_step)
    state = eval_state(model, cfg.model, b_params, b_stats, frozen)
    test = evaluate(cfg, forward, state, data["test"], model, progress=progress)
    log.write({"step": step, "epoch": cfg.epochs - 1, "best_step": best_step, "test": test})
    return {"step": step, "stopped": False, "val": last, "select": select, "best": best_score, "test": test}


def evaluate_checkpoint(
    workdir: str | Path, which: str = "best", split: str = "val", progress: bool = False
) -> dict[str, float]:
    """Metrics of a run's ``best`` or ``latest`` checkpoint on its ``val`` or ``test`` split.

    On C-EXPR-DB the test split is the validation split (the original protocol, spec §7.2); the
    synthetic data have no separate test split either.
    """
    workdir = Path(workdir)
    cfg_path = workdir / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} is missing: is {workdir} a jax-cer train work directory?")
    if which not in ("best", "latest"):
        raise ValueError(f"which must be 'best' or 'latest', got {which!r}")
    if split not in ("val", "test"):
        raise ValueError(f"split must be 'val' or 'test', got {split!r}")
    cfg = TrainConfig.from_json(json.loads(cfg_path.read_text()))
    model, _, forward, init, frozen = build(cfg)
    clips = load_data(cfg, workdir)[split]
    latest, best = checkpoint_managers(workdir, cfg.keep)
    manager = best if which == "best" else latest
    step = manager.best_step() if which == "best" else manager.latest_step()
    (params, stats, _opt), _meta = restore(manager, init, step)
    state = eval_state(model, cfg.model, params, stats, frozen)
    return evaluate(cfg, forward, state, clips, model, progress=progress)
