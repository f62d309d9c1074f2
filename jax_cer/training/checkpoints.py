"""A run's files in its work directory, for every kind of run::

    <workdir>/config.json        the configuration (a resumed run must match it)
    <workdir>/metrics.jsonl      one JSON line per logged step, per validation and for the final scores
    <workdir>/checkpoints/latest orbax CheckpointManager: the newest states (periodic and per validation)
    <workdir>/checkpoints/best   orbax CheckpointManager: the state with the best validation metric

A checkpoint holds the state (any pytree: parameters, statistics, optimizer state) and a JSON
metadata item with the position (``epoch``, ``batch``, ``step``) and the best score so far. Orbax
writes a checkpoint into a temporary folder and renames it when complete, so a crash during a
save leaves the previous checkpoint as the newest restorable one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp


def prepare_workdir(workdir: str | Path, cfg_json: dict, resume: bool) -> Path:
    """Creates the work directory and writes ``config.json``; resuming under another configuration is an error."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cfg_path = workdir / "config.json"
    if cfg_path.is_file() and resume and json.loads(cfg_path.read_text()) != cfg_json:
        raise ValueError(
            f"{cfg_path} holds a different configuration; use a new work directory or --no-resume to start over"
        )
    cfg_path.write_text(json.dumps(cfg_json, indent=1) + "\n")
    return workdir


class MetricsLog:
    """``metrics.jsonl``: appended line by line; on resume, lines after the restored step (and the
    final test record) are dropped."""

    def __init__(self, path: Path, upto_step: int | None):
        self.path = path
        lines = path.read_text().splitlines() if path.is_file() else []
        if upto_step is None:
            lines = []
        else:
            # the final test record is written again when the run ends
            lines = [ln for ln in lines if ln.strip() and json.loads(ln)["step"] <= upto_step and "test" not in ln]
        path.write_text("".join(ln + "\n" for ln in lines))

    def write(self, record: dict) -> None:
        """Appends one record as a JSON line (keys sorted)."""
        with self.path.open("a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")


def checkpoint_managers(workdir: Path, keep: int) -> tuple[ocp.CheckpointManager, ocp.CheckpointManager]:
    """The ``latest`` (the ``keep`` newest) and ``best`` (the highest ``score`` metric) managers of a run."""
    latest = ocp.CheckpointManager(
        (Path(workdir) / "checkpoints" / "latest").absolute(),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
    )
    best = ocp.CheckpointManager(
        (Path(workdir) / "checkpoints" / "best").absolute(),
        options=ocp.CheckpointManagerOptions(max_to_keep=1, best_fn=lambda m: m["score"], best_mode="max", create=True),
    )
    return latest, best


def save_checkpoint(
    manager: ocp.CheckpointManager, step: int, state: Any, meta: dict, metrics_: dict | None = None
) -> None:
    """Saves ``state`` and the JSON ``meta`` as ``step`` (asynchronously; ``metrics_`` feeds ``best_fn``)."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    manager.save(step, args=args, metrics=metrics_, force=True)


def restore(manager: ocp.CheckpointManager, target: Any, step: int | None = None) -> tuple[Any, dict]:
    """The state (restored into ``target``'s structure and dtypes) and metadata of checkpoint ``step`` (or newest)."""
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {manager.directory}")
    out = manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore())
    )
    return out["state"], out["meta"]
