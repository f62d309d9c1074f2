"""A small synthetic multimodal dataset (no download): clips with class-dependent features.

Each clip has one label (like C-EXPR-DB and MELD), a length drawn in ``lengths``, and per-frame
``video`` (precomputed 512-d face features, the fusion models' feature input), ``vggish``
``[n, 128]`` and ``bert`` ``[n, 768]`` features whose means depend on the class, plus noise, so a
model can learn it in a few steps. Deterministic given the seed.
"""

from __future__ import annotations

import numpy as np

DIMS = {"video": 512, "vggish": 128, "bert": 768}


def synthetic_clips(
    n_clips: int, *, num_classes: int = 7, seed: int = 0, lengths: tuple[int, int] = (80, 400), noise: float = 1.0
) -> list[dict[str, np.ndarray]]:
    """``n_clips`` clips of ``{"video", "vggish", "bert", "label", "clip_label"}`` arrays."""
    if n_clips < 1 or num_classes < 2:
        raise ValueError(f"need n_clips >= 1 and num_classes >= 2, got {n_clips}, {num_classes}")
    centres = np.random.default_rng([seed, 0]).normal(size=(num_classes, sum(DIMS.values())))
    clips = []
    for i in range(n_clips):
        rng = np.random.default_rng([seed, 1, i])
        label = i % num_classes
        n = int(rng.integers(lengths[0], lengths[1] + 1))
        x = centres[label] + noise * rng.normal(size=(n, centres.shape[1]))
        clip: dict[str, np.ndarray] = {}
        start = 0
        for key, d in DIMS.items():
            clip[key] = x[:, start : start + d].astype(np.float64 if key == "vggish" else np.float32)
            start += d
        clip["label"] = np.full((n,), label, np.int32)
        clip["clip_label"] = np.array(label, np.int32)
        clips.append(clip)
    return clips
