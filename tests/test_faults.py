"""Faults a user's machine produces, injected at exact points of the training loop (not timing luck).

- A kill -9 at every point of a save (the checkpoint's state written but not its checksums, the
  checksums written but the folder not renamed, a new best committed but the older checkpoints not yet
  rotated, in the middle of a rotation, between the rename and the removal of a deleted checkpoint),
  and in the middle of a ``metrics.jsonl`` append: the next launch resumes and ends exactly as an
  uninterrupted run, with no leftovers. In the default run the kill is an exception that nothing in the
  loop catches (the process's state after it is what a kill leaves on disk); ``-m slow`` repeats every
  point with a real SIGKILL in a subprocess.
- A loss that turns NaN between logged steps is caught before the next save.
- A flipped byte, a truncated file, an altered manifest: named as corrupt, the run falls back to the
  previous intact checkpoint and still ends as an uninterrupted run; none intact is a clear error.
- A partial last line of ``metrics.jsonl`` is dropped with a warning; checkpoints without
  ``config.json`` refuse to resume.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
import pytest

from jax_cer.training import checkpoints
from jax_cer.training.checkpoints import CheckpointError, CheckpointStore, MetricsLog, prepare_workdir, read_checkpoint
from jax_cer.training.configs import TrainConfig, config_json
from jax_cer.training.loop import RunResult, Schedule, run
from tests.conftest import REPO
from tests.test_loop import Toy, _init

# saves at 0 (the untrained model, best), 2, 4 (best), 6, 8, 10, 12; keep=1 plus the best: [4, 12] at the end
SCHED = Schedule(
    steps_per_epoch=4, total_steps=12, log_every=1, eval_every=4, save_every=2, keep=1, seed=3, validate_untrained=True
)
SCORES = {0: 0.1, 4: 0.5, 8: 0.3, 12: 0.4}
CONFIG = {"toy": 1}


class Killed(BaseException):
    """An injected kill: nothing of the code under test runs after it (the loop catches no BaseException
    but KeyboardInterrupt)."""


def train_toy(workdir: Path, sched: Schedule = SCHED, task: Toy | None = None, **kw: Any) -> RunResult:
    prepare_workdir(workdir, CONFIG, kw.get("resume", True))
    return run(task or Toy(sched, SCORES), _init(), workdir, progress=False, **kw)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, RunResult]:
    workdir = tmp_path_factory.mktemp("reference")
    return workdir, train_toy(workdir)


def _assert_as_reference(workdir: Path, reference: tuple[Path, RunResult], out: RunResult) -> None:
    ref_dir, ref_out = reference
    assert out == ref_out
    assert (workdir / "metrics.jsonl").read_text() == (ref_dir / "metrics.jsonl").read_text()
    names = sorted(p.name for p in (workdir / "checkpoints").iterdir())
    assert names == sorted(p.name for p in (ref_dir / "checkpoints").iterdir()) == ["step_00000004", "step_00000012"]
    for which in ("latest", "best"):
        mine, meta = read_checkpoint(workdir, _init(), which)
        ref, ref_meta = read_checkpoint(ref_dir, _init(), which)
        np.testing.assert_array_equal(mine["w"], ref["w"])
        position = ("epoch", "batch", "step", "best", "best_step")  # (orbax's files carry a timestamp)
        assert {k: meta[k] for k in position} == {k: ref_meta[k] for k in position}


# (point, step): where the kill lands
CRASH_POINTS = [
    ("state-written", 0),  # the very first save: nothing to resume from, metrics.jsonl starts over
    ("manifest-written", 2),  # complete but not yet renamed into place
    ("committed", 4),  # the new best is committed; the older checkpoints are not yet rotated
    ("rotating", 0),  # step 4's rotation deleted step 0, not yet step 2
    ("discarding", 6),  # step 8's rotation renamed step 6 aside but did not remove it
    ("state-written", 12),  # the last save
]


def _kill_at(point: str, at: int):
    def hook(step: int) -> None:
        if step == at:
            raise Killed(f"{point} {at}")

    return hook


@pytest.mark.parametrize(("point", "at"), CRASH_POINTS, ids=[f"{p}-{s}" for p, s in CRASH_POINTS])
def test_a_kill_during_a_save_resumes_as_uninterrupted(reference, tmp_path, monkeypatch, point, at) -> None:
    monkeypatch.setitem(checkpoints.FAILPOINTS, point, _kill_at(point, at))
    with pytest.raises(Killed):
        train_toy(tmp_path)
    monkeypatch.delitem(checkpoints.FAILPOINTS, point)
    _assert_as_reference(tmp_path, reference, train_toy(tmp_path))


def test_a_kill_during_the_metrics_append_resumes_as_uninterrupted(reference, tmp_path, monkeypatch, capfd) -> None:
    original = MetricsLog.write

    def dying_write(self, record: dict) -> None:
        if record.get("step") == 8 and "val" in record:
            line = json.dumps(record, sort_keys=True) + "\n"
            with self.path.open("a") as f:
                f.write(line[: len(line) // 2])
            raise Killed("metrics append")
        original(self, record)

    monkeypatch.setattr(MetricsLog, "write", dying_write)
    with pytest.raises(Killed):
        train_toy(tmp_path)
    monkeypatch.setattr(MetricsLog, "write", original)
    assert not (tmp_path / "metrics.jsonl").read_text().endswith("\n")
    capfd.readouterr()
    _assert_as_reference(tmp_path, reference, train_toy(tmp_path))
    assert "dropping a partial last line" in capfd.readouterr().err


KILL = r"""
import os, signal, sys
from pathlib import Path
from jax_cer.training import checkpoints
from tests.test_faults import train_toy

