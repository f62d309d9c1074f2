"""TFDS builders for the CER datasets: per-clip features (C-EXPR-DB, MELD, BAH), MELD text tables, synthetic clips.

The builders run without TensorFlow: they write ``array_record`` files (the default here) and are
read with ``builder.as_data_source()`` or ``tfds.data_source(...)``; ``as_dataset`` needs TensorFlow.
Examples keep the clip order of the fold files (shuffling is disabled), so ``source[i]`` is the
i-th clip of the fold file (after removing Other where it is removed).

Feature builders (``manual_dir`` laid out as spec §7.1, see :mod:`jax_cer.data.layout`), one
example per clip:

=================  ==========================  =========================================================
key                type                        content
=================  ==========================  =========================================================
``id``             Text                        clip id from the fold file (may hold ``/`` and spaces)
``label``          ClassLabel                  clip label (fold file)
``frame_labels``   int32 ``[n]``               ``EXPR_continuous_label.npy`` cast to int
``video``          uint8 ``[n,48,48,3]``       RGB faces; 256×256 sources resized with PIL bilinear
``vggish``         float32 ``[n,128]``         raw VGGish (stored float64 on disk, cast)
``bert``           float32 ``[n,768]``         per-frame BERT
``transcript``     Text                        third fold field, ``""`` when absent
``num_frames``     int32                       n
=================  ==========================  =========================================================

Frames are stored 48×48 because every video path of the original starts with the PIL bilinear
resize to 48×48 (spec §1.2): 48×48 sources are stored as they are, other square sizes are resized
with Pillow (a clear error when Pillow is not installed). Windowing, padding, z-scoring, crops and
flips belong to the input pipeline, not here (spec §7.1).

Build one, e.g.::

    from jax_cer.data import prepare
    sources = prepare("c_expr_db/split-0", data_dir="~/tfds", manual_dir="/data/cer")
    clip = sources["train"][0]
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from jax_cer.data.layout import (
    BAH_CLASSES,
    BERT_DIM,
    CEXPR_CLASSES,
    CEXPR_OTHER,
    CLASS_ID_FILE,
    FEATURES_SUBDIR,
    FOLD_SPLITS,
    FRAME_SIZE,
    LABEL_FILE,
    MELD_CLASSES,
    MELD_CSV_FILES,
    MELD_EMOTIONS,
    MELD_SENTIMENTS,
    VGGISH_DIM,
    VIDEO_FILE,
    FoldEntry,
    LayoutError,
    MissingFileError,
    check_frame_labels,
    clip_dir,
    features_root,
    meld_clip_id,
    read_clip_features,
    read_fold_dir,
    read_meld_tables,
    resize_frames,
)

FILE_FORMAT = "array_record"
"""The only TFDS file format that can be written and read without TensorFlow."""

MELD_TEXT_SPLITS: Mapping[str, str] = {"train": "train", "validation": "dev", "test": "test"}
"""MeldText split -> CSV split (``dev_sent_emo.csv`` is the validation split)."""


class _CodePath:
    """``code_path`` without TFDS's lookup, which imports the ``importlib_resources`` backport (absent here)
    for builders defined in a package; the path only locates an optional ``checksums.tsv`` beside the code."""

    def __get__(self, obj: object, owner: type) -> epath.Path:
        return epath.Path(inspect.getfile(owner))


class _ArrayRecordBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Defaults ``file_format`` to ``array_record`` so the builders work without TensorFlow."""

    code_path = _CodePath()
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "Initial release."}

    def __init__(self, *, file_format: str | None = None, **kwargs: Any) -> None:
        super().__init__(file_format=file_format or FILE_FORMAT, **kwargs)


def _check_manual_dir(path: Path, expected: str, *, given: bool = True) -> None:
    """``manual_dir`` must be a folder with something in it; the error names it and what it must hold.

    ``given=False``: no ``manual_dir`` was passed and ``path`` is TFDS's default (``<data_dir>/downloads/manual``).
    """
    where = f"manual_dir {path}" if given else f"no manual_dir given, and the default {path}"
    want = f"it must be a folder holding {expected}" if given else f"pass manual_dir, a folder holding {expected}"
    if not path.exists():
        raise MissingFileError(f"{where} does not exist; {want}")
    if not path.is_dir():
        raise LayoutError(f"{where} is a file, not a folder; {want}")
    if not any(path.iterdir()):
        raise MissingFileError(f"{where} is an empty folder; it must hold {expected}")


