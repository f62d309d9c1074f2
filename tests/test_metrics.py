"""jax_cer.metrics: the spec's worked examples (§6.1, §6.2), sklearn's definitions, edge cases."""

from __future__ import annotations

import numpy as np
import pytest

from jax_cer import metrics

skm = pytest.importorskip("sklearn.metrics")

# -- spec §6.1: one clip, K = 3 ---------------------------------------------------------------
CLIP = np.array([[2, 3, 0], [0, 1, 0.5], [1, 0.5, 4], [3, 0, 1]])


@pytest.mark.parametrize(
    ("rule", "expected"),
    [("vote", 1), ("FRAMES_VOTE", 1), ("mean_logits", 0), ("FRAMES_AVG_LOGITS", 0), ("mean_probs", 2),
     ("FRAMES_AVG_PROBS", 2)],
)  # fmt: skip
def test_video_rules_worked_example(rule: str, expected: int) -> None:
    assert metrics.aggregate_video(CLIP, rule) == expected


def test_mean_probs_values_of_the_example() -> None:
    np.testing.assert_allclose(metrics.stable_softmax(CLIP).mean(0), [0.333929, 0.320459, 0.345612], atol=5e-7)


def test_vote_ties_go_to_the_class_seen_first() -> None:
    # argmaxes 2, 0, 0, 2: classes 0 and 2 tie with two votes; 2 appears first
    z = np.array([[0, 0, 1], [1, 0, 0], [1, 0, 0], [0, 0, 1]], float)
    assert metrics.aggregate_video(z, "vote") == 2
    assert metrics.aggregate_video(z[1:], "vote") == 0  # 0, 0, 2: a plain majority
    # equal logits inside a frame: argmax takes the lowest index
    assert metrics.aggregate_video(np.zeros((3, 4)), "vote") == 0


def test_mean_probs_is_stable_on_float16_logits() -> None:
    """The original's exp(z)/sum(exp(z)) overflows for fp16 logits above 11.09; ours does not."""
    z = np.array([[12.0, 11.5, 0.0], [0.0, 30.0, 0.0]], np.float16)
    with np.errstate(over="ignore", invalid="ignore"):
        naive = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    assert not np.all(np.isfinite(naive))  # the original's formula breaks here
    probs = metrics.stable_softmax(z)
    assert np.all(np.isfinite(probs)) and np.allclose(probs.sum(1), 1)
    assert metrics.aggregate_video(z, "mean_probs") == 1


def test_aggregate_videos_and_bad_input() -> None:
    np.testing.assert_array_equal(metrics.aggregate_videos([CLIP, CLIP[:2]], "vote"), [1, 1])
    with pytest.raises(ValueError, match="unknown rule 'median'"):
        metrics.aggregate_video(CLIP, "median")
    with pytest.raises(ValueError, match=r"\[frames, classes\].*shape \(3,\)"):
        metrics.aggregate_video(np.zeros(3), "vote")
    with pytest.raises(ValueError, match="NaN or inf"):
        metrics.aggregate_video(np.array([[0.0, np.nan]]), "mean_logits")


# -- frame-level metrics against sklearn --------------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
def test_frame_metrics_equal_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, k = 500, 7
    y = rng.integers(0, k - 1, n)  # class 6 never a label ...
    p = np.where(rng.random(n) < 0.6, y, rng.integers(0, k, n))  # ... but sometimes predicted
    assert metrics.accuracy(y, p) == pytest.approx(skm.accuracy_score(y, p), abs=1e-15)
    assert metrics.macro_f1(y, p) == pytest.approx(skm.f1_score(y, p, average="macro"), abs=1e-12)
    assert metrics.weighted_f1(y, p) == pytest.approx(skm.f1_score(y, p, average="weighted"), abs=1e-12)
    np.testing.assert_allclose(metrics.confusion_matrix(y, p), skm.confusion_matrix(y, p, normalize="true"))
    np.testing.assert_array_equal(metrics.confusion_matrix(y, p, normalize=None), skm.confusion_matrix(y, p))


def test_confusion_matrix_with_fixed_classes() -> None:
    cm = metrics.confusion_matrix([0, 0, 2], [0, 2, 2], num_classes=4)
    np.testing.assert_allclose(cm, [[0.5, 0, 0.5, 0], [0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]])
    with pytest.raises(ValueError, match="class id 4 is out of range for num_classes=4"):
        metrics.confusion_matrix([0, 4], [0, 0], num_classes=4)


