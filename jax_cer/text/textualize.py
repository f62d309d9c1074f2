"""Textualization of the CER text models: per-frame face, audio and speech features to the prompt
strings of the original code (spec ``textualization.md`` §1-§4, outputs checked against §7).

Plain Python, no JAX. The pieces, in the order the original applies them:

1. :func:`select_top_faces` keeps, in each frame, the rows whose FaceScore is the frame's maximum.
2. :func:`hop_windows` (training, and MELD everywhere) or :func:`centred_windows` (C-EXPR-DB val
   and test: one window per frame) cut the clip's row positions into windows.
3. :func:`pool` takes the column-wise max of the 20 AU scores and of the 7 emotion
   probabilities over a window's rows.
4. :func:`textualize` renders one pooled record with the clip-level transcript, audio triple and
   prosody ("tone") text into the prompt: sections T, V, A in that order whatever the order of
   ``modalities``, with the original's exact separators, rounding and quirks (spec §8: "No face
   detected" when no AU > 0.5 even with a face, an empty emotion field when all emotions are 0,
   High/Low decided on the rounded audio value, Python's ``round`` and ``str``, ``nan`` for a
   missing transcript).

:func:`tone_text` renders Hume prosody rows (top 10 by score, ``High`` when > 0.3),
:func:`hume_rows_for_clip` picks the rows of a C-EXPR-DB clip from its source video's file, and
:func:`clean_whisper_segment` / :func:`whisper_transcript` reproduce the ``video`` transcript
context's cleaning. :func:`clip_prompts` runs steps 1-4 for one clip. Label maps:
:data:`CEXPR_LABELS`, :data:`MELD_TEXT_LABELS` (the text repo's alphabetical order, used by
these models) and :data:`MELD_FEATURE_LABELS` (the feature repo's order), with the maps between
the two MELD orders.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from jax_cer.data.layout import CEXPR_CLASSES

AU_COLUMNS: tuple[tuple[str, str], ...] = (
    ("AU01", "Inner Brow Raiser"),
    ("AU02", "Outer Brow Raiser"),
    ("AU04", "Brow Lowerer"),
    ("AU05", "Upper Lid Raiser"),
    ("AU06", "Cheek Raiser"),
    ("AU07", "Lid Tightener"),
    ("AU09", "Nose Wrinkler"),
    ("AU10", "Upper Lip Raiser"),
    ("AU11", "Nasolabial Deepener"),
    ("AU12", "Lip Corner Puller"),
    ("AU14", "Dimpler"),
    ("AU15", "Lip Corner Depressor"),
    ("AU17", "Chin Raiser"),
    ("AU20", "Lip Stretcher"),
    ("AU23", "Lip Tightener"),
    ("AU24", "Lip Pressor"),
    ("AU25", "Lip Part"),
    ("AU26", "Jaw Drop"),
    ("AU28", "Lip Suck"),
    ("AU43", "Eyes Closed"),
)
"""py-feat's 20 AU columns and their names in the prompt, in the prompt's order."""
AU_NAMES: tuple[str, ...] = tuple(c for c, _ in AU_COLUMNS)
EMOTION_COLUMNS: tuple[str, ...] = ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral")
"""py-feat's emotion columns; the names go verbatim into the prompt."""
MODALITIES: tuple[str, ...] = ("T", "V", "A")
"""Prompt sections: transcript, visual (AUs and emotions), audio (prosody and arousal/valence/dominance)."""

NO_FACE = "No face detected"
NO_SPEECH = "No speech detected"
AU_THRESHOLD = 0.5
TONE_THRESHOLD = 0.3
TONE_ROWS = 10

CEXPR_LABELS: tuple[str, ...] = CEXPR_CLASSES
"""C-EXPR-DB class ids 0..7 (``class_id.yaml``; Other = 7 is added in code), as :mod:`jax_cer.data`."""
MELD_TEXT_LABELS: tuple[str, ...] = ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")
"""MELD in the text repo's order (``constants.EMOTIONS``, alphabetical): the text models' class ids."""
MELD_FEATURE_LABELS: tuple[str, ...] = ("neutral", "joy", "surprise", "fear", "anger", "disgust", "sadness")
"""MELD in the feature repo's order (Neutral 0, Happiness 1, ...), as ``jax_cer.data`` uses."""
MELD_TEXT_TO_FEATURE: tuple[int, ...] = tuple(MELD_FEATURE_LABELS.index(e) for e in MELD_TEXT_LABELS)
"""Feature-order id of each text-order id: ``(4, 5, 3, 1, 0, 6, 2)``."""
MELD_FEATURE_TO_TEXT: tuple[int, ...] = tuple(MELD_TEXT_LABELS.index(e) for e in MELD_FEATURE_LABELS)
"""Text-order id of each feature-order id: ``(4, 3, 6, 2, 0, 1, 5)``."""


