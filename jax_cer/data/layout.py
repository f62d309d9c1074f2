"""Pure-python readers for the on-disk layouts of the CER datasets (spec §7), with validation.

Nothing here depends on TFDS; the builders in :mod:`jax_cer.data.builders` call these readers.

Layout (spec §7.1), relative to a root folder (a TFDS ``manual_dir``)::

    folds/<DS>/split-<k>/{train,val,test}.txt      one clip a line: id,label[,transcript]
    folds/<DS>/split-<k>/class_id.yaml             class name -> id
    <DS>/features/compacted_48/<id>/video.npy      uint8 [n,H,W,3] (H = W = 256, or 48 pre-resized)
    <DS>/features/compacted_48/<id>/vggish.npy     float64 [n,128]
    <DS>/features/compacted_48/<id>/bert.npy       float32 [n,768]
    <DS>/features/compacted_48/<id>/EXPR_continuous_label.npy   int64 [n] (CER, MELD) or float32 0/1 [n] (BAH)

The readers take folder paths, so the same functions read ``folds/C-EXPR-DB/split-0`` under a
``manual_dir`` and ``c-expr-db/folds/split-0`` in ``shared/data``. Every problem raises
:class:`LayoutError` (a ``ValueError``) or :class:`MissingFileError` (also a ``FileNotFoundError``)
whose message names the offending file and what is wrong with it.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import importlib.util
import io
import re
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import yaml

# --- constants ---------------------------------------------------------------------------------------------------

FOLD_SPLITS: tuple[str, ...] = ("train", "val", "test")
"""Fold files of one split folder, in this order."""

CLASS_ID_FILE = "class_id.yaml"
FEATURES_SUBDIR = ("features", "compacted_48")
"""``<root>/<DS>/features/compacted_48/<id>/`` holds the per-clip features (spec §7.1)."""

VIDEO_FILE = "video.npy"
VGGISH_FILE = "vggish.npy"
BERT_FILE = "bert.npy"
LABEL_FILE = "EXPR_continuous_label.npy"
FEATURE_FILES: tuple[str, ...] = (VIDEO_FILE, VGGISH_FILE, BERT_FILE, LABEL_FILE)
NPY_MAGIC = b"\x93NUMPY"

VGGISH_DIM = 128
BERT_DIM = 768
FRAME_SIZE = 48
"""Stored frame side: every video path of the original starts with a PIL bilinear resize to 48×48 (spec §1.2)."""

CEXPR_CLASSES: tuple[str, ...] = (
    "Fearfully Surprised",
    "Happily Surprised",
    "Sadly Surprised",
    "Disgustedly Surprised",
    "Angrily Surprised",
    "Sadly Fearful",
    "Sadly Angry",
    "Other",
)
"""C-EXPR-DB class names in id order (spec §7.2); Other (7) is dropped unless ``use_other_class``."""
CEXPR_OTHER = "Other"

MELD_CLASSES: tuple[str, ...] = ("Neutral", "Happiness", "Surprise", "Fear", "Anger", "Disgust", "Sadness")
"""MELD ``class_id.yaml`` names in id order (spec §7.3)."""
MELD_EMOTIONS: tuple[str, ...] = ("neutral", "joy", "surprise", "fear", "anger", "disgust", "sadness")
"""MELD CSV ``Emotion`` values in the same id order as :data:`MELD_CLASSES`."""
MELD_SENTIMENTS: tuple[str, ...] = ("neutral", "positive", "negative")
MELD_CSV_FILES: Mapping[str, str] = {s: f"{s}_sent_emo.csv" for s in ("train", "dev", "test")}
MELD_CSV_COLUMNS: tuple[str, ...] = (
    "Sr No.",
    "Utterance",
    "Speaker",
    "Emotion",
    "Sentiment",
    "Dialogue_ID",
    "Utterance_ID",
    "Season",
    "Episode",
    "StartTime",
    "EndTime",
)
MELD_TIME = re.compile(r"\d+:\d\d:\d\d,\d{1,3}")
"""``StartTime`` and ``EndTime`` of a MELD row (``00:14:38,127``; some rows have fewer millisecond digits)."""
MELD_ID_PREFIX: Mapping[str, str] = {"train": "train", "dev": "val", "test": "test"}
"""CSV split -> prefix of the clip ids in the MELD fold files (``val/dia0_utt0`` for a dev row)."""

BAH_CLASSES: tuple[str, ...] = ("No A-H", "With A-H")
"""BAH ``class_id.yaml`` names in id order (spec §7.4)."""

FOLD_LABEL = re.compile(r"[+-]?[0-9]+")
"""The label field of a fold line (surrounding whitespace stripped)."""
FOLD_NEWLINE = re.compile(r"\r\n|\r|\n")
"""Line ends of a fold file (Python's universal newlines)."""


class LayoutError(ValueError):
    """A dataset file exists but its content does not match the expected layout."""


class MissingFileError(LayoutError, FileNotFoundError):
    """A file or folder the layout requires is absent."""


# --- fold files ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FoldEntry:
    """One line of a fold file: ``id,label[,transcript]``.

    ``index`` is the 0-based position among the file's clips (the eval order), ``line`` the 1-based
    line number in ``path`` (for error messages).
    """

    id: str
    label: int
    transcript: str | None
    index: int
    line: int
    path: Path


def _check_clip_id(clip_id: str, where: str) -> None:
    """Rejects ids that would escape the features folder, cannot name a folder, or carry stray whitespace."""
    if not clip_id.strip():
        raise LayoutError(f"{where}: empty clip id")
    if clip_id != clip_id.strip():
        raise LayoutError(f"{where}: clip id {clip_id!r} has leading or trailing whitespace")
    if any(ord(c) < 0x20 or c == "\x7f" for c in clip_id):
        raise LayoutError(f"{where}: clip id {clip_id!r} contains a control character")
    parts = clip_id.replace("\\", "/").split("/")
    if clip_id.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise LayoutError(f"{where}: clip id {clip_id!r} must be a clean relative path (no leading '/', no '..')")


def parse_fold_line(text: str, where: str) -> tuple[str, int, str | None]:
    """Splits one fold line on its first two commas into ``(id, label, transcript or None)``."""
    fields = text.split(",", 2)
    if len(fields) < 2:
        raise LayoutError(f"{where}: expected 'id,label[,transcript]', got {text!r}")
    clip_id, label_text = fields[0], fields[1].strip()
    _check_clip_id(clip_id, where)
    if not FOLD_LABEL.fullmatch(label_text):  # int() would also take '1_0' and non-ASCII digits
        raise LayoutError(f"{where}: label {label_text!r} of clip {clip_id!r} is not an integer class id")
    return clip_id, int(label_text), (fields[2] if len(fields) == 3 else None)


def _utf8_text(raw: bytes, path: Path, kind: str) -> str:
    """``raw`` decoded as UTF-8 (a BOM dropped); a byte that is not UTF-8 is named with its line."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        bad = e.start + (len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0)
        line = len(FOLD_NEWLINE.split(raw[:bad].decode("utf-8-sig")))
        raise LayoutError(f"{path}:{line}: byte 0x{raw[bad]:02x} is not UTF-8 (expected a UTF-8 {kind})") from None


def _fold_lines(raw: bytes, path: Path) -> list[str]:
    """The lines of a fold file: UTF-8 (a BOM is dropped), split on ``\\n``, ``\\r\\n`` and ``\\r`` only.

    ``str.splitlines`` would also split on the C1 and Unicode separators (U+0085, U+2028, ...) that
    transcripts may hold, turning the rest of a transcript into a line of its own.
    """
    return FOLD_NEWLINE.split(_utf8_text(raw, path, "text file"))


def read_fold_file(path: str | Path) -> list[FoldEntry]:
    """Reads a fold file (spec §7.1), keeping the clip order.

    UTF-8 (a BOM is dropped); lines end with ``\\n``, ``\\r\\n`` or ``\\r``; blank lines are skipped;
    whitespace around the label is ignored, the transcript is kept as written. Raises
    :class:`MissingFileError` when the file is absent and :class:`LayoutError` on a malformed line
    (an id with surrounding whitespace or a control character, a label that is not ASCII digits),
    a duplicated id or a file without clips.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"fold file not found: {path}")
    entries: list[FoldEntry] = []
    seen: dict[str, int] = {}
    for lineno, raw in enumerate(_fold_lines(path.read_bytes(), path), start=1):
        if not raw.strip():
            continue
        where = f"{path}:{lineno}"
        clip_id, label, transcript = parse_fold_line(raw, where)
        if clip_id in seen:
            raise LayoutError(f"{where}: clip id {clip_id!r} already listed on line {seen[clip_id]}")
        seen[clip_id] = lineno
        entries.append(FoldEntry(clip_id, label, transcript, len(entries), lineno, path))
    if not entries:
        raise LayoutError(f"{path}: fold file lists no clips (empty split)")
    return entries


