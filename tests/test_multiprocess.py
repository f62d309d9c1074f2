"""Training with several processes: ``jax.distributed`` on this machine's CPUs, over loopback.

Every process is a fresh interpreter (``python -m tests.multiprocess``, see ``tests/multiprocess.py``)
with its own forced CPU device count, started with ``subprocess.Popen`` and killed when a test
leaves. The checks:

- 2 processes x 2 devices log the losses of 1 process x 4 devices and of 1 device (``devices=1``),
  through an orbax save by both processes and a restore by both, for a fusion and a text run;
- a process killed with SIGKILL ends its peer (non-zero exit, the dead process named) within the
  heartbeat timeout, leaves intact checkpoints, and a fresh launch on other devices resumes and
  finishes; likewise a process whose step raises.

Tolerance: the losses of different device counts differ by the order of float32 sums only. From
the same state a step on 1, 2 or 4 devices agrees to ~1e-7, but training amplifies the difference:
with the synthetic fusion data at its configured lr 0.05, 1 process x 4 devices drifts from 1 device
to 6e-6 relative at step 6 and 1.4e-5 at step 10 (2 devices: 1e-7), and ~1e-4 after 20 steps. So the
fusion runs here train with lr 0.01 (4 devices vs 1: 2e-7 over 10 steps), the runs are short (at
most 14 steps), and the bound is 1e-5 relative on every logged loss.

The default run has one 2-process test (a single launch); the others are ``slow``.
"""

from __future__ import annotations

import dataclasses
import json
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from jax_cer.training.checkpoints import CheckpointStore
from jax_cer.training.fusion import train
from jax_cer.training.parallel import HEARTBEAT_TIMEOUT_S, Placement
from tests.multiprocess import Child, Job, loss_records, max_relative_difference, read_metrics, run_config, spec

RTOL = 1e-5
TWO_BY_TWO = "4 devices (cpu), 2 processes x 2"

# 15 clips of 100 frames: 8 training clips, 16 windows of 60 frames (hop 40), 4 full batches of 4 an
# epoch; the 7 validation clips have one length (one compiled forward); lr 0.01 (see above)
SMALL_FUSION = {
    "lr": 0.01,
    "synthetic_clips": 15,
    "synthetic_lengths": [100, 100],
    "window": 60,
    "hop": 40,
    "batch_size": 4,
    "log_every": 1,
    "modalities": ["vggish"],
}
# 16 clips: 9 training clips, 18 windows, batches of 4, 4, 4, 4 and 2 (the last one does not split
# over 4 devices and is replicated); 2 epochs, 10 steps, every modality
FUSION = {**SMALL_FUSION, "synthetic_clips": 16, "modalities": ["video", "vggish", "bert"], "epochs": 2}
# synthetic-text: 28 sentences, 7 steps of 4 an epoch, 2 epochs (the packaged MiniLM, LoRA)
TEXT: dict[str, Any] = {}


def _run(kind: str, config: str, overrides: dict[str, Any], workdir: Path, stop_after: int | None = None, **extra):
    return {
        "kind": kind,
        "config": config,
        "overrides": {**overrides, **extra},
        "workdir": str(workdir),
        "stop_after": stop_after,
    }


def _outputs(child: Child) -> list[dict[str, Any]]:
    """The JSON lines process 0 printed (one per run)."""
    return [json.loads(line) for line in child.stdout.read_text().splitlines() if line.startswith("{")]


def _mark(workdir: Path, upto_step: int) -> None:
    """Adds ``"launch": "first"`` to the records of ``metrics.jsonl`` up to ``upto_step``. A resumed
    run keeps those lines as they are and writes the later ones again, so afterwards the mark shows
    where the second launch took over."""
    path = workdir / "metrics.jsonl"
    records = read_metrics(workdir)
    lines = [json.dumps({**r, "launch": "first"} if r["step"] <= upto_step else r) for r in records]
    path.write_text("".join(line + "\n" for line in lines))


def _check_resumed_at(workdir: Path, step: int) -> None:
    for r in read_metrics(workdir):
        first = r.get("launch") == "first"
        later_line = r["step"] > step or "test" in r
        assert first != later_line, f"record {r} (the second launch resumed at step {step})"


