"""jax_cer.data.pipeline: z-score statistics, windows, padding and batching of spec §1.3-§1.5."""

from __future__ import annotations

import numpy as np
import pytest

from jax_cer.data.pipeline import (
    WindowBatches,
    apply_zscore,
    eval_sample,
    train_windows,
    video_transform,
    window_sample,
    zscore_stats,
)


def _clip(n: int, label: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "video": rng.integers(0, 255, (n, 48, 48, 3), dtype=np.uint8),
        "vggish": rng.normal(2.0, 3.0, (n, 128)),  # float64 on disk
        "bert": rng.normal(-1.0, 0.5, (n, 768)).astype(np.float32),
        "label": np.full((n,), label, np.int32),
    }


def test_zscore_stats_use_the_original_formulas() -> None:
    clips = [_clip(n, 0, i) for i, n in enumerate((5, 17, 300))]
    stats = zscore_stats(clips)
    for key in ("vggish", "bert"):
        pooled = np.concatenate([np.asarray(c[key], np.float64) for c in clips])
        n = pooled.shape[0]
        mean = pooled.sum(0) / (n + 1e-10)
        np.testing.assert_allclose(stats[key]["mean"], mean, rtol=1e-12)
        np.testing.assert_allclose(stats[key]["std"], np.sqrt(((pooled - mean) ** 2).sum(0) / (n - 1)), rtol=1e-12)
        np.testing.assert_allclose(stats[key]["std"], pooled.std(0, ddof=1), rtol=1e-9)  # unbiased std
    z = apply_zscore(clips[2], stats)
    assert z["vggish"].dtype == np.float32 and z["bert"].dtype == np.float32
    assert z["video"] is clips[2]["video"]  # video is not z-scored
    pooled = np.concatenate([apply_zscore(c, stats)["bert"] for c in clips])
    np.testing.assert_allclose(pooled.mean(0), 0, atol=1e-5)
    with pytest.raises(KeyError, match="clip 0 has no 'bert'"):
        zscore_stats([{"vggish": np.zeros((3, 128))}])
    with pytest.raises(ValueError, match="at least one clip"):
        zscore_stats([])


def test_windows_of_the_spec_examples() -> None:
    assert train_windows([650, 301, 899, 120]) == [
        (0, 0, 300), (0, 200, 500), (0, 350, 650), (1, 0, 300), (1, 1, 301),
        (2, 0, 300), (2, 200, 500), (2, 400, 700), (2, 599, 899), (3, 0, 120),
    ]  # fmt: skip


def test_short_clips_are_padded_by_repeating_the_last_frame_and_label() -> None:
    clip = _clip(120, 3, 0)
    clip["label"][-1] = 5  # a per-frame label (BAH) is repeated too
    s = window_sample(clip, 0, 120, 300)
    for key in ("video", "vggish", "bert", "label"):
        assert s[key].shape[0] == 300
        np.testing.assert_array_equal(s[key][:120], clip[key])
        np.testing.assert_array_equal(s[key][120:], np.repeat(clip[key][-1:], 180, axis=0))
    assert s["valid"].sum() == 120 and s["valid"][:120].all()
    e = eval_sample(_clip(650, 1, 1), 300)  # eval: the whole clip, no windowing
    assert e["bert"].shape == (650, 768) and e["valid"].all()
    with pytest.raises(ValueError, match="differ in length"):
        eval_sample({"vggish": np.zeros((4, 128)), "label": np.zeros(5)}, 300)
    with pytest.raises(ValueError, match=r"window \[200, 400\) is outside the clip's 300 frames"):
        window_sample(_clip(300, 0, 2), 200, 400, 300)


def test_window_batches_cover_every_window_once_and_are_deterministic() -> None:
    clips = [_clip(n, i % 7, i) for i, n in enumerate((650, 301, 50, 899, 300))]
    batches = WindowBatches(clips, 4, seed=3)
    n_windows = len(train_windows([650, 301, 50, 899, 300]))
    assert len(batches) == -(-n_windows // 4)
    first = list(batches.epoch(0))
    seen = np.concatenate([b["label"][:, 0] for b in first])
    assert len(seen) == n_windows and first[0]["vggish"].shape == (4, 300, 128)
    again = list(WindowBatches(clips, 4, seed=3).epoch(0))
    for a, b in zip(first, again, strict=True):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(batches.order(0), batches.order(1))  # reshuffled per epoch
    assert sorted(batches.order(1)) == list(range(n_windows))
    assert len(WindowBatches(clips, 4, drop_last=True)) == n_windows // 4
    with pytest.raises(ValueError, match="split is empty"):
        WindowBatches([], 4)


def test_video_transform_crops_flips_and_scales_like_the_original() -> None:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (5, 48, 48, 3), dtype=np.uint8)
    ev = video_transform(frames, train=False)
    assert ev.shape == (5, 40, 40, 3) and ev.dtype == np.float32
    np.testing.assert_allclose(ev, (frames[:, 4:44, 4:44] / 255.0 - 0.5) / 0.5, atol=1e-6)
    assert video_transform(np.zeros((1, 48, 48, 3), np.uint8), train=False).min() == -1.0
    assert video_transform(np.full((1, 48, 48, 3), 255, np.uint8), train=False).max() == 1.0
    seen_offsets, flips = set(), 0
    for seed in range(200):
        out = video_transform(frames, train=True, rng=np.random.default_rng(seed))
        r = np.random.default_rng(seed)
        x1, y1 = r.integers(0, 9, size=2)
        flip = r.random() < 0.5
        crop = frames[:, y1 : y1 + 40, x1 : x1 + 40]
        np.testing.assert_allclose(out, (crop[:, :, ::-1] if flip else crop) / 127.5 - 1.0, atol=1e-6)
        seen_offsets.add((int(x1), int(y1)))
        flips += flip
    assert {x for x, _ in seen_offsets} == set(range(9)) and 60 < flips < 140  # offsets 0..8, p(flip) = 0.5
    with pytest.raises(ValueError, match=r"uint8 frames \[T, 48, 48, 3\].*float64 \[5, 48, 48, 3\]"):
        video_transform(frames.astype(np.float64), train=False)
    with pytest.raises(ValueError, match="needs an rng"):
        video_transform(frames, train=True)


def test_batches_and_eval_samples_transform_uint8_frames() -> None:
    rng = np.random.default_rng(1)
    clips = [{"video": rng.integers(0, 256, (n, 48, 48, 3), dtype=np.uint8), "label": np.zeros(n, np.int32)}
             for n in (70, 30)]  # fmt: skip
    batch = next(WindowBatches(clips, 3, window=40, hop=30, seed=0).epoch(0))
    assert batch["video"].shape == (3, 40, 40, 40, 3) and batch["video"].dtype == np.float32
    e = eval_sample(clips[1], 40)
    np.testing.assert_allclose(e["video"][:30], video_transform(clips[1]["video"], train=False))
    np.testing.assert_allclose(e["video"][30:], np.repeat(e["video"][29:30], 10, axis=0))  # padded, then cropped