def _listing(folder: Path, limit: int = 8) -> str:
    """The first names in ``folder``, for messages."""
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    return ", ".join(names[:limit]) + (f", ... ({len(names)} entries)" if len(names) > limit else "")


class _ManualDirBuilder(_ArrayRecordBuilder, skip_registration=True):
    """A builder that reads ``manual_dir``: the folder is checked before TFDS opens it (TFDS would fail
    with an AssertionError), with an error that says what the folder must hold."""

    def manual_layout(self) -> str:
        """What ``manual_dir`` must hold, for error messages."""
        raise NotImplementedError

    def _make_download_manager(
        self, download_dir: epath.PathLike | None, download_config: tfds.download.DownloadConfig
    ) -> tfds.download.DownloadManager:
        dl_manager = super()._make_download_manager(download_dir, download_config)
        given = download_config.manual_dir
        path = Path(given).expanduser() if given else Path(dl_manager.download_dir) / "manual"  # TFDS's default
        _check_manual_dir(path, self.manual_layout(), given=bool(given))
        return dl_manager


def clip_features(class_names: Sequence[str], frame_size: int = FRAME_SIZE) -> tfds.features.FeaturesDict:
    """The FeaturesDict of one clip example (table in the module docstring).

    Arrays use ``Encoding.BYTES`` (raw little-endian bytes): the default encoding would store every
    uint8 pixel as an int64 in a protobuf list, 8x the size and much slower to write.
    """
    raw = tfds.features.Encoding.BYTES
    return tfds.features.FeaturesDict(
        {
            "id": tfds.features.Text(),
            "label": tfds.features.ClassLabel(names=list(class_names)),
            "frame_labels": tfds.features.Tensor(shape=(None,), dtype=np.int32, encoding=raw),
            "video": tfds.features.Tensor(shape=(None, frame_size, frame_size, 3), dtype=np.uint8, encoding=raw),
            "vggish": tfds.features.Tensor(shape=(None, VGGISH_DIM), dtype=np.float32, encoding=raw),
            "bert": tfds.features.Tensor(shape=(None, BERT_DIM), dtype=np.float32, encoding=raw),
            "transcript": tfds.features.Text(),
            "num_frames": tfds.features.Scalar(dtype=np.int32),
        }
    )


@dataclasses.dataclass(eq=False)
class FoldConfig(tfds.core.BuilderConfig):
    """One fold (``folds/<DS>/split-<fold>``); ``use_other_class`` keeps C-EXPR-DB's Other clips (spec §7.2)."""

    fold: int = 0
    use_other_class: bool = False