def meld_label(emotion: str) -> int:
    """The text models' class id of a MELD ``Emotion`` value (``joy`` -> 3)."""
    if not isinstance(emotion, str):
        raise ValueError(f"MELD emotion must be a str, got {emotion!r} ({type(emotion).__name__})")
    try:
        return MELD_TEXT_LABELS.index(emotion.strip().lower())
    except ValueError:
        raise ValueError(f"unknown MELD emotion {emotion!r}; expected one of {MELD_TEXT_LABELS}") from None


FILLED = " (the original fills missing py-feat values with 0)"


def _number(v: Any, what: str, hint: str = "") -> float:
    """``v`` (a real number, or a string of one as a CSV reader gives) as a finite float; ValueError
    naming ``what`` (then ``hint``) for anything else (bools included), NaN or inf."""
    try:
        if isinstance(v, bool) or not isinstance(v, (numbers.Real, str)):
            raise ValueError
        x = float(v)
    except ValueError:
        raise ValueError(f"{what} must be a number, got {v!r} ({type(v).__name__})") from None
    except OverflowError:  # an int or Fraction beyond float's range
        raise ValueError(f"{what} is too large for a float (beyond about 1.8e308){hint}") from None
    if not math.isfinite(x):
        raise ValueError(f"{what} is {x}; expected a finite number{hint}")
    return x


def _values(x: Mapping[str, float] | Sequence[float], names: Sequence[str], what: str) -> list[float]:
    if isinstance(x, Mapping):
        missing = [n for n in names if n not in x]
        if missing:
            raise ValueError(f"{what}: missing column(s) {missing}")
        return [_number(x[n], f"{what}: {n}", FILLED) for n in names]
    if isinstance(x, (str, bytes)) or not isinstance(x, Iterable):
        raise ValueError(
            f"{what} must be a mapping by column name or a sequence of {len(names)} numbers, got {type(x).__name__}"
        )
    vals = list(x)
    if len(vals) != len(names):
        raise ValueError(f"{what}: expected {len(names)} values in the order {tuple(names)}, got {len(vals)}")
    return [_number(v, f"{what}: {n}", FILLED) for n, v in zip(names, vals, strict=True)]


def au_text(aus: Mapping[str, float] | Sequence[float]) -> str | None:
    """Names of the AUs scoring > 0.5 (strict), in table order, joined by ``", "``; None if none."""
    vals = _values(aus, AU_NAMES, "AU scores")
    kept = [name for (_, name), v in zip(AU_COLUMNS, vals, strict=True) if v > AU_THRESHOLD]
    return ", ".join(kept) if kept else None


def emotion_text(emotions: Mapping[str, float] | Sequence[float]) -> str:
    """The 3 largest emotions in descending order (ties: earlier column; zeros fill up in column
    order), or ``""`` when the largest is <= 0 (quirk Q2)."""
    vals = _values(emotions, EMOTION_COLUMNS, "emotion probabilities")
    if max(vals) <= 0:
        return ""
    order = sorted(range(len(vals)), key=lambda i: (-vals[i], i))[:3]
    return ", ".join(EMOTION_COLUMNS[i] for i in order)


def _tone_rows(rows: Iterable[tuple[str, float]] | None) -> list[tuple[str, float]]:
    if rows is None:
        return []
    if isinstance(rows, (str, bytes, Mapping)) or not isinstance(rows, Iterable):
        raise ValueError(f"tone rows must be a sequence of (name, score) pairs, got {type(rows).__name__}")
    out = []
    for i, row in enumerate(rows):
        if isinstance(row, (str, bytes)) or not isinstance(row, Sequence) or len(row) != 2:
            raise ValueError(f"tone rows[{i}] must be a (name, score) pair, got {row!r}")
        out.append((row[0], _number(row[1], f"tone rows[{i}] score")))
    return out


