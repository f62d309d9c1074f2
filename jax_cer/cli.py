"""The ``jax-cer`` command line.

``jax-cer repro``  checks every model and the SO optimizer against the golden reference files and
                   prints, per component, its max error, the tolerance, pass/fail and time (exit 1
                   on failure).
``jax-cer bench``  runs the benchmark cases (JAX against the PyTorch reference, attention, SO) and
                   writes one result file (default ./jax-cer-results/<machine>/).
``jax-cer report`` turns result folders into a markdown report with plots.
``jax-cer train``  trains a named configuration (checkpoints, metrics log, resume): a fusion model,
                   or a text model on MELD (``meld-text-*``, ``meld-fewshot-*``).
``jax-cer eval``   scores a training run's checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import traceback
from pathlib import Path

from jax_cer.bench import report, runner
from jax_cer.bench.load import load_files
from jax_cer.parity.repro import run_repro
from jax_cer.training.checkpoints import CheckpointError
from jax_cer.training.configs import CONFIGS, TEXT_CONFIGS, RunConfig, TextTrainConfig, read_run_config
from jax_cer.training.fusion import evaluate_checkpoint, train
from jax_cer.training.parallel import Placement, fail, initialize_processes, is_main, report_failure
from jax_cer.training.text import evaluate_text_checkpoint, train_text

RUN_ERRORS = (ValueError, KeyError, OSError, FloatingPointError, CheckpointError)
"""What a training or evaluation run reports as one line ``jax-cer train: error: ...`` (exit 2) instead of
a traceback: bad configuration values, missing or damaged files, a diverged loss. Anything else is an
internal error and keeps its traceback."""


class UsageError(Exception):
    """A mistake in the command line or in the files it names: :func:`main` prints it as one line,
    ``jax-cer <command>: error: <message>``, and exits with status 2 (as argparse does)."""


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (the usage is one ``--help`` away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def cmd_repro(args: argparse.Namespace) -> int:
    """``jax-cer repro``: see :func:`jax_cer.parity.repro.run_repro`."""
    return run_repro(
        args.only, golden_dir=args.golden_dir, layers=not args.no_layers, verbose=args.verbose, json_path=args.json
    )


def cmd_bench(args: argparse.Namespace) -> int:
    """``jax-cer bench``: see :func:`jax_cer.bench.runner.run`."""
    return runner.run(k=args.k, rounds=args.rounds, out=args.out)


def cmd_report(args: argparse.Namespace) -> int:
    """``jax-cer report``: see :func:`jax_cer.bench.report.write`."""
    out = Path(args.out)
    plots = Path(args.plots) if args.plots else out.parent / "plots"
    try:
        files = load_files([Path(d) for d in args.results])
        if not files:
            raise UsageError(f"no result files under {', '.join(args.results)}")
        text = report.render_files(files, args.notes, out.parent, plots)
    except (OSError, ValueError, KeyError) as err:
        raise UsageError(str(err)) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out} from {len(files)} result files; plots in {plots}")
    return 0


def _add_repro(sub) -> None:
    r = sub.add_parser(
        "repro",
        help="check the models and the SO optimizer against the golden reference files (exit 1 on failure)",
        description=(
            "Runs every golden check: per-layer forward (<= 1e-5), end-to-end forward (<= 1e-4), gradients "
            "of a per-frame cross-entropy w.r.t. inputs and weights (<= 1e-4 relative) and training-mode "
            "BatchNorm statistics, in fp32 with full-precision matmuls, on the default JAX device (GPU if "
            "present); and the SO optimizer's 32-step trajectory (supports exact, parameters and moments "
            "<= 1e-6); and the text encoder (all-MiniLM-L6-v2: hidden states and sentence embeddings <= 1e-5) "
            "with a LoRA classifier (logits <= 1e-5, one clip + SGD step <= 1e-4 relative). The golden files ship "
            "with the package (--golden-dir or $JAX_CER_GOLDEN point elsewhere); the source repository's "
            "repro/make_golden.py, repro/make_so_golden.py and repro/make_text_golden.py regenerate them from the "
            "PyTorch references. Exit 0 when every check passes, 1 on a failure (a damaged golden file fails its "
            "case), 2 for an unknown case or a golden folder that cannot be read. The same checks run as pytest "
            "items with `pytest --jax-cer-repro [--jax-cer-cases CASES]`."
        ),
    )
    r.add_argument(
        "--only",
        action="append",
        metavar="CASES",
        help="comma-separated case names (e.g. can,jmt_faithful; 'so' is the optimizer trajectory, 'text' the text "
        "encoder and LoRA classifier); repeatable",
    )
    r.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    r.add_argument(
        "--golden-dir",
        metavar="DIR",
        help="golden folder (default: the files shipped in the package, or $JAX_CER_GOLDEN)",
    )
    r.add_argument("--no-layers", action="store_true", help="skip the per-layer checks (end-to-end and gradients only)")
    r.add_argument("-v", "--verbose", action="store_true", help="print each check's detail line")
    r.set_defaults(func=cmd_repro)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of rounds")
    return value


def _add_bench(sub) -> None:
    b = sub.add_parser(
        "bench",
        help="time the models (JAX vs the PyTorch reference), attention and SO; writes one result file",
        description=(
            "Runs the benchmark cases that ship with the package (jax_cer.bench.cases: each fusion model's "
            "forward and training step and the training loop against the PyTorch reference, the text encoder "
            "against transformers, flash_attention against jax.nn.dot_product_attention, SO against "
            "optax.adam) in a pytest subprocess, and writes one pytest-benchmark JSON, bench-<UTC time>.json, "
            "into --out; nothing else is written. PyTorch cases skip, saying so, where torch is not installed. "
            "Turn result folders into a report with `jax-cer report`."
        ),
        epilog=(
            "examples:\n"
            "  jax-cer bench                                # everything, each case's default rounds\n"
            '  jax-cer bench -k "forward and tcn" --rounds 1  # a quick check of one model\n'
            "  jax-cer bench -k attention --out results/my-gpu"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    b.add_argument("-k", metavar="EXPR", help="only the cases matching this pytest -k expression (e.g. 'so', 'text')")
    b.add_argument(
        "--rounds",
        type=_positive_int,
        metavar="N",
        help="time every case N rounds instead of its default (also $JAX_CER_BENCH_ROUNDS). Fewer rounds than "
        "the default make a quick run, which the report shows only where no full run measured the row, marked",
    )
    b.add_argument(
        "--out",
        metavar="DIR",
        help="folder for the result file (default ./jax-cer-results/<machine>/ in the working folder)",
    )
    b.set_defaults(func=cmd_bench)


def _add_report(sub) -> None:
    r = sub.add_parser(
        "report",
        help="turn benchmark and parity result folders into a markdown report with plots",
        description=(
            "Reads every result file under the given folders (recursively: a machine's folder from jax-cer bench "
            "--out, or a folder of machine folders), groups them by the machine recorded in the files, and writes "
            "one markdown report: machines, an across-machines table of ratios, the models, training loops, "
            "attention, kernel checks, SO, text models and parity. Each row comes from the newest full run that "
            "measured it; a row only a quick run (--rounds below the default) measured is marked with a dagger. "
            "Plots (matplotlib, pip install 'jax-cer[bench]'; left out with a note without it) are written as PNG "
            "and SVG into --plots and linked relative to the markdown."
        ),
        epilog=(
            "examples:\n"
            "  jax-cer report jax-cer-results      # -> ./jax-cer-report/BENCHMARKS.md, ./jax-cer-report/plots/\n"
            "  jax-cer report repro/results --out BENCHMARKS.md --plots repro/results/plots \\\n"
            "      --notes repro/benchmark_notes.md   # the source repository's BENCHMARKS.md"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("results", nargs="+", metavar="DIR", help="result folders (searched recursively)")
    r.add_argument(
        "--out",
        metavar="FILE",
        default=str(report.DEFAULT_OUT),
        help=f"the markdown file to write (default ./{report.DEFAULT_OUT.as_posix()} in the working folder)",
    )
    r.add_argument(
        "--plots",
        metavar="DIR",
        help="folder for the plots' PNG and SVG files (default: plots/ beside --out)",
    )
    r.add_argument(
        "--notes",
        metavar="FILE",
        help="markdown with hand-written analysis, copied in as the Notes section (only when given)",
    )
    r.set_defaults(func=cmd_report)


def _add_train(sub) -> None:
    t = sub.add_parser(
        "train",
        help="train a fusion or text model (progress, checkpoints, metrics log; resumes where it stopped)",
        description=(
            "Trains a named configuration into a work directory: config.json, metrics.jsonl (loss per logged "
            "step, validation metrics per epoch), orbax checkpoints in checkpoints/latest and checkpoints/best "
            "(best by the dataset's validation metric: C-EXPR-DB frame weighted F1, MELD video weighted F1, BAH "
            "AP). Running the same command again resumes from the newest checkpoint and continues exactly as an "
            "uninterrupted run. Recipe: per-frame cross-entropy, SGD with Nesterov momentum and the original step "
            "schedule (or adamw / so), windows of 300 frames with hop 200. The real datasets are built once from "
            "--manual-dir (the original repos' layout) into --data-dir; frames need the IR-50 weights (--backbone). "
            "Text configurations (meld-text-full/lora/so, meld-fewshot-*, synthetic-text) fine-tune a BERT-family "
            "encoder (default all-MiniLM-L6-v2) on MELD's transcripts read from --data-dir (or $JAX_CER_MELD_DIR: "
            "the folder of train/dev/test_sent_emo.csv), select on dev weighted F1 and score the kept model on test. "
            "Every local device takes part (data parallelism: the batch is split, the parameters replicated; "
            "--set devices=1 for one); several hosts run one process each (--coordinator, --num-processes, "
            "--process-id). Every checkpoint carries checksums, verified at each restore; a corrupt one is named and "
            "the run falls back to the previous intact one."
        ),
        epilog=(
            "examples:\n"
            "  jax-cer train --config synthetic-can\n"
            "  jax-cer train --config c-expr-db-lfan --manual-dir /data/cer --backbone /models/res50_ir_0.887.pth "
            "--set fold=2\n"
            "  jax-cer train --config bah-jmt --manual-dir /data/cer --backbone /models/res50_ir_0.887.pth "
            "--set supervision=global\n"
            "  jax-cer train --config meld-text-lora --set epochs=3\n"
            "  jax-cer train --config meld-fewshot-so --set shots=16 --set seed=2\n"
            "  jax-cer train --config meld-text-lora --workdir /shared/run --coordinator host0:9876 --num-processes 2 "
            "--process-id 0   # and --process-id 1 on the second host"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("--config", default="synthetic-can", help="named configuration (see --list); default synthetic-can")
    t.add_argument("--workdir", metavar="DIR", help="work directory (default: runs/<config>)")
    t.add_argument("--list", action="store_true", help="list the named configurations and exit")
    t.add_argument("--no-resume", action="store_true", help="start over, deleting the work directory's checkpoints")
    t.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a configuration field, e.g. --set epochs=10 --set optimizer=adamw; repeatable",
    )
    t.add_argument(
        "--manual-dir", metavar="DIR", help="the dataset's folder (folds/ and <DS>/features/); --set manual_dir"
    )
    t.add_argument(
        "--data-dir",
        metavar="DIR",
        help="where the built dataset goes (default ~/tensorflow_datasets); for text runs, MELD's CSV folder "
        "(default $JAX_CER_MELD_DIR); --set data_dir",
    )
    t.add_argument("--backbone", metavar="FILE", help="IR-50 weights (res50_ir_0.887.pth); --set backbone")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_processes(t)
    t.set_defaults(func=cmd_train)


def _add_processes(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "several hosts",
        "one process per host, every process with the same command and work directory (a shared file "
        "system) except --process-id; under SLURM's srun or Open MPI's mpirun the three flags may be omitted",
    )
    g.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0 (jax.distributed coordinator)")
    g.add_argument("--num-processes", type=int, metavar="N", help="how many processes take part")
    g.add_argument("--process-id", type=int, metavar="I", help="this process's index, 0..N-1")


def _add_eval(sub) -> None:
    e = sub.add_parser("eval", help="score a training run's best (or latest) checkpoint with the papers' metrics")
    e.add_argument("workdir", help="the work directory of a jax-cer train run")
    e.add_argument("--which", choices=("best", "latest"), default="best", help="which checkpoint (default best)")
    e.add_argument(
        "--split",
        choices=("val", "test"),
        default="val",
        help="which split to score (default val; on C-EXPR-DB test is val, as the original protocol; MELD: dev/test)",
    )
    e.add_argument("--json", metavar="PATH", help="also write the metrics as JSON to PATH")
    _add_processes(e)
    e.set_defaults(func=cmd_eval)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="jax-cer",
        description=(
            "JAX ports of the compound multimodal emotion recognition models, checked against the "
            "original PyTorch code."
        ),
    )
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_add_repro, _add_bench, _add_report, _add_train, _add_eval):
        add(sub)
    return p


def _config_from_args(args: argparse.Namespace) -> RunConfig:
    """The named configuration with the flags --manual-dir, --data-dir, --backbone and --set applied."""
    every = {**CONFIGS, **TEXT_CONFIGS}
    if args.config not in every:
        raise UsageError(f"unknown configuration {args.config!r}; choose one of {sorted(every)}")
    cfg = every[args.config]
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    changes = {}
    for flag, key in (("manual_dir", "manual_dir"), ("data_dir", "data_dir"), ("backbone", "backbone")):
        if getattr(args, flag, None):
            if key not in fields:
                raise UsageError(f"--{flag.replace('_', '-')} does not apply to the text configuration {args.config}")
            changes[key] = getattr(args, flag)
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise UsageError(f"--set {item!r}: expected KEY=VALUE with KEY one of {sorted(fields)}")
        current = getattr(cfg, key)
        try:
            if isinstance(current, bool):
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(value)
                changes[key] = value.lower() in ("true", "1")
            elif isinstance(current, tuple):
                changes[key] = tuple(type(current[0])(v) for v in value.split(","))
            else:
                changes[key] = type(current)(value)
        except ValueError:
            raise UsageError(f"--set {item!r}: {value!r} is not a valid {type(current).__name__}") from None
    try:
        return dataclasses.replace(cfg, **changes)
    except ValueError as err:
        raise UsageError(f"invalid configuration: {err}") from None


def cmd_train(args: argparse.Namespace) -> int:
    """``jax-cer train``: lists the configurations, or trains (resumes) one and prints its final scores."""
    if args.list:
        for name, cfg in CONFIGS.items():
            print(
                f"{name:<22} model={cfg.model:<4} dataset={cfg.dataset:<9} optimizer={cfg.optimizer:<5} "
                f"epochs={cfg.epochs:<4} batch={cfg.batch_size:<2} window={cfg.window}/{cfg.hop} "
                f"select={cfg.select_metric()}"
            )
        for name, cfg in TEXT_CONFIGS.items():
            budget = f"steps={cfg.steps}" if cfg.steps else f"epochs={cfg.epochs}"
            print(
                f"{name:<22} text {cfg.method:<4} dataset={cfg.dataset:<9} optimizer={cfg.resolved_optimizer():<5} "
                f"lr={cfg.lr:g} {budget} batch={cfg.batch_size} shots={cfg.shots or 'all'} select={cfg.select}"
            )
        return 0
    cfg = _config_from_args(args)
    workdir = Path(args.workdir or Path("runs") / args.config)
    try:
        several = initialize_processes(args.coordinator, args.num_processes, args.process_id)
        placement = Placement(cfg.devices)
    except ValueError as err:
        raise UsageError(str(err)) from None
    if is_main():
        print(f"jax-cer train: {args.config} -> {workdir} on {placement.describe()}", flush=True)
    trainer = train_text if isinstance(cfg, TextTrainConfig) else train
    try:
        out = trainer(cfg, workdir, resume=not args.no_resume, progress=not args.no_progress, placement=placement)
    except KeyboardInterrupt:
        return 130
    except RUN_ERRORS as err:
        if several:
            report_failure(err)  # exits
        raise UsageError(str(err)) from None
    except Exception as err:
        if several:
            traceback.print_exc()
            fail(err)  # exits, naming the process at fault
        raise
    if not is_main():
        return 0
    if isinstance(cfg, TextTrainConfig):
        _print_text(out)
    else:
        _print_fusion(out)
    print(f"checkpoints in {workdir / 'checkpoints'}; metrics log {workdir / 'metrics.jsonl'}")
    return 0


def _print_fusion(out: dict) -> None:
    val = out["val"]
    shown = ", ".join(f"{k} {val[k]:.4f}" for k in ("weighted_f1", "accuracy", "ap") if k in val)
    shown = f"; last validation {shown}" if shown else ""  # a finished run launched again validates nothing
    print(f"done: {out['step']} steps{shown}; best {out['select']} {out['best']:.4f}")
    test = out["test"]
    names = dict.fromkeys(("weighted_f1", "accuracy", "ap", out["select"]))  # the selection metric once
    shown = ", ".join(f"{k} {test[k]:.4f}" for k in names if k in test)
    print(f"best checkpoint on the test split: {shown}")


def _print_text(out: dict) -> None:
    print(f"done: {out['step']} steps; {out['trainable_params']:,} of {out['params']:,} parameters trained")
    for split in ("val", "test"):
        if out[split]:
            r = out[split]
            print(f"kept model (step {out['kept_step']}) on {split}: accuracy {r['accuracy']:.4f}, "
                  f"weighted F1 {r['weighted_f1']:.4f}")  # fmt: skip


def cmd_eval(args: argparse.Namespace) -> int:
    """``jax-cer eval``: scores a run's checkpoint, the fusion or the text way as its ``config.json`` says.

    With several processes each scores the checkpoint whole on one of its devices; process 0 prints.
    """
    try:
        several = initialize_processes(args.coordinator, args.num_processes, args.process_id)
    except ValueError as err:
        raise UsageError(str(err)) from None
    try:
        text = isinstance(read_run_config(args.workdir), TextTrainConfig)
        run = evaluate_text_checkpoint if text else evaluate_checkpoint
        res = run(args.workdir, args.which, args.split, progress=is_main())
    except RUN_ERRORS as err:
        if several:
            report_failure(err)  # exits
        raise UsageError(str(err)) from None
    if is_main():
        for k, v in res.items():
            print(f"{k:<32} {v:.4f}")
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """The ``jax-cer`` command: exit 0 on success, 1 when a check fails (``repro``), 2 for a user error
    (one line on stderr, no traceback), 130 when interrupted; an internal error keeps its traceback."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UsageError as err:
        print(f"jax-cer {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
