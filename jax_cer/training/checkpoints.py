"""A run's files in its work directory, for every kind of run::

    <workdir>/config.json                    the configuration (a resumed run must match it)
    <workdir>/metrics.jsonl                  one JSON line per logged step, per validation, and the final scores
    <workdir>/checkpoints/step_00000012/     one checkpoint: state/ (orbax) and checkpoint.json
    <workdir>/checkpoints/.pending-12/       a save in progress (or interrupted: removed at the next start)
    <workdir>/checkpoints/.trash-*/          a checkpoint being deleted (likewise)

A checkpoint holds the state (any pytree: parameters, statistics, optimizer state), written by
orbax, and ``checkpoint.json``: the position (``epoch``, ``batch``, ``step``), the best validation
score so far and the step of its checkpoint (``best_step``), the size and SHA-256 of every file of
the checkpoint, and a digest of itself. Every checkpoint is a complete restart point; "latest"
and "best" are roles, not folders: the newest intact checkpoint, and the one its ``best_step`` names.

Saving (:meth:`CheckpointStore.save`) writes into ``.pending-N``, records the checksums, then
renames the folder to ``step_N``: a checkpoint exists only once it is complete. Rotation keeps the
``keep`` newest checkpoints and every checkpoint they name as best, and deletes the rest by
renaming each to ``.trash-*`` before removing it. So a process killed at any instant leaves
complete checkpoints and leftovers that the next start removes. Every restore verifies the
checksums first; a corrupt or truncated checkpoint is named, and the run falls back to the
previous intact one (:meth:`CheckpointStore.choose`).

With several processes (:mod:`jax_cer.training.parallel`) every process makes the same orbax calls on
the one shared work directory; only process 0 writes ``config.json``, ``metrics.jsonl``, the
checksums, and renames and deletes folders.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp

from jax_cer.training.parallel import is_main, sync

FORMAT = 1
MANIFEST = "checkpoint.json"
RUNTIME_FIELDS = ("devices",)
"""Configuration fields that say where a run computes, not what: a resumed run may change them."""

FAILPOINTS: dict[str, Callable[[int], None]] = {}
"""Fault injection for tests: a callable per point of a save (``state-written``: orbax is done, the
checksums are not; ``manifest-written``: before the commit rename; ``committed``: before rotation;
``discarding``: a deleted checkpoint renamed but not yet removed; ``rotating``: after each deletion),
called with the step; e.g. one that kills the process."""


def _at(point: str, step: int) -> None:
    hook = FAILPOINTS.get(point)
    if hook is not None:
        hook(step)


class CheckpointError(RuntimeError):
    """A work directory whose checkpoints cannot be used: none intact, or an unreadable layout."""


def warn(message: str) -> None:
    """A warning of the training loop, on stderr, from process 0 only."""
    if is_main():
        print(f"warning: {message}", file=sys.stderr, flush=True)


def _write_atomic(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file and a rename, flushed to disk."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _same_config(stored: dict, cfg_json: dict) -> bool:
    strip = lambda d: {k: v for k, v in d.items() if k not in RUNTIME_FIELDS}  # noqa: E731
    return strip(stored) == strip(cfg_json)


def prepare_workdir(workdir: str | Path, cfg_json: dict, resume: bool) -> Path:
    """Creates the work directory and writes ``config.json`` (process 0).

    Resuming under another configuration is an error, and so is resuming a work directory that has
    checkpoints but no ``config.json`` (nothing says which configuration they belong to).
    ``RUNTIME_FIELDS`` (the device count) may change between launches.
    """
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise ValueError(f"work directory {workdir} is a file, not a folder")
    cfg_path = workdir / "config.json"
    if resume:
        if cfg_path.is_file():
            try:
                stored = json.loads(cfg_path.read_text())
            except ValueError as err:
                raise ValueError(
                    f"{cfg_path} is not valid JSON ({err}); repair it, or start over with --no-resume"
                ) from None
            if not isinstance(stored, dict) or not _same_config(stored, cfg_json):
                raise ValueError(
                    f"{cfg_path} holds a different configuration; use a new work directory or --no-resume to start over"
                )
        elif CheckpointStore(workdir).has_checkpoints():
            raise ValueError(
                f"{workdir} has checkpoints but no config.json, so nothing says which configuration they belong to: "
                "restore config.json, use a new work directory, or start over with --no-resume "
                "(deletes the checkpoints)"
            )
    if is_main():
        workdir.mkdir(parents=True, exist_ok=True)
        _write_atomic(cfg_path, json.dumps(cfg_json, indent=1) + "\n")
    sync("jax_cer:prepare_workdir")
    return workdir


class MetricsLog:
    """``metrics.jsonl``: appended line by line by process 0.

    Opening it for a resumed run keeps the records up to the restored step ``upto_step`` (without
    the final test record, which the run writes again); ``None`` starts it empty. A partial last
    line (an append that was interrupted) is dropped with a warning; any other line that is not a
    JSON record is an error naming it.
    """

    def __init__(self, path: Path, upto_step: int | None):
        self.path = path
        if not is_main():
            return
        records = []
        if upto_step is not None and path.is_file():
            lines = path.read_text().split("\n")
            for i, line in enumerate(lines):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    if not isinstance(rec, dict) or not isinstance(rec.get("step"), int):
                        raise ValueError("not a record with an integer 'step'")
                except ValueError as err:
                    if i == len(lines) - 1:  # no newline after it: an append that did not finish
                        warn(f"{path}: dropping a partial last line ({len(line)} characters, an interrupted write)")
                        continue
                    raise ValueError(f"{path} line {i + 1} is not a JSON record ({err}); repair or delete it") from None
                if rec["step"] <= upto_step and "test" not in rec:
                    records.append(line)
        _write_atomic(path, "".join(line + "\n" for line in records))

    def write(self, record: dict) -> None:
        """Appends one record as a JSON line (keys sorted); process 0 only."""
        if not is_main():
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()


def _digest(meta: dict) -> str:
    body = {k: v for k, v in meta.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _files(folder: Path) -> dict[str, Path]:
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}


def _file_problem(folder: Path, listed: dict[str, dict]) -> str | None:
    """The first difference between a checkpoint's files and its manifest's list, or None."""
    on_disk = {k: v for k, v in _files(folder).items() if k != MANIFEST}
    problems = [f"{rel} is missing" for rel in sorted(set(listed) - set(on_disk))]
    problems += [f"{rel} is not part of the checkpoint" for rel in sorted(set(on_disk) - set(listed))]
    if not problems:
        for rel, want in sorted(listed.items()):
            size = on_disk[rel].stat().st_size
            if size != want["bytes"]:
                problems.append(f"{rel} has {size} bytes, {want['bytes']} expected (truncated or altered)")
    if not problems:
        problems = [
            f"{rel} does not match its SHA-256 checksum (altered)"
            for rel, want in sorted(listed.items())
            if _sha256(on_disk[rel]) != want["sha256"]
        ]
    return problems[0] if problems else None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CheckpointStore:
    """The checkpoints of a work directory (see the module docstring for the layout and the protocol)."""

    def __init__(self, workdir: str | Path, keep: int = 1):
        self.dir = (Path(workdir) / "checkpoints").absolute()
        self.keep = keep
        self._problems: dict[int, str | None] = {}
        self._orbax: ocp.Checkpointer | None = None

    # -- listing and verification ---------------------------------------------------------------
    @staticmethod
    def name(step: int) -> str:
        return f"step_{step:08d}"

    def path(self, step: int) -> Path:
        return self.dir / self.name(step)

    def _check_layout(self) -> None:
        old = [p.name for p in (self.dir / "latest", self.dir / "best") if p.is_dir()]
        if old:
            raise CheckpointError(
                f"{self.dir} holds checkpoints in an older layout ({', '.join(old)}/) that this version does not read: "
                "use a new work directory, or start over with --no-resume (deletes them)"
            )

    def steps(self) -> list[int]:
        """The committed checkpoints' steps, ascending (intact or not)."""
        if not self.dir.is_dir():
            return []
        self._check_layout()
        out = []
        for p in self.dir.iterdir():
            if p.is_dir() and p.name.startswith("step_") and p.name[5:].isdigit():
                out.append(int(p.name[5:]))
        return sorted(out)

    def has_checkpoints(self) -> bool:
        return bool(self.dir.is_dir() and any(self.dir.iterdir()))

    def manifest(self, step: int) -> dict:
        """The ``checkpoint.json`` of a committed checkpoint (not verified; see :meth:`problem`)."""
        return json.loads((self.path(step) / MANIFEST).read_text())

    def problem(self, step: int) -> str | None:
        """What is wrong with checkpoint ``step`` (a missing, truncated or altered file), or None if intact."""
        if step not in self._problems:
            self._problems[step] = self._verify(self.path(step))
        return self._problems[step]

    @staticmethod
    def _verify(folder: Path) -> str | None:
        manifest = folder / MANIFEST
        if not manifest.is_file():
            return f"{MANIFEST} is missing"
        try:
            meta = json.loads(manifest.read_text())
        except (ValueError, UnicodeDecodeError) as err:
            return f"{MANIFEST} is not valid JSON ({err})"
        if not isinstance(meta, dict) or meta.get("digest") != _digest(meta) or not isinstance(meta.get("files"), dict):
            return f"{MANIFEST} does not match its digest (altered)"
        return _file_problem(folder, meta["files"])

    def choose(self, need_best: bool) -> tuple[int, dict] | None:
        """The newest intact checkpoint (with ``need_best``: whose best checkpoint is intact too) and its
        manifest, or None when there is no checkpoint. Each corrupt checkpoint passed over is named in a
        warning; checkpoints but none intact is a :class:`CheckpointError`."""
        steps = self.steps()
        found = []
        for step in reversed(steps):
            problem = self.problem(step)
            if problem is None and need_best:
                best = self.manifest(step).get("best_step")
                if best is not None and best != step:
                    if best not in steps:
                        problem = f"its best checkpoint (step {best}) is missing"
                    elif self.problem(best) is not None:
                        problem = f"its best checkpoint (step {best}) is corrupt: {self.problem(best)}"
            if problem is None:
                if found:
                    warn(f"falling back to checkpoint step {step}, the newest intact one")
                return step, self.manifest(step)
            found.append(f"step {step}: {problem}")
            warn(f"checkpoint {self.path(step)} is corrupt: {problem}")
        if steps:
            raise CheckpointError(
                f"no intact checkpoint in {self.dir} ({'; '.join(found)}): start over with --no-resume "
                "(deletes them) or use a new work directory"
            )
        return None

    def pick(self, which: str, latest_without_best: bool = False) -> int:
        """The step of the ``best`` or ``latest`` intact checkpoint (see :meth:`choose`) of a run.

        A run that never validated has no best checkpoint: an error, or with ``latest_without_best``
        (runs that keep their final state) the latest one.
        """
        if which not in ("best", "latest"):
            raise ValueError(f"which must be 'best' or 'latest', got {which!r}")
        chosen = self.choose(need_best=which == "best")
        if chosen is None:
            raise FileNotFoundError(f"no checkpoint in {self.dir}")
        step, meta = chosen
        if which == "latest":
            return step
        best = meta.get("best_step")
        if best is None:
            if latest_without_best:
                return step
            raise FileNotFoundError(f"{self.dir} has no best checkpoint (the run has not validated yet): use latest")
        return best

    # -- writing (every process calls these, in the same order) ---------------------------------
    def _checkpointer(self) -> ocp.Checkpointer:
        if self._orbax is None:
            self._orbax = ocp.Checkpointer(ocp.StandardCheckpointHandler())
        return self._orbax

    def _discard(self, folder: Path) -> None:
        """Deletes a folder: first renamed out of the way (atomic), then removed."""
        trash = self.dir / f".trash-{folder.name.lstrip('.')}-{uuid.uuid4().hex[:8]}"
        os.replace(folder, trash)
        _at("discarding", int(folder.name[5:]) if folder.name[5:].isdigit() else -1)
        shutil.rmtree(trash, ignore_errors=True)

    def clean(self, after: int | None = None) -> None:
        """Removes interrupted saves and deletions, and (``after``) the checkpoints past a restored step:
        the resumed run writes them again. Process 0; every process waits for it."""
        if is_main() and self.dir.is_dir():
            for p in self.dir.iterdir():
                if p.name.startswith((".pending-", ".trash-")):
                    shutil.rmtree(p, ignore_errors=True)
            if after is not None:
                for step in self.steps():
                    if step > after:
                        self._discard(self.path(step))
                        self._problems.pop(step, None)
        sync("jax_cer:checkpoints:clean")

    def clear(self) -> None:
        """Deletes every checkpoint (a fresh start). Process 0; every process waits for it."""
        if is_main() and self.dir.is_dir():
            for p in list(self.dir.iterdir()):
                if p.is_dir():
                    self._discard(p)
                else:
                    p.unlink()
        self._problems.clear()
        sync("jax_cer:checkpoints:clear")

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Saves ``state`` with ``meta`` (position, ``best``, ``best_step``) as checkpoint ``step``, then rotates."""
        pending = self.dir / f".pending-{step}"
        if is_main():
            shutil.rmtree(pending, ignore_errors=True)
            pending.mkdir(parents=True)
        sync(f"jax_cer:save:{step}:start")
        self._checkpointer().save(pending / "state", args=ocp.args.StandardSave(state))
        if is_main():
            _at("state-written", step)
            files = {rel: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for rel, p in _files(pending).items()}
            record = {"format": FORMAT, **meta, "step": step, "files": files}
            record["digest"] = _digest(record)
            _write_atomic(pending / MANIFEST, json.dumps(record, indent=1, sort_keys=True) + "\n")
            _at("manifest-written", step)
            final = self.path(step)
            if final.exists():  # a checkpoint of an earlier launch that this run passed over
                self._discard(final)
            os.replace(pending, final)
            _fsync_dir(self.dir)
            self._problems[step] = None
            _at("committed", step)
            self._rotate()
        sync(f"jax_cer:save:{step}:end")

    def _rotate(self) -> None:
        steps = self.steps()
        newest = steps[-self.keep :]
        retain = set(newest)
        for step in newest:
            try:
                best = self.manifest(step).get("best_step")
            except (OSError, ValueError):
                continue
            if best is not None:
                retain.add(best)
        for step in steps:
            if step not in retain:
                self._discard(self.path(step))
                self._problems.pop(step, None)
                _at("rotating", step)

    def restore(self, step: int, target: Any) -> Any:
        """The state of checkpoint ``step`` in ``target``'s structure, dtypes and shardings; verified first."""
        problem = self.problem(step)
        if problem is not None:
            raise CheckpointError(f"checkpoint {self.path(step)} is corrupt: {problem}")
        return self._checkpointer().restore(self.path(step) / "state", args=ocp.args.StandardRestore(target))


def read_checkpoint(workdir: str | Path, target: Any, which: str = "latest") -> tuple[Any, dict]:
    """The state (in ``target``'s structure) and manifest of a run's ``latest`` or ``best`` intact checkpoint."""
    store = CheckpointStore(workdir)
    step = store.pick(which)
    return store.restore(step, target), store.manifest(step)


def position_meta(step: int, steps_per_epoch: int, best: float, best_step: int | None) -> dict[str, Any]:
    """A checkpoint's position: the epoch and batch that come next, the step, the best score so far and its step."""
    return {
        "epoch": step // steps_per_epoch,
        "batch": step % steps_per_epoch,
        "step": step,
        "best": best if math.isfinite(best) else None,
        "best_step": best_step,
    }
