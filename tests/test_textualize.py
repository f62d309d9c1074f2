"""The prompt builder against every worked example of spec textualization.md §7 (outputs of the
original code), the quirks of §8 and the label maps of §4."""

from __future__ import annotations

import math

import pytest

from jax_cer.text.textualize import (
    AU_NAMES,
    EMOTION_COLUMNS,
    MELD_FEATURE_TO_TEXT,
    MELD_TEXT_TO_FEATURE,
    annotation_seconds,
    audio_text,
    centred_windows,
    clip_prompts,
    emotion_text,
    hop_windows,
    hume_rows_for_clip,
    meld_label,
    pool,
    select_top_faces,
    textualize,
    tone_text,
    whisper_transcript,
)

HUME = [
    ("Calmness", 0.41),
    ("Interest", 0.3567),
    ("Boredom", 0.30),
    ("Concentration", 0.2999),
    ("Tiredness", 0.25),
    ("Calmness", 0.24),
    ("Contemplation", 0.22),
    ("Doubt", 0.2),
    ("Confusion", 0.19),
    ("Sadness", 0.18),
]
TONE = (
    "High Calmness, High Interest, Low Boredom, Low Concentration, Low Tiredness, Low Calmness, "
    "Low Contemplation, Low Doubt, Low Confusion, Low Sadness"
)


def aus(**scores: float) -> dict[str, float]:
    return {c: scores.get(c, 0.0) for c in AU_NAMES}


def emotions(*vals: float) -> dict[str, float]:
    return dict(zip(EMOTION_COLUMNS, vals, strict=True))


E1 = {
    "aus": aus(AU01=0.62, AU04=0.5, AU06=0.91, AU12=0.77, AU25=0.5001),
    "emotions": emotions(0.02, 0.01, 0.03, 0.81, 0.05, 0.06, 0.12),
    "arousal": 0.71234,
    "valence": 0.495,
    "dominance": 0.33333,
    "transcript": "Oh my God, you got the job!",
    "tone": tone_text(HUME),
}
E1_TEXT = (
    "Speech transcription of the video : Oh my God, you got the job!; Facial Action Units activated during the "
    "video : Inner Brow Raiser, Cheek Raiser, Lip Corner Puller, Lip Part; Emotions predicted from visual modality: "
    "happiness, neutral, surprise; Characteristics of the prosody : " + TONE + ";  Audio emotional state : Arousal "
    "level (between 0 and 1) of 0.71, Valence level (between 0 and 1) of 0.49, Dominance level (between 0 and 1) "
    "of 0.33"
)


def test_tone_text() -> None:
    assert tone_text(HUME) == TONE  # Boredom's 0.30 is not > 0.3
    assert tone_text([]) == tone_text(None) == "No speech detected"
    rows = [("A", 0.1), ("B", 0.5), ("C", 0.5)] + [(f"x{i}", 0.01) for i in range(10)]
    assert tone_text(rows).startswith("High B, High C, Low A, Low x0") and tone_text(rows).count(",") == 9


def test_e1_meld_tva_numeric() -> None:
    assert textualize(E1) == E1_TEXT


def test_e2_audio_levels() -> None:
    head = E1_TEXT[: E1_TEXT.index(";  Audio")]
    assert (
        textualize(E1, audio_levels=True)
        == head + ";  Audio emotional state :  Low Valence, High Arousal, Low Dominance"
    )


def test_e3_visual_only() -> None:
    rec = {"aus": aus(AU02=0.7, AU05=0.66, AU26=0.93), "emotions": emotions(0.10, 0, 0.45, 0, 0, 0.45, 0.2)}
    assert textualize(rec, ["V"]) == (
        "Facial Action Units activated during the video : Outer Brow Raiser, Upper Lid Raiser, Jaw Drop; "
        "Emotions predicted from visual modality: fear, surprise, neutral; "
    )