def read_fold_split(folder: str | Path, splits: Sequence[str] = FOLD_SPLITS) -> dict[str, list[FoldEntry]]:
    """Reads ``<folder>/<split>.txt`` for each split, e.g. ``folder = manual_dir/folds/C-EXPR-DB/split-0``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFileError(f"fold folder not found: {folder}")
    return {s: read_fold_file(folder / f"{s}.txt") for s in splits}


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a mapping may not list a key twice (PyYAML keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[object, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue  # PyYAML names the unhashable key
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice (first on line {seen[key]})", key_node.start_mark
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _UniqueKeyLoader.construct_mapping)


def _yaml_error(e: yaml.YAMLError, path: Path) -> LayoutError:
    """One line naming the file, the line and PyYAML's problem (its own message spans several lines)."""
    if isinstance(e, yaml.reader.ReaderError):
        return LayoutError(f"{path}: not valid YAML: character #x{e.character:04x} at offset {e.position} ({e.reason})")
    mark = getattr(e, "problem_mark", None)
    what = "; ".join(str(x) for x in (getattr(e, "context", None), getattr(e, "problem", None)) if x)
    if mark is None or not what:
        return LayoutError(f"{path}: not valid YAML ({' '.join(str(e).split())})")
    return LayoutError(f"{path}:{mark.line + 1}: not valid YAML: {what} (column {mark.column + 1})")


