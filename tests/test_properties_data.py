"""Property-based checks of the feature datasets' on-disk layouts against malformed input (hypothesis).

The contract of tests/test_properties.py (its ``outcome`` helper): every generated input either raises a
``ValueError`` whose message names the offending file (and the clip, line or key), or gives a well-defined
result that agrees with a reference. Here the errors must moreover be the layout's own ``LayoutError`` (a
``ValueError``; ``MissingFileError`` is one too) and one line long. Covered: the readers of spec §7.1
(:mod:`jax_cer.data.layout`) as the C-EXPR-DB and BAH builders (:mod:`jax_cer.data.builders`) run them,
``read_folds`` then the examples ``_generate_examples`` yields (no TFDS files are written here):

- a tiny valid layout (a few clips of a few frames, in any documented spelling: ``\\n``, ``\\r\\n`` or ``\\r``
  line ends, a BOM, blank lines, spaces around the label, transcripts holding commas, quotes and C1 or
  Unicode separators, the on-disk dtypes the readers accept) reads back exactly: the class ids, the fold
  entries and their lines, and every example's arrays;
- a damaged clip folder (a ``.npy`` cut short, of the wrong dtype, shape, width or frame count, pickled or
  holding objects — never unpickled —, NaN, inf or beyond float32, labels outside the classes, fractional,
  beyond int32 or disagreeing with the fold line, a missing file) is refused naming the file;
- a damaged fold file (a clip without features, a duplicate, a bad label or id, a byte that is not UTF-8,
  a missing or empty file) is refused naming the file and line; cut short, it reads back a prefix of its
  clips (the last transcript possibly cut) or is refused; re-spelled (line ends, BOM, blank lines), it reads
  back the same clips;
- a damaged ``class_id.yaml`` (not YAML, not a mapping, a key twice, a wrong, missing or unknown entry, a
  Python tag — never constructed —, a missing file) is refused naming the file.
"""

from __future__ import annotations

import codecs
import dataclasses
import io
import pickle
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from jax_cer.data.builders import BahDb, CExprDb
from jax_cer.data.layout import (
    BAH_CLASSES,
    BERT_FILE,
    CEXPR_CLASSES,
    CEXPR_OTHER,
    FEATURE_FILES,
    LABEL_FILE,
    VGGISH_FILE,
    VIDEO_FILE,
    LayoutError,
    MissingFileError,
    features_root,
    has_pil,
    read_class_ids,
    read_clip_features,
    read_fold_file,
    resize_frames,
)
from jax_cer.training.configs import TrainConfig
from jax_cer.training.fusion_data import load_data
from tests.test_data_builders import CEXPR_SPLITS, CEXPR_YAML, write_layout
from tests.test_properties import outcome

CLASSES = {"C-EXPR-DB": CEXPR_CLASSES, "BAH_DB": BAH_CLASSES}
OTHER = CEXPR_CLASSES.index(CEXPR_OTHER)
NEWLINE = re.compile(r"\r\n|\r|\n")


@contextmanager
def scratch() -> Iterator[Path]:
    """A fresh folder for one generated example."""
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


def one_line(fn: Callable):
    """``fn()``; a ValueError it raises must be a LayoutError of one line."""
    try:
        return fn()
    except ValueError as err:
        assert isinstance(err, LayoutError), f"{type(err).__name__} is not a LayoutError: {err}"
        assert "\n" not in str(err), f"the message spans several lines: {err}"
        raise


class Unpickled:
    """Touches ``path`` when unpickled: a feature file holding one must be refused without unpickling it."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return Path.touch, (self.path,)


# -- a tiny layout ------------------------------------------------------------------------------------------


@dataclasses.dataclass
class FoldFile:
    """A fold file as written: its physical lines (without their ends), the index of each clip's line among
    them, the line end, a BOM, whether the last line has its end."""

    lines: list[str]
    clip_lines: list[int]
    term: str
    bom: bool
    final_term: bool

    def render(self) -> bytes:
        text = self.term.join(self.lines) + (self.term if self.final_term else "")
        return (codecs.BOM_UTF8 if self.bom else b"") + text.encode()


@dataclasses.dataclass
class Clip:
    """One clip: its fold line's fields and its feature files."""

    id: str
    label: int
    transcript: str | None
    arrays: dict[str, np.ndarray]
    """File name -> the array written to it."""


@dataclasses.dataclass
class Layout:
    """``folds/<ds>/split-0`` and ``<ds>/features/compacted_48`` as written."""

    ds: str
    use_other: bool
    class_ids: dict[str, int]
    yaml_text: str
    folds: dict[str, FoldFile]
    order: dict[str, list[str]]
    """Split -> clip ids in the fold file's order."""
    clips: dict[str, Clip]

    def builder(self, root: Path) -> CExprDb | BahDb:
        """The builder of this layout's config (constructing it writes nothing)."""
        if self.ds == "BAH_DB":
            return BahDb(data_dir=str(root / "tfds"))
        return CExprDb(data_dir=str(root / "tfds"), config="split-0-with-other" if self.use_other else "split-0")

    def fold_dir(self, root: Path) -> Path:
        return root / "folds" / self.ds / "split-0"

    def clip_dir(self, root: Path, clip_id: str) -> Path:
        return features_root(root, self.ds).joinpath(*clip_id.split("/"))

    def kept(self, split: str) -> list[Clip]:
        """The clips of a split the builder yields (C-EXPR-DB's Other removed unless kept)."""
        clips = [self.clips[c] for c in self.order[split]]
        if self.ds == "C-EXPR-DB" and not self.use_other:
            clips = [c for c in clips if c.label != OTHER]
        return clips

    @property
    def num_classes(self) -> int:
        """Classes of the builder's config (the frame labels' range)."""
        return len(CLASSES[self.ds]) - (self.ds == "C-EXPR-DB" and not self.use_other)

    def write(self, root: Path) -> None:
        fold_dir = self.fold_dir(root)
        fold_dir.mkdir(parents=True)
        (fold_dir / "class_id.yaml").write_bytes(self.yaml_text.encode())
        for split, fold in self.folds.items():
            (fold_dir / f"{split}.txt").write_bytes(fold.render())
        for clip in self.clips.values():
            folder = self.clip_dir(root, clip.id)
            folder.mkdir(parents=True)
            for name, arr in clip.arrays.items():
                np.save(folder / name, arr)


