"""Property-based checks of the text and data entry points against malformed input (hypothesis).

The contract of tests/test_properties.py (its ``outcome`` helper): every generated input either raises a
``ValueError`` (``LayoutError``, ``StateDictError``) whose message names the offending argument, file, key or
row, or gives a well-defined result that agrees with a reference. Covered here:

- the prompt builder (:mod:`jax_cer.text.textualize`, also importable as ``jax_cer.textualize``): records
  and py-feat / Hume rows with missing keys, wrong types, NaN/inf, huge numbers, ragged and empty
  containers, numbers as strings; valid input gives the prompt of an independent rendering of the spec;
- the MELD reader (:func:`jax_cer.data.layout.read_meld_csv`, and :func:`load_text_data` on top): a valid
  table written with the csv module (commas, quotes, newlines, non-ASCII in the utterances) reads back
  exactly, in any codec the reader documents; a damaged one (cut at a byte, a field dropped or repeated,
  a header column removed or renamed, UTF-16, a NUL or stray byte) reads back a prefix when the damage is
  harmless and otherwise names the file (and the line of the damaged row);
- the text checkpoint (``load_bert``, ``SentenceEncoder.from_pretrained``, ``Tokenizer``): the tiny
  checkpoint of tests/test_text.py with fuzzed ``config.json`` and ``tokenizer.json``, and fuzzed
  tokenizer inputs; a checkpoint that loads gives finite outputs.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import io
import json
import math
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from tokenizers import Tokenizer as HFTokenizer

import jax_cer.textualize as textualize_alias
from jax_cer.data.layout import MELD_CSV_COLUMNS, MELD_EMOTIONS, MELD_SENTIMENTS, LayoutError, MeldRow, read_meld_csv
from jax_cer.text import BertConfig, SentenceEncoder, Tokenizer, load_bert
from jax_cer.text.textualize import (
    AU_COLUMNS,
    AU_NAMES,
    EMOTION_COLUMNS,
    clip_prompts,
    hume_rows_for_clip,
    meld_label,
    select_top_faces,
    textualize,
    tone_text,
)
from jax_cer.training.configs import TEXT_CONFIGS
from jax_cer.training.text_data import load_text_data
from tests.test_properties import outcome
from tests.test_text import TINY, _tiny_dir, _tiny_tokenizer
from tests.test_textualize import E1, E1_TEXT


@contextmanager
def scratch() -> Iterator[Path]:
    """A fresh folder for one generated example."""
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


# -- textualize: a reference rendering of the spec -----------------------------------------------------


def _missing(t) -> bool:
    return t is None or (isinstance(t, (float, np.floating)) and math.isnan(t))


def _floats(x, names) -> list[float]:
    return [float(x[n]) for n in names] if isinstance(x, dict) else [float(v) for v in x]


def reference_prompt(record: dict, mods, levels: bool, missing: str) -> str:
    """The prompt of a valid record, written from spec §3 (sections T, V, A in that order)."""
    out = []
    if "T" in mods:
        t = record.get("transcript")
        out.append(f"Speech transcription of the video : {missing if _missing(t) else t}; ")
    if "V" in mods:
        aus = _floats(record["aus"], AU_NAMES)
        active = [name for (_, name), v in zip(AU_COLUMNS, aus, strict=True) if v > 0.5]
        if active:
            emo = _floats(record["emotions"], EMOTION_COLUMNS)
            top = sorted(range(7), key=lambda i: (-emo[i], i))[:3]
            emotions = ", ".join(EMOTION_COLUMNS[i] for i in top) if max(emo) > 0 else ""
        else:
            emotions = "No face detected"
        out.append(f"Facial Action Units activated during the video : {', '.join(active) or 'No face detected'}; ")
        out.append(f"Emotions predicted from visual modality: {emotions}; ")
    if "A" in mods:
        tone = record.get("tone")
        out.append(f"Characteristics of the prosody : {'No speech detected' if tone is None else tone}; ")
        a, v, d = (round(float(record[k]), 2) for k in ("arousal", "valence", "dominance"))
        if levels:
            lv = {k: "High" if x >= 0.5 else "Low" for k, x in (("a", a), ("v", v), ("d", d))}
            out.append(f" Audio emotional state :  {lv['v']} Valence, {lv['a']} Arousal, {lv['d']} Dominance")
        else:
            out.append(
                f" Audio emotional state : Arousal level (between 0 and 1) of {a}, Valence level (between 0 and 1) "
                f"of {v}, Dominance level (between 0 and 1) of {d}"
            )
    return "".join(out)


def test_reference_prompt_is_the_documented_one() -> None:
    """The reference rendering reproduces spec §7's worked example (so agreeing with it means something)."""
    assert reference_prompt(E1, "TVA", False, "nan") == E1_TEXT == textualize(E1)


# -- textualize: generated records ----------------------------------------------------------------------

NEAR = st.sampled_from([0.5, 0.50001, 0.49999, 0.495, 0.505, 0.3, 0.30001, 0.0, -0.0, 1.0, 5e-324, 1e308, -1e308])
FINITE = st.one_of(
    NEAR, st.floats(-2, 2), st.floats(allow_nan=False, allow_infinity=False), st.integers(-(10**6), 10**6)
)
BAD_NUMBERS = [
    math.nan, -math.inf, math.inf, np.float32("nan"), np.float64("inf"), 10**400, -(10**400), Fraction(10**400, 3),
    "nan", "-inf", "1e999", "high", "", None, True, [0.5], (0.5, 0.1), {"v": 0.5}, b"0.5", 1j, Decimal("0.5"),
]  # fmt: skip


@st.composite
def good_number(draw):
    """A finite number in one of the forms a table reader gives (float, int, numpy, string, Fraction)."""
    x = draw(FINITE)
    form = draw(st.sampled_from(["plain", "plain", "np64", "np32", "str", "fraction"]))
    if form == "np32" and abs(x) < 3e38:
        return np.float32(x)
    if form == "np64":
        return np.float64(x)
    if form == "str":
        return f" {x!r} " if isinstance(x, float) else str(x)
    return Fraction(x) if form == "fraction" else x