def _compare(runs: dict[str, Path]) -> dict[str, float]:
    """The largest relative difference of the logged losses of each pair of runs (same steps required)."""
    names = list(runs)
    losses = {name: loss_records(path) for name, path in runs.items()}
    out = {}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            out[f"{a} vs {b}"] = max_relative_difference(losses[a], losses[b])
    print({"losses": len(losses[names[0]]), **{k: f"{v:.2e}" for k, v in out.items()}})
    return out


def test_two_processes_save_restore_and_log_the_one_device_losses(tmp_path: Path) -> None:
    """2 processes x 2 devices stop after a save at step 2, restore that checkpoint (both processes) and
    finish: the logged losses equal a 1-device run's (here, in this process) within 1e-5 relative.

    One launch (two runs in the same processes) of a small fusion run (4 steps, vggish only, full
    batches): the default run's one multi-process check. Fresh launches, 1 process x 4 devices,
    partial batches and the text model: the slow tests below.
    """
    over = {**SMALL_FUSION, "epochs": 1}
    mp, ref = tmp_path / "2x2", tmp_path / "1x1"
    with Job(tmp_path / "logs") as job:
        children = job.start_processes(
            "2x2",
            2,
            2,
            runs=[_run("fusion", "synthetic-can", over, mp, stop_after=2), _run("fusion", "synthetic-can", over, mp)],
        )
        cfg = dataclasses.replace(run_config("fusion", "synthetic-can", over), devices=1)
        train(cfg, ref, progress=False, placement=Placement(1))
        job.wait(children, timeout=240)
        first, second = _outputs(children[0])
    assert first == {"workdir": str(mp), "step": 2, "stopped": True, "trained": 2, "on": TWO_BY_TWO}
    # resumed at step 2: two steps trained
    assert second == {"workdir": str(mp), "step": 4, "stopped": False, "trained": 2, "on": TWO_BY_TWO}
    assert _outputs(children[1]) == []  # only process 0 prints and writes
    errors = _compare({"2x2": mp, "1x1": ref})
    assert max(errors.values()) <= RTOL, errors
    got, want = read_metrics(mp), read_metrics(ref)
    assert [sorted(r) for r in got] == [sorted(r) for r in want]
    assert [r["step"] for r in got] == [r["step"] for r in want]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "config", "overrides", "stop_after", "steps"),
    [("fusion", "synthetic-can", FUSION, 7, 10), ("text", "synthetic-text", TEXT, 10, 14)],
    ids=["fusion", "text"],
)
def test_two_processes_resumed_equal_four_devices_and_one_device(
    tmp_path: Path, kind: str, config: str, overrides: dict[str, Any], stop_after: int, steps: int
) -> None:
    """2 processes x 2 devices in two launches (the first stops after saving at a step inside the second
    epoch; the second, fresh processes, restores it and finishes) log the losses of an uninterrupted
    run on 1 process x 4 devices and on 1 device, within 1e-5 relative, at the same steps; ``jax-cer
    eval`` on 2 processes scores the best checkpoint as one process does, and as the run did."""
    mp, four, one = tmp_path / "2x2", tmp_path / "1x4", tmp_path / "1x1"
    with Job(tmp_path / "logs") as job:
        reference = job.start_spec(
            "reference",
            spec(runs=[_run(kind, config, overrides, four), _run(kind, config, overrides, one, devices=1)]),
            4,
        )
        first = job.start_processes("first", 2, 2, runs=[_run(kind, config, overrides, mp, stop_after=stop_after)])
        job.wait(first, timeout=400)
        store = CheckpointStore(mp)
        assert stop_after in store.steps()
        assert store.problem(stop_after) is None
        assert store.manifest(stop_after)["step"] == stop_after
        _mark(mp, stop_after)
        second = job.start_processes("second", 2, 2, runs=[_run(kind, config, overrides, mp)])
        job.wait([*second, reference], timeout=400)
        # jax-cer eval restores the best checkpoint in each of 2 processes and scores it as one process does
        scored = {n: tmp_path / f"eval-{n}.json" for n in ("2x2", "1x1")}
        args = ["eval", str(mp), "--which", "best", "--split", "test", "--json"]
        evals = job.start_processes("eval", 2, 2, cli=[*args, str(scored["2x2"])])
        evals.append(job.start_spec("eval-single", spec(cli=[*args, str(scored["1x1"])]), 1))
        job.wait(evals, timeout=300)
    both = [json.loads(scored[n].read_text()) for n in ("2x2", "1x1")]
    assert both[0] == both[1] and "accuracy" in both[0]
    assert both[0] == {k: v for k, v in read_metrics(mp)[-1]["test"].items() if k in both[0]}  # the run's own score
    stopped = {"workdir": str(mp), "step": stop_after, "stopped": True, "trained": stop_after, "on": TWO_BY_TWO}
    finished = {"workdir": str(mp), "step": steps, "stopped": False, "trained": steps - stop_after, "on": TWO_BY_TWO}
    assert _outputs(first[0]) == [stopped]
    assert _outputs(second[0]) == [finished]
    assert [o["on"] for o in _outputs(reference)] == ["4 devices (cpu)", "1 device (cpu)"]
    _check_resumed_at(mp, stop_after)
    errors = _compare({"2x2": mp, "1x4": four, "1x1": one})
    assert [s for s, _ in loss_records(mp)] == list(range(1, steps + 1))
    assert max(errors.values()) <= RTOL, errors
    finals = [read_metrics(w)[-1] for w in (mp, four, one)]
    assert all("test" in f and f["step"] == steps for f in finals), finals