def tone_text(rows: Iterable[tuple[str, float]] | None) -> str:
    """Hume prosody rows ``(name, score)`` -> the 10 highest scores (ties: earlier row), each
    ``High <name>`` if score > 0.3 else ``Low <name>``; ``No speech detected`` when there are none.
    A row that is not a pair or whose score is not a finite number is a ValueError naming it."""
    rows = _tone_rows(rows)
    if not rows:
        return NO_SPEECH
    ranked = sorted(range(len(rows)), key=lambda i: (-rows[i][1], i))[:TONE_ROWS]
    return ", ".join(f"{'High' if rows[i][1] > TONE_THRESHOLD else 'Low'} {rows[i][0]}" for i in ranked)


def _field(row: Any, key: str, what: str, why: str = "") -> Any:
    if not isinstance(row, Mapping):
        raise ValueError(f"{what} must be a mapping, got {type(row).__name__}")
    if key not in row:
        raise ValueError(f"{what} lacks {key!r}{why}")
    return row[key]


def hume_rows_for_clip(
    rows: Iterable[Mapping[str, Any]], begin: float, end: float, context: float = 2.0
) -> list[tuple[str, float]]:
    """Rows (``name``, ``score``, ``start``, ``end``) of a C-EXPR-DB source video's Hume file whose
    segment meets the clip ``[begin, end]`` widened by ``context`` seconds: ``start <= end + 2`` and
    ``segment end >= begin - 2``. File order is kept. A missing key or a non-finite number is a
    ValueError naming the row."""
    context = _number(context, "context")
    lo, hi = _number(begin, "begin") - context, _number(end, "end") + context
    if isinstance(rows, (str, bytes, Mapping)) or not isinstance(rows, Iterable):
        raise ValueError(f"Hume rows must be a sequence of rows (mappings), got {type(rows).__name__}")
    out = []
    for i, r in enumerate(rows):
        what = f"Hume rows[{i}]"
        score, start, stop = (_number(_field(r, k, what), f"{what} {k}") for k in ("score", "start", "end"))
        if start <= hi and stop >= lo:
            out.append((str(_field(r, "name", what)), score))
    return out


_ANNOTATION_TIME = re.compile(r"(\d+):(\d+):(\d+)(?:\.(\d+))?")


def annotation_seconds(t: str) -> float:
    """``hh:mm:ss.mmm`` -> seconds as the original: ``h*3600 + m*60 + s + int(ms)/1000``."""
    m = _ANNOTATION_TIME.fullmatch(t.strip()) if isinstance(t, str) else None
    if m is None:
        raise ValueError(f"annotation time {t!r} is not hh:mm:ss.mmm")
    h, mi, sec, ms = m.groups()
    return int(h) * 3600 + int(mi) * 60 + int(sec) + (int(ms) / 1000 if ms else 0)


def clean_whisper_segment(row: str) -> str:
    """A stored ``str(list_of_strings)`` Whisper row as the original reads it: every ``[ ] ' "``
    removed (apostrophes inside words too), then the first character dropped (quirk Q6)."""
    if not isinstance(row, str):
        raise ValueError(f"a Whisper row must be a str, got {row!r} ({type(row).__name__})")
    for ch in "[]'\"":
        row = row.replace(ch, "")
    return row[1:]


def whisper_transcript(rows: Iterable[str]) -> str:
    """The ``video`` transcript context: cleaned segments of a source video joined by ``"\\n "``."""
    if isinstance(rows, (str, bytes)) or not isinstance(rows, Iterable):
        raise ValueError(f"Whisper rows must be a sequence of str, got {type(rows).__name__}")
    return "\n ".join(clean_whisper_segment(r) for r in rows)


def _round2(x: float) -> float:
    return round(float(x), 2)  # Python's round on a Python float (0.495 -> 0.49), not numpy's


def _level(x: float) -> str:
    return "High" if _round2(x) >= 0.5 else "Low"