def test_ignore_other_class_by_dropping_frames_and_column() -> None:
    """Spec §6.1 "ignore 7": drop logit column 7 before the argmax and frames labelled 7."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 8))
    y = rng.integers(0, 8, 200)
    keep = y != 7
    preds = np.argmax(logits[keep, :7], axis=1)
    assert preds.max() < 7
    assert metrics.weighted_f1(y[keep], preds) == pytest.approx(skm.f1_score(y[keep], preds, average="weighted"))


@pytest.mark.parametrize(
    ("labels", "preds", "message"),
    [([0, 1], [0], "differ in length: 2 vs 1"), ([], [], "empty"), ([[0, 1]], [[0, 1]], "1-D"),
     ([0, -1], [0, 0], "negative"), ([0.5, 1], [0, 1], "integer class ids"), (["a"], ["a"], "dtype"),
     ([0.0, 1e20], [0, 1], "labels holds 1e\\+20, too large for a class id")],
)  # fmt: skip
def test_bad_labels_are_named(labels, preds, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        metrics.weighted_f1(labels, preds)


# -- BAH (§6.2) ---------------------------------------------------------------------------------
P = np.array([0.9123, 0.7345, 0.6012, 0.4567, 0.2501, 0.1234, 0.0456])
GT = np.array([1, 0, 1, 1, 0, 0, 0])


def test_bah_worked_example() -> None:
    assert metrics.bah_average_precision(P, GT) == pytest.approx(0.597222, abs=5e-7)
    assert skm.average_precision_score(GT, P) == pytest.approx(0.805556, abs=5e-7)  # not what BAH uses
    hard = (P >= 0.5).astype(int)
    np.testing.assert_array_equal(hard, [1, 1, 1, 0, 0, 0, 0])
    assert metrics.bah_avgf1(GT, hard) == pytest.approx(0.708333, abs=5e-7)
    assert metrics.weighted_f1(GT, hard) == pytest.approx(0.714286, abs=5e-7)
    assert metrics.accuracy(GT, hard) == pytest.approx(0.714286, abs=5e-7)


def test_bah_example_from_logits() -> None:
    z = np.array([2.342047, 1.017575, 0.410468, -0.173635, -1.098079, -1.960620, -3.041175])
    logits = np.stack([np.zeros_like(z), z], axis=1)
    p = metrics.stable_softmax(logits)[:, 1]
    np.testing.assert_allclose(p, P, atol=5e-7)
    hard = np.argmax(logits, axis=1)
    assert metrics.bah_avgf1(GT, hard) == pytest.approx(0.708333, abs=5e-7)


def _spec_ap(p, gt) -> float:
    """Spec §6.2 transcribed literally: a loop over the thresholds, then sklearn.metrics.auc."""
    n_pos = gt.sum()
    precision, recall = [], []
    for th in np.arange(0, 1, 0.001):
        pred = p >= th
        tp = np.sum(pred & (gt == 1))
        fp = np.sum(pred & (gt == 0))
        precision.append(tp / (tp + fp) if tp + fp > 0 else 0.0)
        recall.append(tp / n_pos)
    return float(skm.auc(recall, precision))


@pytest.mark.parametrize("seed", range(4))
def test_bah_ap_equals_the_literal_definition(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 3000
    gt = (rng.random(n) < 0.3).astype(int)
    p = np.clip(rng.normal(0.35 + 0.3 * gt, 0.2), 0, 1)
    p[:20] = np.round(p[:20], 3)  # probabilities exactly on thresholds (p >= th must hold there)
    assert metrics.bah_average_precision(p, gt) == pytest.approx(_spec_ap(p, gt), abs=1e-12)


def test_bah_ap_edge_cases() -> None:
    # all probabilities below every threshold but 0: one point (1, prevalence) then (0, 0)
    gt = np.array([1, 0, 0, 1])
    p = np.full(4, 0.0005)
    assert metrics.bah_average_precision(p, gt) == pytest.approx(_spec_ap(p, gt))
    # a perfect ranking with the top threshold still predicting: no final drop to (0, 0)
    p = np.array([0.9995, 0.1, 0.2, 0.9999])
    assert metrics.bah_average_precision(p, gt) == pytest.approx(_spec_ap(p, gt))
    with pytest.raises(ValueError, match="no positive frame"):
        metrics.bah_average_precision(np.array([0.2, 0.9]), np.array([0, 0]))
    with pytest.raises(ValueError, match="must be 0 or 1"):
        metrics.bah_average_precision(np.array([0.2, 0.9]), np.array([0, 2]))
    with pytest.raises(ValueError, match="1-D like labels"):
        metrics.bah_average_precision(np.array([0.2]), np.array([0, 1]))
    with pytest.raises(ValueError, match="finite"):
        metrics.bah_average_precision(np.array([np.nan, 0.5]), np.array([0, 1]))
    # logits passed by mistake: named, not a silent 0.0
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\], got values from -2.5 to 3.1 \(logits\?"):
        metrics.bah_average_precision(np.array([-2.5, 3.1]), np.array([0, 1]))


def test_bah_avgf1_needs_both_classes() -> None:
    assert metrics.bah_avgf1([1, 1], [1, 0]) == pytest.approx(
        skm.f1_score([1, 1], [1, 0], average="macro", labels=[0, 1], zero_division=0)
    )
    with pytest.raises(ValueError, match="class 0 appears in neither"):
        metrics.bah_avgf1([1, 1], [1, 1])
