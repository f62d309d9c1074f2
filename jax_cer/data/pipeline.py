"""The original input pipeline on per-clip arrays (spec ``fusion-models.md`` §1.3-§1.5).

A clip is a mapping of per-frame arrays that share their first axis n: modalities (``video``
``[n, H, W, 3]``, ``vggish`` ``[n, 128]``, ``bert`` ``[n, 768]``) and the per-frame ``label``
``[n]``. Everything here is numpy and deterministic given a seed.

- :func:`zscore_stats` / :func:`apply_zscore`: per-fold statistics of vggish and bert over every
  frame of every train and val clip, each clip once and unpadded, with the original's formulas
  ``mean = sum(x) / (N + 1e-10)`` and ``std = sqrt(sum((x - mean)^2) / (N - 1))``, applied in float32.
- :func:`train_windows` and :class:`WindowBatches`: every window ``W(n, 300, 200)`` of every train
  clip is one sample, shuffled per epoch by a seeded generator and batched.
- :func:`window_sample`: one window of a clip, padded to the window length by repeating the last
  frame and label (train and eval, as the original). ``valid`` marks the real frames, so the fixed
  recipe can drop padding from the loss and the metrics.
- :func:`eval_sample`: the whole clip (no windowing), padded to the window length when shorter.
- :func:`video_transform`: 48x48 uint8 face frames to the models' 40x40 input in [-1, 1] (§1.2):
  a random 40x40 crop and a horizontal flip with probability 0.5, both drawn once per window, in
  training; the centre crop (offset 4) in evaluation. ``WindowBatches`` and ``eval_sample`` apply
  it to a ``video`` entry of uint8 frames ``[n, 48, 48, 3]`` (feature vectors pass unchanged).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from jax_cer.windowing import pad_to_length, window_bounds

ZSCORE_KEYS = ("vggish", "bert")


def _frames(clip: Mapping[str, np.ndarray], name: str = "clip") -> int:
    lengths = {k: int(np.shape(v)[0]) for k, v in clip.items() if np.ndim(v) >= 1}
    if not lengths:
        raise ValueError(f"{name} holds no per-frame arrays")
    if len(set(lengths.values())) != 1:
        raise ValueError(f"{name}: per-frame arrays differ in length: {lengths}")
    n = next(iter(lengths.values()))
    if n == 0:
        raise ValueError(f"{name} has no frames")
    return n


def zscore_stats(clips: Iterable[Mapping[str, np.ndarray]], keys: Sequence[str] = ZSCORE_KEYS) -> dict[str, dict]:
    """``{key: {"mean": [d], "std": [d]}}`` (float64) over every frame of ``clips`` (two passes).

    ``clips``: an iterable, or a sequence read twice by index (a lazy source is never held whole).
    """
    if not isinstance(clips, Sequence):
        clips = list(clips)
    if len(clips) == 0:
        raise ValueError("zscore_stats needs at least one clip (the fold's train and val clips)")
    total: dict[str, np.ndarray] = {}
    n: dict[str, int] = dict.fromkeys(keys, 0)
    for i in range(len(clips)):  # pass 1: sums and counts
        c = clips[i]
        for key in keys:
            if key not in c:
                raise KeyError(f"clip {i} has no {key!r} array; it has {sorted(c)}")
            x = np.asarray(c[key], np.float64)
            total[key] = total[key] + x.sum(axis=0) if key in total else x.sum(axis=0)
            n[key] += int(x.shape[0])
    for key in keys:
        if n[key] < 2:
            raise ValueError(f"zscore_stats: {key} has {n[key]} frame(s); the std needs at least 2")
    mean = {key: total[key] / (n[key] + 1e-10) for key in keys}
    sq: dict[str, np.ndarray] = {}
    for i in range(len(clips)):  # pass 2: squared deviations from the mean
        c = clips[i]
        for key in keys:
            d = ((np.asarray(c[key], np.float64) - mean[key]) ** 2).sum(axis=0)
            sq[key] = sq[key] + d if key in sq else d
    return {key: {"mean": mean[key], "std": np.sqrt(sq[key] / (n[key] - 1))} for key in keys}


def apply_zscore(clip: Mapping[str, np.ndarray], stats: Mapping[str, Mapping[str, np.ndarray]]) -> dict:
    """A copy of ``clip`` with each key of ``stats`` replaced by ``(x - mean) / std`` in float32."""
    out = dict(clip)
    for key, s in stats.items():
        if key in clip:
            x = np.asarray(clip[key], np.float32)
            out[key] = (x - np.asarray(s["mean"], np.float32)) / np.asarray(s["std"], np.float32)
    return out


FRAME, CROP = 48, 40


def video_transform(frames: np.ndarray, *, train: bool, rng: np.random.Generator | None = None) -> np.ndarray:
    """``[T, 48, 48, 3]`` uint8 frames of one window -> ``[T, 40, 40, 3]`` float32 in [-1, 1].

    Train: one crop offset ``(x1, y1)``, each uniform over {0..8}, and one flip with probability
    0.5 for the whole window (``rng`` required). Eval: the centre crop (offset 4), no flip.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[1:] != (FRAME, FRAME, 3) or frames.dtype != np.uint8:
        raise ValueError(
            f"video_transform expects uint8 frames [T, {FRAME}, {FRAME}, 3] (resized as in spec §1.2), "
            f"got {frames.dtype} {list(frames.shape)}"
        )
    if train:
        if rng is None:
            raise ValueError("video_transform(train=True) needs an rng for the crop offset and the flip")
        x1, y1 = (int(v) for v in rng.integers(0, FRAME - CROP + 1, size=2))
        flip = bool(rng.random() < 0.5)
    else:
        x1 = y1 = (FRAME - CROP) // 2
        flip = False
    out = frames[:, y1 : y1 + CROP, x1 : x1 + CROP]
    if flip:
        out = out[:, :, ::-1]
    return ((out.astype(np.float32) / 255.0) - 0.5) / 0.5