def audio_text(arousal: float, valence: float, dominance: float, levels: bool = False) -> str:
    """The tail of the A section (starts with a space); each value must be a finite number."""
    arousal, valence, dominance = (
        _number(v, k) for k, v in (("arousal", arousal), ("valence", valence), ("dominance", dominance))
    )
    if levels:
        return (
            f" Audio emotional state :  {_level(valence)} Valence, {_level(arousal)} Arousal, "
            f"{_level(dominance)} Dominance"
        )
    a, v, d = (str(_round2(x)) for x in (arousal, valence, dominance))
    return (
        f" Audio emotional state : Arousal level (between 0 and 1) of {a}, Valence level (between 0 and 1) of {v}, "
        f"Dominance level (between 0 and 1) of {d}"
    )


def _transcript(t: Any, missing: str) -> str:
    if t is None or (isinstance(t, numbers.Real) and not isinstance(t, numbers.Rational) and math.isnan(t)):
        return missing  # None, or NaN of any float type (numpy's included)
    return str(t)


def _check_modalities(modalities: Iterable[str]) -> set[str]:
    if not isinstance(modalities, Iterable):
        raise ValueError(f"modalities must be a non-empty selection of {MODALITIES}, got {modalities!r}")
    mods = list(modalities)
    bad = [m for m in mods if m not in MODALITIES]
    if bad or not mods:
        raise ValueError(f"modalities must be a non-empty selection of {MODALITIES}, got {mods}")
    return set(mods)


def textualize(
    record: Mapping[str, Any],
    modalities: Iterable[str] = MODALITIES,
    audio_levels: bool = False,
    *,
    missing_transcript: str = "nan",
) -> str:
    """The prompt of one pooled record (spec §3).

    ``record`` keys: ``aus`` (20 pooled AU scores, a mapping by column name or a sequence in
    :data:`AU_NAMES` order) and ``emotions`` (7 pooled probabilities, by name or in
    :data:`EMOTION_COLUMNS` order) for V; ``transcript`` (None or NaN prints ``missing_transcript``)
    for T; ``tone`` (the :func:`tone_text` string; None -> ``No speech detected``) and
    ``arousal``, ``valence``, ``dominance`` for A. Only the selected sections' keys are needed.
    ``modalities``: any of ``T``, ``V``, ``A``; the output order is always T, V, A.
    ``audio_levels``: High/Low levels instead of numbers. A missing key of a selected section, a
    value of the wrong type or a NaN/inf number is a ValueError naming it.
    """
    mods = _check_modalities(modalities)
    if not isinstance(record, Mapping):
        raise ValueError(f"record must be a mapping, got {type(record).__name__}")
    out = []
    if "T" in mods:
        out.append(f"Speech transcription of the video : {_transcript(record.get('transcript'), missing_transcript)}; ")
    if "V" in mods:
        why = " (the V section needs it)"
        aus = au_text(_field(record, "aus", "record", why))
        emo = NO_FACE if aus is None else emotion_text(_field(record, "emotions", "record", why))
        out.append(f"Facial Action Units activated during the video : {aus or NO_FACE}; ")
        out.append(f"Emotions predicted from visual modality: {emo}; ")
    if "A" in mods:
        tone = record.get("tone")
        if tone is not None and not isinstance(tone, str):
            raise ValueError(f"record['tone'] must be a str (tone_text) or None, got {type(tone).__name__}")
        out.append(f"Characteristics of the prosody : {NO_SPEECH if tone is None else tone}; ")
        triple = (_field(record, k, "record", " (the A section needs it)") for k in ("arousal", "valence", "dominance"))
        out.append(audio_text(*triple, audio_levels))
    return "".join(out)


def _count(v: Any, name: str, least: int) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < least:
        raise ValueError(f"{name} must be an integer >= {least}, got {v!r}")
    return int(v)


def hop_windows(n: int, hop: int = 10) -> list[tuple[int, int]]:
    """``[s, s + hop)`` for s = 0, hop, 2 hop, ...; the last window ends at n (ceil(n / hop) windows)."""
    n, hop = _count(n, "n", 0), _count(hop, "hop", 1)
    return [(s, min(s + hop, n)) for s in range(0, n, hop)]


def centred_windows(n: int, window_size: int = 20) -> list[tuple[int, int]]:
    """One window per frame f: ``[max(f - ws//2, 0), min(f + ws//2 + 1, n))``."""
    n, half = _count(n, "n", 0), _count(window_size, "window_size", 1) // 2
    return [(max(f - half, 0), min(f + half + 1, n)) for f in range(n)]