TRANSCRIPT = st.one_of(
    st.none(),
    st.lists(
        st.one_of(
            st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=5),
            st.sampled_from([",", ", ", '"', " ", "\x85", "\u2028", "\u2029", "\x0b", "\x0c", "\x1c", "é", "日本"]),
        ),
        max_size=4,
    ).map("".join),
)
LABEL_SPELLING = st.sampled_from(["{}", "{}", " {}", "{} ", "\t{}\t", "+{}"])
BLANK = st.sampled_from(["", " ", "\t", " \t "])


@st.composite
def clip_arrays(draw, label: int, bah: bool) -> dict[str, np.ndarray]:
    """The four arrays of a clip of 1-3 frames, in one of the on-disk dtypes the readers accept."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n, side = draw(st.integers(1, 3)), draw(st.sampled_from([48, 48, 3] if has_pil() else [48]))
    video = rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8)
    if draw(st.booleans()):
        video = np.asfortranarray(video)
    if bah:  # per-frame 0/1, the clip label is their max
        frames = np.zeros(n, np.int64)
        if label:
            frames[rng.integers(0, n, draw(st.integers(1, n)))] = 1
    else:
        frames = np.full(n, label, np.int64)
    label_dtype = draw(
        st.sampled_from([np.float32, np.float64, np.int64])
        if bah
        else st.sampled_from([np.int64, np.int32, np.uint8, np.float32])
    )
    return {
        VIDEO_FILE: video,
        VGGISH_FILE: rng.normal(size=(n, 128)).astype(
            draw(st.sampled_from([np.float64, np.float32, np.float16, ">f8"]))
        ),
        BERT_FILE: rng.normal(size=(n, 768)).astype(draw(st.sampled_from([np.float32, np.float64]))),
        LABEL_FILE: frames.astype(label_dtype),
    }


@st.composite
def fold_file(draw, clips: list[Clip]) -> FoldFile:
    """The fold lines of ``clips``, in one of the documented spellings (line ends, BOM, blank lines)."""
    lines, clip_lines = [], []
    for blank in draw(st.lists(BLANK, max_size=1)):
        lines.append(blank)
    for clip in clips:
        label = draw(LABEL_SPELLING).format(clip.label)
        clip_lines.append(len(lines))
        lines.append(f"{clip.id},{label}" + ("" if clip.transcript is None else f",{clip.transcript}"))
        lines.extend(draw(st.lists(BLANK, max_size=1)))
    final_term = draw(st.booleans()) or not lines[-1].strip()
    return FoldFile(lines, clip_lines, draw(st.sampled_from(["\n", "\r\n", "\r"])), draw(st.booleans()), final_term)


@st.composite
def layouts(draw) -> Layout:
    """A valid layout: 1-3 train clips, 1-2 val clips, test a copy of val (C-EXPR-DB) or its own 1-2 clips."""
    ds = draw(st.sampled_from(list(CLASSES)))
    cexpr = ds == "C-EXPR-DB"
    use_other = cexpr and draw(st.booleans())
    names = list(CLASSES[ds])
    listed = names[:OTHER] + ([CEXPR_OTHER] if draw(st.booleans()) else []) if cexpr else names
    listed = draw(st.permutations(listed))
    quote = draw(st.sampled_from(["{}", "'{}'", '"{}"']))
    term = draw(st.sampled_from(["\n", "\r\n"]))
    yaml_lines = (["# class name: id"] if draw(st.booleans()) else []) + [
        f"{quote.format(n)}:{draw(st.sampled_from([' ', '  ']))}{names.index(n)}" for n in listed
    ]
    yaml_text = ("\ufeff" if draw(st.booleans()) else "") + term.join(yaml_lines) + term
    clips: dict[str, Clip] = {}
    order: dict[str, list[str]] = {}
    same_test = cexpr and draw(st.booleans())
    for split, most in (("train", 3), ("val", 2), ("test", 2)):
        if split == "test" and same_test:
            order["test"] = list(order["val"])
            continue
        order[split] = []
        for j in range(draw(st.integers(1, most))):
            i = len(clips)
            if cexpr:  # the first clip of a split is not Other, so no split is left empty without Other
                label = draw(st.integers(0, OTHER - 1 if j == 0 else OTHER))
                folder = names[label].replace(" ", "-")
                clip_id = f"{folder}/{draw(st.integers(1, 56)):02d}_{folder}_{i}"
            else:
                label = draw(st.integers(0, 1))
                subject = draw(st.integers(10000, 99999))
                clip_id = f"Videos/{subject}/Visite {draw(st.integers(1, 3))}/{subject}_Question_{i} Video.mp4"
            clips[clip_id] = Clip(clip_id, label, draw(TRANSCRIPT), draw(clip_arrays(label, not cexpr)))
            order[split].append(clip_id)
    folds = {split: draw(fold_file([clips[c] for c in ids])) for split, ids in order.items()}
    class_ids = {n: names.index(n) for n in listed}
    return Layout(ds, use_other, class_ids, yaml_text, folds, order, clips)


def read_layout(layout: Layout, root: Path) -> dict[str, list[dict]]:
    """What the builder reads from ``root``: ``read_folds``, then every example it yields, per split."""
    builder = layout.builder(root)
    splits = builder.read_folds(root)
    feat_root = features_root(root, layout.ds)
    return {
        split: [ex for _, ex in builder._generate_examples(entries, feat_root)] for split, entries in splits.items()
    }


def expected_example(clip: Clip) -> dict:
    """The example the builder documents for ``clip`` (frames resized to 48x48 when they are not)."""
    a = clip.arrays
    video = a[VIDEO_FILE] if a[VIDEO_FILE].shape[1] == 48 else resize_frames(a[VIDEO_FILE])
    return {
        "id": clip.id,
        "label": clip.label,
        "frame_labels": a[LABEL_FILE].astype(np.int32),
        "video": np.ascontiguousarray(video),
        "vggish": a[VGGISH_FILE].astype(np.float32),
        "bert": a[BERT_FILE].astype(np.float32),
        "transcript": clip.transcript or "",
        "num_frames": a[VIDEO_FILE].shape[0],
    }


def assert_examples(got: list[dict], clips: list[Clip]) -> None:
    assert [ex["id"] for ex in got] == [c.id for c in clips]
    for ex, clip in zip(got, clips, strict=True):
        want = expected_example(clip)
        assert ex.keys() == want.keys()
        for key, value in want.items():
            if isinstance(value, np.ndarray):
                assert ex[key].dtype == value.dtype and ex[key].shape == value.shape, (clip.id, key)
                np.testing.assert_array_equal(ex[key], value, err_msg=f"{clip.id}: {key}")
            else:
                assert ex[key] == value, (clip.id, key)


def entries_of(path: Path) -> list[tuple[str, int, str | None, int]]:
    return [(e.id, e.label, e.transcript, e.line) for e in read_fold_file(path)]


def expected_entries(layout: Layout, split: str) -> list[tuple[str, int, str | None, int]]:
    fold = layout.folds[split]
    clips = [layout.clips[c] for c in layout.order[split]]
    return [(c.id, c.label, c.transcript, i + 1) for c, i in zip(clips, fold.clip_lines, strict=True)]


# -- a valid layout reads back ------------------------------------------------------------------------------


@given(layout=layouts())
def test_layout_reads_back(layout: Layout) -> None:
    """Class ids, fold entries (lines included) and every example's arrays read back as written."""
    with scratch() as root:
        layout.write(root)
        fold_dir = layout.fold_dir(root)
        assert read_class_ids(fold_dir / "class_id.yaml") == layout.class_ids
        for split in layout.folds:
            assert entries_of(fold_dir / f"{split}.txt") == expected_entries(layout, split)
        got = one_line(lambda: read_layout(layout, root))
        assert got.keys() == {"train", "val", "test"}
        for split, examples in got.items():
            assert_examples(examples, layout.kept(split))
        for clip in layout.clips.values():
            feats = read_clip_features(layout.clip_dir(root, clip.id))
            np.testing.assert_array_equal(feats.video, clip.arrays[VIDEO_FILE])
            assert feats.num_frames == clip.arrays[VIDEO_FILE].shape[0]