def test_e4_order_levels_no_face_no_speech() -> None:
    rec = {
        "aus": aus(),
        "emotions": emotions(0, 0, 0, 0, 0, 0, 0),
        "arousal": 0.5,
        "valence": 0.4999,
        "dominance": 0.004,
        "transcript": "What are you doing here?\n Get out.",
        "tone": None,
    }
    assert textualize(rec, ["A", "V", "T"], audio_levels=True) == (
        "Speech transcription of the video : What are you doing here?\n Get out.; Facial Action Units activated "
        "during the video : No face detected; Emotions predicted from visual modality: No face detected; "
        "Characteristics of the prosody : No speech detected;  Audio emotional state :  High Valence, High Arousal, "
        "Low Dominance"
    )


def test_e5_face_but_no_au() -> None:
    rec = {
        "aus": aus(AU01=0.5, AU12=0.49),
        "emotions": emotions(0.2, 0.1, 0, 0.3, 0, 0, 0.4),
        "arousal": 0.2,
        "valence": 0.8,
        "dominance": 0.6,
        "tone": "High Anger",
    }
    assert textualize(rec, ["V", "A"]) == (
        "Facial Action Units activated during the video : No face detected; Emotions predicted from visual "
        "modality: No face detected; Characteristics of the prosody : High Anger;  Audio emotional state : Arousal "
        "level (between 0 and 1) of 0.2, Valence level (between 0 and 1) of 0.8, Dominance level (between 0 and 1) "
        "of 0.6"
    )


def test_e6_au_without_emotions() -> None:
    rec = {"aus": aus(AU43=0.8), "emotions": emotions(0, 0, 0, 0, 0, 0, 0)}
    assert textualize(rec, ["V"]) == (
        "Facial Action Units activated during the video : Eyes Closed; Emotions predicted from visual modality: ; "
    )


def test_rounding_and_fields() -> None:
    assert emotion_text([0, 0, 0, 0, 0, 0, 1]) == "neutral, anger, disgust"
    assert "of 0.49," in audio_text(0.1, 0.495, 0.1)  # Python's round, not numpy's
    assert audio_text(-0.0049, 0.5, 0.1).split("of ")[1].startswith("-0.0,")
    assert "High Valence" in audio_text(0, 0.4951, 0, levels=True)  # decided on the rounded value
    assert textualize({"transcript": math.nan}, ["T"]) == "Speech transcription of the video : nan; "
    assert textualize({"transcript": None}, ["T"], missing_transcript="") == "Speech transcription of the video : ; "
    with pytest.raises(ValueError, match="modalities"):
        textualize(E1, ["X"])
    with pytest.raises(ValueError, match="expected 20 values"):
        textualize({"aus": [0.0] * 19, "emotions": [0.0] * 7}, ["V"])
    with pytest.raises(ValueError, match=r"emotion probabilities: missing column\(s\) \['disgust', .*'happiness'"):
        textualize({"aus": aus(AU01=0.9), "emotions": {"anger": 1.0}}, ["V"])


def test_windows() -> None:
    assert hop_windows(12, 10) == [(0, 10), (10, 12)]
    assert len(hop_windows(31, 10)) == 4
    w = centred_windows(14, 20)
    assert w[0] == (0, 11) and w[3] == (0, 14) and w[11] == (1, 14) and len(w) == 14


def _row(frame: int, score: float = 0.99, au: dict | None = None, emo: tuple = (0,) * 7) -> dict:
    return {"frame": frame, "FaceScore": score, **aus(**(au or {})), **emotions(*emo)}


MELD_TAIL = (
    "Characteristics of the prosody : High Excitement, High Joy, High Surprise (positive), High Joy, High Amusement, "
    "Low Interest, Low Calmness, Low Tiredness;  Audio emotional state : Arousal level (between 0 and 1) of 0.71, "
    "Valence level (between 0 and 1) of 0.49, Dominance level (between 0 and 1) of 0.33"
)


