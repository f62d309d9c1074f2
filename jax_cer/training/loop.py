"""The training loop of every run: the fusion models and the text models both go through :func:`run`.

A :class:`Task` holds what differs between them: its batches, its jitted step, its evaluation on
a split and its final record; a :class:`Schedule` says when the loop logs, validates and saves.
The loop owns everything else, the same for every task:

- the work directory (:mod:`jax_cer.training.checkpoints`): ``metrics.jsonl``, the ``latest``
  and ``best`` checkpoint managers, resume from the newest checkpoint or a fresh start;
- the position: step ``s`` is batch ``s % steps_per_epoch`` of epoch ``s // steps_per_epoch``, the
  batches of an epoch are a function of the epoch and the dropout key of a step is
  ``fold_in(key(seed), s)``, so a resumed run continues exactly where it stopped (on CPU its state
  and ``metrics.jsonl`` equal an uninterrupted run's bit for bit);
- logging (``{"step", "epoch", "loss", ...}``) every ``log_every`` steps, at the last step and,
  with ``log_epoch_ends``, at each epoch's last batch; a non-finite logged loss stops the run
  with an error naming the last good checkpoint;
- validation every ``eval_every`` steps and at the last step: the state with the best
  ``task.select`` metric (``>=``: ties go to the later validation) is kept in ``checkpoints/best``;
  ``validate_untrained`` validates the untrained state first (step 0) and starts the tracker with it;
- ``checkpoints/latest``: at each validation, every ``save_every`` steps and at the last step;
- the end: the kept state (the best checkpoint, or the final state when ``task.select`` is None)
  goes to ``task.final_record``, whose record is the last line of ``metrics.jsonl``;
- a progress bar (loss and the task's rate: frames/s or steps/s) and the interruption message.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jax
from tqdm import tqdm

from jax_cer.training.checkpoints import MetricsLog, checkpoint_managers, restore, save_checkpoint


@dataclasses.dataclass(frozen=True)
class Schedule:
    """When a run steps, logs, validates and saves.

    ``total_steps`` may end inside an epoch (a step budget). ``eval_every``: steps between
    validations (used when the task selects on a metric). ``save_every``: extra ``latest``
    checkpoints every N steps (0: none). ``keep``: how many ``latest`` checkpoints stay.
    ``seed``: the dropout keys' seed.
    """

    steps_per_epoch: int
    total_steps: int
    log_every: int
    eval_every: int = 0
    save_every: int = 0
    keep: int = 1
    seed: int = 0
    log_epoch_ends: bool = False
    validate_untrained: bool = False

    def __post_init__(self) -> None:
        for name in ("steps_per_epoch", "log_every", "keep"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("total_steps", "eval_every", "save_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def position(self, step: int, best: float) -> dict[str, Any]:
        """A checkpoint's metadata: the epoch and batch that come next, the step, the best score so far."""
        return {"epoch": step // self.steps_per_epoch, "batch": step % self.steps_per_epoch, "step": step, "best": best}


class Task(abc.ABC):
    """The task-specific parts of a run.

    ``name``: the progress bar's label. ``select``: the validation metric that picks the kept
    state, or None to keep the final state (no validation). ``schedule``: see :class:`Schedule`.
    The state is any pytree (what a checkpoint holds); :meth:`step` may donate it.
    """

    name: str
    select: str | None
    schedule: Schedule

    @abc.abstractmethod
    def batches(self, epoch: int) -> Iterable[Any]:
        """The training batches of ``epoch``, ``schedule.steps_per_epoch`` of them, a function of the epoch."""

    @abc.abstractmethod
    def step(self, state: Any, batch: Any, key: jax.Array) -> tuple[Any, jax.Array]:
        """One training step: the new state and the (scalar) loss."""

    @abc.abstractmethod
    def evaluate(self, state: Any, split: str) -> dict[str, float]:
        """The metrics of ``state`` on a split (``val`` or ``test``)."""

    @abc.abstractmethod
    def final_record(self, kept: Any, kept_step: int, step: int, last_val: dict[str, float]) -> dict[str, Any]:
        """The last line of ``metrics.jsonl`` (the kept state's scores) once the run ends at ``step``."""

    def begin_epoch(self, state: Any, epoch: int) -> Any:
        """Called before the batches of each epoch (also a resumed one); returns the state to train on."""
        return state

    def log_fields(self, epoch: int) -> dict[str, Any]:
        """Extra fields of the loss records of ``epoch`` (e.g. the learning rate)."""
        return {}

    def rate(self, steps: int, seconds: float) -> dict[str, str]:
        """The progress bar's throughput after ``steps`` steps in ``seconds``."""
        return {"steps_s": f"{steps / max(seconds, 1e-9):.2f}"}

    def header(self) -> dict[str, Any] | None:
        """A record written once at the start of a fresh run (step 0), or None."""
        return None


@dataclasses.dataclass(frozen=True)
class RunResult:
    """What :func:`run` returns: the step reached, whether ``stop_after_steps`` stopped it, the last
    validation metrics of this process (``{}`` if none), the best validation score (``-inf`` if
    none), and the final record (``{}`` when stopped)."""

    step: int
    stopped: bool
    val: dict[str, float]
    best: float
    final: dict[str, Any]


def finite_loss(loss: Any, where: str, latest: Any, workdir: Path) -> float:
    """The logged loss as a float; a non-finite one stops the run, naming the last good checkpoint."""
    value = float(loss)
    if not math.isfinite(value):
        raise FloatingPointError(
            f"the training loss is {value} at {where}; the last good checkpoint is step {latest.latest_step()} "
            f"in {workdir / 'checkpoints' / 'latest'}"
        )
    return value


def settle(bar: Any, *managers: Any) -> None:
    """End of a run, normal or not: close the progress bar, wait for the checkpoint writes."""
    if bar is not None:
        bar.close()
    for m in managers:
        m.wait_until_finished()


def run(
    task: Task,
    state: Any,
    workdir: str | Path,
    *,
    resume: bool = True,
    stop_after_steps: int | None = None,
    progress: bool = True,
) -> RunResult:
    """Trains ``task`` from ``state`` (or, with ``resume``, from the newest checkpoint in ``workdir``).

    ``workdir`` must exist (and hold ``config.json``, see :func:`~jax_cer.training.checkpoints.prepare_workdir`);
    ``resume=False`` deletes its checkpoints first. ``stop_after_steps``: stop (after saving) once
    the step reaches it, as an interruption would.
    """
    workdir = Path(workdir)
    sched = task.schedule
    n, total = sched.steps_per_epoch, sched.total_steps
    validates = task.select is not None and sched.eval_every > 0
    latest, best = checkpoint_managers(workdir, sched.keep)
    step, best_score = 0, -math.inf
    if resume and latest.latest_step() is not None:
        state, meta = restore(latest, state)
        step, best_score = meta["step"], meta["best"]
    elif not resume:
        for m in (latest, best):
            for s in m.all_steps():
                m.delete(s)
    log = MetricsLog(workdir / "metrics.jsonl", step if resume else None)
    header = task.header()
    if step == 0 and header is not None:
        log.write(header)
    key = jax.random.key(sched.seed)
    bar = tqdm(total=total, initial=step, desc=f"train {task.name}", unit="step", file=sys.stderr) if progress else None
    last: dict[str, float] = {}
    try:
        if validates and sched.validate_untrained and step == 0 and best.latest_step() is None:
            first = task.evaluate(state, "val")
            log.write({"step": 0, "epoch": -1, "val": first})
            best_score = first[task.select]
            save_checkpoint(best, 0, state, sched.position(0, best_score), {"score": best_score})
        epoch = step // n
        while step < total:
            state = task.begin_epoch(state, epoch)
            start, t0 = step - epoch * n, time.perf_counter()
            for b, batch in enumerate(task.batches(epoch)):
                if b < start:
                    continue
                if step >= total:
                    break
                state, loss = task.step(state, batch, jax.random.fold_in(key, step))
                step += 1
                if step % sched.log_every == 0 or step == total or (sched.log_epoch_ends and b == n - 1):
                    loss_f = finite_loss(loss, f"step {step} (epoch {epoch})", latest, workdir)
                    log.write({"step": step, "epoch": epoch, "loss": loss_f, **task.log_fields(epoch)})
                    if bar is not None:
                        rate = task.rate(b + 1 - start, time.perf_counter() - t0)
                        bar.set_postfix(epoch=epoch, loss=f"{loss_f:.4f}", **rate)
                if bar is not None:
                    bar.update(1)
                if validates and (step % sched.eval_every == 0 or step == total):
                    last = task.evaluate(state, "val")
                    log.write({"step": step, "epoch": epoch, "val": last})
                    if last[task.select] >= best_score:  # ties go to the later validation, as the original
                        best_score = last[task.select]
                        save_checkpoint(best, step, state, sched.position(step, best_score), {"score": best_score})
                    save_checkpoint(latest, step, state, sched.position(step, best_score))
                elif (sched.save_every and step % sched.save_every == 0) or step == total:
                    save_checkpoint(latest, step, state, sched.position(step, best_score))
                if stop_after_steps is not None and step >= stop_after_steps:
                    if latest.latest_step() != step:
                        save_checkpoint(latest, step, state, sched.position(step, best_score))
                    return RunResult(step, True, last, best_score, {})
            epoch += 1
    except KeyboardInterrupt:
        print(f"\ninterrupted at step {step}; resume with the same command", file=sys.stderr)
        raise
    finally:
        settle(bar, latest, best)
    if validates:
        kept_step = best.best_step()
        kept, _ = restore(best, state, kept_step)
    else:
        kept_step, kept = step, state
    record = task.final_record(kept, kept_step, step, last)
    log.write(record)
    return RunResult(step, False, last, best_score, record)
