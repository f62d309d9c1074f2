"""Datasets: readers for the on-disk layouts (spec §7) and TFDS builders that need no TensorFlow.

The layout readers (:mod:`jax_cer.data.layout`, numpy + PyYAML only) are imported eagerly. The TFDS
builders (:mod:`jax_cer.data.builders`) are imported on first use of one of their names, so the
other data modules do not pay for TFDS; importing them registers the TFDS names ``c_expr_db``,
``meld``, ``bah_db``, ``meld_text`` and ``synthetic_cer``. Read a dataset with :func:`prepare`
or ``builder.as_data_source()`` (``as_dataset`` needs TensorFlow).
"""

from __future__ import annotations

import importlib
from typing import Any

from jax_cer.data.layout import (
    BAH_CLASSES,
    CEXPR_CLASSES,
    FEATURE_FILES,
    FRAME_SIZE,
    MELD_CLASSES,
    MELD_EMOTIONS,
    MELD_SENTIMENTS,
    ClipFeatures,
    FoldEntry,
    LayoutError,
    MeldRow,
    MissingFileError,
    read_class_ids,
    read_clip_features,
    read_fold_dir,
    read_fold_file,
    read_fold_split,
    read_meld_csv,
    read_meld_tables,
    resize_frames,
)

_BUILDER_NAMES = (
    "FILE_FORMAT",
    "MELD_TEXT_SPLITS",
    "BahDb",
    "CExprDb",
    "FoldConfig",
    "Meld",
    "MeldText",
    "SyntheticCer",
    "SyntheticConfig",
    "clip_features",
    "prepare",
    "synthetic_examples",
)


def __getattr__(name: str) -> Any:
    """Lazily exposes the TFDS builders (importing :mod:`jax_cer.data.builders` imports TFDS)."""
    if name in _BUILDER_NAMES:
        return getattr(importlib.import_module("jax_cer.data.builders"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [  # builder names resolve through __getattr__
    "BAH_CLASSES",
    "CEXPR_CLASSES",
    "FEATURE_FILES",
    "FILE_FORMAT",
    "FRAME_SIZE",
    "MELD_CLASSES",
    "MELD_EMOTIONS",
    "MELD_SENTIMENTS",
    "MELD_TEXT_SPLITS",
    "BahDb",
    "CExprDb",
    "ClipFeatures",
    "FoldConfig",
    "FoldEntry",
    "LayoutError",
    "Meld",
    "MeldRow",
    "MeldText",
    "MissingFileError",
    "SyntheticCer",
    "SyntheticConfig",
    "clip_features",
    "prepare",
    "read_class_ids",
    "read_clip_features",
    "read_fold_dir",
    "read_fold_file",
    "read_fold_split",
    "read_meld_csv",
    "read_meld_tables",
    "resize_frames",
    "synthetic_examples",
]