def _rows(rows: Any, what: str) -> Sequence[Mapping[str, Any]]:
    if isinstance(rows, (str, bytes, Mapping)) or not isinstance(rows, Sequence):
        raise ValueError(f"{what} must be a sequence of rows (mappings), got {type(rows).__name__}")
    return rows


def select_top_faces(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Rows (``frame``, ``FaceScore``, ...) whose FaceScore equals their frame's maximum, in order.

    Like the original, exact ties keep several rows per frame; :func:`clip_prompts` checks that
    one row per frame remains, frames 0..n-1 in order (quirk Q9), since windows index row positions.
    A row without ``frame``, with an unhashable frame or with a FaceScore that is not a finite number is a
    ValueError naming it.
    """
    rows = _rows(rows, "frame rows")
    scores = [
        _number(_field(r, "FaceScore", f"frame rows[{i}]"), f"frame rows[{i}] FaceScore") for i, r in enumerate(rows)
    ]
    frames = [_field(r, "frame", f"frame rows[{i}]") for i, r in enumerate(rows)]
    for i, f in enumerate(frames):
        try:
            hash(f)
        except TypeError:
            raise ValueError(f"frame rows[{i}] frame must be a frame number, got {f!r} ({type(f).__name__})") from None
    best: dict[Any, float] = {}
    for f, s in zip(frames, scores, strict=True):
        best[f] = max(best.get(f, -math.inf), s)
    return [r for r, f, s in zip(rows, frames, scores, strict=True) if s == best[f]]


def pool(rows: Sequence[Mapping[str, Any]], window: tuple[int, int]) -> dict[str, list[float]]:
    """Column-wise max over the rows ``[start, end)`` of the 20 AUs and of the 7 emotions.

    ``window`` must satisfy ``0 <= start < end <= len(rows)``; a missing column or a value that is
    not a finite number is a ValueError naming the row and column."""
    rows = _rows(rows, "rows")
    if not (isinstance(window, Sequence) and len(window) == 2 and all(_is_int(w) for w in window)):
        raise ValueError(f"window must be a (start, end) pair of integers, got {window!r}")
    start, end = window
    if not 0 <= start < end <= len(rows):
        raise ValueError(f"window {tuple(window)} must satisfy 0 <= start < end <= {len(rows)} (the number of rows)")
    sel = [(i, rows[i]) for i in range(start, end)]

    def column(c: str) -> float:
        return max(_number(_field(r, c, f"rows[{i}]"), f"rows[{i}] {c}", FILLED) for i, r in sel)

    return {"aus": [column(c) for c in AU_NAMES], "emotions": [column(c) for c in EMOTION_COLUMNS]}


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def clip_prompts(
    frame_rows: Sequence[Mapping[str, Any]],
    *,
    windows: str = "hop",
    hop: int = 10,
    window_size: int = 20,
    transcript: Any = None,
    tone: str | None = None,
    arousal: float = 0.0,
    valence: float = 0.0,
    dominance: float = 0.0,
    modalities: Iterable[str] = MODALITIES,
    audio_levels: bool = False,
    missing_transcript: str = "nan",
) -> list[str]:
    """The prompts of one clip (its samples): face selection, windows, pooling, textualization.

    ``frame_rows``: py-feat rows (``frame``, ``FaceScore``, the AU and emotion columns; frames
    without a face have one row of zeros). ``windows``: ``"hop"`` (ceil(n / hop) samples) or
    ``"centred"`` (one sample per frame). The clip-level fields are shared by every sample.
    """
    rows = select_top_faces(frame_rows)
    frames = [r["frame"] for r in rows]
    if frames != list(range(len(rows))):
        raise ValueError(
            "after face selection the rows must be frames 0..n-1, one each (the original indexes windows by "
            f"row position); got frames {frames[:10]}{' ...' if len(frames) > 10 else ''}"
        )
    if windows == "hop":
        bounds = hop_windows(len(rows), hop)
    elif windows == "centred":
        bounds = centred_windows(len(rows), window_size)
    else:
        raise ValueError(f"windows must be 'hop' or 'centred', got {windows!r}")
    shared = {"transcript": transcript, "tone": tone, "arousal": arousal, "valence": valence, "dominance": dominance}
    return [
        textualize({**pool(rows, b), **shared}, modalities, audio_levels, missing_transcript=missing_transcript)
        for b in bounds
    ]