# -- damaged clip folders -----------------------------------------------------------------------------------

CLIP_DAMAGES = [
    "truncate", "truncate", "dtype", "object", "pickle", "npz", "ndim", "width", "frames", "nonfinite", "overflow",
    "label_range", "label_fraction", "label_mismatch", "label_huge", "missing", "folder", "no_frames", "no_pixels",
]  # fmt: skip


def damage_clip(draw, layout: Layout, clip: Clip, folder: Path, damage: str, sentinel: Path) -> tuple[str, ...]:
    """Damages one file of ``clip``'s folder; returns what the error must name."""
    arrays = clip.arrays
    n = arrays[VIDEO_FILE].shape[0]
    name = draw(st.sampled_from(FEATURE_FILES), label="file")
    path = folder / name
    if damage in ("truncate", "pickle", "npz", "missing", "folder"):
        if damage == "truncate":
            raw = path.read_bytes()
            path.write_bytes(raw[: draw(st.integers(0, len(raw) - 1), label="cut")])
        elif damage == "pickle":
            path.write_bytes(pickle.dumps(Unpickled(sentinel)))
        elif damage == "npz":
            buf = io.BytesIO()
            np.savez(buf, arr=arrays[name])
            path.write_bytes(buf.getvalue())
        else:
            path.unlink()
            if damage == "folder":
                path.mkdir()
            return (f"missing feature file {name!r} in {folder}",)
        return (str(path),)
    if damage.startswith("label_"):
        name, arr = LABEL_FILE, label_damage(draw, layout, clip, damage)
    elif damage == "dtype":
        bad = {
            VIDEO_FILE: [np.int16, np.int8, np.float32, np.bool_],
            VGGISH_FILE: [np.int32, np.int64, np.complex64, np.bool_],
            BERT_FILE: [np.int32, np.uint8, np.complex128],
            LABEL_FILE: [np.bool_, np.complex64, "U3", "S3"],
        }[name]
        arr = arrays[name].astype(draw(st.sampled_from(bad), label="dtype"))
    elif damage == "object":
        arr = np.array([Unpickled(sentinel)] * n, dtype=object)
    elif damage == "ndim":
        a = arrays[name]
        arr = draw(st.sampled_from([a[..., None], a[None]] + ([a.reshape(-1)] if a.ndim > 1 else [])), label="shape")
    elif damage == "width":
        name = draw(st.sampled_from([VIDEO_FILE, VGGISH_FILE, BERT_FILE]), label="file")
        a = arrays[name]
        width = draw(st.integers(1, a.shape[-1] + 2).filter(lambda w: w != a.shape[-1]), label="width")
        arr = np.resize(a, (*a.shape[:-1], width)).astype(a.dtype)
    elif damage == "frames":  # one more frame in a file, or one fewer in a file other than video.npy
        a = arrays[name]
        arr = (
            a[:-1]
            if name != VIDEO_FILE and n > 1 and draw(st.booleans(), label="fewer")
            else np.concatenate([a, a[:1]])
        )
    elif damage in ("nonfinite", "overflow"):
        floats = [VGGISH_FILE, BERT_FILE] + (
            [LABEL_FILE] if damage == "nonfinite" and arrays[LABEL_FILE].dtype.kind == "f" else []
        )
        name = draw(st.sampled_from(floats), label="file")
        arr = arrays[name].astype(np.float64 if damage == "overflow" else arrays[name].dtype)
        bad = [np.nan, np.inf, -np.inf] if damage == "nonfinite" else [4e38, -1e39, 1e300]
        arr.flat[draw(st.integers(0, arr.size - 1), label="at")] = draw(st.sampled_from(bad), label="value")
    elif damage == "no_frames":
        for file, a in arrays.items():
            np.save(folder / file, a[:0])
        return (f"{folder / VIDEO_FILE}: clip has no frames",)
    else:
        assert damage == "no_pixels"
        name = VIDEO_FILE
        arr = np.zeros((n, *draw(st.sampled_from([(0, 0), (0, 4), (4, 0)]), label="pixels"), 3), np.uint8)
    np.save(folder / name, arr, allow_pickle=arr.dtype.hasobject)
    return (str(folder / (VGGISH_FILE if damage == "frames" and name == VIDEO_FILE else name)),)


