"""The data of a text run: MELD's utterances as prompts and labels, few-shot sampling, token batches.

MELD comes from the folder of its ``{train,dev,test}_sent_emo.csv`` tables: the run's ``data_dir``
(``jax-cer train --data-dir DIR`` or ``--set data_dir=DIR``), else ``$JAX_CER_MELD_DIR``
(:func:`meld_dir`); nothing is looked up elsewhere. The tables are read by the validated reader
:func:`jax_cer.data.layout.read_meld_tables` (UTF-8 with a cp1252 fallback, columns, Emotion and
Sentiment values, ids checked). A sample is one utterance rendered as its T prompt
(:func:`jax_cer.text.textualize.textualize`), labelled in the text models' alphabetical order
(:data:`jax_cer.text.textualize.MELD_TEXT_LABELS`). The run's splits are ``train``, ``val`` (MELD's
dev table) and ``test``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from jax_cer.data.layout import MELD_CSV_FILES, MELD_EMOTIONS, MeldRow, MissingFileError, read_meld_tables
from jax_cer.text.textualize import MELD_TEXT_LABELS, meld_label, textualize
from jax_cer.text.tokenizer import Tokenizer
from jax_cer.training.configs import TextTrainConfig

MELD_DIR_ENV = "JAX_CER_MELD_DIR"
"""The environment variable naming MELD's CSV folder when a run sets no ``data_dir``."""
TEXT_SPLITS: Mapping[str, str] = {"train": "train", "val": "dev", "test": "test"}
"""A text run's split -> the MELD table it reads (``dev_sent_emo.csv`` is the validation split)."""

TextSplit = tuple[list[str], np.ndarray]
"""Prompts and their int32 labels ``[N]`` (text order)."""

_HOW_TO_SET = (
    f"pass --data-dir DIR to jax-cer train (or --set data_dir=DIR), or set ${MELD_DIR_ENV}=DIR, with DIR the folder "
    f"that holds {', '.join(MELD_CSV_FILES.values())}"
)


def meld_dir(data_dir: str | Path = "") -> Path:
    """The folder of MELD's CSV tables: ``data_dir``, else ``$JAX_CER_MELD_DIR``; it must hold all three tables.

    A folder that is not set, does not exist or lacks a table is an error naming the path, where it
    came from and how to set it.
    """
    source = "data_dir" if data_dir else f"${MELD_DIR_ENV}"
    folder = str(data_dir) if data_dir else os.environ.get(MELD_DIR_ENV, "")
    if not folder:
        raise MissingFileError(
            f"no MELD folder: the run sets no data_dir and ${MELD_DIR_ENV} is not set; {_HOW_TO_SET}"
        )
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise MissingFileError(f"MELD folder {path} (from {source}) does not exist; {_HOW_TO_SET}")
    missing = [name for name in MELD_CSV_FILES.values() if not (path / name).is_file()]
    if missing:
        raise MissingFileError(f"MELD folder {path} (from {source}) lacks {', '.join(missing)}; {_HOW_TO_SET}")
    return path


def default_meld_dir() -> Path:
    """MELD's folder from ``$JAX_CER_MELD_DIR`` (:func:`meld_dir` without a ``data_dir``)."""
    return meld_dir("")


def meld_prompts(rows: Sequence[MeldRow]) -> TextSplit:
    """The T prompts and text-order labels of MELD rows (:func:`jax_cer.data.layout.read_meld_csv`), in row order."""
    texts = [textualize({"transcript": r.utterance}, ("T",)) for r in rows]
    labels = np.asarray([meld_label(MELD_EMOTIONS[r.emotion]) for r in rows], np.int32)
    return texts, labels


def meld_text_splits(folder: str | Path) -> dict[str, TextSplit]:
    """``{"train", "val", "test"}`` prompts and labels of MELD's tables in ``folder`` (``val`` is dev)."""
    tables = read_meld_tables(folder)
    return {split: meld_prompts(tables[table]) for split, table in TEXT_SPLITS.items()}


def synthetic_text_splits(seed: int) -> dict[str, TextSplit]:
    """A few generated sentences per class (28 train, 14 val, 14 test): the smoke run's data."""
    words = {
        0: "furious angry yelling",
        1: "gross disgusting ew",
        2: "scared afraid terrified",
        3: "great happy wonderful",
        4: "okay fine alright",
        5: "sad crying sorry",
        6: "what wow really",
    }
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", 28), ("val", 14), ("test", 14)):
        labels = np.arange(n, dtype=np.int32) % 7
        texts = [textualize({"transcript": " ".join(rng.permutation(words[int(c)].split()))}, ("T",)) for c in labels]
        out[split] = (texts, labels)
    return out


def load_text_data(cfg: TextTrainConfig) -> dict[str, TextSplit]:
    """A run's ``{"train", "val", "test"}`` prompts and labels: MELD (``shots`` per class drawn from the
    whole training split, then the first ``limit`` of each split) or the synthetic sentences."""
    if cfg.dataset == "synthetic":
        splits = synthetic_text_splits(cfg.seed)
    else:
        splits = meld_text_splits(meld_dir(cfg.data_dir))
    if cfg.shots:  # drawn from the whole training split (limit then applies to dev and test)
        texts, labels = splits["train"]
        idx = few_shot_indices(labels, cfg.shots, cfg.seed, len(MELD_TEXT_LABELS))
        splits["train"] = ([texts[i] for i in idx], labels[idx])
    if cfg.limit:
        splits = {s: (t[: cfg.limit], y[: cfg.limit]) for s, (t, y) in splits.items()}
    return splits


def few_shot_indices(labels: np.ndarray, shots: int, seed: int, num_classes: int) -> np.ndarray:
    """``shots`` indices per class, drawn without replacement with ``seed``, in class then draw order."""
    rng = np.random.default_rng(seed)
    out = []
    for c in range(num_classes):
        pool = np.flatnonzero(labels == c)
        if len(pool) < shots:
            raise ValueError(f"class {c} has {len(pool)} training examples, fewer than shots={shots}")
        out.append(rng.choice(pool, shots, replace=False))
    return np.concatenate(out)


class TokenBatches:
    """Shuffled training batches of token ids; the last partial batch is padded with zero-weight rows.

    An epoch's order is a function of ``(seed, epoch)``. A batch is ``(ids [B, S], mask [B, S],
    labels [B], weights [B])``; ``S`` is ``length`` when given, else the batch's longest sequence
    rounded up to a multiple of 16.
    """

    def __init__(
        self,
        ids: Sequence[Sequence[int]],
        labels: np.ndarray,
        batch_size: int,
        seed: int,
        tokenizer: Tokenizer,
        length: int | None = None,
    ):
        self.ids, self.labels, self.batch_size, self.seed, self.tokenizer = ids, labels, batch_size, seed, tokenizer
        self.length = length  # None: each batch padded to its longest (rounded up to 16); else this length

    def __len__(self) -> int:
        return math.ceil(len(self.ids) / self.batch_size)

    def epoch(self, epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """The batches of ``epoch``, in its shuffled order."""
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.ids))
        for s in range(0, len(order), self.batch_size):
            idx = order[s : s + self.batch_size]
            weight = np.ones(self.batch_size, np.float32)
            if len(idx) < self.batch_size:
                weight[len(idx) :] = 0.0
                idx = np.concatenate([idx, np.full(self.batch_size - len(idx), idx[0])])
            tok = self.tokenizer.pad([self.ids[i] for i in idx], pad_to_multiple_of=16, length=self.length)
            yield tok["input_ids"], tok["attention_mask"], self.labels[idx], weight