class _FeatureBuilder(_ManualDirBuilder, skip_registration=True):
    """Per-clip feature datasets read from ``manual_dir`` (spec §7.1)."""

    DATASET_DIR: ClassVar[str] = ""
    """``<manual_dir>/<DATASET_DIR>/features/compacted_48`` and ``<manual_dir>/folds/<DATASET_DIR>``."""
    CLASS_NAMES: ClassVar[tuple[str, ...]] = ()
    OTHER_CLASS: ClassVar[str | None] = None
    """Class dropped from every split unless the config's ``use_other_class``."""
    FRAME_LABEL_MODE: ClassVar[str] = "constant"
    CHECK_CLASS_DIRS: ClassVar[bool] = False

    @property
    def class_names(self) -> tuple[str, ...]:
        """Label names of this config (Other removed unless ``use_other_class``)."""
        cfg = self.builder_config
        if self.OTHER_CLASS is not None and not getattr(cfg, "use_other_class", False):
            return tuple(n for n in self.CLASS_NAMES if n != self.OTHER_CLASS)
        return self.CLASS_NAMES

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            features=clip_features(self.class_names),
            disable_shuffling=True,
        )

    def manual_layout(self) -> str:
        ds, files = self.DATASET_DIR, ", ".join([*(f"{s}.txt" for s in FOLD_SPLITS), CLASS_ID_FILE])
        return f"folds/{ds}/split-{self.builder_config.fold}/ ({files}) and {ds}/{'/'.join(FEATURES_SUBDIR)}/<clip id>/"

    def read_folds(self, root: str | Path) -> dict[str, list[FoldEntry]]:
        """Validated fold entries per split (Other removed unless kept); checks that every clip folder exists."""
        cfg = self.builder_config
        fold_dir = Path(root, "folds", self.DATASET_DIR, f"split-{cfg.fold}")
        if not fold_dir.is_dir():
            raise MissingFileError(
                f"fold folder not found: {fold_dir} (manual_dir {root} must hold {self.manual_layout()}; "
                f"it holds {_listing(Path(root))})"
            )
        splits = read_fold_dir(
            fold_dir,
            self.CLASS_NAMES,
            other_class=self.OTHER_CLASS,
            use_other_class=getattr(cfg, "use_other_class", False),
            check_dirs=self.CHECK_CLASS_DIRS,
        )
        feat_root = features_root(root, self.DATASET_DIR)
        if not feat_root.is_dir():
            raise MissingFileError(f"features folder not found: {feat_root}")
        for entries in splits.values():
            missing = [e for e in entries if not clip_dir(feat_root, e.id).is_dir()]
            if missing:
                shown = ", ".join(f"{e.id!r} (line {e.line})" for e in missing[:3])
                raise MissingFileError(
                    f"{missing[0].path}: {len(missing)} clip feature folder(s) not found under {feat_root}: "
                    f"{shown}{' ...' if len(missing) > 3 else ''}"
                )
        return splits

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
        root = Path(dl_manager.manual_dir)
        splits = self.read_folds(root)
        feat_root = features_root(root, self.DATASET_DIR)
        return {split: self._generate_examples(entries, feat_root) for split, entries in splits.items()}

    def _generate_examples(self, entries: Sequence[FoldEntry], feat_root: Path) -> Iterator[tuple[str, dict]]:
        num_classes = len(self.class_names)
        for e in entries:
            folder = clip_dir(feat_root, e.id)
            feats = read_clip_features(folder)
            check_frame_labels(feats.labels, e, num_classes, folder / LABEL_FILE, self.FRAME_LABEL_MODE)
            yield (
                e.id,
                {
                    "id": e.id,
                    "label": e.label,
                    "frame_labels": feats.labels,
                    "video": resize_frames(feats.video, FRAME_SIZE, folder / VIDEO_FILE),
                    "vggish": feats.vggish,
                    "bert": feats.bert,
                    "transcript": e.transcript or "",
                    "num_frames": feats.num_frames,
                },
            )


_LAYOUT_HELP = """\
Place the data under manual_dir as in the original repos (spec §7.1):
  <manual_dir>/folds/{ds}/split-<k>/{{train,val,test}}.txt and class_id.yaml
  <manual_dir>/{ds}/features/compacted_48/<clip id>/{{video,vggish,bert,EXPR_continuous_label}}.npy
"""


class CExprDb(_FeatureBuilder):
    """C-EXPR-DB compound-expression clips (7 classes + Other), precomputed per-frame features, 5 folds."""

    DATASET_DIR = "C-EXPR-DB"
    CLASS_NAMES = CEXPR_CLASSES
    OTHER_CLASS = CEXPR_OTHER
    CHECK_CLASS_DIRS = True
    MANUAL_DOWNLOAD_INSTRUCTIONS = _LAYOUT_HELP.format(ds=DATASET_DIR)
    BUILDER_CONFIGS: ClassVar[list[FoldConfig]] = [
        FoldConfig(name=f"split-{k}{'-with-other' if other else ''}", fold=k, use_other_class=other,
                   description=f"fold {k}, {'with' if other else 'without'} the Other class")
        for other in (False, True)
        for k in range(5)
    ]  # fmt: skip