def vector(draw, names, shape: str):
    vals = [draw(good_number()) for _ in names]
    if shape == "dict":
        return dict(zip(names, vals, strict=True)) | draw(st.sampled_from([{}, {"extra": "x", "frame": 3}]))
    return {"list": list, "tuple": tuple, "array": lambda v: np.asarray([float(x) for x in v])}[shape](vals)


RECORD_FAULTS = [
    None, None, None, None, "aus_value", "aus_missing", "aus_length", "aus_type", "aus_ragged", "aus_absent",
    "emotions_value", "emotions_missing", "emotions_type", "emotions_absent", "audio_value", "audio_absent",
    "tone_type", "record_type", "modalities",
]  # fmt: skip


@st.composite
def textualize_case(draw):
    """(record, modalities, audio_levels, missing_transcript, fault, names the error must mention)."""
    mods = draw(st.lists(st.sampled_from("TVA"), min_size=1, max_size=3, unique=True))
    mods_arg = draw(st.sampled_from([list, tuple, "".join, set]))(mods)
    record = {
        "aus": vector(draw, AU_NAMES, draw(st.sampled_from(["dict", "list", "tuple", "array"]))),
        "emotions": vector(draw, EMOTION_COLUMNS, draw(st.sampled_from(["dict", "list", "array"]))),
        "transcript": draw(
            st.one_of(st.none(), st.sampled_from([math.nan, np.float32("nan"), np.float64("nan"), 7, 0.25]), st.text())
        ),
        "tone": draw(st.one_of(st.none(), st.text(max_size=20))),
        **{k: draw(good_number()) for k in ("arousal", "valence", "dominance")},
    }
    fault = draw(st.sampled_from(RECORD_FAULTS))
    names: tuple[str, ...] = ()
    for key, label, columns in (("aus", "AU scores", AU_NAMES), ("emotions", "emotion probabilities", EMOTION_COLUMNS)):
        if fault is None or not fault.startswith(key):
            continue
        names = (label, repr(key))
        vec = record[key]
        i = draw(st.integers(0, len(columns) - 1))
        if fault.endswith("value") or fault.endswith("ragged"):
            bad = draw(st.sampled_from(BAD_NUMBERS)) if fault.endswith("value") else [0.6, 0.7]
            if isinstance(vec, dict):
                vec[columns[i]] = bad
            else:
                vec = [*list(vec)[:i], bad, *list(vec)[i + 1 :]]
        elif fault.endswith("missing"):
            vec = {k: v for k, v in vec.items() if k != columns[i]} if isinstance(vec, dict) else list(vec)[1:]
        elif fault.endswith("length"):
            vec = [*list(vec.values() if isinstance(vec, dict) else vec), 0.0]
        elif fault.endswith("type"):
            vec = draw(st.sampled_from([None, "0.7", 0.7, b"\x01", {"AU01"}, [[0.7] * len(columns)]]))
        record[key] = vec
        if fault.endswith("absent"):
            del record[key]
    if fault in ("audio_value", "audio_absent"):
        key = draw(st.sampled_from(["arousal", "valence", "dominance"]))
        names = (key,)
        if fault == "audio_value":
            record[key] = draw(st.sampled_from(BAD_NUMBERS))
        else:
            del record[key]
    if fault == "tone_type":
        record["tone"], names = draw(st.sampled_from([5, ["High Calmness"], b"Low Doubt", math.nan])), ("'tone'",)
    if fault == "record_type":
        record, names = draw(st.sampled_from([None, "record", list(record.items())])), ("record",)
    if fault == "modalities":
        mods_arg, names = draw(st.sampled_from([[], "", ["X"], ["T", "v"], None, 5, [None], [["T"]]])), ("modalities",)
    levels = draw(st.booleans())
    missing = draw(st.sampled_from(["nan", "", "(none)"]))
    return record, mods_arg, levels, missing, fault, names


def _fault_is_reached(fault, mods, record) -> bool:
    """Whether textualize must look at the faulty value (emotions only matter when an AU is active)."""
    if fault is None:
        return False
    if fault in ("record_type", "modalities"):
        return True
    if fault.startswith("aus"):
        return "V" in mods
    if fault.startswith("emotions"):
        return "V" in mods and max(_floats(record["aus"], AU_NAMES)) > 0.5
    return "A" in mods  # tone and the audio triple


@given(case=textualize_case(), module=st.sampled_from([textualize, textualize_alias.textualize]))
def test_textualize(case, module) -> None:
    record, mods, levels, missing, fault, names = case
    got = outcome(lambda: module(record, mods, levels, missing_transcript=missing), *names)
    must_fail = _fault_is_reached(fault, set(mods) if fault != "modalities" else (), record)
    assert (got is None) == must_fail, f"fault {fault!r}: {'accepted' if got is not None else 'refused'}"
    if got is not None:
        assert got == reference_prompt(record, set(mods), levels, missing)
        tail = got.partition("Audio emotional state")[2]
        assert not re.search(r"\b(nan|inf)\b", tail), tail  # finite numbers print as numbers


# -- clip_prompts: py-feat rows through face selection, windows and pooling ------------------------------

CLIP_FAULTS = [
    None, None, None, "score_nan", "frame_missing", "frame_unhashable", "gap", "tie", "au_nan_top", "au_nan_other",
    "au_str", "au_missing_top", "row_type", "rows_type", "hop", "window_size", "windows",
]  # fmt: skip


