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
    try:
        return MELD_TEXT_LABELS.index(emotion.strip().lower())
    except ValueError:
        raise ValueError(f"unknown MELD emotion {emotion!r}; expected one of {MELD_TEXT_LABELS}") from None


def _values(x: Mapping[str, float] | Sequence[float], names: Sequence[str], what: str) -> list[float]:
    if isinstance(x, Mapping):
        missing = [n for n in names if n not in x]
        if missing:
            raise KeyError(f"{what}: missing column(s) {missing}")
        vals = [x[n] for n in names]
    else:
        vals = list(x)
        if len(vals) != len(names):
            raise ValueError(f"{what}: expected {len(names)} values in the order {tuple(names)}, got {len(vals)}")
    out = [float(v) for v in vals]
    if any(math.isnan(v) for v in out):
        raise ValueError(f"{what} hold NaN; the original fills missing values with 0 before pooling")
    return out


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


def tone_text(rows: Iterable[tuple[str, float]] | None) -> str:
    """Hume prosody rows ``(name, score)`` -> the 10 highest scores (ties: earlier row), each
    ``High <name>`` if score > 0.3 else ``Low <name>``; ``No speech detected`` when there are none."""
    rows = list(rows or [])
    if not rows:
        return NO_SPEECH
    ranked = sorted(range(len(rows)), key=lambda i: (-float(rows[i][1]), i))[:TONE_ROWS]
    return ", ".join(f"{'High' if float(rows[i][1]) > TONE_THRESHOLD else 'Low'} {rows[i][0]}" for i in ranked)


def hume_rows_for_clip(
    rows: Iterable[Mapping[str, Any]], begin: float, end: float, context: float = 2.0
) -> list[tuple[str, float]]:
    """Rows (``name``, ``score``, ``start``, ``end``) of a C-EXPR-DB source video's Hume file whose
    segment meets the clip ``[begin, end]`` widened by ``context`` seconds: ``start <= end + 2`` and
    ``segment end >= begin - 2``. File order is kept."""
    return [
        (str(r["name"]), float(r["score"]))
        for r in rows
        if float(r["start"]) <= end + context and float(r["end"]) >= begin - context
    ]


def annotation_seconds(t: str) -> float:
    """``hh:mm:ss.mmm`` -> seconds as the original: ``h*3600 + m*60 + s + int(ms)/1000``."""
    try:
        hms, _, ms = t.strip().partition(".")
        h, m, s = (int(p) for p in hms.split(":"))
        return h * 3600 + m * 60 + s + (int(ms) / 1000 if ms else 0)
    except ValueError:
        raise ValueError(f"annotation time {t!r} is not hh:mm:ss.mmm") from None


def clean_whisper_segment(row: str) -> str:
    """A stored ``str(list_of_strings)`` Whisper row as the original reads it: every ``[ ] ' "``
    removed (apostrophes inside words too), then the first character dropped (quirk Q6)."""
    for ch in "[]'\"":
        row = row.replace(ch, "")
    return row[1:]


def whisper_transcript(rows: Iterable[str]) -> str:
    """The ``video`` transcript context: cleaned segments of a source video joined by ``"\\n "``."""
    return "\n ".join(clean_whisper_segment(r) for r in rows)


def _round2(x: float) -> float:
    return round(float(x), 2)  # Python's round on a Python float (0.495 -> 0.49), not numpy's


def _level(x: float) -> str:
    return "High" if _round2(x) >= 0.5 else "Low"


def audio_text(arousal: float, valence: float, dominance: float, levels: bool = False) -> str:
    """The tail of the A section (starts with a space)."""
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
    if t is None or (isinstance(t, float) and math.isnan(t)):
        return missing
    return str(t)


def _check_modalities(modalities: Iterable[str]) -> set[str]:
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
    ``audio_levels``: High/Low levels instead of numbers.
    """
    mods = _check_modalities(modalities)
    out = []
    if "T" in mods:
        out.append(f"Speech transcription of the video : {_transcript(record.get('transcript'), missing_transcript)}; ")
    if "V" in mods:
        aus = au_text(record["aus"])
        emo = NO_FACE if aus is None else emotion_text(record["emotions"])
        out.append(f"Facial Action Units activated during the video : {aus or NO_FACE}; ")
        out.append(f"Emotions predicted from visual modality: {emo}; ")
    if "A" in mods:
        tone = record.get("tone")
        out.append(f"Characteristics of the prosody : {NO_SPEECH if tone is None else tone}; ")
        out.append(audio_text(record["arousal"], record["valence"], record["dominance"], audio_levels))
    return "".join(out)


def hop_windows(n: int, hop: int = 10) -> list[tuple[int, int]]:
    """``[s, s + hop)`` for s = 0, hop, 2 hop, ...; the last window ends at n (ceil(n / hop) windows)."""
    if hop < 1:
        raise ValueError(f"hop must be >= 1, got {hop}")
    return [(s, min(s + hop, n)) for s in range(0, n, hop)]


def centred_windows(n: int, window_size: int = 20) -> list[tuple[int, int]]:
    """One window per frame f: ``[max(f - ws//2, 0), min(f + ws//2 + 1, n))``."""
    half = window_size // 2
    return [(max(f - half, 0), min(f + half + 1, n)) for f in range(n)]


def select_top_faces(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Rows (``frame``, ``FaceScore``, ...) whose FaceScore equals their frame's maximum, in order.

    Like the original, exact ties keep several rows per frame; :func:`clip_prompts` checks that
    one row per frame remains, frames 0..n-1 in order (quirk Q9), since windows index row positions.
    """
    best: dict[Any, float] = {}
    for r in rows:
        f, s = r["frame"], float(r["FaceScore"])
        best[f] = max(best.get(f, -math.inf), s)
    return [r for r in rows if float(r["FaceScore"]) == best[r["frame"]]]


def pool(rows: Sequence[Mapping[str, Any]], window: tuple[int, int]) -> dict[str, list[float]]:
    """Column-wise max over the rows ``[start, end)`` of the 20 AUs and of the 7 emotions."""
    start, end = window
    sel = rows[start:end]
    if not sel:
        raise ValueError(f"window {window} holds no rows (the clip has {len(rows)})")
    aus = [max(float(r[c]) for r in sel) for c in AU_NAMES]
    emotions = [max(float(r[c]) for r in sel) for c in EMOTION_COLUMNS]
    return {"aus": aus, "emotions": emotions}


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