def read_class_ids(path: str | Path) -> dict[str, int]:
    """Reads ``class_id.yaml`` (UTF-8) as ``{class name: id}``; names must be listed once, ids must be distinct
    non-negative integers."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"class id file not found: {path}")
    text = _utf8_text(path.read_bytes(), path, "YAML file")
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no Python objects
    except yaml.YAMLError as e:
        raise _yaml_error(e, path) from None
    if not isinstance(data, dict) or not data:
        raise LayoutError(f"{path}: expected a non-empty mapping 'class name: id', got {type(data).__name__}")
    out: dict[str, int] = {}
    owner: dict[int, str] = {}
    for name, cid in data.items():
        if not isinstance(name, str) or isinstance(cid, bool) or not isinstance(cid, int) or cid < 0:
            raise LayoutError(f"{path}: entry {name!r}: {cid!r} is not 'class name: non-negative integer id'")
        if cid in owner:
            raise LayoutError(f"{path}: id {cid} is given to both {owner[cid]!r} and {name!r}")
        owner[cid] = name
        out[name] = cid
    return out


def check_class_ids(
    mapping: Mapping[str, int], expected: Sequence[str], path: str | Path, optional: Iterable[str] = ()
) -> None:
    """Checks a ``class_id.yaml`` mapping against the expected class names (``expected[i]`` has id ``i``).

    Names in ``optional`` may be absent (the real C-EXPR-DB files do not list Other). Unknown names,
    wrong ids and missing required names raise :class:`LayoutError`.
    """
    optional = set(optional)
    for name, cid in mapping.items():
        if name not in expected:
            raise LayoutError(f"{path}: unknown class name {name!r} (expected one of {list(expected)})")
        if cid != expected.index(name):
            raise LayoutError(f"{path}: class {name!r} has id {cid}, expected {expected.index(name)}")
    missing = [n for n in expected if n not in mapping and n not in optional]
    if missing:
        raise LayoutError(f"{path}: class names missing: {missing}")


def check_fold_labels(entries: Iterable[FoldEntry], num_classes: int) -> None:
    """Every fold label must be a class id in ``[0, num_classes)``."""
    for e in entries:
        if not 0 <= e.label < num_classes:
            raise LayoutError(
                f"{e.path}:{e.line}: label {e.label} of clip {e.id!r} is out of range [0, {num_classes - 1}]"
            )


def check_class_dirs(entries: Iterable[FoldEntry], class_names: Sequence[str]) -> None:
    """C-EXPR-DB ids are ``<Class-Dir>/<NN>_<Class-Dir>_<i>``: the folder must name the line's class (spec §7.2)."""
    by_dir = {n.replace(" ", "-"): i for i, n in enumerate(class_names)}
    for e in entries:
        class_dir = e.id.split("/", 1)[0]
        if "/" not in e.id or class_dir not in by_dir:
            raise LayoutError(
                f"{e.path}:{e.line}: clip id {e.id!r} does not start with a known class folder "
                f"(one of {sorted(by_dir)})"
            )
        if by_dir[class_dir] != e.label:
            raise LayoutError(
                f"{e.path}:{e.line}: clip {e.id!r} is in class folder {class_dir!r} (id {by_dir[class_dir]}) "
                f"but labelled {e.label}"
            )