def _is_frames(x) -> bool:
    return np.ndim(x) == 4 and np.asarray(x).dtype == np.uint8


def window_sample(clip: Mapping[str, np.ndarray], start: int, end: int, window: int) -> dict:
    """Frames ``[start, end)`` of every per-frame array, padded to ``window`` by repeating the last
    frame; adds ``valid`` ``[window]`` (True on real frames)."""
    n = _frames(clip)
    if not 0 <= start < end <= n:
        raise ValueError(f"window [{start}, {end}) is outside the clip's {n} frames")
    out = {k: pad_to_length(np.asarray(v)[start:end], window) for k, v in clip.items() if np.ndim(v) >= 1}
    out["valid"] = np.arange(max(window, end - start)) < end - start
    return out


def eval_sample(clip: Mapping[str, np.ndarray], window: int) -> dict:
    """The whole clip, padded to ``window`` when it has fewer frames (eval runs one clip per batch);
    uint8 ``video`` frames get the evaluation transform (centre crop)."""
    n = _frames(clip)
    out = window_sample(clip, 0, n, window)
    if _is_frames(out.get("video")):
        out["video"] = video_transform(out["video"], train=False)
    return out


def train_windows(lengths: Sequence[int], window: int = 300, hop: int = 200) -> list[tuple[int, int, int]]:
    """``(clip index, start, end)`` of every training window, clips in order."""
    return [(i, s, e) for i, n in enumerate(lengths) for s, e in window_bounds(int(n), window, hop)]


class WindowBatches:
    """Shuffled, batched training windows over a list of clips; deterministic given ``seed``.

    ``epoch(e)`` yields batches (dicts of stacked arrays ``[B, window, ...]`` plus ``valid``) in
    an order drawn from ``np.random.default_rng([seed, e])``. Every window appears once per epoch;
    ``drop_last`` drops a last partial batch. ``clips`` may be any sequence (e.g. a lazy
    :class:`~jax_cer.data.clips.ClipSource`); pass ``lengths`` to avoid reading every clip up front.
    """

    def __init__(
        self,
        clips: Sequence[Mapping[str, np.ndarray]],
        batch_size: int,
        *,
        window: int = 300,
        hop: int = 200,
        seed: int = 0,
        drop_last: bool = False,
        lengths: Sequence[int] | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(clips) == 0:
            raise ValueError("no training clips: the split is empty")
        if lengths is None:
            lengths = [_frames(c, f"clip {i}") for i, c in enumerate(clips)]
        elif len(lengths) != len(clips):
            raise ValueError(f"lengths has {len(lengths)} entries for {len(clips)} clips")
        self.clips = clips
        self.batch_size, self.window, self.seed, self.drop_last = batch_size, window, seed, drop_last
        self.windows = train_windows(lengths, window, hop)

    def __len__(self) -> int:
        full, rest = divmod(len(self.windows), self.batch_size)
        return full + (0 if self.drop_last or rest == 0 else 1)

    def order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.windows))

    def epoch(self, epoch: int) -> Iterator[dict[str, np.ndarray]]:
        for _, batch in self.epoch_rows(epoch):
            yield batch

    def epoch_rows(
        self, epoch: int, rows: Callable[[int], slice] | None = None
    ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """``(n, part)`` per batch of ``epoch``: the batch's row count and the rows ``rows(n)`` of it
        (all by default); only those windows are read (a process's share of a global batch)."""
        order = self.order(epoch)
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            n = len(idx)
            if rows is not None:
                idx = idx[rows(n)]
            samples = []
            for i in idx:
                c, s, e = self.windows[i]
                sample = window_sample(self.clips[c], s, e, self.window)
                if _is_frames(sample.get("video")):  # crop and flip drawn per (seed, epoch, window)
                    rng = np.random.default_rng([self.seed, epoch, int(i), 1])
                    sample["video"] = video_transform(sample["video"], train=True, rng=rng)
                samples.append(sample)
            yield n, {k: np.stack([s[k] for s in samples]) for k in samples[0]}