def test_meld_clip_windows() -> None:
    """§7.2, MELD train clip dia0_utt0: 12 frames, a second (dropped) face at frame 5, two samples."""
    rows = []
    for i in range(12):
        au = {"AU06": 0.2 + 0.07 * i, "AU12": 0.9 if i == 3 else 0.1, "AU01": 0.55 if i == 11 else 0.0}
        emo = (0.01, 0.01, 0.02, 0.6 if i < 10 else 0.1, 0.05, 0.3 if i == 11 else 0.01, 0.3)
        rows.append(_row(i, au=au, emo=emo))
        if i == 5:
            rows.append(_row(5, 0.5, {"AU43": 0.99}, (0.9, 0, 0, 0, 0, 0, 0)))
    hume = [("Excitement", 0.62), ("Joy", 0.55), ("Surprise (positive)", 0.41), ("Interest", 0.2)]
    hume += [("Joy", 0.35), ("Amusement", 0.31), ("Calmness", 0.1), ("Tiredness", 0.05)]
    prompts = clip_prompts(
        rows,
        transcript="Oh my God, you got the job!",
        tone=tone_text(hume),
        arousal=0.71234,
        dominance=0.33333,
        valence=0.495,
    )
    head = "Speech transcription of the video : Oh my God, you got the job!; "
    head += "Facial Action Units activated during the video : "
    assert prompts == [
        head
        + "Cheek Raiser, Lip Corner Puller; Emotions predicted from visual modality: happiness, neutral, sadness; "
        + MELD_TAIL,
        head
        + "Inner Brow Raiser, Cheek Raiser; Emotions predicted from visual modality: surprise, neutral, happiness; "
        + MELD_TAIL,
    ]


CEXPR_TAIL = (
    "Characteristics of the prosody : High Sadness;  Audio emotional state : Arousal level (between 0 and 1) of 0.6, "
    "Valence level (between 0 and 1) of 0.3, Dominance level (between 0 and 1) of 0.5"
)


def test_cexpr_hume_assignment_and_transcripts() -> None:
    """§7.2, C-EXPR-DB source video 07.mp4."""
    segs = [
        (5.0, 6.6, [("Horror", 0.5), ("Fear", 0.2)]),
        (10.5, 12.4, [("Disgust", 0.61), ("Surprise (negative)", 0.33), ("Awkwardness", 0.12)]),
        (12.1, 13.0, [("Calmness", 0.9)]),
        (17.0, 19.0, [("Sadness", 0.8)]),
    ]
    rows = [{"name": n, "score": s, "start": a, "end": b} for a, b, em in segs for n, s in em]
    begin0, end0 = annotation_seconds("00:00:08.556"), annotation_seconds("00:00:10.000")
    assert begin0 == pytest.approx(8.556)
    clip0 = hume_rows_for_clip(rows, begin0, end0)
    assert tone_text(clip0) == "High Disgust, High Horror, High Surprise (negative), Low Fear, Low Awkwardness"
    clip1 = hume_rows_for_clip(rows, annotation_seconds("00:00:20.000"), annotation_seconds("00:00:21.000"))
    assert tone_text(clip1) == "High Sadness"
    video = whisper_transcript(["[' What is that?']", '[" Oh no, that\'s gross."]'])
    assert video == "What is that?\n Oh no, thats gross."


def test_cexpr_val_clip_centred_windows() -> None:
    """§7.2, val clip _1: 14 frames, one sample per frame, missing transcript prints nan."""
    rows = [_row(0, au={"AU02": 0.8}, emo=(0.1, 0.2, 0.1, 0, 0.1, 0.4, 0.1))]
    rows += [_row(i) for i in range(1, 13)] + [_row(13, au={"AU26": 0.9})]
    prompts = clip_prompts(
        rows, windows="centred", transcript=math.nan, tone="High Sadness", arousal=0.6049, dominance=0.5, valence=0.2951
    )
    assert len(prompts) == 14
    assert prompts[0] == (
        "Speech transcription of the video : nan; Facial Action Units activated during the video : Outer Brow "
        "Raiser; Emotions predicted from visual modality: surprise, disgust, anger; " + CEXPR_TAIL
    )
    assert all(
        "video : Outer Brow Raiser, Jaw Drop; Emotions predicted from visual modality: surprise, disgust, anger; " in p
        for p in prompts[3:11]
    )
    assert all("video : Jaw Drop; Emotions predicted from visual modality: ; " in p for p in prompts[11:])
    with pytest.raises(ValueError, match="frames 0..n-1"):
        clip_prompts(rows[1:])