def read_fold_dir(
    fold_dir: str | Path,
    class_names: Sequence[str],
    *,
    other_class: str | None = None,
    use_other_class: bool = False,
    check_dirs: bool = False,
    splits: Sequence[str] = FOLD_SPLITS,
) -> dict[str, list[FoldEntry]]:
    """Reads and validates a whole fold folder: ``class_id.yaml`` and the split files.

    ``class_names[i]`` is the expected name of id ``i``; ``other_class`` (C-EXPR-DB's Other) may be
    missing from ``class_id.yaml`` and its clips are removed from every split unless
    ``use_other_class`` (spec §7.2). ``check_dirs`` checks C-EXPR-DB's ``<Class-Dir>/...`` ids
    against the labels. A split left without clips raises :class:`LayoutError`.
    """
    fold_dir = Path(fold_dir)
    yaml_path = fold_dir / CLASS_ID_FILE
    check_class_ids(read_class_ids(yaml_path), class_names, yaml_path, optional=[other_class] if other_class else [])
    out = read_fold_split(fold_dir, splits)
    for split, entries in out.items():
        check_fold_labels(entries, len(class_names))
        if check_dirs:
            check_class_dirs(entries, class_names)
        if other_class is not None and not use_other_class:
            other = list(class_names).index(other_class)
            out[split] = [e for e in entries if e.label != other]
            if not out[split]:
                raise LayoutError(f"{fold_dir / f'{split}.txt'}: no clips left after removing class {other_class!r}")
    return out


# --- per-clip features ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ClipFeatures:
    """The four arrays of one clip, validated: ``video`` uint8 ``[n,H,W,3]`` (possibly memory-mapped),
    ``vggish`` float32 ``[n,128]``, ``bert`` float32 ``[n,768]``, ``labels`` int32 ``[n]``."""

    video: np.ndarray
    vggish: np.ndarray
    bert: np.ndarray
    labels: np.ndarray

    @property
    def num_frames(self) -> int:
        """n, the clip length (the number of face frames)."""
        return int(self.video.shape[0])


def features_root(root: str | Path, dataset_dir: str) -> Path:
    """``<root>/<DS>/features/compacted_48``."""
    return Path(root, dataset_dir, *FEATURES_SUBDIR)


def clip_dir(feat_root: str | Path, clip_id: str) -> Path:
    """The features folder of one clip; ids may contain ``/``, spaces and ``.mp4``."""
    _check_clip_id(clip_id, str(feat_root))
    return Path(feat_root, *clip_id.split("/"))


