"""Scoring a model state: the fusion models on whole clips (the papers' metrics, spec §6) and the
text classifier on utterances (accuracy, weighted and macro F1).

Fusion: :func:`predict` runs whole clips (one per batch; LFAN with its sliding windows on clips
longer than a window) and :func:`score` turns the per-clip labels and logits into frame-level
(pooled) and video-level metrics for C-EXPR-DB and MELD (each video rule of
:data:`~jax_cer.training.configs.VIDEO_RULES`; with an ignored class, the same again without it)
or BAH's metrics. Text: :func:`predict_logits` and :func:`text_scores`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from jax_cer import metrics
from jax_cer.data.pipeline import eval_sample
from jax_cer.models.lfan import sliding_window_logits
from jax_cer.text.tokenizer import Tokenizer
from jax_cer.training.configs import VIDEO_RULES, TrainConfig
from jax_cer.training.fusion_data import model_inputs


def predict(
    cfg: TrainConfig, forward: Callable, state: Any, clips: Sequence[dict], model: Any = None, progress: bool = False
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per-clip ``(frame labels [n'], logits [n', K])`` on whole clips (one clip per batch, spec §1.5).

    ``n'`` is the clip's length, or the window length for shorter clips when ``count_padding``
    (the original scores the padded frames). LFAN runs the sliding-window evaluation on longer clips.
    """
    out = []
    it = range(len(clips))
    if progress:
        it = tqdm(it, desc="eval", unit="clip", file=sys.stderr, leave=False)
    for i in it:
        clip = clips[i]
        n = clip["label"].shape[0]
        sample = eval_sample(clip, cfg.window)
        x = {k: v[None] for k, v in model_inputs(sample, cfg.modalities).items()}
        if cfg.model == "lfan" and n > cfg.window:
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


def _cer(outputs: Sequence[tuple[np.ndarray, np.ndarray]], ignore: int | None) -> dict[str, float]:
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


def evaluate(
    cfg: TrainConfig, forward: Callable, state: Any, clips: Sequence[dict], model: Any = None, progress: bool = False
) -> dict:
    """Validation (or test) metrics of a model state on whole clips (:func:`predict`, :func:`score`).

    ``forward(state, inputs) -> logits [1, T, K]`` (:func:`jax_cer.training.step.make_forward`);
    ``model``: the fusion model (LFAN's sliding-window evaluation needs it).
    """
    return score(cfg.spec.task, predict(cfg, forward, state, clips, model, progress), cfg.ignore_class())


def predict_logits(
    logits_fn: Callable,
    state: Any,
    ids: Sequence[Sequence[int]],
    tokenizer: Tokenizer,
    batch_size: int,
    progress: bool = False,
) -> np.ndarray:
    """Logits ``[N, K]`` of N token-id sequences, in their order.

    ``logits_fn(state, ids [B, S], mask [B, S]) -> [B, K]``. Sequences are sorted by length and
    batched ``batch_size`` at a time, each batch padded to a multiple of 16 tokens (the last one
    filled with repeats, so every batch of a length bucket has one shape).
    """
    order = np.argsort([len(x) for x in ids], kind="stable")
    out = None
    starts = range(0, len(ids), batch_size)
    if progress:
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
    """Accuracy, weighted F1 (the MELD convention) and macro F1 of logits ``[N, K]`` against labels ``[N]``."""
    preds = np.argmax(logits, axis=-1)
    return {
        "accuracy": metrics.accuracy(labels, preds),
        "weighted_f1": metrics.weighted_f1(labels, preds),
        "macro_f1": metrics.macro_f1(labels, preds),
    }