@st.composite
def clip_case(draw):
    """py-feat rows of n frames (1-2 faces each), the window arguments, a fault and the expected error names."""
    n = draw(st.integers(0, 5))
    rows, top = [], []
    for f in range(n):
        faces = [x / 1000 for x in draw(st.lists(st.integers(0, 1000), min_size=1, max_size=2, unique=True))]
        for s in faces:
            vals = draw(st.lists(st.floats(0, 1), min_size=27, max_size=27))
            rows.append({"frame": f, "FaceScore": s, **dict(zip(AU_NAMES + EMOTION_COLUMNS, vals, strict=True))})
        top.append(len(rows) - len(faces) + int(np.argmax(faces)))
    others = [i for i in range(len(rows)) if i not in top]
    kw = {"windows": draw(st.sampled_from(["hop", "centred"])), "hop": draw(st.integers(1, 4))}
    kw["window_size"] = draw(st.integers(1, 5))
    fault = draw(st.sampled_from(CLIP_FAULTS))
    if (not rows and fault not in ("rows_type", "hop", "window_size", "windows")) or (
        fault == "au_nan_other" and not others
    ):
        fault = None
    clean = [dict(r) for r in rows]
    i = draw(st.integers(0, len(rows) - 1)) if rows else 0
    col = draw(st.sampled_from(AU_NAMES + EMOTION_COLUMNS))
    names: tuple[str, ...] = ()
    if fault == "score_nan":
        rows[i]["FaceScore"], names = draw(st.sampled_from([math.nan, "x", None])), (f"frame rows[{i}] FaceScore",)
    elif fault == "frame_missing":
        del rows[i]["frame"]
        names = (f"frame rows[{i}] lacks 'frame'",)
    elif fault == "frame_unhashable":
        rows[i]["frame"], names = [rows[i]["frame"]], (f"frame rows[{i}] frame",)
    elif fault == "gap":  # from the first face of a frame on, every frame number one higher
        i = next(j for j, r in enumerate(rows) if r["frame"] == rows[i]["frame"])
        for r in rows[i:]:
            r["frame"] += 1
        names = ("frames 0..n-1",)
    elif fault == "tie":
        rows.insert(top[rows[i]["frame"]], dict(rows[top[rows[i]["frame"]]]))
        names = ("frames 0..n-1",)
    elif fault in ("au_nan_top", "au_missing_top", "au_str"):
        f = rows[i]["frame"]
        if fault == "au_nan_top":
            rows[top[f]][col] = draw(st.sampled_from([math.nan, math.inf, "x"]))
        elif fault == "au_missing_top":
            del rows[top[f]][col]
        else:
            rows[top[f]][col] = repr(rows[top[f]][col])
        names = (f"rows[{f}] {col}", f"rows[{f}] lacks {col!r}")
    elif fault == "au_nan_other":  # a face that selection drops: its values never matter
        rows[draw(st.sampled_from(others))][col] = math.nan
    elif fault == "row_type":
        rows[i], names = list(rows[i].values()), (f"frame rows[{i}] must be a mapping",)
    elif fault == "rows_type":
        rows, names = draw(st.sampled_from([None, {"frame": 0}, "rows", 3])), ("frame rows must be a sequence",)
    elif fault in ("hop", "window_size", "windows"):
        kw[fault] = draw(st.sampled_from([0, -1, 1.5, True, "10", None] if fault != "windows" else ["Hop", "", None]))
        names = (fault,)
    reached = fault is not None and fault not in ("au_str", "au_nan_other")
    reached &= not (fault == "hop" and kw["windows"] != "hop") and not (
        fault == "window_size" and kw["windows"] != "centred"
    )
    return rows, [clean[t] for t in top], kw, names, reached


def reference_clip(frames: list[dict], kw: dict, shared: dict, mods) -> list[str]:
    n = len(frames)
    if kw["windows"] == "hop":
        bounds = [(s, min(s + kw["hop"], n)) for s in range(0, n, kw["hop"])]
    else:
        half = kw["window_size"] // 2
        bounds = [(max(f - half, 0), min(f + half + 1, n)) for f in range(n)]
    out = []
    for a, b in bounds:
        pooled = {c: max(r[c] for r in frames[a:b]) for c in AU_NAMES + EMOTION_COLUMNS}
        rec = {"aus": pooled, "emotions": pooled, **shared}
        out.append(reference_prompt(rec, mods, False, "nan"))
    return out


@given(case=clip_case(), mods=st.sampled_from(["V", "TVA", "TV"]))
def test_clip_prompts(case, mods) -> None:
    rows, frames, kw, names, reached = case
    shared = {"transcript": "hi", "tone": None, "arousal": 0.5, "valence": 0.25, "dominance": 0.75}
    got = outcome(lambda: clip_prompts(rows, **kw, **shared, modalities=mods), *names)
    assert (got is None) == reached, f"{names}: {'accepted' if got is not None else 'refused'}"
    if got is not None:
        assert got == reference_clip(frames, kw, shared, mods)


BAD_PAIRS = [("Calm", math.nan), ("Calm",), "Calm", {"Calm": 0.5}, ("Calm", "high"), None, ("Calm", 0.5, 1)]
PAIRS = st.one_of(
    st.tuples(st.text(max_size=8), good_number()).map(lambda r: (r, True)),
    st.lists(st.text(max_size=8), min_size=1, max_size=1).map(lambda n: ([n[0], 0.75], True)),
    st.sampled_from(BAD_PAIRS).map(lambda r: (r, False)),
)
CONTAINERS = {"list": list, "tuple": tuple, "iter": iter, "dict": lambda r: dict(enumerate(r)), "none": lambda r: None}


@given(rows=st.lists(PAIRS, max_size=14), container=st.sampled_from(list(CONTAINERS)))
def test_tone_text(rows, container) -> None:
    items = [] if container == "none" else [r for r, _ in rows]
    valid = container != "dict" and all(ok for _, ok in rows[: len(items)])
    got = outcome(lambda: tone_text(CONTAINERS[container](items)), "tone rows")
    assert (got is None) == (not valid)
    if got is not None:
        ranked = sorted(range(len(items)), key=lambda i: (-float(items[i][1]), i))[:10]
        want = ", ".join(f"{'High' if float(items[i][1]) > 0.3 else 'Low'} {items[i][0]}" for i in ranked)
        assert got == (want or "No speech detected")


HUME_ROW = st.fixed_dictionaries(
    {"name": st.text(max_size=5), "score": good_number(), "start": st.floats(-5, 20), "end": st.floats(-5, 20)}
)