def _load_npy(path: Path, folder: Path, mmap: bool = False) -> np.ndarray:
    if not path.is_file():
        present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        others = [p for p in present if p not in FEATURE_FILES]
        extra = f"; found instead: {others}" if others else ""
        raise MissingFileError(
            f"missing feature file {path.name!r} in {folder} (expected {list(FEATURE_FILES)}{extra})"
        )
    with path.open("rb") as f:
        magic = f.read(len(NPY_MAGIC))
    if magic != NPY_MAGIC:  # np.load would open an .npz archive, or refuse a pickle with advice to unpickle it
        raise LayoutError(
            f"{path}: cannot be read as a .npy array (the file does not start with the .npy magic bytes: empty, "
            "an .npz archive, a pickle or another format?)"
        )
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Exception as e:  # a bad header, an object array, a truncated file
        detail = " ".join(f"{type(e).__name__}: {e}".split())
        raise LayoutError(f"{path}: cannot be read as a .npy array ({detail})") from None


def _check_finite(arr: np.ndarray, path: Path) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise LayoutError(f"{path}: {int(bad.sum())} non-finite values (NaN/inf), first at index {first}")


def _as_float32(arr: np.ndarray, path: Path) -> np.ndarray:
    """Finite floating features as float32; values beyond float32's range would silently become inf."""
    _check_finite(arr, path)
    with np.errstate(over="ignore"):
        out = arr.astype(np.float32)
    bad = ~np.isfinite(out)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise LayoutError(
            f"{path}: {int(bad.sum())} values beyond the float32 range (|x| > 3.4e38), first at index {first} "
            f"(value {float(arr[first]):g})"
        )
    return out


