"""Text-model training (jax_cer.training.text): the text data built from the shared MELD reader, the MELD
folder and its errors, few-shot sampling, configurations, resume equal to an uninterrupted run, and a
smoke run through ``jax-cer train`` with resume and ``jax-cer eval``."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from jax_cer.cli import main
from jax_cer.data.layout import MELD_EMOTIONS, LayoutError, MissingFileError, read_meld_tables
from jax_cer.text import default_checkpoint
from jax_cer.text.textualize import MELD_TEXT_LABELS, meld_label, textualize
from jax_cer.training.checkpoints import CheckpointStore
from jax_cer.training.configs import TEXT_CONFIGS, TextTrainConfig
from jax_cer.training.text import build_text_model, make_text_optimizer, so_dense_flags, train_text
from jax_cer.training.text_data import few_shot_indices, load_text_data, meld_dir, meld_text_splits
from tests.test_text import TINY_WORDS, _tiny_dir, _tiny_tokenizer

HEADER = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime\n"


def _checkpoint_or_skip() -> None:
    try:
        default_checkpoint()
    except FileNotFoundError as e:
        pytest.skip(str(e))


def _write_meld(folder: Path, rows: dict[str, str], encoding: str = "utf-8") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for table, body in rows.items():
        (folder / f"{table}_sent_emo.csv").write_bytes((HEADER + body).encode(encoding))
    return folder


SMALL = {
    "train": '1,"Oh, no, no, no!",Ross,fear,negative,0,0,3,19,"00:14:38,127","00:14:40,378"\n'
    '2,"Two\nlines",Rachel,joy,positive,0,1,3,19,"00:14:40,629","00:14:47,385"\n',
    "dev": '1,He\u2019s lost it.,Phoebe,sadness,negative,0,0,4,7,"00:20:57,256","00:21:00,049"\n',
    "test": '1,Hi.,Joey,Neutral,neutral,5,2,8,1,"00:00:01,000","00:00:02,000"\n',
}


def test_text_data_from_the_shared_reader(meld_dir: Path) -> None:
    """The real tables through jax_cer.data.layout's reader: every split's prompts and labels, in row order."""
    data = load_text_data(TEXT_CONFIGS["meld-text-lora"])  # data_dir unset: $JAX_CER_MELD_DIR (the fixture's)
    tables = read_meld_tables(meld_dir)
    assert {s: len(t) for s, (t, _) in data.items()} == {"train": 9989, "val": 1109, "test": 2610}
    for split, table in (("train", "train"), ("val", "dev"), ("test", "test")):
        texts, labels = data[split]
        rows = tables[table]
        assert texts == [f"Speech transcription of the video : {r.utterance}; " for r in rows]
        assert labels.dtype == np.int32
        assert labels.tolist() == [MELD_TEXT_LABELS.index(MELD_EMOTIONS[r.emotion]) for r in rows]
    counts = np.bincount(data["test"][1], minlength=7)  # the data README's test counts, in the text order
    assert dict(zip(MELD_TEXT_LABELS, counts.tolist(), strict=True)) == {
        "anger": 345, "disgust": 68, "fear": 50, "joy": 402, "neutral": 1256, "sadness": 208, "surprise": 281,
    }  # fmt: skip
    explicit = load_text_data(dataclasses.replace(TEXT_CONFIGS["meld-text-lora"], data_dir=str(meld_dir), limit=5))
    assert explicit["val"][0] == data["val"][0][:5]


def test_text_data_from_small_tables(tmp_path: Path) -> None:
    """Quoted commas and newlines, case of the Emotion value, UTF-8 and cp1252 files, the dev table as val."""
    for encoding in ("utf-8", "cp1252"):
        folder = _write_meld(tmp_path / encoding, SMALL, encoding)
        splits = meld_text_splits(folder)
        texts, labels = splits["train"]
        assert texts == [textualize({"transcript": u}, ("T",)) for u in ("Oh, no, no, no!", "Two\nlines")]
        assert labels.tolist() == [meld_label("fear"), meld_label("joy")] == [2, 3]
        assert splits["val"][0] == ["Speech transcription of the video : He\u2019s lost it.; "]
        assert splits["val"][1].tolist() == [5] and splits["test"][1].tolist() == [4]  # sadness, neutral


def test_meld_table_errors_name_the_file(tmp_path: Path) -> None:
    folder = _write_meld(tmp_path / "cols", SMALL)
    (folder / "dev_sent_emo.csv").write_text("Sr No.,Utterance\n1,hello\n")
    with pytest.raises(LayoutError, match=r"dev_sent_emo.csv: missing columns \['Speaker', 'Emotion'"):
        meld_text_splits(folder)
    folder = _write_meld(tmp_path / "emotion", {**SMALL, "test": SMALL["test"].replace("Neutral", "boredom")})
    with pytest.raises(LayoutError, match=r"test_sent_emo.csv:2: unknown Emotion 'boredom'"):
        meld_text_splits(folder)


BAD_TEXT_TABLES: dict[str, tuple[bytes, str]] = {
    "row with missing fields": (
        (HEADER + '1,Hi.,Joey,neutral,neutral,5,2,8,1,"00:00:01,000","00:00:02,000"\n2,Bye.,Joey,joy\n').encode(),
        r"test_sent_emo\.csv:3: row 2 has 4 fields, expected 11 \(missing Sentiment, Dialogue_ID, Utterance_ID, "
        r"Season, Episode, StartTime, EndTime\)$",
    ),
    "header only": (HEADER.encode(), r"test_sent_emo\.csv: table holds no utterances: no rows after the header"),
    "neither UTF-8 nor cp1252": (
        (HEADER + SMALL["test"]).encode().replace(b"Hi.", b"Hi\x8d."),
        r"test_sent_emo\.csv:2: byte 0x8d is neither UTF-8 nor cp1252 text \(expected a UTF-8 or cp1252 CSV table\)$",
    ),
}


@pytest.mark.parametrize("case", list(BAD_TEXT_TABLES))
def test_meld_bad_table_names_file_and_row(tmp_path: Path, case: str, capsys) -> None:
    """A broken table stops the text run with a LayoutError naming the file and the row (exit 2 from the CLI)."""
    folder = _write_meld(tmp_path / "meld", SMALL)
    content, pattern = BAD_TEXT_TABLES[case]
    (folder / "test_sent_emo.csv").write_bytes(content)
    with pytest.raises(LayoutError, match=f"^{re.escape(str(folder))}/{pattern}"):
        load_text_data(dataclasses.replace(TEXT_CONFIGS["meld-text-lora"], data_dir=str(folder)))
    args = ["train", "--config", "meld-text-lora", "--workdir", str(tmp_path / "run"), "--no-progress"]
    assert main([*args, "--data-dir", str(folder)]) == 2
    assert f"error: {folder / 'test_sent_emo.csv'}:" in capsys.readouterr().err


def test_meld_folder_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """MELD comes only from data_dir or $JAX_CER_MELD_DIR; a missing or incomplete folder says so and how to set it."""
    monkeypatch.delenv("JAX_CER_MELD_DIR", raising=False)
    with pytest.raises(MissingFileError, match=r"no MELD folder: .*--data-dir DIR .*\$JAX_CER_MELD_DIR=DIR"):
        load_text_data(TEXT_CONFIGS["meld-text-lora"])
    with pytest.raises(
        MissingFileError, match=f"MELD folder {tmp_path / 'nowhere'} \\(from data_dir\\) does not exist"
    ):
        meld_dir(tmp_path / "nowhere")
    partial = _write_meld(tmp_path / "partial", {"train": SMALL["train"]})
    monkeypatch.setenv("JAX_CER_MELD_DIR", str(partial))
    with pytest.raises(
        MissingFileError,
        match=rf"MELD folder {partial} \(from \$JAX_CER_MELD_DIR\) lacks dev_sent_emo.csv, test_sent_emo.csv; pass",
    ):
        meld_dir()
    assert meld_dir(_write_meld(tmp_path / "whole", SMALL)) == tmp_path / "whole"
    # through the command line: exit 2 and the message, no training
    args = ["train", "--config", "meld-text-lora", "--workdir", str(tmp_path / "run"), "--no-progress"]
    assert main([*args, "--data-dir", str(tmp_path / "nowhere")]) == 2
    assert f"error: MELD folder {tmp_path / 'nowhere'} (from data_dir) does not exist" in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_few_shot_indices() -> None:
    labels = np.repeat(np.arange(7), 10)[np.random.default_rng(0).permutation(70)]
    idx = few_shot_indices(labels, 4, seed=1, num_classes=7)
    assert len(idx) == 28 and len(set(idx.tolist())) == 28
    assert np.bincount(labels[idx]).tolist() == [4] * 7
    np.testing.assert_array_equal(idx, few_shot_indices(labels, 4, seed=1, num_classes=7))
    assert not np.array_equal(idx, few_shot_indices(labels, 4, seed=2, num_classes=7))
    with pytest.raises(ValueError, match="class 0 has 10 training examples, fewer than shots=11"):
        few_shot_indices(labels, 11, seed=0, num_classes=7)


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="method must be one of"):
        TextTrainConfig(method="prefix")
    with pytest.raises(ValueError, match="method 'so' goes with optimizer 'so'"):
        TextTrainConfig(method="lora", optimizer="so")
    with pytest.raises(ValueError, match="transcripts only"):
        TextTrainConfig(modalities=("T", "V"))
    with pytest.raises(ValueError, match="unknown text configuration keys"):
        TextTrainConfig.from_json({"lr": 1.0, "momentum": 0.9})
    assert TEXT_CONFIGS["meld-text-so"].resolved_optimizer() == "so"
    assert TEXT_CONFIGS["meld-fewshot-full"].resolved_optimizer() == "adamw"
    few = [TEXT_CONFIGS[f"meld-fewshot-{m}"] for m in ("full", "lora", "so")]
    assert len({(c.steps, c.batch_size, c.shots, c.select) for c in few}) == 1  # one budget for all methods


def test_synthetic_fewshot_data() -> None:
    cfg = dataclasses.replace(TEXT_CONFIGS["synthetic-text"], shots=2, seed=3)
    data = load_text_data(cfg)
    texts, labels = data["train"]
    assert len(texts) == 14 and np.bincount(labels).tolist() == [2] * 7


def test_so_dense_groups() -> None:
    params = {
        "encoder": {"q": {"kernel": np.zeros((4, 4)), "bias": np.zeros(4)}, "pooler": {"kernel": np.zeros((4, 4))}},
        "classifier": {"kernel": np.zeros((4, 3))},
    }
    flags = so_dense_flags(params)
    # leaves in key order: classifier kernel, pooler kernel, q bias (dense), q kernel (sparse)
    assert jax.tree.leaves(flags) == [True, True, True, False]


@pytest.mark.slow  # the loop's resume is checked bit for bit in the default run by tests/test_train.py and test_loop.py
def test_text_resume_is_bit_identical(tmp_path: Path) -> None:
    """The loop's resume guarantee for a text run: stopped mid-epoch and resumed, it ends with the
    parameters, optimizer state, checkpoint metadata and metrics.jsonl of an uninterrupted run."""
    _checkpoint_or_skip()
    cfg = dataclasses.replace(TEXT_CONFIGS["synthetic-text"], epochs=1, eval_every=3)
    ref = train_text(cfg, tmp_path / "ref", progress=False)
    log = [json.loads(line) for line in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    vals = [r for r in log if "val" in r and "test" not in r]
    assert [r["step"] for r in vals] == [3, 6, 7]  # every eval_every steps and at the last step
    stopped = train_text(cfg, tmp_path / "run", stop_after_steps=4, progress=False)
    assert stopped == {"step": 4, "stopped": True, "val": vals[0]["val"]}
    assert train_text(cfg, tmp_path / "run", progress=False) == ref
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == (tmp_path / "ref" / "metrics.jsonl").read_text()
    best = max(vals, key=lambda r: (r["val"][cfg.select], r["step"]))
    states = []
    for d in ("ref", "run"):
        store = CheckpointStore(tmp_path / d)
        assert store.steps() == [best["step"], 7] if best["step"] != 7 else store.steps() == [7]
        meta = store.manifest(7)
        assert {k: meta[k] for k in ("epoch", "batch", "step", "best", "best_step")} == {
            "epoch": 1,
            "batch": 0,
            "step": 7,
            "best": best["val"][cfg.select],
            "best_step": best["step"],
        }
        states.append(jax.tree.leaves(ocp.StandardCheckpointer().restore(store.path(7) / "state")))
    assert len(states[0]) == len(states[1]) > 10
    for a, b in zip(*states, strict=True):
        np.testing.assert_array_equal(a, b)


def test_text_train_cli_resume_and_eval(tmp_path: Path, capsys, meld_dir: Path) -> None:
    """The CI smoke run of meld-text-lora (28 utterances per split, MELD from $JAX_CER_MELD_DIR): stops
    after 3 steps, resumes to the end through the CLI, scores the best checkpoint."""
    _checkpoint_or_skip()
    work = tmp_path / "run"
    name, small = "meld-text-lora", {"limit": 28, "epochs": 2, "batch_size": 4, "eval_batch_size": 8, "log_every": 1}
    sets = [f"{k}={v}" for k, v in small.items()]
    cfg = dataclasses.replace(TEXT_CONFIGS[name], **small)
    out = train_text(cfg, work, stop_after_steps=3, progress=False)
    assert out["stopped"] and out["step"] == 3
    args = ["train", "--config", name, "--workdir", str(work), "--no-progress"]
    assert main(args + [a for kv in sets for a in ("--set", kv)]) == 0
    printed = capsys.readouterr().out
    assert "76,423 of 22,789,639 parameters trained" in printed  # 6 layers x (q, v) x r 8 + head
    log = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == list(range(1, 15))  # 2 epochs of 7 batches, once each
    final = log[-1]
    assert final["kept_step"] in (7, 14) and set(final["test"]) == {"accuracy", "weighted_f1", "macro_f1"}
    res = tmp_path / "eval.json"
    assert main(["eval", str(work), "--split", "test", "--json", str(res)]) == 0
    assert json.loads(res.read_text()) == pytest.approx(final["test"], abs=1e-6)


def test_sgd_optimizer_is_plain_sgd_with_coupled_decay() -> None:
    """``optimizer=sgd``: clip, then SGD without momentum and with coupled decay, as the original text models."""
    cfg = dataclasses.replace(TEXT_CONFIGS["synthetic-text"], optimizer="sgd", lr=0.5, warmup=0.0, weight_decay=0.1)
    params = {"w": np.array([1.0, -2.0], np.float32)}
    tx = make_text_optimizer(cfg, params, total_steps=4)
    inline = optax.chain(
        optax.clip_by_global_norm(0.3),
        optax.chain(optax.add_decayed_weights(0.1), optax.sgd(optax.cosine_decay_schedule(0.5, 4))),
    )
    state, ref_state = tx.init(params), inline.init(params)
    assert jax.tree.structure(state) == jax.tree.structure(ref_state)  # the same checkpoint layout
    for g in ([0.1, 0.2], [-0.3, 0.05], [0.0, 1.0]):
        grads = {"w": np.array(g, np.float32)}
        upd, state = tx.update(grads, state, params)
        ref_upd, ref_state = inline.update(grads, ref_state, params)
        np.testing.assert_array_equal(upd["w"], ref_upd["w"])


def test_tokenizer_must_fit_the_model_vocabulary(tmp_path: Path, capsys) -> None:
    """A checkpoint whose tokenizer.json produces ids beyond config.json's vocab_size stops the text run before its
    weights are read, naming the folder (exit 2 from the CLI); a tokenizer within the vocabulary builds."""
    (tmp_path / "ckpt").mkdir()
    d = _tiny_dir(tmp_path / "ckpt")
    _tiny_tokenizer(d / "tokenizer.json", TINY_WORDS + tuple(f"w{i}" for i in range(40)))  # 54 ids, the model has 40
    cfg = dataclasses.replace(TEXT_CONFIGS["synthetic-text"], checkpoint=str(d))
    message = (
        f"{d / 'tokenizer.json'} has token ids up to 53 but the model's vocab_size is 40: the tokenizer does not "
        "belong to this model"
    )
    with pytest.raises(ValueError) as err:
        build_text_model(cfg, len(MELD_TEXT_LABELS))
    assert str(err.value) == message
    args = ["train", "--config", "synthetic-text", "--workdir", str(tmp_path / "run"), "--no-progress"]
    assert main([*args, "--set", f"checkpoint={d}"]) == 2
    assert message in capsys.readouterr().err
    _tiny_tokenizer(d / "tokenizer.json")  # 14 ids
    model, tokenizer, _ = build_text_model(cfg, len(MELD_TEXT_LABELS))
    assert tokenizer.vocab_size == 14 and model.encoder.config.vocab_size == 40