def label_damage(draw, layout: Layout, clip: Clip, damage: str) -> np.ndarray:
    """Frame labels outside the classes, fractional, beyond int32, or disagreeing with the clip label."""
    labels = clip.arrays[LABEL_FILE]
    n = labels.shape[0]
    at = draw(st.integers(0, n - 1), label="frame")
    if damage == "label_range":
        bad = labels.astype(np.float32 if labels.dtype.kind == "f" else np.int64)
        bad[at] = draw(st.sampled_from([-1, layout.num_classes, layout.num_classes + 5]), label="label")
    elif damage == "label_fraction":
        bad = labels.astype(np.float64)
        bad[at] += draw(st.sampled_from([0.5, 1e-6, -0.25]), label="fraction")
    elif damage == "label_huge":
        value = draw(st.sampled_from([2**31, -(2**31) - 1, -(2**63), 2**64 - 1, 1e10]), label="value")
        bad = labels.astype(np.uint64 if value == 2**64 - 1 else np.float64 if isinstance(value, float) else np.int64)
        bad[at] = value
    elif layout.ds == "BAH_DB":  # mismatch: the clip label must be the max frame label
        bad = np.zeros_like(labels) if clip.label else np.where(np.arange(n) == at, 1, labels).astype(labels.dtype)
    else:  # mismatch: every frame carries the clip label
        other = draw(st.sampled_from([k for k in range(layout.num_classes) if k != clip.label]), label="label")
        bad = np.where(np.arange(n) == at, other, labels).astype(labels.dtype)
    return bad


@given(layout=layouts(), damage=st.sampled_from(CLIP_DAMAGES), data=st.data())
def test_damaged_clip_folder(layout: Layout, damage: str, data) -> None:
    """One damaged file of one clip the builder reads: a LayoutError naming the file, nothing unpickled."""
    kept = list({c.id: c for split in layout.order for c in layout.kept(split)}.values())
    clip = data.draw(st.sampled_from(kept), label="clip")
    with scratch() as root:
        layout.write(root)
        sentinel = root / "unpickled"
        names = damage_clip(data.draw, layout, clip, layout.clip_dir(root, clip.id), damage, sentinel)
        got = outcome(lambda: one_line(lambda: read_layout(layout, root)), *names)
        assert got is None, f"damage {damage!r} was not detected"
        assert not sentinel.exists(), "a feature file was unpickled"


# -- damaged fold files -------------------------------------------------------------------------------------

FOLD_DAMAGES = [
    "no_features", "no_features", "no_folder", "duplicate", "label_text", "label_range", "label_class", "id_space",
    "id_control", "id_escape", "no_label", "not_utf8", "truncate", "truncate", "respell", "missing", "empty",
]  # fmt: skip
BAD_LABELS = ["", "x", "1.0", "1_0", "\u0663", "0x1", "1e0", "-", "one", "\xb2"]
SAME, CUT = "same clips", "cut"