def read_clip_features(folder: str | Path) -> ClipFeatures:
    """Reads and validates the four feature files of one clip folder (spec §7.1).

    Checks: all four files present and ``.npy`` arrays (never unpickled); ``video`` uint8 ``[n,H,W,3]``
    with n, H, W ≥ 1; ``vggish``/``bert`` floating ``[n,128]``/``[n,768]``, finite and within float32's
    range; labels ``[n]`` integer, or floating with integral finite values (BAH stores 0/1 as float32),
    within int32; the same n everywhere. ``video`` stays memory-mapped.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFileError(f"clip feature folder not found: {folder}")
    paths = {name: folder / name for name in FEATURE_FILES}
    video = _load_npy(paths[VIDEO_FILE], folder, mmap=True)
    if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
        raise LayoutError(
            f"{paths[VIDEO_FILE]}: expected uint8 [n,H,W,3] RGB frames, got {video.dtype} {list(video.shape)}"
        )
    n = int(video.shape[0])
    if n < 1:
        raise LayoutError(f"{paths[VIDEO_FILE]}: clip has no frames (shape {list(video.shape)})")
    if min(video.shape[1:3]) < 1:
        raise LayoutError(
            f"{paths[VIDEO_FILE]}: frames have no pixels (shape {list(video.shape)}; H and W must be at least 1)"
        )
    out: dict[str, np.ndarray] = {}
    for name, dim in ((VGGISH_FILE, VGGISH_DIM), (BERT_FILE, BERT_DIM)):
        arr = _load_npy(paths[name], folder)
        if not np.issubdtype(arr.dtype, np.floating) or arr.ndim != 2 or arr.shape[1] != dim:
            raise LayoutError(f"{paths[name]}: expected floating [n,{dim}], got {arr.dtype} {list(arr.shape)}")
        if arr.shape[0] != n:
            raise LayoutError(
                f"{paths[name]}: has {arr.shape[0]} frames but {VIDEO_FILE} has {n} (all modalities must share n)"
            )
        out[name] = _as_float32(arr, paths[name])
    labels = _load_npy(paths[LABEL_FILE], folder)
    if labels.ndim != 1 or not (np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.floating)):
        raise LayoutError(
            f"{paths[LABEL_FILE]}: expected integer or float [n] labels, got {labels.dtype} {list(labels.shape)}"
        )
    if labels.shape[0] != n:
        raise LayoutError(
            f"{paths[LABEL_FILE]}: has {labels.shape[0]} frames but {VIDEO_FILE} has {n} (all modalities must share n)"
        )
    if np.issubdtype(labels.dtype, np.floating):
        _check_finite(labels, paths[LABEL_FILE])
        if not np.array_equal(labels, np.round(labels)):
            raise LayoutError(f"{paths[LABEL_FILE]}: float labels must be whole class ids (e.g. 0.0/1.0)")
    lo, hi = labels.min(), labels.max()
    if lo < -(2**31) or hi >= 2**31:  # (np.abs of int64's minimum is negative: compare the extremes)
        raise LayoutError(f"{paths[LABEL_FILE]}: label values do not fit int32 (they span [{lo}, {hi}])")
    return ClipFeatures(video, out[VGGISH_FILE], out[BERT_FILE], labels.astype(np.int64).astype(np.int32))


def check_frame_labels(labels: np.ndarray, entry: FoldEntry, num_classes: int, path: Path, mode: str) -> None:
    """Checks per-frame labels against the class range and the fold line's clip label.

    ``mode="constant"`` (C-EXPR-DB, MELD): every frame carries the clip label. ``mode="max"`` (BAH):
    the clip label is the max of the frame labels (spec §7.4).
    """
    if mode not in ("constant", "max"):
        raise ValueError(f"unknown frame-label mode {mode!r}")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        raise LayoutError(f"{path}: frame labels span [{lo}, {hi}], outside the class ids [0, {num_classes - 1}]")
    where = f"{entry.path}:{entry.line}"
    if mode == "constant" and (lo != entry.label or hi != entry.label):
        raise LayoutError(f"{path}: frame labels span [{lo}, {hi}] but the clip label is {entry.label} ({where})")
    if mode == "max" and hi != entry.label:
        raise LayoutError(f"{path}: max frame label is {hi} but the clip label is {entry.label} ({where})")


def has_pil() -> bool:
    """Whether Pillow is importable (needed only to resize frames that are not already 48×48)."""
    return importlib.util.find_spec("PIL") is not None


def resize_frames(video: np.ndarray, size: int = FRAME_SIZE, source: str | Path = "video") -> np.ndarray:
    """Frames ``[n,H,W,3]`` uint8 -> ``[n,size,size,3]`` uint8 with PIL bilinear (torchvision ``Resize(48)``).

    Frames already ``size``×``size`` are returned as they are (copied into memory). Other square
    sizes need Pillow; without it a :class:`LayoutError` names ``source`` and says what to do.
    """
    n, h, w, _ = video.shape
    if (h, w) == (size, size):
        return np.ascontiguousarray(video, dtype=np.uint8)
    if h != w:
        raise LayoutError(f"{source}: frames must be square to be resized to {size}x{size}, got {h}x{w}")
    if h < 1:
        raise LayoutError(f"{source}: frames have no pixels ({h}x{w}); cannot resize them to {size}x{size}")
    if not has_pil():
        raise LayoutError(
            f"{source}: frames are {h}x{w}; resizing them to {size}x{size} (PIL bilinear, spec §1.2) needs Pillow "
            "(pip install pillow), or store frames already resized to 48x48"
        )
    from PIL import Image  # noqa: PLC0415 - optional (Pillow), only to resize frames that are not 48x48

    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        img = Image.fromarray(np.ascontiguousarray(video[i]))  # uint8 [H,W,3] -> RGB
        out[i] = np.asarray(img.resize((size, size), Image.Resampling.BILINEAR))
    return out


# --- MELD utterance tables -----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MeldRow:
    """One utterance of a MELD ``*_sent_emo.csv`` table; ``emotion`` is the id in :data:`MELD_EMOTIONS` order,
    ``line`` the 1-based line the row starts on."""

    sr_no: int
    dialogue_id: int
    utterance_id: int
    speaker: str
    utterance: str
    emotion: int
    sentiment: int
    season: int
    episode: int
    start_time: str
    end_time: str
    line: int


def _decode_csv(path: Path) -> str:
    """The text of a CSV table: UTF-8 (a BOM is dropped), else cp1252; anything else names the file and line.

    cp1252 is tried only for a file without any UTF-8 (no BOM, no valid multi-byte sequence): a UTF-8 table
    with a bad byte (cut short inside a character, or edited in another encoding) is an error at that byte's
    line, not a whole file of mojibake."""
    raw = path.read_bytes()
    nul = raw.find(b"\x00")
    if nul >= 0:
        line = raw.count(b"\n", 0, nul) + 1
        raise LayoutError(f"{path}:{line}: NUL byte in the file: not a UTF-8 or cp1252 CSV table (UTF-16 or binary?)")
    bom = raw.startswith(codecs.BOM_UTF8)
    body = raw[len(codecs.BOM_UTF8) :] if bom else raw
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as e:
        bad = e.start + len(raw) - len(body)
    if bom or any(ord(c) > 0x7F and c != "\ufffd" for c in body.decode("utf-8", errors="replace")):
        line = raw.count(b"\n", 0, bad) + 1
        raise LayoutError(
            f"{path}:{line}: byte 0x{raw[bad]:02x} is not UTF-8 but the rest of the table is UTF-8 text (a file cut "
            "short inside a character, or a line saved in another encoding?)"
        )
    try:
        return raw.decode("cp1252")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise LayoutError(
            f"{path}:{line}: byte 0x{raw[e.start]:02x} is neither UTF-8 nor cp1252 text (expected a UTF-8 or cp1252 "
            "CSV table)"
        ) from None


def _csv_records(text: str) -> Iterator[tuple[int, list[str], str | None]]:
    """The non-blank records of a CSV text with the 1-based line each starts on (a quoted field may span lines)
    and what strict CSV parsing finds wrong with the record (None when nothing): a quote left open at the end
    of the text (a file cut short), or text after a closing quote. A record with a problem is the last one."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    while True:
        line = reader.line_num + 1
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as e:  # the record as lenient parsing reads it, for the field-count message
            rest = "".join(io.StringIO(text, newline="").readlines()[line - 1 :])
            try:
                record = next((r for r in csv.reader(io.StringIO(rest, newline="")) if r), [])
            except csv.Error:
                record = []
            yield line, record, str(e)
            return
        if record:
            yield line, record, None


