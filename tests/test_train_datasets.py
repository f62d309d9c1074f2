"""The trainer on the real datasets' layouts: C-EXPR-DB (with Other: the "ignore 7" metrics), BAH
(per-frame labels, global supervision, AP selection, frames through the IR-50 with loaded weights),
built by the TFDS builders from small fixtures laid out like the originals (see test_data_builders)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from jax_cer.data.pipeline import zscore_stats
from jax_cer.models import IR50, build_model, from_original_state_dict, torch_entries
from jax_cer.parity.weights import draw_state_dict
from jax_cer.training.checkpoints import read_checkpoint
from jax_cer.training.configs import TrainConfig
from jax_cer.training.evaluate import score
from jax_cer.training.fusion import build, build_run_model, evaluate_checkpoint, train
from jax_cer.training.fusion_data import frame_targets
from jax_cer.training.step import cross_entropy, parameter_paths, unreached_parameters
from tests.test_data_builders import BAH_SPLITS, BAH_YAML, CEXPR_SPLITS, CEXPR_YAML, write_layout


@pytest.fixture(autouse=True)
def _tfds_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds-default"))


def _leaves(tree) -> dict[tuple, np.ndarray]:
    return dict(zip(parameter_paths(tree), (np.asarray(x) for x in jax.tree.leaves(tree)), strict=True))


def test_cexpr_with_other(tmp_path: Path) -> None:
    clips = write_layout(tmp_path / "data", "C-EXPR-DB", CEXPR_YAML, CEXPR_SPLITS)
    cfg = TrainConfig(
        model="can",
        dataset="c-expr-db",
        manual_dir=str(tmp_path / "data"),
        data_dir=str(tmp_path / "tfds"),
        use_other_class=True,
        modalities=("vggish", "bert"),
        epochs=3,
        batch_size=2,
        window=8,
        hop=4,
        lr=0.05,
        log_every=1,
    )
    assert cfg.classes() == 8 and cfg.ignore_class() == 7
    _, _, _, (init, _, _), _ = build(cfg)
    out = train(cfg, tmp_path / "run", progress=False)
    val = out["val"]
    assert {"weighted_f1_ignore7", "video_vote_accuracy_ignore7", "video_mean_probs_weighted_f1"} <= set(val)

    # z-score statistics over train + val (each clip once), cached in the work directory
    with np.load(tmp_path / "run" / "zscore.npz") as z:
        ids = [c for split in ("train", "val") for c, _, _ in CEXPR_SPLITS[split]]
        # the builder stores vggish as float32 (float64 on disk), as the model reads it
        f32 = [{k: clips[c][f"{k}.npy"].astype(np.float32) for k in ("vggish", "bert")} for c in ids]
        ref = zscore_stats(f32)
        np.testing.assert_allclose(z["vggish_mean"], ref["vggish"]["mean"], rtol=1e-12)
        np.testing.assert_allclose(z["bert_std"], ref["bert"]["std"], rtol=1e-12)
        assert list(z["train_lengths"]) == [clips[c]["video.npy"].shape[0] for c, _, _ in CEXPR_SPLITS["train"]]

    # the best checkpoint is the last epoch with the highest validation weighted F1 (ties: later)
    records = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    vals = [r for r in records if "val" in r]
    assert [r["step"] for r in vals] == [0, 3, 6, 9]  # the untrained model first, as the original (CER)
    best = max(range(4), key=lambda i: (vals[i]["val"]["weighted_f1"], i))
    assert out["best"] == vals[best]["val"]["weighted_f1"]
    res = evaluate_checkpoint(tmp_path / "run", "best")
    assert res == pytest.approx(vals[best]["val"], rel=1e-12)
    assert out["test"] == pytest.approx(res, rel=1e-12)  # the best model on test (= val on C-EXPR-DB)
    assert records[-1]["test"] == out["test"] and records[-1]["best_step"] == vals[best]["step"]
    # C-EXPR-DB's test split is its validation split
    assert evaluate_checkpoint(tmp_path / "run", "latest", "test") == pytest.approx(val, rel=1e-12)

    # CAN's conv_c never reaches the loss: PyTorch skips it (no decay, no momentum), so must we
    _, _, _, template, _ = build(cfg)
    (params, _, _), _ = read_checkpoint(tmp_path / "run", template)
    before, after = _leaves(init), _leaves(params)
    skipped = [p for p in before if p[0] == "conv_c"]
    assert skipped
    for p in before:
        if p in skipped:
            np.testing.assert_array_equal(after[p], before[p])
    assert any(not np.array_equal(after[p], before[p]) for p in before if p not in skipped)


def test_bah_frames_global_supervision(tmp_path: Path) -> None:
    write_layout(tmp_path / "data", "BAH_DB", BAH_YAML, BAH_SPLITS, bah=True)
    entries = torch_entries(nnx.eval_shape(lambda: IR50(rngs=nnx.Rngs(0))))
    sd = draw_state_dict([(e.key, e.torch_shape, e.torch_dtype) for e in entries], 3)
    np.savez(tmp_path / "ir50.npz", **sd)
    cfg = TrainConfig(
        model="lfan",
        dataset="bah",
        manual_dir=str(tmp_path / "data"),
        data_dir=str(tmp_path / "tfds"),
        backbone=str(tmp_path / "ir50.npz"),
        supervision="global",
        backbone_train_mode=True,  # the original's frozen IR-50 in training mode (quirk 2)
        epochs=2,
        batch_size=2,
        window=8,
        hop=4,
        lr=0.05,
    )
    model = build_run_model(cfg)
    loaded = _leaves(nnx.state(from_original_state_dict("ir50", tmp_path / "ir50.npz")))
    got = _leaves(nnx.state(model.spatial.visual))
    assert loaded.keys() == got.keys()
    for p, v in loaded.items():
        np.testing.assert_array_equal(got[p], v)
    out = train(cfg, tmp_path / "run", progress=False)
    assert out["select"] == "ap" and out["best"] == pytest.approx(out["val"]["ap"])
    assert set(out["val"]) == {"loss", "accuracy", "f1_0", "f1_1", "avgf1", "weighted_f1", "ap"}
    assert out["val"]["avgf1"] == pytest.approx((out["val"]["f1_0"] + out["val"]["f1_1"]) / 2)
    # in training mode the frozen IR-50's BatchNorm statistics drift (its weights stay as loaded)
    _, _, _, template, _ = build(cfg)
    (_, stats, _), _ = read_checkpoint(tmp_path / "run", template)
    drift = {p: v for p, v in _leaves(stats).items() if p[:2] == ("spatial", "visual") and "mean" in p[-2:]}
    assert drift
    start = _leaves(nnx.state(model, nnx.BatchStat))  # as loaded, before training
    assert all(not np.array_equal(v, start[p]) for p, v in drift.items())


def test_global_supervision_targets() -> None:
    batch = {"label": np.array([[0, 0, 1, 0], [0, 0, 0, 0]], np.int32)}
    glob = TrainConfig(dataset="bah", supervision="global")
    np.testing.assert_array_equal(frame_targets(glob, batch), [[1, 1, 1, 1], [0, 0, 0, 0]])
    np.testing.assert_array_equal(frame_targets(TrainConfig(dataset="bah"), batch), batch["label"])


def test_loss_weights_leave_padding_out() -> None:
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(2, 5, 3)), rng.integers(0, 3, (2, 5))
    valid = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    want = cross_entropy(logits[valid][None], labels[valid][None])
    np.testing.assert_allclose(cross_entropy(logits, labels, valid), want, rtol=1e-6)
    np.testing.assert_allclose(cross_entropy(logits, labels, np.ones_like(valid)), cross_entropy(logits, labels))


def test_unreached_parameters_match_the_original() -> None:
    mt = build_model("mt", rngs=nnx.Rngs(0))
    skipped = unreached_parameters(mt, "mt")
    assert skipped(("reduce_feats_dim", "kernel")) and skipped(("temporal", "bert", "network", 0, "conv1", "v"))
    assert skipped(("bn", "bert", "scale")) and not skipped(("bn", "video", "scale"))
    jmt = build_model("jmt", rngs=nnx.Rngs(0))
    assert not unreached_parameters(jmt, "jmt")(("reduce_feats_dim", "kernel"))  # JMT uses it
    can = build_model("can", rngs=nnx.Rngs(0))
    assert unreached_parameters(can, "can")(("conv_c", "kernel"))
    assert not unreached_parameters(can, "can")(("temporal", "bert", "network", 0, "conv1", "v"))


def test_score_ignore_class_and_bah() -> None:
    # two clips of K=8: one of class 7 (Other), one of class 2
    z_other = np.tile(np.eye(8)[7] * 3, (4, 1))
    z_two = np.tile(np.eye(8)[2] * 3 + np.eye(8)[7] * 5, (3, 1))  # 7 wins, 2 wins once 7 is dropped
    outs = [(np.full(4, 7), z_other), (np.full(3, 2), z_two)]
    res = score("cer", outs, ignore_class=7)
    assert res["accuracy"] == pytest.approx(4 / 7) and res["accuracy_ignore7"] == 1.0
    assert res["video_vote_accuracy"] == 0.5 and res["video_vote_accuracy_ignore7"] == 1.0
    z = np.stack([np.zeros(7), [2.342047, 1.017575, 0.410468, -0.173635, -1.098079, -1.960620, -3.041175]], 1)
    bah = score("bah", [(np.array([1, 0, 1, 1, 0, 0, 0]), z)])  # the spec's worked example (§6.2)
    assert bah["ap"] == pytest.approx(0.597222, abs=1e-6) and bah["avgf1"] == pytest.approx(0.708333, abs=1e-6)
    assert bah["f1_0"] == pytest.approx(0.75) and bah["weighted_f1"] == pytest.approx(0.714286, abs=1e-6)


def test_real_dataset_errors(tmp_path: Path) -> None:
    cfg = TrainConfig(model="can", dataset="meld", data_dir=str(tmp_path / "nothing"), modalities=("vggish", "bert"))
    with pytest.raises(ValueError, match="is not built in .* set manual_dir"):
        train(cfg, tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="needs its pretrained weights: set backbone="):
        build_run_model(TrainConfig(model="can", dataset="meld"))


def test_empty_manual_dir_stops_the_run(tmp_path: Path) -> None:
    """An empty manual_dir stops a run before training with the folder and the layout it must hold (the other
    states, a missing folder and a file, are checked on the builders in test_data_builders)."""
    manual = tmp_path / "manual"
    manual.mkdir()
    cfg = TrainConfig(
        model="can", dataset="c-expr-db", manual_dir=str(manual), data_dir=str(tmp_path / "tfds"), modalities=("bert",)
    )
    with pytest.raises(
        ValueError, match=rf"^manual_dir {re.escape(str(manual))} is an empty folder; it must hold folds/"
    ):
        train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()
