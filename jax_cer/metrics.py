"""The papers' evaluation metrics, exactly as the original code computes them (spec:
``shared/spec/fusion-models.md`` §6). Numpy in, float out (``confusion_matrix``: an array).

Frame-level metrics pool the frames of every clip. Predictions are ``argmax`` of the logits
(ties go to the lowest class index). F1 follows sklearn: per class ``2TP / (2TP + FP + FN)`` over
the sorted union of the classes present in labels or predictions. Macro F1 is their mean and
weighted F1 weights them by the labels' support.

- ``accuracy(labels, preds)``: a fraction. The CER papers report it x100, BAH as a fraction.
- ``macro_f1``, ``weighted_f1``, ``confusion_matrix`` (row-normalised, "true").
- ``aggregate_video(frame_logits, rule)``: one clip's prediction from its frames. The rules are
  ``"vote"`` (majority of frame argmaxes, ties to the class that first appears in frame order),
  ``"mean_logits"`` and ``"mean_probs"`` (mean of per-frame softmax, computed stably in float64;
  the original's unstabilised ``exp`` overflows on float16 logits above 11.09). The original's
  names ``FRAMES_VOTE``, ``FRAMES_AVG_LOGITS`` and ``FRAMES_AVG_PROBS`` are accepted too.
- ``bah_avgf1(labels, preds)``: BAH's AVGF1, the mean of the F1 of class 0 and class 1.
- ``bah_average_precision(prob_positive, labels)``: BAH's own AP. Thresholds are
  ``np.arange(0, 1, 0.001)`` and a frame is positive when ``p >= th``. Precision is 0 when
  nothing is predicted positive, and recall is ``TP / n_pos``. The area is the trapezoid rule in
  threshold order (``sklearn.metrics.auc`` of recall and precision), with no anchor point. This
  is not ``sklearn.metrics.average_precision_score``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RULES = {
    "vote": "vote",
    "frames_vote": "vote",
    "mean_logits": "mean_logits",
    "frames_avg_logits": "mean_logits",
    "mean_probs": "mean_probs",
    "frames_avg_probs": "mean_probs",
}
AP_THRESHOLDS = np.arange(0, 1, 0.001)
"""The 1000 thresholds of BAH's AP: 0.000, 0.001, ..., 0.999 (numpy's exact values)."""


def _array(x, name: str) -> np.ndarray:
    try:
        return np.asarray(x)
    except (ValueError, TypeError) as err:  # a ragged list
        raise ValueError(f"{name} is not an array (rows of different lengths?): {err}") from None


def _labels(x, name: str) -> np.ndarray:
    a = _array(x, name)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one class id per frame or clip), got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty: there is nothing to score")
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
            raise ValueError(f"{name} must hold integer class ids, got non-integer values")
        if np.any(np.abs(a) >= 2**31):
            raise ValueError(f"{name} holds {a[np.argmax(np.abs(a))]:.4g}, too large for a class id")
        a = a.astype(np.int64)
    elif a.dtype.kind not in "iub":
        raise ValueError(f"{name} must hold integer class ids, got dtype {a.dtype}")
    if np.any(a < 0):
        raise ValueError(f"{name} holds negative class ids (min {a.min()})")
    return a.astype(np.int64)


def _pair(labels, preds) -> tuple[np.ndarray, np.ndarray]:
    y, p = _labels(labels, "labels"), _labels(preds, "preds")
    if y.shape != p.shape:
        raise ValueError(f"labels and preds differ in length: {y.shape[0]} vs {p.shape[0]}")
    return y, p


def _per_class_f1(y: np.ndarray, p: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """F1 and true support of each class in ``classes``."""
    tp = np.array([np.sum((y == c) & (p == c)) for c in classes], np.float64)
    fp = np.array([np.sum((y != c) & (p == c)) for c in classes], np.float64)
    fn = np.array([np.sum((y == c) & (p != c)) for c in classes], np.float64)
    denom = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return f1, tp + fn


def _classes(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    return np.union1d(y, p)


def accuracy(labels, preds) -> float:
    """Fraction of ``preds == labels`` (the CER papers print it x100)."""
    y, p = _pair(labels, preds)
    return float(np.mean(y == p))


def macro_f1(labels, preds) -> float:
    """Mean F1 over the sorted union of classes present in labels or predictions (sklearn's default)."""
    y, p = _pair(labels, preds)
    f1, _ = _per_class_f1(y, p, _classes(y, p))
    return float(np.mean(f1))


def weighted_f1(labels, preds) -> float:
    """F1 per class weighted by the labels' support (classes only predicted weigh 0)."""
    y, p = _pair(labels, preds)
    f1, support = _per_class_f1(y, p, _classes(y, p))
    return float(np.sum(f1 * support) / np.sum(support))


def confusion_matrix(labels, preds, *, num_classes: int | None = None, normalize: str | None = "true") -> np.ndarray:
    """Confusion matrix, rows = true class, columns = predicted class.

    The classes are ``0..num_classes-1`` when ``num_classes`` is given, otherwise the sorted union
    of the classes present, as sklearn does. ``normalize="true"`` (the papers') divides each row
    by its support, and rows without support stay 0. ``None`` gives counts.
    """
    y, p = _pair(labels, preds)
    if normalize not in ("true", None):
        raise ValueError(f"normalize must be 'true' or None, got {normalize!r}")
    if num_classes is not None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
            raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
        top = max(y.max(), p.max())
        if top >= num_classes:
            raise ValueError(f"class id {top} is out of range for num_classes={num_classes}")
        classes = np.arange(num_classes)
    else:
        classes = _classes(y, p)
    index = {int(c): i for i, c in enumerate(classes)}
    cm = np.zeros((len(classes), len(classes)), np.float64 if normalize else np.int64)
    np.add.at(cm, (np.vectorize(index.get)(y), np.vectorize(index.get)(p)), 1)
    if normalize is None:
        return cm
    rows = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)