point, at = sys.argv[2], int(sys.argv[3])
def die(step):
    if step == at:
        os.kill(os.getpid(), signal.SIGKILL)
checkpoints.FAILPOINTS[point] = die
train_toy(Path(sys.argv[1]))
"""


@pytest.mark.slow
@pytest.mark.parametrize(("point", "at"), CRASH_POINTS, ids=[f"{p}-{s}" for p, s in CRASH_POINTS])
def test_a_real_kill_during_a_save_resumes_as_uninterrupted(reference, tmp_path, point, at) -> None:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-c", KILL, str(tmp_path), point, str(at)],
        check=False,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    _assert_as_reference(tmp_path, reference, train_toy(tmp_path))


class Diverging(Toy):
    """From step ``nan_at`` on, the parameters are NaN (and so every later loss)."""

    def step(self, state: Any, batch: Any, key: Any) -> tuple[Any, Any]:
        state, loss = super().step(state, batch, key)
        if int(state["t"]) >= self.nan_at:
            state = {**state, "w": state["w"] * jnp.nan}
            loss = jnp.float32(jnp.nan)
        return state, loss


def test_a_loss_that_turns_nan_between_logged_steps_is_never_saved(tmp_path) -> None:
    # logged every 4 steps, saved every 3: the NaN of step 5 is caught before the save of step 6
    sched = Schedule(steps_per_epoch=20, total_steps=20, log_every=4, save_every=3, keep=1)
    with pytest.raises(
        FloatingPointError,
        match=r"loss is nan at step 5 \(epoch 0\); the last good checkpoint is step 3 in .*step_00000003",
    ):
        train_toy(tmp_path, task=Diverging(sched, nan_at=5))
    store = CheckpointStore(tmp_path)
    assert store.steps() == [3]
    state, _ = read_checkpoint(tmp_path, _init())
    assert np.all(np.isfinite(state["w"]))
    assert [r["step"] for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())] == [
        0,
        4,
    ]  # header, step 4


def _data_file(workdir: Path, step: int) -> Path:
    """The largest file of a checkpoint's state (its array data)."""
    files = [p for p in (CheckpointStore(workdir).path(step) / "state").rglob("*") if p.is_file()]
    return max(files, key=lambda p: p.stat().st_size)


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flipped byte", "truncated file", "altered manifest"])
def test_a_corrupt_checkpoint_is_named_and_the_run_falls_back(reference, tmp_path, capfd, damage) -> None:
    train_toy(tmp_path)
    store = CheckpointStore(tmp_path)
    if damage == "flipped byte":
        path = _data_file(tmp_path, 12)
        _flip_byte(path)
        expected = f"{path.relative_to(store.path(12)).as_posix()} does not match its SHA-256 checksum"
    elif damage == "truncated file":
        path = _data_file(tmp_path, 12)
        size = path.stat().st_size
        path.write_bytes(path.read_bytes()[: size // 2])
        expected = f"{path.relative_to(store.path(12)).as_posix()} has {size // 2} bytes, {size} expected"
    else:
        manifest = store.path(12) / "checkpoint.json"
        manifest.write_text(manifest.read_text().replace('"best_step": 4', '"best_step": 12'))
        expected = "checkpoint.json does not match its digest"
    capfd.readouterr()
    out = train_toy(tmp_path)  # the finished run, launched again: step 12 is corrupt, step 4 is intact
    err = capfd.readouterr().err
    assert f"checkpoint {store.path(12)} is corrupt: {expected}" in err, err
    assert "falling back to checkpoint step 4, the newest intact one" in err
    _assert_as_reference(tmp_path, reference, out)  # resumed from step 4, and step 12 written again


def test_no_intact_checkpoint_is_a_clear_error(tmp_path) -> None:
    train_toy(tmp_path)
    _flip_byte(_data_file(tmp_path, 4))  # the best: needed by step 12 too
    store = CheckpointStore(tmp_path)
    assert store.pick("latest") == 12  # scoring the latest does not need the best
    with pytest.raises(
        CheckpointError, match=r"no intact checkpoint in .*step 12: its best checkpoint \(step 4\) is corrupt"
    ):
        train_toy(tmp_path)
    with pytest.raises(CheckpointError, match="is corrupt"):
        CheckpointStore(tmp_path).restore(4, _init())


def test_metrics_lines(tmp_path, capfd) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.4}\n{"step": 3, "lo')
    MetricsLog(path, 3)
    assert path.read_text() == '{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.4}\n'
    assert "dropping a partial last line (15 characters" in capfd.readouterr().err
    path.write_text('{"step": 1, "loss": 0.5}\ngarbage\n{"step": 2, "loss": 0.4}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl line 2 is not a JSON record .*repair or delete it"):
        MetricsLog(path, 3)
    MetricsLog(path, None)  # a fresh start empties it
    assert path.read_text() == ""


def test_checkpoints_without_config_refuse_to_resume(tmp_path) -> None:
    train_toy(tmp_path, stop_after_steps=2)
    (tmp_path / "config.json").unlink()
    with pytest.raises(ValueError, match="has checkpoints but no config.json"):
        prepare_workdir(tmp_path, CONFIG, resume=True)
    prepare_workdir(tmp_path, CONFIG, resume=False)  # a fresh start may
    # the device count may change between launches; anything else may not
    cfg = config_json(TrainConfig())
    prepare_workdir(tmp_path / "b", cfg, resume=True)
    prepare_workdir(tmp_path / "b", {**cfg, "devices": 1}, resume=True)
    with pytest.raises(ValueError, match="holds a different configuration"):
        prepare_workdir(tmp_path / "b", {**cfg, "lr": 0.5}, resume=True)


def test_an_older_layout_is_named(tmp_path) -> None:
    (tmp_path / "checkpoints" / "latest" / "3").mkdir(parents=True)
    with pytest.raises(CheckpointError, match=r"older layout \(latest/\).*--no-resume"):
        CheckpointStore(tmp_path).choose(need_best=False)
    prepare_workdir(tmp_path, CONFIG, resume=False)
    out = train_toy(tmp_path, resume=False, stop_after_steps=2)  # a fresh start clears it
    assert out.step == 2 and CheckpointStore(tmp_path).steps() == [0, 2]
