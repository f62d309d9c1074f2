"""Text-model training (jax_cer.training.text): MELD reading, few-shot sampling, configurations, and a
smoke run through ``jax-cer train`` with resume and ``jax-cer eval``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
import pytest

from jax_cer.cli import main
from jax_cer.text.textualize import MELD_TEXT_LABELS
from jax_cer.training.text import (
    TEXT_CONFIGS,
    TextTrainConfig,
    few_shot_indices,
    load_text_data,
    read_meld_split,
    so_dense_flags,
)

MELD = Path(__file__).resolve().parents[2] / "shared" / "data" / "meld"


def _checkpoint_or_skip() -> None:
    from jax_cer.text import default_checkpoint

    try:
        default_checkpoint()
    except FileNotFoundError as e:
        pytest.skip(str(e))


def test_read_meld_dev() -> None:
    if not (MELD / "dev_sent_emo.csv").is_file():
        pytest.skip(f"MELD data not found at {MELD} (../shared/data/meld)")
    texts, labels = read_meld_split(MELD / "dev_sent_emo.csv")
    assert len(texts) == len(labels) == 1109
    assert texts[0].startswith("Speech transcription of the video : ") and texts[0].endswith("; ")
    assert labels.dtype == np.int32 and set(labels.tolist()) <= set(range(7))
    _, test_labels = read_meld_split(MELD / "test_sent_emo.csv")
    counts = np.bincount(test_labels, minlength=7)  # the data README's test counts, in the text order
    assert dict(zip(MELD_TEXT_LABELS, counts.tolist(), strict=True)) == {
        "anger": 345, "disgust": 68, "fear": 50, "joy": 402, "neutral": 1256, "sadness": 208, "surprise": 281,
    }  # fmt: skip


def test_read_meld_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="train_sent_emo.csv"):
        read_meld_split(tmp_path / "train_sent_emo.csv")
    bad = tmp_path / "dev_sent_emo.csv"
    bad.write_text("Sr No.,Utterance\n1,hello\n")
    with pytest.raises(KeyError, match=r"missing column\(s\) \['Emotion'\]"):
        read_meld_split(bad)
    bad.write_text("Utterance,Emotion\nhello,joy\nhi,boredom\n")
    with pytest.raises(ValueError, match="row 3: unknown MELD emotion 'boredom'"):
        read_meld_split(bad)


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


def test_text_train_cli_resume_and_eval(tmp_path: Path, capsys) -> None:
    """The CI smoke run of meld-text-lora (28 utterances per split; the synthetic sentences when MELD
    is absent): stops after 3 steps, resumes to the end through the CLI, scores the best checkpoint."""
    _checkpoint_or_skip()
    from jax_cer.training.text import train_text

    work = tmp_path / "run"
    name, small = "synthetic-text", {}
    if (MELD / "train_sent_emo.csv").is_file():
        name, small = (
            "meld-text-lora",
            {"limit": 28, "epochs": 2, "batch_size": 4, "eval_batch_size": 8, "log_every": 1},
        )
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


def test_non_finite_loss_names_the_last_checkpoint(tmp_path: Path) -> None:
    from jax_cer.training.fusion import finite_loss

    class Latest:
        def latest_step(self):
            return 40

    assert finite_loss(np.float32(0.5), "step 41", Latest(), tmp_path) == 0.5
    with pytest.raises(FloatingPointError, match=r"loss is nan at step 42; the last good checkpoint is step 40"):
        finite_loss(np.float32("nan"), "step 42", Latest(), tmp_path)