@given(
    rows=st.lists(HUME_ROW, max_size=5),
    begin=good_number(),
    end=good_number(),
    context=st.one_of(good_number(), st.sampled_from(BAD_NUMBERS)),
    fault=st.sampled_from([None, None, "missing", "nan", "row_type", "rows_type"]),
    data=st.data(),
)
def test_hume_rows(rows, begin, end, context, fault, data) -> None:
    arg, names, reached = rows, ["context"], False
    try:
        c = float(context)
        reached = isinstance(context, bool) or not isinstance(context, (int, float, str, np.number, Fraction))
        reached |= not math.isfinite(c)
    except (TypeError, ValueError, OverflowError):
        reached = True
    lo, hi = (float(begin) - c, float(end) + c) if not reached else (0.0, 0.0)
    if fault in ("missing", "nan", "row_type") and rows:
        i = data.draw(st.integers(0, len(rows) - 1))
        key = data.draw(
            st.sampled_from(["score", "start", "end"] if fault == "nan" else ["name", "score", "start", "end"])
        )
        names.append(f"Hume rows[{i}]")
        inside = rows[i]["start"] <= hi and rows[i]["end"] >= lo
        reached |= fault != "missing" or key != "name" or inside  # a row's name is read only when the row is kept
        rows[i] = {
            "missing": lambda r: {k: v for k, v in r.items() if k != key},
            "nan": lambda r: {**r, key: math.nan},
            "row_type": lambda r: list(r.items()),
        }[fault](rows[i])
    if fault == "rows_type":
        arg, reached = data.draw(st.sampled_from([None, 5, "rows", {"name": "x"}])), True
        names.append("Hume rows")
    got = outcome(lambda: hume_rows_for_clip(arg, begin, end, context), *names)
    assert (got is None) == reached
    if got is not None:
        assert got == [(str(r["name"]), float(r["score"])) for r in rows if r["start"] <= hi and r["end"] >= lo]


def test_textualize_regressions() -> None:
    """Inputs the properties found: each is now a ValueError naming the value (or a documented prompt)."""
    cases = [
        (lambda: textualize({"arousal": 10**400, "valence": 0, "dominance": 0}, "A"),
         "arousal is too large for a float (beyond about 1.8e308)"),
        (lambda: textualize({"aus": [10**400] * 20}, "V"),
         "AU scores: AU01 is too large for a float (beyond about 1.8e308) (the original fills missing py-feat "
         "values with 0)"),
        (lambda: hume_rows_for_clip([], 0, 1, context="x"), "context must be a number, got 'x' (str)"),
        (lambda: hume_rows_for_clip(None, 0, 1), "Hume rows must be a sequence of rows (mappings), got NoneType"),
        (lambda: select_top_faces([{"frame": [0], "FaceScore": 1.0}]),
         "frame rows[0] frame must be a frame number, got [0] (list)"),
    ]  # fmt: skip
    for call, message in cases:
        with pytest.raises(ValueError) as err:
            call()
        assert str(err.value) == message
    # a string context used to be added to the clip end unconverted; NaN of numpy floats is a missing transcript
    assert hume_rows_for_clip([{"name": "Calm", "score": 0.5, "start": 2.5, "end": 3}], 0, 1, context="2") == [
        ("Calm", 0.5)
    ]
    for nan in (np.float32("nan"), np.float64("nan"), math.nan):
        assert textualize({"transcript": nan}, "T", missing_transcript="-") == "Speech transcription of the video : -; "


# -- MELD tables ------------------------------------------------------------------------------------------

CELL = st.text(st.characters(codec="utf-8", exclude_characters="\x00\r"), max_size=8)
PIECES = st.sampled_from([",", '"', '""', "\n", "\r\n", " ", "é", "’", "\x92", "ō", "😀", "Ã©", "nan", "日本"])
TEXT = st.lists(st.one_of(CELL, PIECES), max_size=4).map("".join)


@dataclasses.dataclass
class Table:
    """A MELD table as written: the header, the rows (column -> text) and the terminator."""

    header: list[str]
    rows: list[dict[str, str]]
    term: str

    def chunks(self, records: list[list[str]] | None = None) -> list[str]:
        """The header line, then each row's text as csv.writer writes it."""
        out = []
        for rec in [self.header] + (records or [[r[c] for c in self.header] for r in self.rows]):
            buf = io.StringIO(newline="")
            csv.writer(buf, lineterminator=self.term).writerow(rec)
            out.append(buf.getvalue())
        return out


def _lines(text: str) -> int:
    return len(io.StringIO(text, newline="").readlines())


def start_lines(chunks: list[str]) -> list[int]:
    """The line each row (chunks[1:]) starts on."""
    out, line = [], 1 + _lines(chunks[0])
    for c in chunks[1:]:
        out.append(line)
        line += _lines(c)
    return out


@st.composite
def meld_tables(draw, any_order: bool = True) -> Table:
    n = draw(st.integers(1, 4))
    rows = []
    for i in range(n):
        h, m, s, ms = draw(st.tuples(st.integers(0, 99), st.integers(0, 59), st.integers(0, 59), st.integers(0, 999)))
        case = draw(st.sampled_from([str.lower, str.upper, str.title, lambda x: f" {x} "]))
        rows.append(
            {
                "Sr No.": str(draw(st.integers(0, 10**6))),
                "Utterance": draw(TEXT),
                "Speaker": draw(TEXT),
                "Emotion": case(draw(st.sampled_from(MELD_EMOTIONS))),
                "Sentiment": case(draw(st.sampled_from(MELD_SENTIMENTS))),
                "Dialogue_ID": str(draw(st.integers(0, 3))),
                "Utterance_ID": str(i),
                "Season": str(draw(st.integers(1, 10))),
                "Episode": str(draw(st.integers(1, 25))),
                "StartTime": f"{h:02d}:{m:02d}:{s:02d},{ms}",
                "EndTime": f"{h:02d}:{m:02d}:{s:02d},{ms:03d}",
                "Notes": draw(TEXT),
            }
        )
    header = list(MELD_CSV_COLUMNS)
    if any_order:
        header = draw(st.permutations(header + draw(st.sampled_from([[], ["Notes"]]))))
    return Table(list(header), rows, draw(st.sampled_from(["\n", "\r\n"])))


def expected_rows(table: Table, fix=lambda s: s) -> list[MeldRow]:
    """The rows a reader must return for ``table`` (``fix``: what the file's decoding makes of a written text)."""
    lines = start_lines(table.chunks())
    return [
        MeldRow(
            sr_no=int(r["Sr No."]),
            dialogue_id=int(r["Dialogue_ID"]),
            utterance_id=int(r["Utterance_ID"]),
            speaker=fix(r["Speaker"]),
            utterance=fix(r["Utterance"]),
            emotion=MELD_EMOTIONS.index(r["Emotion"].strip().lower()),
            sentiment=MELD_SENTIMENTS.index(r["Sentiment"].strip().lower()),
            season=int(r["Season"]),
            episode=int(r["Episode"]),
            start_time=r["StartTime"],
            end_time=r["EndTime"],
            line=line,
        )
        for r, line in zip(table.rows, lines, strict=True)
    ]