def _check_meld_header(header: list[str], path: Path, line: int) -> None:
    """Every MELD column must be in the header, once."""
    missing = [c for c in MELD_CSV_COLUMNS if c not in header]
    if missing:
        raise LayoutError(f"{path}: missing columns {missing} (header: {header})")
    repeated = [c for c in MELD_CSV_COLUMNS if header.count(c) > 1]
    if repeated:
        raise LayoutError(f"{path}:{line}: column(s) {repeated} appear more than once in the header")


def _check_field_count(record: list[str], header: list[str], where: str, row: int) -> None:
    """A record must have one field per header column; the message names the row and what is missing or extra."""
    if len(record) == len(header):
        return
    if len(record) < len(header):
        detail = f"missing {', '.join(header[len(record) :])}"
    else:
        detail = f"{len(record) - len(header)} more than the header"
    if any("\n" in field for field in record):  # a quote left open swallows the line breaks that follow
        detail += ": an unclosed quote?"
    elif len(record) > len(header):
        detail += ": an unquoted comma?"
    raise LayoutError(f"{where}: row {row} has {len(record)} fields, expected {len(header)} ({detail})")


def read_meld_csv(path: str | Path) -> list[MeldRow]:
    """Reads one MELD utterance table with the csv module (quoted fields hold commas and newlines).

    Text is kept as decoded (UTF-8, or cp1252 when the file holds no UTF-8 at all); the upstream C1
    control characters that replaced some punctuation are not touched. Checks the columns, the
    number of fields of every row, quotes (one left open at the end of a truncated file), the
    Emotion/Sentiment values, the StartTime/EndTime format, integer ids and unique
    (Dialogue_ID, Utterance_ID) pairs. Errors name the file and the line a row starts on.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"MELD table not found: {path}")
    records = _csv_records(_decode_csv(path))
    header_line, header, problem = next(records, (0, None, None))
    if header is None:
        raise LayoutError(f"{path}: empty file (expected a header with the columns {list(MELD_CSV_COLUMNS)})")
    if problem is not None:
        raise LayoutError(f"{path}:{header_line}: the header is not valid CSV ({problem}; an unclosed quote?)")
    _check_meld_header(header, path, header_line)
    rows: list[MeldRow] = []
    seen: dict[tuple[int, int], int] = {}
    for line, record, problem in records:
        where = f"{path}:{line}"
        _check_field_count(record, header, where, len(rows) + 1)
        if problem is not None:
            raise LayoutError(
                f"{where}: row {len(rows) + 1} is not valid CSV ({problem}; an unclosed quote, or a file cut short?)"
            )
        rec = dict(zip(header, record, strict=True))
        emotion, sentiment = rec["Emotion"].strip().lower(), rec["Sentiment"].strip().lower()
        if emotion not in MELD_EMOTIONS:
            raise LayoutError(f"{where}: unknown Emotion {rec['Emotion']!r} (expected one of {list(MELD_EMOTIONS)})")
        if sentiment not in MELD_SENTIMENTS:
            raise LayoutError(f"{where}: unknown Sentiment {rec['Sentiment']!r} (expected {list(MELD_SENTIMENTS)})")
        for col in ("StartTime", "EndTime"):
            if not MELD_TIME.fullmatch(rec[col]):
                raise LayoutError(f"{where}: column {col!r} is {rec[col]!r}, not a time hh:mm:ss,mmm")
        ints = {}
        for col in ("Sr No.", "Dialogue_ID", "Utterance_ID", "Season", "Episode"):
            try:
                ints[col] = int(rec[col])
            except ValueError:
                raise LayoutError(f"{where}: column {col!r} is {rec[col]!r}, not an integer") from None
        key = (ints["Dialogue_ID"], ints["Utterance_ID"])
        if key in seen:
            raise LayoutError(f"{where}: dialogue {key[0]} utterance {key[1]} already on line {seen[key]}")
        seen[key] = line
        rows.append(
            MeldRow(
                sr_no=ints["Sr No."],
                dialogue_id=key[0],
                utterance_id=key[1],
                speaker=rec["Speaker"],
                utterance=rec["Utterance"],
                emotion=MELD_EMOTIONS.index(emotion),
                sentiment=MELD_SENTIMENTS.index(sentiment),
                season=ints["Season"],
                episode=ints["Episode"],
                start_time=rec["StartTime"],
                end_time=rec["EndTime"],
                line=line,
            )
        )
    if not rows:
        raise LayoutError(f"{path}: table holds no utterances: no rows after the header (empty split)")
    return rows


def read_meld_tables(folder: str | Path) -> dict[str, list[MeldRow]]:
    """Reads ``{train,dev,test}_sent_emo.csv`` from ``folder``; keys ``train``, ``dev``, ``test``."""
    folder = Path(folder)
    return {split: read_meld_csv(folder / name) for split, name in MELD_CSV_FILES.items()}


def meld_clip_id(split: str, row: MeldRow) -> str:
    """The fold-file id of a MELD row, e.g. ``val/dia0_utt0`` for a dev row (spec §7.3)."""
    return f"{MELD_ID_PREFIX[split]}/dia{row.dialogue_id}_utt{row.utterance_id}"


def histogram(labels: Iterable[int], names: Sequence[str]) -> dict[str, int]:
    """``{name: count}`` of class ids, every name present."""
    counts = dict.fromkeys(names, 0)
    for y in labels:
        counts[names[y]] += 1
    return counts


__all__ = [
    "BAH_CLASSES",
    "CEXPR_CLASSES",
    "CEXPR_OTHER",
    "FEATURE_FILES",
    "FOLD_SPLITS",
    "FRAME_SIZE",
    "MELD_CLASSES",
    "MELD_EMOTIONS",
    "MELD_SENTIMENTS",
    "ClipFeatures",
    "FoldEntry",
    "LayoutError",
    "MeldRow",
    "MissingFileError",
    "check_class_dirs",
    "check_class_ids",
    "check_fold_labels",
    "check_frame_labels",
    "clip_dir",
    "features_root",
    "has_pil",
    "histogram",
    "meld_clip_id",
    "parse_fold_line",
    "read_class_ids",
    "read_clip_features",
    "read_fold_dir",
    "read_fold_file",
    "read_fold_split",
    "read_meld_csv",
    "read_meld_tables",
    "resize_frames",
]