def test_label_maps() -> None:
    assert MELD_TEXT_TO_FEATURE == (4, 5, 3, 1, 0, 6, 2) and MELD_FEATURE_TO_TEXT == (4, 3, 6, 2, 0, 1, 5)
    assert meld_label("joy") == 3 and meld_label("Neutral") == 4
    with pytest.raises(ValueError, match="unknown MELD emotion"):
        meld_label("happy")


# -- malformed input: one ValueError naming the argument, key, row or column ----------------------
NAN, INF = math.nan, math.inf
_AV = {"arousal": 0.1, "valence": 0.2, "dominance": 0.3}


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: textualize(None), r"^record must be a mapping, got NoneType$"),
        (lambda: textualize([1, 2], ["T"]), r"^record must be a mapping, got list$"),
        (lambda: textualize({}, ["V"]), r"^record lacks 'aus' \(the V section needs it\)$"),
        (lambda: textualize({"tone": None}, ["A"]), r"^record lacks 'arousal' \(the A section needs it\)$"),
        (lambda: textualize(E1, None), r"^modalities must be a non-empty selection of \('T', 'V', 'A'\), got None$"),
        (lambda: textualize(E1, []), r"modalities must be a non-empty selection"),
        (lambda: textualize({"aus": None}, ["V"]), r"^AU scores must be a mapping by column name or a sequence of 20"),
        (lambda: textualize({"aus": "x" * 20}, ["V"]), r"^AU scores must be a mapping .* got str$"),
        (lambda: textualize({"aus": [[0.1]] * 20}, ["V"]), r"^AU scores: AU01 must be a number, got \[0.1\] \(list\)$"),
        (lambda: textualize({"aus": aus(AU04=NAN)}, ["V"]), r"^AU scores: AU04 is nan; expected a finite number"),
        (lambda: textualize({"aus": aus(AU04=INF)}, ["V"]), r"^AU scores: AU04 is inf; expected a finite number"),
        (lambda: textualize({"aus": aus(AU04=True)}, ["V"]), r"^AU scores: AU04 must be a number, got True \(bool\)$"),
        (lambda: textualize({"aus": aus(AU04=None)}, ["V"]), r"^AU scores: AU04 must be a number, got None"),
        (
            lambda: textualize({"aus": aus(AU04=0.9), "emotions": emotions(0, 0, NAN, 0, 0, 0, 0)}, ["V"]),
            r"^emotion probabilities: fear is nan; expected a finite number",
        ),
        (lambda: textualize({**_AV, "arousal": NAN}, ["A"]), r"^arousal is nan; expected a finite number$"),
        (lambda: textualize({**_AV, "valence": -INF}, ["A"], True), r"^valence is -inf; expected a finite number$"),
        (lambda: textualize({**_AV, "dominance": [0.3]}, ["A"]), r"^dominance must be a number, got \[0.3\] \(list\)$"),
        (
            lambda: textualize({**_AV, "tone": 5}, ["A"]),
            r"^record\['tone'\] must be a str \(tone_text\) or None, got int$",
        ),
        (lambda: audio_text(NAN, 0.0, 0.0), r"^arousal is nan"),
        (lambda: tone_text([("Joy", NAN), ("Calm", 0.5)]), r"^tone rows\[0\] score is nan; expected a finite number$"),
        (
            lambda: tone_text([("Joy",), ("Calm", 0.5)]),
            r"^tone rows\[0\] must be a \(name, score\) pair, got \('Joy',\)$",
        ),
        (lambda: tone_text("Joy"), r"^tone rows must be a sequence of \(name, score\) pairs, got str$"),
        (lambda: tone_text({"Joy": 0.5}), r"^tone rows must be a sequence of \(name, score\) pairs, got dict$"),
        (lambda: hume_rows_for_clip([{"name": "Joy", "score": 0.5}], 0, 1), r"^Hume rows\[0\] lacks 'start'$"),
        (
            lambda: hume_rows_for_clip([{"name": "Joy", "score": 0.5, "start": NAN, "end": 1}], 0, 1),
            r"^Hume rows\[0\] start is nan; expected a finite number$",
        ),
        (lambda: hume_rows_for_clip([], NAN, 1.0), r"^begin is nan"),
        (lambda: annotation_seconds(5), r"^annotation time 5 is not hh:mm:ss.mmm$"),
        (lambda: annotation_seconds("00:-1:00.000"), r"^annotation time '00:-1:00.000' is not hh:mm:ss.mmm$"),
        (lambda: whisper_transcript("[' abc']"), r"^Whisper rows must be a sequence of str, got str$"),
        (lambda: whisper_transcript([None]), r"^a Whisper row must be a str, got None \(NoneType\)$"),
        (lambda: hop_windows(-1), r"^n must be an integer >= 0, got -1$"),
        (lambda: hop_windows(12, 2.5), r"^hop must be an integer >= 1, got 2.5$"),
        (lambda: centred_windows(3, -4), r"^window_size must be an integer >= 1, got -4$"),
        (lambda: select_top_faces([{"frame": 0}]), r"^frame rows\[0\] lacks 'FaceScore'$"),
        (lambda: select_top_faces([{"frame": 0, "FaceScore": NAN}]), r"^frame rows\[0\] FaceScore is nan"),
        (
            lambda: pool([_row(0)], (-1, 1)),
            r"^window \(-1, 1\) must satisfy 0 <= start < end <= 1 \(the number of rows\)$",
        ),
        (lambda: pool([_row(0)], 3), r"^window must be a \(start, end\) pair of integers, got 3$"),
        (
            lambda: pool([_row(0), {**_row(1), "AU10": NAN}], (0, 2)),
            r"^rows\[1\] AU10 is nan; expected a finite number",
        ),
        (lambda: pool([{"frame": 0}], (0, 1)), r"^rows\[0\] lacks 'AU01'$"),
        (lambda: clip_prompts(None), r"^frame rows must be a sequence of rows \(mappings\), got NoneType$"),
        (lambda: clip_prompts([_row(0)], arousal=NAN), r"^arousal is nan"),
        (lambda: clip_prompts([_row(0)], windows="centred", window_size=0), r"^window_size must be an integer >= 1"),
        (lambda: meld_label(None), r"^MELD emotion must be a str, got None \(NoneType\)$"),
    ],
)
def test_malformed_input_is_named(call, match) -> None:
    with pytest.raises(ValueError, match=match):
        call()


def test_malformed_edges_with_defined_results() -> None:
    """Empty containers give defined results; CSV-read number strings are numbers (as float() reads them)."""
    assert clip_prompts([]) == [] and select_top_faces([]) == [] and hop_windows(0) == []
    assert tone_text([]) == tone_text(None) == "No speech detected"
    assert whisper_transcript([]) == ""
    assert textualize({}, ["T"]) == "Speech transcription of the video : nan; "
    assert hume_rows_for_clip([{"name": "Joy", "score": "0.5", "start": "1.0", "end": "2"}], 0, 1) == [("Joy", 0.5)]
    rows = [{**{k: str(v) for k, v in _row(0, au={"AU12": 0.9}).items()}, "frame": 0}]
    assert "Lip Corner Puller" in clip_prompts(rows, modalities=["V"])[0]
    # NaN is refused wherever it sits in a window (max() over NaN would depend on the row order)
    for order in ([_row(0), {**_row(1), "AU01": NAN}], [{**_row(0), "AU01": NAN}, _row(1)]):
        with pytest.raises(ValueError, match="AU01 is nan"):
            pool(order, (0, 2))