def reader_decoding(raw: bytes) -> tuple[str | None, int | None]:
    """The documented decoding: ``(codec, None)`` (UTF-8, or cp1252 for a file without any UTF-8) or
    ``(None, offset of the byte that is neither)``."""
    body = raw.removeprefix(codecs.BOM_UTF8)
    try:
        body.decode("utf-8")
        return "utf-8", None
    except UnicodeDecodeError as e:
        bad = e.start + len(raw) - len(body)
    if raw.startswith(codecs.BOM_UTF8) or any(ord(c) > 127 and c != "\ufffd" for c in body.decode("utf-8", "replace")):
        return None, bad
    try:
        raw.decode("cp1252")
        return "cp1252", None
    except UnicodeDecodeError as e:
        return None, e.start


@given(table=meld_tables(), codec=st.sampled_from(["utf-8", "utf-8-sig", "cp1252", "latin-1"]))
def test_meld_table_reads_back(table: Table, codec: str) -> None:
    """A valid table, written by the csv module in any column order and codec, reads back exactly (text in the
    documented decoding), and the text run's data are its T prompts and labels."""
    text = "".join(table.chunks())
    try:
        raw = text.encode(codec)
    except UnicodeEncodeError:
        codec, raw = "utf-8", text.encode("utf-8")
    with scratch() as d:
        path = d / "test_sent_emo.csv"
        path.write_bytes(raw)
        got = outcome(lambda: read_meld_csv(path), f"{path}:")
        decoding, bad = reader_decoding(raw)
        if decoding is None:
            line = raw.count(b"\n", 0, bad) + 1
            assert got is None  # outcome checked that the message names the file; the line and the byte:
            with pytest.raises(LayoutError, match=f"^{re.escape(str(path))}:{line}: byte 0x{raw[bad]:02x} "):
                read_meld_csv(path)
            return
        field_codec = codec.removesuffix("-sig")  # the BOM is the file's, not each field's
        assert got == expected_rows(table, lambda s: s.encode(field_codec).decode(decoding))
        if field_codec == "utf-8" or decoding == "cp1252":  # (cp1252 bytes that are valid UTF-8 read as UTF-8)
            assert got == expected_rows(table)
        for name in ("train", "dev"):
            shutil.copy(path, d / f"{name}_sent_emo.csv")
        data = load_text_data(dataclasses.replace(TEXT_CONFIGS["meld-text-lora"], data_dir=str(d)))
        for texts, labels in data.values():
            assert texts == [f"Speech transcription of the video : {r.utterance}; " for r in got]
            assert labels.tolist() == [meld_label(MELD_EMOTIONS[r.emotion]) for r in got]


DAMAGES = [
    "truncate", "truncate", "drop_field", "repeat_field", "header_remove", "header_rename", "wide", "nul", "byte",
]  # fmt: skip


@given(table=meld_tables(any_order=False), damage=st.sampled_from(DAMAGES), data=st.data())
def test_meld_damaged_table(table: Table, damage: str, data) -> None:
    """A damaged table reads back a prefix of its rows when the damage is harmless (a cut at a row boundary),
    else raises a ValueError naming the file, and the line of the damaged row when the damage is in a row."""
    chunks = table.chunks()
    records = [[r[c] for c in table.header] for r in table.rows]
    lines = start_lines(chunks)
    k = data.draw(st.integers(0, len(records) - 1), label="row")  # the row a field damage hits
    with scratch() as d:
        path = d / "dev_sent_emo.csv"
        names: tuple[str, ...] = (str(path),)
        prefix = None  # the number of rows a harmless damage keeps
        raw = "".join(chunks).encode()
        if damage == "truncate":
            ends = np.cumsum([len(c.encode()) for c in chunks]).tolist()  # the byte after each line's terminator
            near_ends = sorted({e - t for e in ends for t in range(len(table.term) + 2)} - {len(raw)})  # at a row's end
            pos = data.draw(st.one_of(st.integers(0, len(raw) - 1), st.sampled_from(near_ends)), label="cut")
            kept = next((r for r, e in enumerate(ends) if e - len(table.term) <= pos <= e), None)
            if kept is not None:  # a cut at a row's end (in or after its terminator) keeps the rows before it
                prefix = kept
            elif pos > ends[0]:  # a cut inside a row: the error names one of its lines
                row = next(r for r, e in enumerate(ends) if e > pos)
                names = tuple(f"{path}:{line}:" for line in range(lines[row - 1], lines[row - 1] + _lines(chunks[row])))
            raw = raw[:pos]
        elif damage in ("drop_field", "repeat_field"):
            j = data.draw(st.integers(0, len(table.header) - 1), label="field")
            rec = records[k]
            records[k] = rec[:j] + rec[j + 1 :] if damage == "drop_field" else rec[: j + 1] + rec[j:]
            raw = "".join(table.chunks(records)).encode()
            names = (f"{path}:{lines[k]}: row {k + 1} has {len(records[k])} fields, expected 11",)
        elif damage in ("header_remove", "header_rename"):
            j = data.draw(st.integers(0, len(table.header) - 1), label="column")
            col = table.header[j]
            new = data.draw(TEXT.filter(lambda t: t != col), label="new name") if damage == "header_rename" else None
            header = table.header[:j] + ([new] if new is not None else []) + table.header[j + 1 :]
            raw = "".join([Table(header, [], table.term).chunks()[0], *chunks[1:]]).encode()
            names = (f"{path}: missing columns [{col!r}]",)
        elif damage == "wide":
            raw = "".join(chunks).encode(data.draw(st.sampled_from(["utf-16", "utf-16-le", "utf-16-be", "utf-32"])))
            names = (f"{path}:1: NUL byte in the file",)
        else:  # a NUL, or a byte that is not UTF-8 (a stray byte of another encoding), at a random place
            pos = data.draw(st.integers(0, len(raw)), label="at")
            byte = b"\x00" if damage == "nul" else bytes([data.draw(st.sampled_from([0x81, 0x92, 0xC3, 0xE9, 0xFF]))])
            raw = raw[:pos] + byte + raw[pos:]
            if damage == "nul" or reader_decoding(raw)[0] is None:
                line = raw.count(b"\n", 0, pos if damage == "nul" else reader_decoding(raw)[1]) + 1
                names = (f"{path}:{line}: {'NUL byte' if damage == 'nul' else 'byte 0x'}",)
            else:  # a pure-ASCII table with one cp1252 byte: read as cp1252, that byte's row reads it
                prefix = -1
        path.write_bytes(raw)
        got = outcome(lambda: read_meld_csv(path), *names)
        if prefix == -1:  # the stray byte is read as cp1252 text where it stands: the row count is unchanged
            assert got is None or len(got) == len(table.rows)
        elif prefix:
            assert got == expected_rows(table)[:prefix], "a cut at a row boundary keeps the rows before it"
        else:
            assert got is None, f"damage {damage!r} was not detected"


