"""The training loop of every run (jax_cer.training.loop) on a small task: selection (untrained model
first, ties to the later validation), resume equal to an uninterrupted run, save_every, a step budget
that ends inside an epoch, the final state kept without selection, the non-finite loss error, and
both kinds of run (fusion, text) being tasks of this one loop."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_cer.text import default_checkpoint
from jax_cer.training.checkpoints import CheckpointStore, prepare_workdir, read_checkpoint
from jax_cer.training.configs import TEXT_CONFIGS, TrainConfig
from jax_cer.training.fusion import FusionTask
from jax_cer.training.loop import RunResult, Schedule, Task, finite_loss, run
from jax_cer.training.text import TextTask
from jax_cer.training.text_data import load_text_data


class Toy(Task):
    """A 4-d parameter pulled toward random targets; the validation score of the state after ``t``
    steps is ``scores[t]``, so a test decides which checkpoint wins."""

    def __init__(self, schedule: Schedule, scores: dict[int, float] | None = None, nan_at: int | None = None):
        self.name, self.schedule, self.scores, self.nan_at = "toy", schedule, scores or {}, nan_at
        self.select = "score" if scores is not None else None
        self.evaluated: list[tuple[int, str]] = []

    def batches(self, epoch: int):
        rng = np.random.default_rng([7, epoch])
        for _ in range(self.schedule.steps_per_epoch):
            yield rng.normal(size=4).astype(np.float32)

    def step(self, state: Any, batch: Any, key: jax.Array) -> tuple[Any, jax.Array]:
        w = state["w"] - 0.1 * (state["w"] - batch) + 0.01 * jax.random.normal(key, (4,))
        t = state["t"] + 1
        loss = jnp.sum((w - batch) ** 2)
        if self.nan_at is not None and int(t) == self.nan_at:
            loss = jnp.float32(jnp.nan)
        return {"w": w, "t": t}, loss

    def evaluate(self, state: Any, split: str) -> dict[str, float]:
        t = int(state["t"])
        self.evaluated.append((t, split))
        return {"score": self.scores.get(t, 0.0), "t": t}

    def final_record(self, kept: Any, kept_step: int, step: int, last_val: dict[str, float]) -> dict[str, Any]:
        return {"step": step, "kept_step": kept_step, "test": self.evaluate(kept, "test")}

    def log_fields(self, epoch: int) -> dict[str, Any]:
        return {"lr": 0.1}

    def header(self) -> dict[str, Any]:
        return {"step": 0, "params": 4}


def _init() -> dict[str, jax.Array]:
    return {"w": jnp.zeros(4, jnp.float32), "t": jnp.zeros((), jnp.int32)}


def _run(task: Task, workdir: Path, **kw: Any) -> RunResult:
    prepare_workdir(workdir, {"toy": 1}, kw.get("resume", True))
    return run(task, _init(), workdir, progress=False, **kw)


def _position(store: CheckpointStore, step: int) -> dict[str, Any]:
    meta = store.manifest(step)
    return {k: meta[k] for k in ("epoch", "batch", "step", "best", "best_step")}


def _records(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_untrained_first_and_ties_go_to_the_later_validation(tmp_path: Path) -> None:
    sched = Schedule(steps_per_epoch=3, total_steps=9, log_every=1, eval_every=3, validate_untrained=True)
    task = Toy(sched, scores={0: 0.5, 3: 0.4, 6: 0.5, 9: 0.3})
    out = _run(task, tmp_path)
    assert (out.step, out.stopped, out.best) == (9, False, 0.5)
    records = _records(tmp_path)
    assert records[0] == {"step": 0, "params": 4}  # the header
    assert [(r["step"], r["epoch"]) for r in records if "val" in r] == [(0, -1), (3, 0), (6, 1), (9, 2)]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 10))
    assert all(r["lr"] == 0.1 for r in records if "loss" in r)
    # the tie at step 6 beats the untrained model; the kept state (restored from best) is scored on test
    assert records[-1] == out.final == {"step": 9, "kept_step": 6, "test": {"score": 0.5, "t": 6}}
    assert task.evaluated[-1] == (6, "test")
    store = CheckpointStore(tmp_path, 1)
    assert store.steps() == [6, 9] and store.pick("best") == 6 and store.pick("latest") == 9  # keep 1, and the best
    assert _position(store, 9) == {"epoch": 3, "batch": 0, "step": 9, "best": 0.5, "best_step": 6}
    # without validate_untrained the first validation starts the tracker
    task = Toy(dataclasses.replace(sched, validate_untrained=False), scores={3: 0.2, 6: 0.1, 9: 0.2})
    out = _run(task, tmp_path / "b")
    assert out.final["kept_step"] == 9 and [r["step"] for r in _records(tmp_path / "b") if "val" in r] == [3, 6, 9]


def test_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    sched = Schedule(steps_per_epoch=4, total_steps=12, log_every=3, eval_every=4, save_every=2, keep=2, seed=3)
    scores = {4: 0.1, 8: 0.3, 12: 0.2}
    ref = _run(Toy(sched, scores), tmp_path / "ref")
    stopped = _run(Toy(sched, scores), tmp_path / "run", stop_after_steps=5)  # mid-epoch, not a save_every step
    assert (stopped.step, stopped.stopped, stopped.final) == (5, True, {})
    assert CheckpointStore(tmp_path / "run").steps() == [4, 5]  # the validation of step 4, and the stop
    again = _run(Toy(sched, scores), tmp_path / "run")
    assert again.final == ref.final and again.best == ref.best == 0.3 and again.final["kept_step"] == 8
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == (tmp_path / "ref" / "metrics.jsonl").read_text()
    for d in ("ref", "run"):  # the 2 newest, and the best (step 8)
        assert CheckpointStore(tmp_path / d).steps() == [8, 10, 12]
    a, _ = read_checkpoint(tmp_path / "ref", _init())
    b, _ = read_checkpoint(tmp_path / "run", _init())
    np.testing.assert_array_equal(a["w"], b["w"])
    # logged: every 3 steps and the last one (no epoch-end logging for this task)
    assert [r["step"] for r in _records(tmp_path / "ref") if "loss" in r] == [3, 6, 9, 12]
    # a fresh start deletes the checkpoints and the log
    fresh = _run(Toy(sched, scores), tmp_path / "run", resume=False, stop_after_steps=1)
    assert fresh.step == 1 and _records(tmp_path / "run") == [{"step": 0, "params": 4}]
    assert CheckpointStore(tmp_path / "run").steps() == [1]


def test_without_selection_the_final_state_is_kept(tmp_path: Path) -> None:
    sched = Schedule(steps_per_epoch=3, total_steps=7, log_every=5, eval_every=3, log_epoch_ends=True)
    task = Toy(sched)  # select None: a step budget (ending inside epoch 2), no validation
    out = _run(task, tmp_path)
    records = _records(tmp_path)
    assert not any("val" in r for r in records) and out.val == {} and out.best == -np.inf
    assert [r["step"] for r in records if "loss" in r] == [3, 5, 6, 7]  # epoch ends, every 5, the last step
    assert out.final == {"step": 7, "kept_step": 7, "test": {"score": 0.0, "t": 7}}
    store = CheckpointStore(tmp_path)
    assert store.steps() == [7] and store.pick("latest") == 7
    assert _position(store, 7) == {"epoch": 2, "batch": 1, "step": 7, "best": None, "best_step": None}
    with pytest.raises(FileNotFoundError, match="has no best checkpoint"):
        store.pick("best")
    assert store.pick("best", latest_without_best=True) == 7


def test_non_finite_loss_names_the_last_good_checkpoint(tmp_path: Path) -> None:
    sched = Schedule(steps_per_epoch=10, total_steps=10, log_every=1, save_every=2)
    with pytest.raises(
        FloatingPointError, match=r"loss is nan at step 5 \(epoch 0\); the last good checkpoint is step 4"
    ):
        _run(Toy(sched, nan_at=5), tmp_path)
    assert CheckpointStore(tmp_path).steps() == [4]  # keep=1; nothing past the last finite step
    assert finite_loss(np.float32(0.5), "step 41", 40, tmp_path) == 0.5
    with pytest.raises(FloatingPointError, match=str(tmp_path / "checkpoints" / "step_00000040")):
        finite_loss(np.float32("inf"), "step 42", 40, tmp_path)
    with pytest.raises(FloatingPointError, match="no checkpoint was saved before it"):
        finite_loss(np.float32("nan"), "step 1", None, tmp_path)


def test_schedule_errors() -> None:
    with pytest.raises(ValueError, match="steps_per_epoch must be >= 1, got 0"):
        Schedule(steps_per_epoch=0, total_steps=1, log_every=1)
    with pytest.raises(ValueError, match="save_every must be >= 0, got -1"):
        Schedule(steps_per_epoch=1, total_steps=1, log_every=1, save_every=-1)


def test_fusion_and_text_tasks_carry_their_recipes() -> None:
    """Both kinds of run are Tasks of this loop; each schedule holds its recipe's rules."""
    cfg = TrainConfig(
        model="can", lr=0.05, gamma=0.5, lr_step=1, epochs=2, batch_size=2, window=60, hop=40,
        synthetic_clips=14, synthetic_lengths=(100, 100), save_every=3, log_every=4,
    )  # fmt: skip
    fusion = FusionTask(cfg)
    s = fusion.schedule
    assert isinstance(fusion, Task) and (fusion.name, fusion.select) == ("can", "weighted_f1")
    assert (s.steps_per_epoch, s.total_steps, s.eval_every, s.save_every, s.log_every) == (7, 14, 7, 3, 4)
    assert s.log_epoch_ends and s.validate_untrained  # CER validates the untrained model (BAH does not)
    state = fusion.begin_epoch(fusion.initial_state, 1)  # the step schedule sets the epoch's lr in float32
    lr = state[2].hyperparams["learning_rate"]
    assert lr.dtype == jnp.float32 and float(lr) == float(np.float32(0.025)) and fusion.log_fields(1) == {"lr": 0.025}
    assert set(fusion.rate(7, 1.0)) == {"frames_s"}

    try:
        default_checkpoint()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    text_cfg = dataclasses.replace(TEXT_CONFIGS["synthetic-text"], select="final", steps=5, epochs=0, eval_every=2)
    text = TextTask(text_cfg, load_text_data(text_cfg))
    s = text.schedule
    assert isinstance(text, Task) and (text.name, text.select) == ("text-lora", None)  # select=final: no validation
    assert (s.steps_per_epoch, s.total_steps, s.save_every, s.log_epoch_ends, s.validate_untrained) == (
        7,
        5,
        0,
        False,
        False,
    )
    assert text.header() == {"step": 0, "trainable_params": 76_423, "params": 22_789_639, "train_examples": 28}
    assert text.token_batches.length == 16  # a small training set: one padded length, one compiled step
    assert set(text.rate(5, 1.0)) == {"steps_s"}
