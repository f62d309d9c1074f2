"""The training loop of every run: the fusion models and the text models both go through :func:`run`.

A :class:`Task` holds what differs between them: its batches, its jitted step, its evaluation on
a split and its final record; a :class:`Schedule` says when the loop logs, validates and saves.
The loop owns everything else, the same for every task:

- the devices (:class:`~jax_cer.training.parallel.Placement`, the task's ``placement``): the state is
  replicated over the run's data mesh, the task's batches are split over it; with several processes
  every process runs this loop, and only process 0 writes ``metrics.jsonl`` and the progress bar;
- the work directory (:mod:`jax_cer.training.checkpoints`): ``metrics.jsonl`` and the checkpoints;
  resume from the newest intact checkpoint (falling back past corrupt ones, saying so) or a fresh
  start;
- the position: step ``s`` is batch ``s % steps_per_epoch`` of epoch ``s // steps_per_epoch``, the
  batches of an epoch are a function of the epoch and the dropout key of a step is
  ``fold_in(key(seed), s)``, so a resumed run continues exactly where it stopped (on CPU its state
  and ``metrics.jsonl`` equal an uninterrupted run's bit for bit);
- the loss of every step is checked before anything is logged, validated or saved (and at least
  every ``CHECK_EVERY`` steps; the checks wait for the device, so they are not made after each
  step): a non-finite loss stops the run before any save, with an error naming the step and the
  last good checkpoint, so only finite checkpoints ever exist;
- logging (``{"step", "epoch", "loss", ...}``) every ``log_every`` steps, at the last step and,
  with ``log_epoch_ends``, at each epoch's last batch;
- validation every ``eval_every`` steps and at the last step: the state with the best
  ``task.select`` metric (``>=``: ties go to the later validation; with several processes, process
  0's score decides) is the best checkpoint; ``validate_untrained`` validates the untrained state
  first (step 0) and starts the tracker with it;
- checkpoints: at each validation, every ``save_every`` steps and at the last step;
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

from jax_cer.training.checkpoints import CheckpointStore, MetricsLog, position_meta
from jax_cer.training.parallel import Placement, agree, is_main

CHECK_EVERY = 50
"""The most steps whose losses go unchecked (a check waits for the device)."""


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


class Task(abc.ABC):
    """The task-specific parts of a run.

    ``name``: the progress bar's label. ``select``: the validation metric that picks the kept
    state, or None to keep the final state (no validation). ``schedule``: see :class:`Schedule`.
    The state is any pytree (what a checkpoint holds); :meth:`step` may donate it.
    ``placement``: the run's devices; :meth:`batches` yields batches placed with it
    (:meth:`~jax_cer.training.parallel.Placement.batch`), and the loop replicates the state on it.
    """

    name: str
    select: str | None
    schedule: Schedule
    placement: Placement | None = None

    @abc.abstractmethod
    def batches(self, epoch: int) -> Iterable[Any]:
        """The training batches of ``epoch``, ``schedule.steps_per_epoch`` of them, a function of the epoch,
        placed on the devices (each process materializes only its rows of each global batch)."""

    @abc.abstractmethod
    def step(self, state: Any, batch: Any, key: jax.Array) -> tuple[Any, jax.Array]:
        """One training step: the new state and the (scalar) loss."""

    @abc.abstractmethod
    def evaluate(self, state: Any, split: str) -> dict[str, float]:
        """The metrics of ``state`` (replicated) on a split (``val`` or ``test``), computed whole in every process."""

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
    validation metrics (``{}`` if none), the best validation score (``-inf`` if none), and the final
    record (``{}`` when stopped)."""

    step: int
    stopped: bool
    val: dict[str, float]
    best: float
    final: dict[str, Any]


def finite_loss(loss: Any, where: str, last_good: int | None, workdir: Path) -> float:
    """A loss as a float; a non-finite one stops the run, naming the last good checkpoint."""
    value = float(loss)
    if not math.isfinite(value):
        if last_good is None:
            good = "no checkpoint was saved before it"
        else:
            good = f"the last good checkpoint is step {last_good} in {CheckpointStore(workdir).path(last_good)}"
        raise FloatingPointError(f"the training loss is {value} at {where}; {good}")
    return value