def test_meld_reader_regressions(tmp_path: Path) -> None:
    """Damage the properties found, now refused with the file and line."""
    header = ",".join(MELD_CSV_COLUMNS) + "\n"
    row = '1,"Hi, you.",Joey,joy,positive,0,0,1,1,"00:00:01,000","00:00:02,000"\n'
    path = tmp_path / "dev_sent_emo.csv"
    cut_utf8 = (header + row.replace("Hi", "ō") + row.replace(",0,0,", ",0,1,").replace("Hi", "é")).encode()
    cases = [
        # cut inside the last (quoted) time: the open quote used to be closed silently at the end
        ((header + row).encode()[:-5], f"{path}:2: row 1 is not valid CSV (unexpected end of data; an unclosed "
         "quote, or a file cut short?)"),
        # cut just after the comma before EndTime: an empty time used to be accepted
        ((header + row).encode()[: -len('"00:00:02,000"\n')], f"{path}:2: column 'EndTime' is '', not a time "
         "hh:mm:ss,mmm"),
        # a UTF-8 table cut inside its last character used to be decoded as cp1252 and blamed on line 2's ō
        (cut_utf8[: cut_utf8.rindex("é".encode()) + 1],
         f"{path}:3: byte 0xc3 is not UTF-8 but the rest of the table is UTF-8 text (a file cut short inside a "
         "character, or a line saved in another encoding?)"),
        # one line saved in cp1252 in a UTF-8 table used to turn every other non-ASCII character into mojibake
        ((header + row.replace("Hi", "’")).encode() + row.replace(",0,0,", ",0,1,").replace("Hi", "é").encode("cp1252"),
         f"{path}:3: byte 0xe9 is not UTF-8 but the rest of the table is UTF-8 text (a file cut short inside a "
         "character, or a line saved in another encoding?)"),
    ]  # fmt: skip
    for raw, message in cases:
        path.write_bytes(raw)
        with pytest.raises(LayoutError) as err:
            read_meld_csv(path)
        assert str(err.value) == message


# -- the text checkpoint ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/test_text.py's tiny checkpoint (config.json, model.safetensors, tokenizer.json), built once."""
    return _tiny_dir(tmp_path_factory.mktemp("tiny"))


DELETE = "<delete>"
"""An edit's value that removes the key."""
SHAPE_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size", "max_position_embeddings",
              "type_vocab_size")  # fmt: skip
CONFIG_KEYS = [f.name for f in dataclasses.fields(BertConfig)] + [
    "model_type", "position_embedding_type", "is_decoder", "add_cross_attention", "architectures", "torch_dtype",
]  # fmt: skip
JSON_VALUES = st.one_of(
    st.integers(-3, 64),
    st.sampled_from([0, 2, 4, 8, 12, 16, 24, 40, 2**31, 2**40, 10**400, -(10**400)]),
    st.floats(),  # NaN and Infinity included: json writes them and Python's json reads them back
    st.sampled_from(["16", "gelu", "gelu_new", "relu", "swish", "bert", "absolute", "", None, True, False]),
    st.sampled_from([[], [16], {}, {"a": 1}, DELETE]),
)
FILE_DAMAGES = [None] * 6 + ["cut", "deep", "digits", "list", "bytes"]


def damaged_json(text: str, damage: str | None, cut: float) -> bytes:
    """``text``, or a whole-file damage of it: cut (at the fraction ``cut``), nested too deep, an integer of 5000
    digits, a list, UTF-16."""
    return {
        None: lambda: text.encode(),
        "cut": lambda: text[: int(cut * len(text))].encode(),
        "deep": lambda: b"[" * 50_000 + b"]" * 50_000,
        "digits": lambda: b'{"vocab_size": 1' + b"0" * 5000 + b"}",
        "list": lambda: b"[1, 2]",
        "bytes": lambda: codecs.BOM_UTF16_LE + text.encode("utf-16-le"),
    }[damage]()


def _reference_config(raw: dict) -> dict:
    defaults = {f.name: f.default for f in dataclasses.fields(BertConfig)}
    return {k: raw[k] if raw.get(k) is not None else v for k, v in defaults.items()}