# the killed-peer runs: 4 steps an epoch, a checkpoint at each epoch's end, 30 epochs (long enough
# to be stopped early; the resumed rest takes ~20 s on one process)
LONG_FUSION = [
    *("--set", "epochs=30", "--set", "synthetic_clips=15", "--set", "synthetic_lengths=100,100", "--set", "window=60"),
    *("--set", "hop=40", "--set", "batch_size=4", "--set", "log_every=1", "--set", "modalities=vggish"),
    "--no-progress",
]
LONG_STEPS = 120


def _train_args(workdir: Path, *extra: str) -> list[str]:
    return ["train", "--config", "synthetic-can", "--workdir", str(workdir), *LONG_FUSION, *extra]


def _wait_for_checkpoint(job: Job, children: list[Child], workdir: Path, after: int, timeout: float) -> int:
    """Waits until the run has a checkpoint past step ``after``; returns its step."""
    store, deadline = CheckpointStore(workdir), time.monotonic() + timeout
    while time.monotonic() < deadline:
        ended = [c for c in children if c.returncode is not None]
        assert not ended, "a process ended before the failure:\n" + job.describe(children)
        steps = [s for s in store.steps() if s > after] if store.dir.is_dir() else []
        if steps:
            return steps[-1]
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint past step {after} after {timeout:.0f} s:\n" + job.describe(children))


def _exit_times(children: list[Child], since: float, timeout: float) -> list[float]:
    """Waits for every child to end; returns the seconds from ``since`` to each one's exit (to 0.05 s)."""
    deadline, ended = since + timeout, {}
    while len(ended) < len(children):
        now = time.monotonic()
        for i, c in enumerate(children):
            if i not in ended and c.returncode is not None:
                ended[i] = now - since
        if len(ended) < len(children):
            waiting = [c.name for i, c in enumerate(children) if i not in ended]
            assert now < deadline, f"{waiting} still running {timeout:.0f} s after the failure"
            time.sleep(0.05)
    return [ended[i] for i in range(len(children))]


def _resume_and_finish(job: Job, workdir: Path, chosen: int) -> None:
    """A fresh launch (1 process, 2 devices, ``devices=1``) resumes at checkpoint ``chosen`` and finishes."""
    _mark(workdir, chosen)
    resumed = job.start_spec("resumed", spec(cli=_train_args(workdir, "--set", "devices=1")), 2)
    job.wait([resumed], timeout=300)
    assert "on 1 device (cpu)" in resumed.stdout.read_text()
    _check_resumed_at(workdir, chosen)
    assert [s for s, _ in loss_records(workdir)] == list(range(1, LONG_STEPS + 1))
    assert read_metrics(workdir)[-1]["step"] == LONG_STEPS and "test" in read_metrics(workdir)[-1]


