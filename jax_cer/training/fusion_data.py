"""The data of a fusion run: the clips of its splits, z-scored, and what a batch feeds the model.

:func:`load_data` gives ``{"train", "val", "test"}`` clips: the synthetic clips generated in memory
(the test split is the validation split), or a real dataset (C-EXPR-DB, MELD, BAH) built once by
the TFDS builders from ``manual_dir`` into ``data_dir`` and read lazily. Every split is z-scored
with statistics over train + val, as the original.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jax_cer.data.clips import ClipSource, open_splits
from jax_cer.data.pipeline import ZSCORE_KEYS, apply_zscore, zscore_stats
from jax_cer.data.synthetic import synthetic_clips
from jax_cer.training.configs import TrainConfig
from jax_cer.training.parallel import is_main


def _synthetic(cfg: TrainConfig) -> dict[str, list[dict]]:
    clips = synthetic_clips(
        cfg.synthetic_clips, num_classes=cfg.classes(), seed=cfg.seed, lengths=cfg.synthetic_lengths
    )
    n_val = max(cfg.classes(), len(clips) // 4)
    train, val = clips[n_val:], clips[:n_val]
    if not train or not val:
        raise ValueError(f"empty split: {len(train)} train and {len(val)} validation clips")
    return {"train": train, "val": val, "test": val}


def _open(cfg: TrainConfig) -> dict[str, Sequence]:
    """The built dataset's splits; builds it from ``manual_dir`` the first time."""
    data_dir = cfg.data_dir or "~/tensorflow_datasets"
    name = cfg.spec.tfds_config(cfg.fold, cfg.use_other_class)
    if not cfg.manual_dir:
        built = Path(data_dir).expanduser() / name
        if not built.is_dir():
            raise ValueError(
                f"dataset {cfg.dataset!r} is not built in {data_dir} ({built} is missing): set manual_dir to the "
                "folder that holds folds/<DS>/split-<k>/ and <DS>/features/compacted_48/ as in the original repos "
                "(README, Datasets), e.g. --manual-dir /data/cer"
            )
    return open_splits(
        cfg.dataset,
        manual_dir=cfg.manual_dir or None,
        data_dir=data_dir,
        fold=cfg.fold,
        use_other_class=cfg.use_other_class,
    )


def load_data(cfg: TrainConfig, workdir: str | Path | None = None) -> dict[str, Sequence]:
    """``{"train", "val", "test"}`` clips, z-scored with statistics over train + val (as the original).

    For the real datasets the clips are read lazily; the statistics (two passes over train and val)
    and the train clips' lengths are cached in ``<workdir>/zscore.npz``.
    """
    if cfg.dataset == "synthetic":
        splits = _synthetic(cfg)
        stats = zscore_stats(splits["train"] + splits["val"])
        return {k: [apply_zscore(c, stats) for c in v] for k, v in splits.items()}
    sources = _open(cfg)
    for split in ("train", "val"):
        if len(sources[split]) == 0:
            raise ValueError(f"dataset {cfg.dataset!r} fold {cfg.fold}: the {split} split is empty")
    raw = {k: ClipSource(v) for k, v in sources.items()}
    cache = Path(workdir) / "zscore.npz" if workdir is not None else None
    if cache is not None and cache.is_file():
        stats, lengths = _read_zscore_cache(cache, len(raw["train"]))
    else:
        both = _Concat([raw["train"], raw["val"]])
        stats = zscore_stats(both)
        lengths = raw["train"].lengths
        if cache is not None and is_main():
            arrays = {f"{k}_{s}": stats[k][s] for k in ZSCORE_KEYS for s in ("mean", "std")}
            tmp = cache.with_name(f".zscore.{os.getpid()}.tmp.npz")
            np.savez(tmp, train_lengths=np.asarray(lengths, np.int64), **arrays)
            tmp.replace(cache)
    return {k: ClipSource(v, stats=stats, lengths=lengths if k == "train" else None) for k, v in sources.items()}


def _read_zscore_cache(cache: Path, num_train: int) -> tuple[dict, list[int]]:
    """The statistics and train lengths cached by :func:`load_data`; a file that is not such a cache, or the cache
    of another dataset or fold (another number of train clips), is refused naming the file."""
    redo = "delete it to recompute the statistics, or use another work directory"
    keys = ["train_lengths"] + [f"{k}_{s}" for k in ZSCORE_KEYS for s in ("mean", "std")]
    try:
        with np.load(cache, allow_pickle=False) as z:
            arrays = {k: z[k] for k in keys if k in z.files}
    except Exception as e:  # not an .npz archive (a pickle, a plain .npy), cut short, an object array
        detail = " ".join(f"{type(e).__name__}: {e}".split())
        raise ValueError(f"{cache}: cannot be read as a z-score cache ({detail}); {redo}") from None
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise ValueError(f"{cache}: not a z-score cache (no {missing}); {redo}")
    lengths = arrays["train_lengths"]
    if lengths.ndim != 1 or lengths.size != num_train:
        raise ValueError(
            f"{cache}: cached for {lengths.size} train clips but the train split has {num_train} (another dataset "
            f"or fold?); {redo}"
        )
    stats = {k: {"mean": arrays[f"{k}_mean"], "std": arrays[f"{k}_std"]} for k in ZSCORE_KEYS}
    return stats, [int(n) for n in lengths]


class _Concat(Sequence):
    """Raw clips of several sources, one after the other (for the statistics)."""

    def __init__(self, parts: Sequence[ClipSource]):
        self.parts = parts

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def __getitem__(self, i: int) -> dict:
        for p in self.parts:
            if i < len(p):
                return p.raw(i)
            i -= len(p)
        raise IndexError(i)


def model_inputs(sample: Mapping[str, np.ndarray], modalities: Sequence[str]) -> dict[str, jax.Array]:
    """The model's inputs of a sample or batch: each modality (``[..., T, D]`` features or frames) as float32."""
    return {k: jnp.asarray(sample[k], jnp.float32) for k in modalities}


def frame_targets(cfg: TrainConfig, batch: Mapping[str, np.ndarray]) -> np.ndarray:
    """The per-frame labels ``[B, T]`` a batch trains on: its labels, or (``supervision=global``, BAH's
    ``video_global_sup``) each window's max label at every frame."""
    y = np.asarray(batch["label"], np.int32)
    if cfg.supervision == "global":  # BAH video_global_sup: the window's max label at every frame
        y = np.broadcast_to(y.max(axis=1, keepdims=True), y.shape)
    return y