@given(
    edits=st.lists(st.tuples(st.sampled_from(CONFIG_KEYS), JSON_VALUES), max_size=3),
    damage=st.sampled_from(FILE_DAMAGES),
    cut=st.floats(0, 1, exclude_max=True),
)
@example(edits=[("layer_norm_eps", 10**400)], damage=None, cut=0.0).via("regression")  # an int beyond float's range
@example(edits=[("num_hidden_layers", 5000)], damage=None, cut=0.0).via("regression")  # built 5000 layers first
@example(edits=[], damage="deep", cut=0.0).via("regression")  # a RecursionError
@example(edits=[], damage="digits", cut=0.0).via("regression")  # a ValueError without the path
def test_config_json(tiny_checkpoint: Path, edits, damage, cut) -> None:
    """config.json with edited values (types, ranges, missing and extra keys) or damaged as a file: a ValueError
    naming the file (config.json, or model.safetensors when the sizes disagree with the weights), or a model
    whose configuration is the file's and whose output is finite."""
    raw = json.loads((tiny_checkpoint / "config.json").read_text())
    for key, value in edits:
        if value == DELETE:
            raw.pop(key, None)
        else:
            raw[key] = value
    with scratch() as d:
        shutil.copytree(tiny_checkpoint, d, dirs_exist_ok=True)
        path = d / "config.json"
        path.write_bytes(damaged_json(json.dumps(raw), damage, cut))
        cfg = outcome(lambda: BertConfig.from_json(path), str(path))
        model = outcome(lambda: load_bert(d), str(path), str(d / "model.safetensors"))
        if cfg is None:
            assert model is None
            return
        assert dataclasses.asdict(cfg) == _reference_config(json.loads(path.read_text()))
        fits = all(getattr(cfg, k) == getattr(TINY, k) for k in SHAPE_KEYS)
        assert (model is not None) == fits, "the weights load exactly when config.json's sizes are theirs"
        if model is not None:
            assert model.config == cfg
            out = model(jnp.array([[2, 4, 5, 6, 3, 0]]), jnp.array([[1, 1, 1, 1, 1, 0]]))
            assert np.isfinite(np.asarray(out)).all()


def _json_paths(obj, prefix=()) -> Iterator[tuple]:
    if prefix:
        yield prefix
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        yield from _json_paths(v, (*prefix, k))


def _tiny_tokenizer_json() -> dict:
    with scratch() as d:
        _tiny_tokenizer(d / "tokenizer.json")
        return json.loads((d / "tokenizer.json").read_text())