def _intact_checkpoint(workdir: Path, at_least: int) -> int:
    """Every committed checkpoint verifies; returns the one a resumed run chooses (at least ``at_least``)."""
    store = CheckpointStore(workdir)
    assert {s: store.problem(s) for s in store.steps()} == dict.fromkeys(store.steps())
    chosen = store.choose(need_best=True)
    assert chosen is not None and chosen[0] >= at_least, (store.steps(), chosen)
    return chosen[0]


@pytest.mark.slow
def test_a_killed_process_ends_its_peer_and_the_run_resumes(tmp_path: Path) -> None:
    """Process 1 of 2 (x 2 devices) is killed (SIGKILL) once the run has trained and saved: process 0
    exits non-zero within the heartbeat timeout and a margin (90 s), every checkpoint verifies, a fresh
    single-process launch on one device resumes from the newest one and finishes, and process 0's
    stderr names process 1 as the one that stopped.

    Process 0 ends one of two ways: in a collective, at once, with gloo's "Connection closed by
    peer" (which names an address, not a process); elsewhere (e.g. a barrier of the coordination
    service), after the heartbeat timeout, aborted by the coordination service, whose message lists
    the unhealthy tasks ("The following tasks are unhealthy (stopped sending heartbeats):" then "1").
    """
    workdir = tmp_path / "run"
    with Job(tmp_path / "logs") as job:
        children = job.start_processes("train", 2, 2, cli=_train_args(workdir))
        saved = _wait_for_checkpoint(job, children, workdir, after=4, timeout=240)
        killed_at = time.monotonic()
        children[1].proc.send_signal(signal.SIGKILL)
        (seconds,) = _exit_times(children[:1], killed_at, timeout=90)
        survivor = children[0]
        stderr = survivor.stderr.read_text(errors="replace")
        print(f"process 0 exited {seconds:.1f} s after process 1 was killed, code {survivor.returncode}")
        print("its stderr ends:\n" + "\n".join(line[:300] for line in stderr.splitlines()[-6:]))
        assert survivor.returncode != 0, job.describe(children)
        assert seconds <= HEARTBEAT_TIMEOUT_S + 60
        assert children[1].returncode == -signal.SIGKILL
        chosen = _intact_checkpoint(workdir, at_least=saved)
        _resume_and_finish(job, workdir, chosen)
    heartbeats = re.search(r"unhealthy \(stopped sending heartbeats\):\n(\S*task:)?1\n", stderr)
    assert heartbeats or "process 1 of 2" in stderr, "process 0's stderr does not name process 1:\n" + stderr[-2000:]


@pytest.mark.slow
def test_a_process_whose_step_raises_ends_its_peer_and_the_run_resumes(tmp_path: Path) -> None:
    """Process 1's sixth step raises: it reports the error naming itself and exits with code 2; process 0
    stops within seconds, naming process 1 and its error, with code 3; the checkpoints verify and a
    fresh launch resumes and finishes."""
    workdir = tmp_path / "run"
    with Job(tmp_path / "logs") as job:
        children = job.start_processes("train", 2, 2, cli=_train_args(workdir), raise_at={"process": 1, "step": 6})
        start = time.monotonic()
        ended = _exit_times(children, start, timeout=300)
        err = [c.stderr.read_text(errors="replace") for c in children]
        print(f"exit codes {[c.returncode for c in children]}, {ended[0] - ended[1]:.1f} s between the exits")
        for c, e in zip(children, err, strict=True):
            print(f"{c.name} stderr ends:\n" + "\n".join(line[:300] for line in e.splitlines()[-3:]))
        failure = "process 1 of 2 failed: injected failure at training step 6 of this launch"
        assert children[1].returncode == 2, job.describe(children)
        assert f"error: {failure}" in err[1]
        assert children[0].returncode == 3, job.describe(children)
        assert f"error: stopping, because {failure}" in err[0]
        assert ended[0] - ended[1] <= 30
        chosen = _intact_checkpoint(workdir, at_least=4)
        _resume_and_finish(job, workdir, chosen)