def fold_damage(draw, layout: Layout, root: Path, split: str, damage: str) -> tuple[tuple[str, ...], str | None]:
    """Damages ``split``'s fold file (or a clip folder it lists); returns what the error must name and, for
    a damage that may be harmless, :data:`SAME` (the same clips read back) or :data:`CUT`."""
    fold = layout.folds[split]
    path = layout.fold_dir(root) / f"{split}.txt"
    if damage in ("not_utf8", "truncate", "respell", "missing", "empty"):
        return fold_file_damage(draw, path, fold, damage)
    k = draw(st.integers(0, len(fold.clip_lines) - 1), label="clip line")
    i = fold.clip_lines[k]
    clip = layout.clips[layout.order[split][k]]
    rest = fold.lines[i][len(clip.id) :]  # ",label[,transcript]"
    where = f"{path}:{i + 1}: "
    lines = list(fold.lines)
    if damage == "no_folder":  # a listed clip's features folder is gone
        shutil.rmtree(layout.clip_dir(root, clip.id))
        read = any(clip in layout.kept(s) for s in layout.order)  # C-EXPR-DB's Other clips are not read
        return ((f"clip feature folder(s) not found under {features_root(root, layout.ds)}: {clip.id!r} (line",)
                if read else (), None if read else SAME)  # fmt: skip
    if damage == "no_features":  # a line naming a clip without features, anywhere in the file
        if layout.ds == "BAH_DB":
            label, new_id = draw(st.integers(0, 1), label="label"), "Videos/0/absent.mp4"
        else:
            label = draw(st.integers(0, OTHER - 1), label="label")
            folder = CEXPR_CLASSES[label].replace(" ", "-")
            new_id = f"{folder}/99_{folder}_absent"
        at = draw(st.integers(0, len(lines)), label="at")
        lines.insert(at, f"{new_id},{label}")
        names = (f"{path}: 1 clip feature folder(s) not found under {features_root(root, layout.ds)}: {new_id!r} "
                 f"(line {at + 1})",)  # fmt: skip
    elif damage == "duplicate":
        at = draw(st.integers(i + 1, len(lines)), label="at")
        lines.insert(at, lines[i])
        names = (f"{path}:{at + 1}: clip id {clip.id!r} already listed on line {i + 1}",)
    elif damage == "label_text":
        lines[i] = f"{clip.id},{draw(st.sampled_from(BAD_LABELS), label='label')}"
        names = (f"{where}label ",)
    elif damage == "label_range":
        bad = draw(st.sampled_from([-1, len(CLASSES[layout.ds]), 10**20]), label="label")
        lines[i] = f"{clip.id},{bad}"
        names = (f"{where}label {bad} of clip {clip.id!r} is out of range",)
    elif damage == "label_class":  # C-EXPR-DB: the id's class folder names another class; BAH: the max frame label
        other = 1 - clip.label if layout.ds == "BAH_DB" else (clip.label + 1) % len(CEXPR_CLASSES)
        lines[i] = f"{clip.id},{other}"
        names = (where,) if layout.ds == "C-EXPR-DB" else (f"but the clip label is {other} ({path}:{i + 1})",)
    elif damage == "id_space":
        lines[i] = draw(st.sampled_from([" {}", "{} ", "\t{}", "{}\xa0"]), label="spacing").format(clip.id) + rest
        names = (f"{where}clip id ",)
    elif damage == "id_control":
        j = draw(st.integers(1, len(clip.id) - 1), label="at")
        lines[i] = (
            clip.id[:j] + draw(st.sampled_from(["\x00", "\x1b", "\x7f", "\x08"]), label="char") + clip.id[j:] + rest
        )
        names = (f"{where}clip id ",)
    elif damage == "id_escape":
        lines[i] = (
            draw(st.sampled_from(["../{}", "{}/..", "/{}", "./{}", "{}//x", "{}/"]), label="id").format(clip.id) + rest
        )
        names = (f"{where}clip id ",)
    else:
        assert damage == "no_label"
        lines[i] = clip.id
        names = (f"{where}expected 'id,label[,transcript]'",)
    path.write_bytes(dataclasses.replace(fold, lines=lines).render())
    return names, None


def fold_file_damage(draw, path: Path, fold: FoldFile, damage: str) -> tuple[tuple[str, ...], str | None]:
    """Damage to the fold file as a whole."""
    raw = fold.render()
    if damage == "missing":
        path.unlink()
        return (f"fold file not found: {path}",), None
    if damage == "empty":
        path.write_bytes(draw(st.sampled_from([b"", b"\n", b" \r\n\t\r\n", codecs.BOM_UTF8]), label="text"))
        return (f"{path}: fold file lists no clips",), None
    if damage == "respell":  # other line ends, BOM and blank lines
        spaced = []
        for line in (x for x in fold.lines if x.strip()):
            spaced += [line, *draw(st.lists(BLANK, max_size=2), label="blank lines")]
        term = draw(st.sampled_from(["\n", "\r\n", "\r"]), label="line end")
        path.write_bytes(FoldFile(spaced, [], term, draw(st.booleans()), draw(st.booleans())).render())
        return (), SAME
    if damage == "not_utf8":  # a byte that is never UTF-8, at a character boundary after the BOM
        start = len(codecs.BOM_UTF8) if fold.bom else 0
        text = raw[start:].decode()
        pos = start + len(text[: draw(st.integers(0, len(text)), label="at")].encode())
        byte = draw(st.sampled_from([0x80, 0xC0, 0xFF, 0xFE]), label="byte")
        path.write_bytes(raw[:pos] + bytes([byte]) + raw[pos:])
        line = len(NEWLINE.split(raw[:pos].decode("utf-8-sig")))
        return (f"{path}:{line}: byte 0x{byte:02x} is not UTF-8",), None
    assert damage == "truncate"
    path.write_bytes(raw[: draw(st.integers(0, len(raw) - 1), label="cut")])
    return (str(path),), CUT


@given(layout=layouts(), split=st.sampled_from(["train", "val", "test"]), damage=st.sampled_from(FOLD_DAMAGES),
       data=st.data())  # fmt: skip