TOKENIZER_JSON = _tiny_tokenizer_json()
TOKENIZER_PATHS = [*_json_paths(TOKENIZER_JSON), ("model", "vocab", "zz"), ("added_tokens", 0)]
TOKENIZER_VALUES = st.one_of(
    JSON_VALUES,
    st.sampled_from(["[UNK]", "[PAD]", "[CLS]", "zz", "BPE", "WordLevel", "Unigram", "WordPiece", "Sequence", 13, 14,
                     39, 40, 60, 2**31 - 1, 2**32 - 1]),
    st.just({"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]}),
)  # fmt: skip


def edit_json(raw, edits) -> dict:
    """A copy of ``raw`` with each ``(path, value)`` edit applied (DELETE removes; a path that no longer
    exists is skipped; one past a list's end appends)."""
    raw = json.loads(json.dumps(raw))
    for path, value in edits:
        node = raw
        for key in path[:-1]:
            in_list = isinstance(node, list) and isinstance(key, int) and key < len(node)
            if not (in_list or (isinstance(node, dict) and key in node)):
                break
            node = node[key]
        else:
            key = path[-1]
            if isinstance(node, dict):
                node.pop(key, None) if value == DELETE else node.__setitem__(key, value)
            elif isinstance(node, list) and isinstance(key, int):
                if key < len(node):
                    node.pop(key) if value == DELETE else node.__setitem__(key, value)
                elif value != DELETE:
                    node.append(value)
    return raw


TEXTS = ["Oh my God, you got the job!", "", "zzz \x00\x1f ünï 日本 \u200b", "the job? " * 40]
"""What the fuzzed tokenizers encode: punctuation, empty, control and non-ASCII characters, longer than any limit."""


@given(
    edits=st.lists(st.tuples(st.sampled_from(TOKENIZER_PATHS), TOKENIZER_VALUES), max_size=3),
    damage=st.sampled_from(FILE_DAMAGES),
    cut=st.floats(0, 1, exclude_max=True),
)
@example(edits=[(("model", "unk_token"), "Unigram")], damage=None, cut=0.0).via("regression")  # failed at encoding
@example(edits=[(("post_processor", "single", 0, "SpecialToken", "id"), "BPE")], damage=None, cut=0.0).via(
    "regression"
)  # a Rust panic (not even an Exception) at encoding
@example(edits=[(("model", "vocab", "zz"), 2**32 - 1)], damage=None, cut=0.0).via("regression")  # beyond int32
def test_tokenizer_json(tiny_checkpoint: Path, edits, damage, cut) -> None:
    """tokenizer.json with edited values or damaged as a file: a ValueError naming it, or a tokenizer whose ids
    are in its vocabulary, right-padded and truncated; the encoder takes it exactly when its ids fit the model."""
    with scratch() as d:
        shutil.copytree(tiny_checkpoint, d, dirs_exist_ok=True)
        path = d / "tokenizer.json"
        path.write_bytes(damaged_json(json.dumps(edit_json(TOKENIZER_JSON, edits)), damage, cut))
        tok = outcome(lambda: Tokenizer(path), str(path))
        encoder = outcome(lambda: SentenceEncoder.from_pretrained(d), str(path))
        if tok is None:
            assert encoder is None
            return
        assert 0 < tok.vocab_size <= 2**31 and 0 <= tok.pad_id < tok.vocab_size
        assert (encoder is None) == (tok.vocab_size > TINY.vocab_size), (
            "refused exactly when the ids exceed the model's"
        )
        for max_length in (None, 3, 8):
            out = outcome(lambda m=max_length: tok(TEXTS, max_length=m), str(path), "max_length")
            if out is None:
                continue
            ids, mask = out["input_ids"], out["attention_mask"]
            assert ids.dtype == np.int32 and ids.shape == mask.shape and ids.shape[0] == len(TEXTS)
            assert ((ids >= 0) & (ids < tok.vocab_size)).all()
            assert (mask == (np.arange(ids.shape[1]) < mask.sum(1, keepdims=True))).all(), "right padding"
            assert (ids[mask == 0] == tok.pad_id).all()
            assert max_length is None or ids.shape[1] <= max_length


@pytest.fixture(scope="module")
def tiny_encoder(tiny_checkpoint: Path) -> SentenceEncoder:
    """The tiny checkpoint as a sentence encoder (its tokenizer and model), loaded once."""
    return SentenceEncoder.from_pretrained(tiny_checkpoint)


TEXT_ITEMS = st.one_of(
    st.text(max_size=30),
    st.text(st.characters(categories=["Cc", "Cf", "Zs", "Zl", "Zp", "Mn"]), max_size=10),  # control and marks
    st.sampled_from(["oh my god", "the job!" * 500, "x" * 3000, ""]),
)
BAD_ITEMS = st.sampled_from([None, 5, b"oh", ["oh"], math.nan])


@given(
    texts=st.one_of(
        st.lists(TEXT_ITEMS, max_size=4),
        st.lists(st.one_of(TEXT_ITEMS, BAD_ITEMS), min_size=1, max_size=3),
        st.lists(TEXT_ITEMS, max_size=3).map(tuple),
        st.sampled_from([None, "oh my god", 5, {"oh": "my"}, {"oh", "my"}]),
    ),
    max_length=st.one_of(
        st.none(),
        st.integers(2, 20),
        st.integers(-2, 20),
        st.sampled_from([2**31, 2**64, 10**30, True, 2.0, "8", np.int64(5)]),
    ),
    pad_to=st.one_of(st.integers(1, 17), st.integers(-1, 17), st.sampled_from([True, 8.0, "8", None, np.int32(4)])),
)
@example(texts=["oh"], max_length=10**30, pad_to=1).via("regression")  # tokenizers could not take the limit
@example(texts={"oh": "my"}, max_length=None, pad_to=1).via("regression")  # a dict was read as its keys
def test_tokenizer_inputs(tiny_encoder: SentenceEncoder, tiny_checkpoint: Path, texts, max_length, pad_to) -> None:
    """Texts, max_length and pad_to_multiple_of as a caller might pass them: a ValueError naming the argument, or
    the reference tokenizer's ids, right-padded to a multiple of pad_to_multiple_of."""
    tok = tiny_encoder.tokenizer
    got = outcome(lambda: tok(texts, max_length, pad_to), "texts", "max_length", "pad_to_multiple_of")
    if got is None:
        return
    ref = HFTokenizer.from_file(str(tiny_checkpoint / "tokenizer.json"))
    if max_length is not None:
        ref.enable_truncation(min(int(max_length), 2**31))
    want = [e.ids for e in ref.encode_batch(list(texts))]
    longest = max(map(len, want), default=0)
    assert got["input_ids"].shape == (len(want), -(-longest // int(pad_to)) * int(pad_to))
    for row, mask, ids in zip(got["input_ids"], got["attention_mask"], want, strict=True):
        assert row[: len(ids)].tolist() == ids and (row[len(ids) :] == tok.pad_id).all()
        assert mask.tolist() == [1] * len(ids) + [0] * (len(row) - len(ids))
    if 0 < len(texts) <= 2:  # the embeddings of any texts: finite and of norm 1
        emb = tiny_encoder.embed(texts, batch_size=2)
        assert emb.shape == (len(texts), TINY.hidden_size)
        np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, atol=1e-5)


@given(length=st.one_of(st.none(), st.integers(-2, 40), st.sampled_from([1.5, "16", True, np.int64(20)])))
@example(length="16").via("regression")  # compared with an int: a TypeError
def test_tokenizer_pad_length(tiny_encoder: SentenceEncoder, length) -> None:
    """``pad``'s length: a ValueError naming it unless it is an integer no shorter than the longest encoding."""
    got = outcome(lambda: tiny_encoder.tokenizer.pad([[2, 4, 3], [2, 3]], length=length), "length")
    if got is not None:
        assert got["input_ids"].shape == (2, 3 if length is None else int(length))


def test_text_loader_regressions(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """Checkpoint files the properties found, now refused naming the file (before any weights are read)."""
    d = shutil.copytree(tiny_checkpoint, tmp_path / "ckpt")
    cfg, tok = d / "config.json", d / "tokenizer.json"
    good_cfg, good_tok = json.loads(cfg.read_text()), json.loads(tok.read_text())
    cases = [
        (cfg, {**good_cfg, "layer_norm_eps": 10**400}, load_bert,
         f"{cfg}: layer_norm_eps must be a finite number > 0, got 1{'0' * 400} (int)"),
        (cfg, {**good_cfg, "num_hidden_layers": 5000}, load_bert,
         f"{cfg}: num_hidden_layers is 5000 but {d / 'model.safetensors'} holds 2 encoder layers (encoder.layer.<i> "
         "keys): the config does not belong to these weights"),
        (tok, edit_json(good_tok, [(("model", "unk_token"), "<unk>")]), SentenceEncoder.from_pretrained,
         f"{tok}: model.unk_token '<unk>' is not in the vocabulary"),
        (tok, edit_json(good_tok, [(("post_processor", "single", 0, "SpecialToken", "id"), "<s>")]),
         SentenceEncoder.from_pretrained,
         f"{tok}: post_processor.single uses the special token '<s>', which post_processor.special_tokens does not "
         "define"),
        (tok, edit_json(good_tok, [(("model", "vocab", "zz"), 2**32 - 1)]), Tokenizer,
         f"{tok}: token id 4294967295 does not fit int32 (the ids' dtype)"),
    ]  # fmt: skip
    for path, content, loader, message in cases:
        path.write_text(json.dumps(content))
        with pytest.raises(ValueError) as err:
            loader(d if loader is not Tokenizer else tok)
        assert str(err.value) == message
        cfg.write_text(json.dumps(good_cfg))
        tok.write_text(json.dumps(good_tok))
    cfg.write_bytes(b"[" * 50_000 + b"]" * 50_000)
    with pytest.raises(ValueError, match=f"^{re.escape(str(cfg))} is not valid JSON: maximum recursion depth exceeded"):
        load_bert(d)
    cfg.write_bytes(b'{"vocab_size": 1' + b"0" * 5000 + b"}")
    with pytest.raises(
        ValueError, match=f"^{re.escape(str(cfg))} is not valid JSON: Exceeds the limit \\(4300 digits\\)"
    ):
        load_bert(d)
    tokenizer = Tokenizer(tok)
    assert tokenizer(["oh my god"], max_length=10**30)["input_ids"].tolist() == [[2, 4, 5, 6, 3]]
    for call, message in [
        (lambda: tokenizer.pad([[2, 3]], length="16"), "length must be an integer >= 0 or None, got '16'"),
        (lambda: tokenizer({"oh": "my"}), "texts must be a list of strings, got a dict"),
        (lambda: tokenizer({"oh", "my"}), "texts must be a list of strings, got a set"),
    ]:
        with pytest.raises(ValueError) as err:
            call()
        assert str(err.value) == message