def _logits(frame_logits, name: str = "frame_logits") -> np.ndarray:
    z = _array(frame_logits, name)
    if z.ndim != 2 or z.shape[0] == 0 or z.shape[1] == 0:
        raise ValueError(f"{name} must be [frames, classes] with at least one of each, got shape {z.shape}")
    if z.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be numeric, got dtype {z.dtype}")
    if not np.all(np.isfinite(z)):
        raise ValueError(f"{name} holds NaN or inf")
    return z


def stable_softmax(logits, axis: int = -1) -> np.ndarray:
    """Softmax in float64 with the max subtracted (no overflow for any finite input dtype)."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def aggregate_video(frame_logits, rule: str) -> int:
    """The class predicted for one clip from its per-frame logits ``[frames, classes]``."""
    key = RULES.get(str(rule).lower())
    if key is None:
        raise ValueError(f"unknown rule {rule!r}; use one of {sorted(set(RULES.values()))} (or the original's names)")
    z = _logits(frame_logits)
    if key == "mean_logits":
        return int(np.argmax(z.astype(np.float64).mean(axis=0)))
    if key == "mean_probs":
        return int(np.argmax(stable_softmax(z).mean(axis=0)))
    votes = np.argmax(z, axis=1)
    counts = np.bincount(votes, minlength=z.shape[1])
    tied = np.flatnonzero(counts == counts.max())
    # ties: the tied class whose first frame comes first
    first = [int(np.flatnonzero(votes == c)[0]) for c in tied]
    return int(tied[int(np.argmin(first))])


def aggregate_videos(clips: Sequence, rule: str) -> np.ndarray:
    """``aggregate_video`` over a list of clips' ``[frames, classes]`` logits."""
    if isinstance(clips, (str, bytes)) or not isinstance(clips, (Sequence, np.ndarray)):
        raise ValueError(f"clips must be a list of [frames, classes] logits, got {type(clips).__name__}")
    out = []
    for i, clip in enumerate(clips):
        try:
            out.append(aggregate_video(clip, rule))
        except ValueError as err:
            if "frame_logits" not in str(err):
                raise
            raise ValueError(str(err).replace("frame_logits", f"clips[{i}]", 1)) from None
    return np.array(out, np.int64)


def _binary(labels, name: str) -> np.ndarray:
    y = _labels(labels, name)
    if np.any(y > 1):
        raise ValueError(f"{name} must be 0 or 1 for BAH (class 1 = ambivalence/hesitancy), got {y.max()}")
    return y


def bah_avgf1(labels, preds) -> float:
    """BAH's AVGF1: (F1 of class 0 + F1 of class 1) / 2, frame level."""
    y, p = _binary(labels, "labels"), _binary(preds, "preds")
    if y.shape != p.shape:
        raise ValueError(f"labels and preds differ in length: {y.shape[0]} vs {p.shape[0]}")
    missing = [c for c in (0, 1) if not np.any(y == c) and not np.any(p == c)]
    if missing:
        raise ValueError(f"class {missing[0]} appears in neither labels nor preds; its F1 is undefined (0/0)")
    f1, _ = _per_class_f1(y, p, np.array([0, 1]))
    return float(np.mean(f1))


def bah_average_precision(prob_positive, labels) -> float:
    """BAH's AP of class 1 (the thresholded trapezoid of spec §6.2, not sklearn's AP)."""
    p = _array(prob_positive, "prob_positive")
    y = _binary(labels, "labels")
    if p.ndim != 1 or p.shape != y.shape:
        raise ValueError(f"prob_positive must be 1-D like labels {y.shape}, got shape {p.shape}")
    if p.dtype.kind != "f" or not np.all(np.isfinite(p)):
        raise ValueError("prob_positive must be finite floating-point probabilities")
    if p.size and (p.min() < 0.0 or p.max() > 1.0):
        raise ValueError(
            f"prob_positive must be probabilities in [0, 1], got values from {p.min():.4g} to {p.max():.4g} "
            "(logits? apply a softmax or sigmoid first)"
        )
    n_pos = int(y.sum())
    if n_pos == 0:
        raise ValueError("labels hold no positive frame: BAH's AP (recall = TP / n_pos) is undefined")
    p = p.astype(np.float64)
    th = AP_THRESHOLDS
    # frames with p >= th, for every threshold, by binary search on the sorted probabilities
    predicted = p.size - np.searchsorted(np.sort(p), th, side="left")
    tp = p[y == 1].size - np.searchsorted(np.sort(p[y == 1]), th, side="left")
    precision = np.divide(tp, predicted, out=np.zeros(th.shape), where=predicted > 0)
    recall = tp / n_pos
    # trapezoids in threshold order; recall is non-increasing, so each (R_k - R_k+1) >= 0
    return float(np.sum((recall[:-1] - recall[1:]) * (precision[:-1] + precision[1:]) / 2))