class _Losses:
    """The losses of the steps not yet checked; :meth:`check` waits for them and names the first non-finite one."""

    def __init__(self, workdir: Path):
        self.workdir, self.waiting = workdir, []
        self.last_good: int | None = None

    def add(self, step: int, epoch: int, loss: jax.Array) -> None:
        self.waiting.append((step, epoch, loss))

    def check(self) -> float:
        """The newest loss as a float, once every waiting one is known to be finite."""
        values = jax.device_get([loss for _, _, loss in self.waiting])
        value = math.nan
        for (step, epoch, _), v in zip(self.waiting, values, strict=True):
            value = finite_loss(v, f"step {step} (epoch {epoch})", self.last_good, self.workdir)
        self.waiting.clear()
        return value


def run(
    task: Task,
    state: Any,
    workdir: str | Path,
    *,
    resume: bool = True,
    stop_after_steps: int | None = None,
    progress: bool = True,
) -> RunResult:
    """Trains ``task`` from ``state`` (or, with ``resume``, from the newest intact checkpoint in ``workdir``).

    ``workdir`` must exist (and hold ``config.json``, see :func:`~jax_cer.training.checkpoints.prepare_workdir`);
    ``resume=False`` deletes its checkpoints first. ``stop_after_steps``: stop (after saving) once
    the step reaches it, as an interruption would. Every process of a multi-process run calls this.
    """
    workdir = Path(workdir)
    sched = task.schedule
    placement = task.placement or Placement(1)
    n, total = sched.steps_per_epoch, sched.total_steps
    validates = task.select is not None and sched.eval_every > 0
    store = CheckpointStore(workdir, sched.keep)
    chosen = store.choose(need_best=validates) if resume else None
    if not resume:
        store.clear()
    state = placement.replicate(state)
    step, best_score, best_step = 0, -math.inf, None
    if chosen is not None:
        step, meta = chosen
        state = store.restore(step, state)
        best_score = -math.inf if meta["best"] is None else meta["best"]
        best_step = meta["best_step"]
    store.clean(after=step if chosen is not None else None)
    log = MetricsLog(workdir / "metrics.jsonl", step if chosen is not None else None)
    header = task.header()
    if chosen is None and header is not None:
        log.write(header)
    losses = _Losses(workdir)
    losses.last_good = step if chosen is not None else None

    def save(at: int) -> None:
        store.save(at, state, position_meta(at, n, best_score, best_step))
        losses.last_good = at

    key = jax.random.key(sched.seed)
    show = progress and is_main()
    bar = tqdm(total=total, initial=step, desc=f"train {task.name}", unit="step", file=sys.stderr) if show else None
    last: dict[str, float] = {}
    try:
        if validates and sched.validate_untrained and chosen is None:
            first = task.evaluate(state, "val")
            log.write({"step": 0, "epoch": -1, "val": first})
            best_score, best_step = agree(first[task.select]), 0
            save(0)
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
                losses.add(step, epoch, loss)
                logs = step % sched.log_every == 0 or step == total or (sched.log_epoch_ends and b == n - 1)
                evals = validates and (step % sched.eval_every == 0 or step == total)
                stops = stop_after_steps is not None and step >= stop_after_steps
                saves = evals or stops or step == total or (sched.save_every and step % sched.save_every == 0)
                if logs or saves or len(losses.waiting) >= CHECK_EVERY:
                    loss_f = losses.check()  # before anything is written: only finite states are saved
                if logs:
                    log.write({"step": step, "epoch": epoch, "loss": loss_f, **task.log_fields(epoch)})
                    if bar is not None:
                        rate = task.rate(b + 1 - start, time.perf_counter() - t0)
                        bar.set_postfix(epoch=epoch, loss=f"{loss_f:.4f}", **rate)
                if bar is not None:
                    bar.update(1)
                if evals:
                    last = task.evaluate(state, "val")
                    log.write({"step": step, "epoch": epoch, "val": last})
                    score = agree(last[task.select])
                    if score >= best_score:  # ties go to the later validation, as the original
                        best_score, best_step = score, step
                if saves:
                    save(step)
                if stops:
                    return RunResult(step, True, last, best_score, {})
            epoch += 1
    except KeyboardInterrupt:
        if is_main():
            print(f"\ninterrupted at step {step}; resume with the same command", file=sys.stderr)
        raise
    finally:
        if bar is not None:
            bar.close()
    if validates and best_step is not None:
        kept_step = best_step
        kept = store.restore(kept_step, state)
    else:
        kept_step, kept = step, state
    record = task.final_record(kept, kept_step, step, last)
    log.write(record)
    return RunResult(step, False, last, best_score, record)