def test_damaged_fold_file(layout: Layout, split: str, damage: str, data) -> None:
    """A damaged fold file is refused naming the file (and line, and clip); one cut short reads back a prefix of
    its clips (the last transcript maybe cut) or is refused; a re-spelled one reads back the same clips."""
    with scratch() as root:
        layout.write(root)
        names, result = fold_damage(data.draw, layout, root, split, damage)
        path = layout.fold_dir(root) / f"{split}.txt"
        got = outcome(lambda: one_line(lambda: read_layout(layout, root)), *(names or (str(path),)))
        if result == SAME:
            assert got is not None, f"damage {damage!r} was refused"
            assert [e[:3] for e in entries_of(path)] == [e[:3] for e in expected_entries(layout, split)]
            for s, examples in got.items():
                assert_examples(examples, layout.kept(s))
        elif result == CUT:
            want = expected_entries(layout, split)
            entries = outcome(lambda: one_line(lambda: entries_of(path)), str(path))
            if entries is not None:  # a prefix of the clips; only the last one's transcript may be cut
                assert 0 < len(entries) <= len(want)
                assert entries[:-1] == want[: len(entries) - 1]
                last, full = entries[-1], want[len(entries) - 1]
                assert last[:2] == full[:2] and last[3] == full[3]
                assert last[2] == full[2] or (full[2] or "").startswith(last[2] or "")
            if got is not None:
                assert entries is not None
                cut = {e[0]: e[2] for e in entries}  # the last clip's transcript as cut
                kept = [dataclasses.replace(c, transcript=cut[c.id]) for c in layout.kept(split) if c.id in cut]
                assert_examples(got[split], kept)
        else:
            assert got is None, f"damage {damage!r} was not detected"


# -- damaged class_id.yaml ----------------------------------------------------------------------------------

YAML_DAMAGES = [
    "truncate", "truncate", "not_mapping", "duplicate", "value", "swap", "same_id", "unknown", "drop", "not_utf8",
    "tag", "tab", "nul", "missing",
]  # fmt: skip


def yaml_damage(draw, layout: Layout, path: Path, sentinel: Path) -> tuple[str, ...]:
    """Damages ``class_id.yaml``; returns what the error must name (nothing: the damage is harmless)."""
    text = layout.yaml_text
    term = "\r\n" if "\r\n" in text else "\n"
    lines = text.removeprefix("\ufeff").split(term)[:-1]
    entries = [j for j, line in enumerate(lines) if not line.startswith("#")]
    j = draw(st.sampled_from(entries), label="entry")
    name, value = lines[j].rsplit(":", 1)
    key = name.strip("'\"")
    damage = draw(st.sampled_from(YAML_DAMAGES), label="damage")
    raw = None
    if damage == "truncate":
        raw = text.encode()[: draw(st.integers(0, len(text.encode()) - 1), label="cut")]
        names = (str(path),)
    elif damage == "not_mapping":
        bad = ["", "# nothing\n", "- Other\n- Sadly Angry\n", "7\n", "null\n", "[Other, 7]\n", "Other\n", "{}\n", "''"]
        raw = draw(st.sampled_from(bad), label="text").encode()
        names = (f"{path}: expected a non-empty mapping",)
    elif damage == "duplicate":
        lines.append(f"{name}: {draw(st.sampled_from(['', '0', '99', value.strip()]), label='id')}")
        names = (f"{path}:{len(lines)}: not valid YAML: key {key!r} appears twice (first on line {j + 1})",)
    elif damage == "value":
        bad = draw(
            st.sampled_from(["1.0", "'1'", "true", "-1", "[1]", "null", "one", "{a: 1}", "1.5", "~"]), label="id"
        )
        lines[j] = f"{name}: {bad}"
        names = (f"{path}: entry {key!r}: ",)
    elif damage in ("swap", "same_id"):
        k = draw(st.sampled_from([e for e in entries if e != j]), label="other entry")
        other_name, other_value = lines[k].rsplit(":", 1)
        lines[j] = f"{name}:{other_value}"
        if damage == "swap":
            lines[k] = f"{other_name}:{value}"
        names = (f"{path}: class ",) if damage == "swap" else (f"{path}: id {other_value.strip()} is given to both",)
    elif damage == "unknown":
        new = draw(st.sampled_from(["{}x", "{}-", "{} ", "x{}"]), label="name").format(key).replace(" ", "-", 1)
        lines[j] = f"'{new}':{value}"
        names = (f"{path}: unknown class name {new!r}",)
    elif damage == "drop":
        del lines[j]
        names = () if key == CEXPR_OTHER else (f"{path}: class names missing: [{key!r}]",)
    elif damage == "not_utf8":
        lines[j] = f"{name}: \udcff{value.strip()}"
        raw = (term.join(lines) + term).encode("utf-8", "surrogateescape")
        names = (f"{path}:{j + 1}: byte 0xff is not UTF-8",)
    elif damage == "tag":
        lines[j] = f"{name}: !!python/object/apply:pathlib.Path.touch ['{sentinel}']"
        names = (f"{path}:{j + 1}: not valid YAML: ",)
    elif damage == "tab":
        lines[j] = "\t" + lines[j]
        names = (f"{path}:",)
    elif damage == "nul":
        lines[j] += "\x00"
        names = (f"{path}: not valid YAML: character #x0000",)
    else:
        assert damage == "missing"
        path.unlink()
        return (f"class id file not found: {path}",)
    bom = "\ufeff" if text.startswith("\ufeff") else ""
    path.write_bytes(raw if raw is not None else (bom + term.join(lines) + term).encode())
    return names