class Meld(_FeatureBuilder):
    """MELD utterance clips (7 emotions), precomputed per-frame features; ids like ``train/dia0_utt0``."""

    DATASET_DIR = "MELD"
    CLASS_NAMES = MELD_CLASSES
    MANUAL_DOWNLOAD_INSTRUCTIONS = _LAYOUT_HELP.format(ds=DATASET_DIR)
    BUILDER_CONFIGS: ClassVar[list[FoldConfig]] = [FoldConfig(name="split-0", fold=0, description="the MELD split")]


class BahDb(_FeatureBuilder):
    """BAH ambivalence/hesitancy videos (2 classes), per-frame 0/1 labels; clip label = max frame label."""

    DATASET_DIR = "BAH_DB"
    CLASS_NAMES = BAH_CLASSES
    FRAME_LABEL_MODE = "max"
    MANUAL_DOWNLOAD_INSTRUCTIONS = _LAYOUT_HELP.format(ds=DATASET_DIR)
    BUILDER_CONFIGS: ClassVar[list[FoldConfig]] = [FoldConfig(name="split-0", fold=0, description="dataset v1 split")]


class MeldText(_ManualDirBuilder):
    """MELD utterance tables (text only): one example per CSV row; splits train / validation (dev) / test."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = "Put train_sent_emo.csv, dev_sent_emo.csv and test_sent_emo.csv in manual_dir."

    def manual_layout(self) -> str:
        return ", ".join(MELD_CSV_FILES.values())

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "id": tfds.features.Text(),
                    "sr_no": tfds.features.Scalar(dtype=np.int32),
                    "dialogue_id": tfds.features.Scalar(dtype=np.int32),
                    "utterance_id": tfds.features.Scalar(dtype=np.int32),
                    "speaker": tfds.features.Text(),
                    "utterance": tfds.features.Text(),
                    "emotion": tfds.features.ClassLabel(names=list(MELD_EMOTIONS)),
                    "sentiment": tfds.features.ClassLabel(names=list(MELD_SENTIMENTS)),
                    "season": tfds.features.Scalar(dtype=np.int32),
                    "episode": tfds.features.Scalar(dtype=np.int32),
                    "start_time": tfds.features.Text(),
                    "end_time": tfds.features.Text(),
                }
            ),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
        root = Path(dl_manager.manual_dir)
        missing = [name for name in MELD_CSV_FILES.values() if not (root / name).is_file()]
        if missing:
            raise MissingFileError(
                f"manual_dir {root} lacks {', '.join(missing)} (it must hold {self.manual_layout()}; "
                f"it holds {_listing(root)})"
            )
        tables = read_meld_tables(root)
        return {name: self._generate_examples(split, tables[split]) for name, split in MELD_TEXT_SPLITS.items()}

    def _generate_examples(self, csv_split: str, rows: Sequence) -> Iterator[tuple[str, dict]]:
        for r in rows:
            clip_id = meld_clip_id(csv_split, r)
            yield (
                clip_id,
                {
                    "id": clip_id,
                    "sr_no": r.sr_no,
                    "dialogue_id": r.dialogue_id,
                    "utterance_id": r.utterance_id,
                    "speaker": r.speaker,
                    "utterance": r.utterance,
                    "emotion": r.emotion,
                    "sentiment": r.sentiment,
                    "season": r.season,
                    "episode": r.episode,
                    "start_time": r.start_time,
                    "end_time": r.end_time,
                },
            )


@dataclasses.dataclass(eq=False)
class SyntheticConfig(tfds.core.BuilderConfig):
    """Size and seed of the synthetic dataset; clips are split 2/3 train, 1/6 val, 1/6 test in id order."""

    seed: int = 0
    num_clips: int = 24
    num_classes: int = 7
    min_frames: int = 50
    max_frames: int = 400
    frame_size: int = FRAME_SIZE


def synthetic_examples(cfg: SyntheticConfig) -> dict[str, list[dict[str, Any]]]:
    """The synthetic examples per split, a pure function of ``cfg`` (same keys as the feature builders).

    Clip ``i`` has label ``i % num_classes`` and a length drawn in ``[min_frames, max_frames]``.
    vggish and bert are Gaussian around a per-class mean (unit noise), frames are a per-class RGB
    colour plus uniform noise of ±40, so a model can learn the classes.
    """
    if cfg.num_clips < 3 or cfg.num_classes < 2 or not 1 <= cfg.min_frames <= cfg.max_frames:
        raise ValueError(f"bad SyntheticConfig: {cfg}")
    base = np.random.default_rng([cfg.seed, 1_000_003])
    mu_vggish = base.normal(0.0, 1.0, (cfg.num_classes, VGGISH_DIM)).astype(np.float32)
    mu_bert = base.normal(0.0, 0.5, (cfg.num_classes, BERT_DIM)).astype(np.float32)
    colour = base.integers(48, 208, (cfg.num_classes, 3))
    n_eval = max(1, cfg.num_clips // 6)
    n_train = cfg.num_clips - 2 * n_eval
    out: dict[str, list[dict[str, Any]]] = {s: [] for s in FOLD_SPLITS}
    s = cfg.frame_size
    for i in range(cfg.num_clips):
        rng = np.random.default_rng([cfg.seed, i])
        label = i % cfg.num_classes
        n = int(rng.integers(cfg.min_frames, cfg.max_frames + 1))
        noise = rng.integers(-40, 41, (n, s, s, 3), dtype=np.int16)
        split = "train" if i < n_train else "val" if i < n_train + n_eval else "test"
        clip_id = f"{split}/class_{label}/clip_{i:03d}"
        out[split].append(
            {
                "id": clip_id,
                "label": label,
                "frame_labels": np.full(n, label, np.int32),
                "video": np.clip(colour[label] + noise, 0, 255).astype(np.uint8),
                "vggish": mu_vggish[label] + rng.standard_normal((n, VGGISH_DIM), dtype=np.float32),
                "bert": mu_bert[label] + rng.standard_normal((n, BERT_DIM), dtype=np.float32),
                "transcript": f"synthetic clip {i}, class {label}",
                "num_frames": n,
            }
        )
    return out


class SyntheticCer(_ArrayRecordBuilder):
    """Deterministic synthetic multimodal clips (class-dependent feature means), no manual_dir needed."""

    BUILDER_CONFIGS: ClassVar[list[SyntheticConfig]] = [
        SyntheticConfig(name="default", description="24 clips of 50-400 frames, 7 classes, 48x48 frames, seed 0"),
        SyntheticConfig(name="tiny", num_clips=12, min_frames=8, max_frames=40, description="12 short clips"),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            features=clip_features([f"class_{k}" for k in range(cfg.num_classes)], cfg.frame_size),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
        clips = synthetic_examples(self.builder_config)
        return {split: self._generate_examples(examples) for split, examples in clips.items()}

    def _generate_examples(self, examples: Sequence[dict[str, Any]]) -> Iterator[tuple[str, dict]]:
        for ex in examples:
            yield ex["id"], ex


def prepare(
    name: str | type[tfds.core.DatasetBuilder],
    *,
    data_dir: str | os.PathLike,
    manual_dir: str | os.PathLike | None = None,
    config: str | tfds.core.BuilderConfig | None = None,
) -> dict[str, Any]:
    """Builds a dataset if needed and returns its data sources ``{split: random-access source}``.

    ``name`` is a registered name (``"c_expr_db/split-3-with-other"``, ``"meld"``, ``"bah_db"``,
    ``"meld_text"``, ``"synthetic_cer"``) or a builder class. Data go to ``data_dir`` (array_record).
    """
    data_dir = os.fspath(Path(data_dir).expanduser())
    kwargs: dict[str, Any] = {"config": config} if config is not None else {}
    if isinstance(name, str):
        builder = tfds.builder(name, data_dir=data_dir, file_format=FILE_FORMAT, **kwargs)
    else:
        builder = name(data_dir=data_dir, **kwargs)
    manual = os.fspath(Path(manual_dir).expanduser()) if manual_dir else None
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual))
    return builder.as_data_source()


__all__ = [
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
]
