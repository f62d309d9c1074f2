"""The trainer: resuming is bit-identical to an uninterrupted run, a crash during a save keeps the
last good checkpoint, configuration errors are clear, and the CLI runs end to end."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from jax_cer.training.checkpoints import CheckpointStore, read_checkpoint
from jax_cer.training.configs import TrainConfig
from jax_cer.training.fusion import build, train
from tests.conftest import REPO

# 7 train clips of 100 frames -> windows [0, 60), [40, 100): 14 windows, 7 steps per epoch
CFG = TrainConfig(
    model="can",
    lr=0.05,
    epochs=2,
    batch_size=2,
    window=60,
    hop=40,
    synthetic_clips=14,
    synthetic_lengths=(100, 100),
    log_every=1,
)


def _state(workdir):
    _, _, _, init, _ = build(CFG)
    (params, stats, opt), meta = read_checkpoint(workdir, init)
    position = {k: meta[k] for k in ("epoch", "batch", "step", "best")}
    return [np.asarray(x) for x in jax.tree.leaves((params, stats, opt))], position


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    out = train(CFG, workdir, progress=False)
    return workdir, out


def test_resume_is_bit_identical(uninterrupted, tmp_path) -> None:
    ref_dir, ref_out = uninterrupted
    assert ref_out["step"] == 14 and not ref_out["stopped"]
    stopped = train(CFG, tmp_path, progress=False, stop_after_steps=5)  # mid-epoch
    assert stopped == {"step": 5, "stopped": True, "val": {}, "select": "weighted_f1"}
    out = train(CFG, tmp_path, progress=False)
    assert out == ref_out
    mine, meta = _state(tmp_path)
    ref, ref_meta = _state(ref_dir)
    assert meta == ref_meta == {"epoch": 2, "batch": 0, "step": 14, "best": ref_out["best"]}
    assert len(mine) == len(ref) > 10
    for a, b in zip(mine, ref, strict=True):
        np.testing.assert_array_equal(a, b)
    assert (tmp_path / "metrics.jsonl").read_text() == (ref_dir / "metrics.jsonl").read_text()
    val = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines() if "val" in x]
    assert [v["step"] for v in val] == [0, 7, 14]  # the untrained model is validated first


CRASH = r"""
import dataclasses, os, signal, sys
from jax_cer.training import checkpoints
from jax_cer.training.fusion import train
from tests.test_train import CFG

def die(step):
    if step == 4:  # the state is written, its checksums are not: a kill -9 in the middle of a save
        os.kill(os.getpid(), signal.SIGKILL)

checkpoints.FAILPOINTS["state-written"] = die
train(dataclasses.replace(CFG, save_every=2), sys.argv[1], progress=False)
"""


def test_kill_during_save_keeps_the_last_good_checkpoint(uninterrupted, tmp_path) -> None:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-c", CRASH, str(tmp_path)], check=False, cwd=REPO, env=env, capture_output=True, text=True
    )
    assert proc.returncode == -9, proc.stderr[-3000:]
    store = CheckpointStore(tmp_path)
    assert store.steps() == [0, 2]  # the save of step 4 never completed
    assert (tmp_path / "checkpoints" / ".pending-4").is_dir()  # what the interrupted save left
    _, meta = _state(tmp_path)
    assert meta["step"] == 2
    # resuming from it finishes the run exactly as the uninterrupted one (save_every does not change the maths)
    out = train(dataclasses.replace(CFG, save_every=2), tmp_path, progress=False)
    ref_dir, ref_out = uninterrupted
    assert out == ref_out
    assert not (tmp_path / "checkpoints" / ".pending-4").exists()
    for a, b in zip(_state(tmp_path)[0], _state(ref_dir)[0], strict=True):
        np.testing.assert_array_equal(a, b)
    assert (tmp_path / "metrics.jsonl").read_text() == (ref_dir / "metrics.jsonl").read_text()


def test_configuration_errors_are_clear(tmp_path) -> None:
    with pytest.raises(ValueError, match="optimizer must be one of"):
        TrainConfig(optimizer="lion")
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="unknown dataset 'affwild'"):
        TrainConfig(dataset="affwild")
    with pytest.raises(ValueError, match="fold"):
        TrainConfig(dataset="meld", fold=1)
    with pytest.raises(ValueError, match="select='ap' is not a validation metric of c-expr-db"):
        TrainConfig(dataset="c-expr-db", select="ap")
    with pytest.raises(ValueError, match="modalities must be distinct"):
        TrainConfig(modalities=("video", "audio"))
    with pytest.raises(ValueError, match="mt needs the modalities video and vggish"):
        TrainConfig(model="mt", modalities=("vggish", "bert"))
    with pytest.raises(ValueError, match="has 2 classes"):
        TrainConfig(dataset="bah", num_classes=7)
    with pytest.raises(ValueError, match="hop=300 is larger than window=200: LFAN's evaluation"):
        TrainConfig(model="lfan", window=200, hop=300)
    (tmp_path / "config.json").write_text(json.dumps({"model": "jmt"}))
    with pytest.raises(ValueError, match="holds a different configuration"):
        train(CFG, tmp_path, progress=False)


def test_schedule_and_faithful_learning_rate() -> None:
    cfg = TrainConfig(lr=0.008, gamma=0.9, lr_step=50, min_lr=1e-7)
    assert cfg.lr_at(0) == 0.008 and cfg.lr_at(49) == 0.008 and cfg.lr_at(50) == pytest.approx(0.0072)
    faithful = dataclasses.replace(cfg, faithful_lr=True)  # the original ignores the configured lr
    assert faithful.lr_at(0) == 1e-3 and faithful.lr_at(120) == pytest.approx(1e-3 * 0.81)
    assert TrainConfig(lr=1e-3, gamma=0.1, lr_step=1, min_lr=1e-7).lr_at(10) == 1e-7


def test_cli_train_and_eval(tmp_path) -> None:
    run = tmp_path / "run"
    base = [sys.executable, "-m", "jax_cer.cli"]
    sets = ["--set", "epochs=1", "--set", "synthetic_clips=10", "--set", "synthetic_lengths=80,80"]
    sets += ["--set", "window=40", "--set", "hop=40"]
    proc = subprocess.run(
        [*base, "train", "--config", "synthetic-can", "--workdir", str(run), "--no-progress", *sets],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "done: 2 steps" in proc.stdout and (run / "metrics.jsonl").is_file()
    proc = subprocess.run(
        [*base, "eval", str(run), "--json", str(tmp_path / "m.json")],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = {"accuracy", "weighted_f1", "video_mean_probs_accuracy", "video_vote_weighted_f1"}
    assert set(json.loads((tmp_path / "m.json").read_text())) >= names
    bad = subprocess.run([*base, "train", "--set", "epochs=x"], check=False, cwd=REPO, capture_output=True, text=True)
    assert bad.returncode != 0 and "'x' is not a valid int" in bad.stderr