@given(layout=layouts(), data=st.data())
def test_damaged_class_ids(layout: Layout, data) -> None:
    """A damaged class_id.yaml is refused naming the file, or (the optional Other dropped, a cut in the last line
    end) reads back a subset that still holds every required class with its id; no Python object is built."""
    with scratch() as root:
        layout.write(root)
        path = layout.fold_dir(root) / "class_id.yaml"
        sentinel = root / "constructed"
        names = yaml_damage(data.draw, layout, path, sentinel)
        got = outcome(lambda: one_line(lambda: read_layout(layout, root)), *(names or (str(path),)))
        assert not sentinel.exists(), "class_id.yaml built a Python object"
        if got is not None:
            ids = read_class_ids(path)
            assert ids.items() <= layout.class_ids.items()
            assert set(layout.class_ids) - set(ids) <= {CEXPR_OTHER}
        elif not names:
            pytest.fail("dropping the optional Other from class_id.yaml was refused")


# -- fold-file text -----------------------------------------------------------------------------------------

ID_TEXT = st.sampled_from([
    "a/b", "c", "Videos/1/x y.mp4", "Sadly-Fearful/12_Sadly-Fearful_1", " a/b", "a/b ", "../x", "a//b", "/abs", "",
    " ", "a\x00b", "a\tb", "a\x85b", "a\u2028b", "é/ü", "a\\..\\b", "x.mp4",
])  # fmt: skip
LABEL_TEXT = st.sampled_from(["0", "1", " 2 ", "\t3", "-1", "+3", "1_0", "\u0663", "x", "", "1.0", "7 ", "10", "\xa01"])
LINE = st.one_of(
    st.tuples(ID_TEXT, LABEL_TEXT, TRANSCRIPT).map(lambda t: f"{t[0]},{t[1]}" + ("" if t[2] is None else f",{t[2]}")),
    st.sampled_from(["", " ", "\t", "\x85", "\u2028", "no comma", ","]),
)


@st.composite
def fold_texts(draw) -> str:
    lines = draw(st.lists(LINE, min_size=0, max_size=5))
    if lines and draw(st.booleans()):  # a line listed twice
        lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from(lines)))
    ends = [draw(st.sampled_from(["\n", "\r\n", "\r"])) for _ in lines]
    return "".join(line + end for line, end in zip(lines, ends, strict=True)) + draw(st.sampled_from(["", "x,1"]))


def reference_fold(text: str) -> list[tuple[str, int, str | None, int]] | int:
    """The entries spec §7.1 and ``read_fold_file``'s docstring describe, or the line of the first bad line
    (``0``: no clips)."""
    out, seen = [], set()
    for no, line in enumerate(NEWLINE.split(text), start=1):
        if not line.strip():
            continue
        fields = line.split(",", 2)
        if len(fields) < 2:
            return no
        clip_id, label = fields[0], fields[1].strip()
        parts = clip_id.replace("\\", "/").split("/")
        if (
            clip_id != clip_id.strip() or not clip_id or clip_id.startswith("/") or {"", ".", ".."} & set(parts)
            or any(ord(c) < 0x20 or c == "\x7f" for c in clip_id)
            or not re.fullmatch(r"[+-]?[0-9]+", label) or clip_id in seen
        ):  # fmt: skip
            return no
        seen.add(clip_id)
        out.append((clip_id, int(label), fields[2] if len(fields) == 3 else None, no))
    return out or 0


@given(text=fold_texts(), bom=st.booleans())
@example(text="a/b,1,oh\x85c/d,0\nx/y,2\n", bom=False)  # a NEL in a transcript used to start a line of its own
@example(text="a/b,1_0\n", bom=True)  # int() took '1_0' as 10
def test_fold_file_text(text: str, bom: bool) -> None:
    """Any fold text reads back the entries of the documented format, or is refused naming the file and the line
    of the first bad line (or the file, when it lists no clips)."""
    with scratch() as d:
        path = d / "train.txt"
        path.write_bytes((codecs.BOM_UTF8 if bom else b"") + text.encode())
        want = reference_fold(text)
        names = (f"{path}: fold file lists no clips",) if want == 0 else (f"{path}:{want}: ",)
        got = outcome(lambda: one_line(lambda: entries_of(path)), *names)
        assert got == (want if isinstance(want, list) else None)


# -- regressions --------------------------------------------------------------------------------------------


