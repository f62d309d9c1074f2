"""The trainer's view of a dataset: random-access clips, z-scored on access.

A clip is the dict the input pipeline (:mod:`jax_cer.data.pipeline`) works on: per-frame
``video`` (uint8 faces ``[n, 48, 48, 3]`` for the real datasets, or 512-d features for the
in-memory synthetic clips), ``vggish`` ``[n, 128]``, ``bert`` ``[n, 768]`` and ``label`` ``[n]``
(int32 frame labels), plus the scalar ``clip_label`` and the ``id``.

:data:`DATASETS` names what the trainer can read: ``synthetic`` (generated in memory, no files)
and the three feature datasets built by the TFDS builders from a ``manual_dir`` laid out as the
original repos (spec ``fusion-models.md`` §7). :class:`ClipSource` reads one split of a built
dataset lazily (one example at a time; nothing is held in memory).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jax_cer.data.layout import BAH_CLASSES, CEXPR_CLASSES, CEXPR_OTHER, MELD_CLASSES
from jax_cer.data.pipeline import apply_zscore


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What the trainer needs to know about a dataset.

    ``task``: ``"cer"`` (one label per clip; frame- and video-level metrics) or ``"bah"``
    (per-frame 0/1 labels; BAH's frame-level metrics and AP). ``select``: the validation metric
    that picks the best checkpoint by default (spec §6: C-EXPR-DB frame weighted F1, MELD video
    weighted F1, BAH AP of class 1).
    """

    name: str
    tfds_name: str | None
    task: str
    classes: tuple[str, ...]
    select: str
    folds: int = 1
    other_class: str | None = None

    def class_names(self, use_other_class: bool = False) -> tuple[str, ...]:
        if self.other_class is not None and not use_other_class:
            return tuple(c for c in self.classes if c != self.other_class)
        return self.classes

    def tfds_config(self, fold: int, use_other_class: bool = False) -> str:
        """The registered TFDS name of a fold, e.g. ``c_expr_db/split-3-with-other``."""
        if self.tfds_name is None:
            raise ValueError(f"dataset {self.name!r} is generated in memory; it has no TFDS builder")
        if not 0 <= fold < self.folds:
            raise ValueError(f"dataset {self.name!r} has fold(s) 0..{self.folds - 1}, got fold={fold}")
        other = "-with-other" if use_other_class and self.other_class is not None else ""
        return f"{self.tfds_name}/split-{fold}{other}"


DATASETS: dict[str, DatasetSpec] = {
    "synthetic": DatasetSpec("synthetic", None, "cer", MELD_CLASSES, "weighted_f1"),
    "c-expr-db": DatasetSpec("c-expr-db", "c_expr_db", "cer", CEXPR_CLASSES, "weighted_f1", 5, CEXPR_OTHER),
    "meld": DatasetSpec("meld", "meld", "cer", MELD_CLASSES, "video_mean_probs_weighted_f1"),
    "bah": DatasetSpec("bah", "bah_db", "bah", BAH_CLASSES, "ap"),
}


def dataset_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    return DATASETS[name]


def example_to_clip(ex: Mapping[str, Any]) -> dict[str, Any]:
    """A TFDS feature example (``jax_cer.data.builders``) as a pipeline clip."""
    clip_id = ex["id"]
    if isinstance(clip_id, bytes):
        clip_id = clip_id.decode()
    return {
        "video": np.asarray(ex["video"]),
        "vggish": np.asarray(ex["vggish"], np.float32),
        "bert": np.asarray(ex["bert"], np.float32),
        "label": np.asarray(ex["frame_labels"], np.int32),
        "clip_label": np.array(ex["label"], np.int32),
        "id": str(clip_id),
    }


class ClipSource(Sequence):
    """Clips of one split of a built dataset, read one example at a time, z-scored with ``stats``.

    ``source``: a TFDS data source (``builder.as_data_source()[split]``) or any sequence of
    examples. ``lengths``: the clips' frame counts if already known (else read on first use).
    """

    def __init__(self, source: Sequence, *, stats: Mapping | None = None, lengths: Sequence[int] | None = None):
        self.source = source
        self.stats = stats
        self._lengths = None if lengths is None else [int(n) for n in lengths]

    def __len__(self) -> int:
        return len(self.source)

    def raw(self, i: int) -> dict[str, Any]:
        """Clip ``i`` without the z-score."""
        return example_to_clip(self.source[i])

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        clip = self.raw(i)
        return apply_zscore(clip, self.stats) if self.stats is not None else clip

    @property
    def lengths(self) -> list[int]:
        if self._lengths is None:
            self._lengths = [int(self.source[i]["num_frames"]) for i in range(len(self))]
        return self._lengths


def open_splits(
    dataset: str,
    *,
    manual_dir: str | Path | None,
    data_dir: str | Path | None = None,
    fold: int = 0,
    use_other_class: bool = False,
) -> dict[str, Sequence]:
    """Builds (once) and opens a feature dataset: ``{"train", "val", "test"}`` data sources.

    The first call reads ``manual_dir`` and writes array_record files under ``data_dir``
    (default ``~/tensorflow_datasets``); later calls only open them.
    """
    spec = dataset_spec(dataset)
    name = spec.tfds_config(fold, use_other_class)
    from jax_cer.data.builders import prepare  # noqa: PLC0415 - imports tensorflow_datasets, only to open a built dataset

    return prepare(name, data_dir=data_dir or "~/tensorflow_datasets", manual_dir=manual_dir)