def test_layout_regressions(tmp_path: Path) -> None:
    """Damage the properties found, now refused with the file (and line or key), or read as written."""
    fold = tmp_path / "val.txt"
    fold.write_text("Videos/1/a.mp4,1,well\x85b/c,0, no\nVideos/1/b.mp4,0,next\u2028line\n")
    assert entries_of(fold) == [
        ("Videos/1/a.mp4", 1, "well\x85b/c,0, no", 1),
        ("Videos/1/b.mp4", 0, "next\u2028line", 2),
    ]
    yaml_path = tmp_path / "class_id.yaml"
    clip = tmp_path / "clip"
    clip.mkdir()
    good = {
        VIDEO_FILE: np.zeros((2, 4, 4, 3), np.uint8),
        VGGISH_FILE: np.zeros((2, 128)),
        BERT_FILE: np.zeros((2, 768), np.float32),
        LABEL_FILE: np.zeros(2, np.int64),
    }

    def clip_with(name: str, arr: np.ndarray) -> Path:
        for file, a in {**good, name: arr}.items():
            np.save(clip / file, a, allow_pickle=a.dtype.hasobject)
        return clip

    sentinel = tmp_path / "unpickled"
    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: fold.write_text("a/b,1_0\n") and read_fold_file(fold),
         f"{fold}:1: label '1_0' of clip 'a/b' is not an integer class id"),
        (lambda: fold.write_text("a/b,\u0663\n") and read_fold_file(fold),
         f"{fold}:1: label '\u0663' of clip 'a/b' is not an integer class id"),
        (lambda: fold.write_text("x/y,0\r\na\x00b/c,1\r\n") and read_fold_file(fold),
         f"{fold}:2: clip id 'a\\x00b/c' contains a control character"),
        (lambda: fold.write_text("x/y ,0\n") and read_fold_file(fold),
         f"{fold}:1: clip id 'x/y ' has leading or trailing whitespace"),
        (lambda: fold.write_bytes(b"x/y,0\rz/w,1,caf\xe9\n") and read_fold_file(fold),
         f"{fold}:2: byte 0xe9 is not UTF-8 (expected a UTF-8 text file)"),
        (lambda: yaml_path.write_bytes(b"Other: 7\nSadly Angry: \xff6\n") and read_class_ids(yaml_path),
         f"{yaml_path}:2: byte 0xff is not UTF-8 (expected a UTF-8 YAML file)"),
        (lambda: yaml_path.write_text("Sadly Angry: 6\nOther: 7\nSadly Angry: 2\n") and read_class_ids(yaml_path),
         f"{yaml_path}:3: not valid YAML: key 'Sadly Angry' appears twice (first on line 1) (column 1)"),
        (lambda: yaml_path.write_text("Other: [7\n") and read_class_ids(yaml_path),
         f"{yaml_path}:2: not valid YAML: while parsing a flow sequence; expected ',' or ']', but got '<stream end>' "
         "(column 1)"),
        (lambda: read_clip_features(clip_with(VGGISH_FILE, np.full((2, 128), 1e39))),
         f"{clip / VGGISH_FILE}: 256 values beyond the float32 range (|x| > 3.4e38), first at index (0, 0) "
         "(value 1e+39)"),
        (lambda: read_clip_features(clip_with(LABEL_FILE, np.array([0, -(2**63)]))),
         f"{clip / LABEL_FILE}: label values do not fit int32 (they span [-9223372036854775808, 0])"),
        (lambda: read_clip_features(clip_with(VIDEO_FILE, np.zeros((2, 0, 0, 3), np.uint8))),
         f"{clip / VIDEO_FILE}: frames have no pixels (shape [2, 0, 0, 3]; H and W must be at least 1)"),
        (lambda: resize_frames(np.zeros((2, 0, 0, 3), np.uint8), source=clip / VIDEO_FILE),
         f"{clip / VIDEO_FILE}: frames have no pixels (0x0); cannot resize them to 48x48"),
        (lambda: (clip_with(BERT_FILE, good[BERT_FILE]) / BERT_FILE).write_bytes(pickle.dumps(Unpickled(sentinel)))
         and read_clip_features(clip),
         f"{clip / BERT_FILE}: cannot be read as a .npy array (the file does not start with the .npy magic bytes: "
         "empty, an .npz archive, a pickle or another format?)"),
        (lambda: read_clip_features(clip_with(BERT_FILE, np.array([Unpickled(sentinel)] * 2, dtype=object))),
         f"{clip / BERT_FILE}: cannot be read as a .npy array (ValueError: Object arrays cannot be loaded when "
         "allow_pickle=False)"),
    ]  # fmt: skip
    for fn, message in cases:
        with pytest.raises(LayoutError) as err:
            fn()
        assert str(err.value) == message
    assert not sentinel.exists()
    assert isinstance(err.value, ValueError) and issubclass(MissingFileError, ValueError)


def test_zscore_cache_damage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The z-score cache a run keeps beside its checkpoints: damaged, or of another fold, it is refused naming the
    file (it used to raise a raw BadZipFile or KeyError, or silently apply another fold's statistics)."""
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds-default"))
    write_layout(tmp_path / "data", "C-EXPR-DB", CEXPR_YAML, CEXPR_SPLITS)
    cfg = TrainConfig(
        model="can", dataset="c-expr-db", manual_dir=str(tmp_path / "data"), data_dir=str(tmp_path / "tfds"),
        modalities=("vggish", "bert"),
    )  # fmt: skip
    work = tmp_path / "run"
    work.mkdir()
    first = load_data(cfg, work)["train"]
    cache = work / "zscore.npz"
    again = load_data(cfg, work)["train"]  # from the cache
    assert again.lengths == first.lengths and again.stats.keys() == first.stats.keys()
    np.testing.assert_array_equal(again[0]["vggish"], first[0]["vggish"])
    raw = cache.read_bytes()
    with np.load(cache) as z:
        arrays = dict(z)
    other_fold = io.BytesIO()
    np.savez(other_fold, **{**arrays, "train_lengths": arrays["train_lengths"][:-1]})
    no_stats = io.BytesIO()
    np.savez(no_stats, train_lengths=arrays["train_lengths"])
    redo = "delete it to recompute the statistics, or use another work directory"
    cases = [
        (raw[: len(raw) // 2],
         f"{cache}: cannot be read as a z-score cache (BadZipFile: File is not a zip file); {redo}"),
        (pickle.dumps({"train_lengths": [1]}), f"{cache}: cannot be read as a z-score cache (ValueError: This file "
         "contains pickled (object) data. If you trust the file you can load it unsafely using the `allow_pickle=` "
         f"keyword argument or `pickle.load()`.); {redo}"),
        (no_stats.getvalue(),
         f"{cache}: not a z-score cache (no ['vggish_mean', 'vggish_std', 'bert_mean', 'bert_std']); {redo}"),
        (other_fold.getvalue(), f"{cache}: cached for 3 train clips but the train split has 4 (another dataset or "
         f"fold?); {redo}"),
    ]  # fmt: skip
    for content, message in cases:
        cache.write_bytes(content)
        with pytest.raises(ValueError) as err:
            load_data(cfg, work)
        assert str(err.value) == message
