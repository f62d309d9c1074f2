"""The ``jax-cer`` command line.

``jax-cer repro``  checks every model and the SO optimizer against the golden reference files and
                   prints, per component, its max error, the tolerance, pass/fail and time (exit 1
                   on failure).
``jax-cer bench``  times the models (JAX against the PyTorch reference) into a results JSON and
                   regenerates BENCHMARKS.md.
``jax-cer train``  trains a named configuration (checkpoints, metrics log, resume): a fusion model,
                   or a text model on MELD (``meld-text-*``, ``meld-fewshot-*``).
``jax-cer eval``   scores a training run's checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def _fmt_err(x: float) -> str:
    return "nan" if math.isnan(x) else ("inf" if math.isinf(x) else f"{x:.2e}")


def _print_table(results, verbose: bool) -> None:
    header = f"{'case':<14} {'check':<12} {'worst key':<46} {'max err':>9} {'tol':>8}  {'status':<6} {'time':>7}"
    print(header)
    print("-" * len(header))
    for r in results:
        key = r.key if len(r.key) <= 46 else "..." + r.key[-43:]
        status = "PASS" if r.passed else "FAIL"
        print(
            f"{r.case:<14} {r.check:<12} {key:<46} {_fmt_err(r.max_error):>9} {r.tolerance:>8.0e}  "
            f"{status:<6} {r.seconds:>6.1f}s"
        )
        if (verbose or not r.passed) and r.detail:
            print(f"{'':<14} {'':<12} {r.detail}")


def cmd_repro(args: argparse.Namespace) -> int:
    import jax

    from jax_cer.parity import golden
    from jax_cer.parity.tolerances import TOLERANCES

    golden_dir = Path(args.golden_dir) if args.golden_dir else golden.default_golden_dir()
    manifest = golden.load_manifest(golden_dir)
    only = [c for item in (args.only or []) for c in item.split(",") if c]
    run_so = not only or "so" in only
    run_text = not only or "text" in only
    model_cases = [c for c in only if c not in ("so", "text")]
    unknown = [c for c in model_cases if c not in manifest["cases"]]
    if unknown:
        print(f"unknown golden case(s) {unknown}; cases are {[*manifest['cases'], 'so', 'text']}", file=sys.stderr)
        return 2
    dev = jax.devices()[0]
    n_cases = (len(model_cases) if only else len(manifest["cases"])) + run_so + run_text
    print(f"jax-cer repro: {n_cases} golden cases from {golden_dir}")
    print(f"device: {dev.platform} ({dev.device_kind}), jax {jax.__version__}, matmul precision: highest (fp32)")
    print(
        f"reference: {manifest.get('producer', {}).get('torch', '?')} torch, made by `{manifest.get('command', '?')}`"
    )
    print()
    t0 = time.perf_counter()

    def progress(name):
        print(f"  running {name} ...", file=sys.stderr, flush=True)

    results = []
    if model_cases or not only:
        results += golden.run_all(model_cases, golden_dir, layers=not args.no_layers, progress=progress)
    if run_so:
        from jax_cer.parity import so_trajectory

        progress("so (optimizer trajectory)")
        results += so_trajectory.check(golden_dir / "so")
    if run_text:
        from jax_cer.parity import text_golden

        progress("text (MiniLM encoder and LoRA classifier)")
        results += text_golden.check(golden_dir / "text")
    print()
    _print_table(results, args.verbose)
    failed = [r for r in results if not r.passed]
    total = time.perf_counter() - t0
    print()
    print(
        f"{len(results) - len(failed)}/{len(results)} checks passed in {total:.1f}s"
        + (f"; FAILED: {len(failed)}" if failed else "")
    )
    if args.json:
        out = {
            "device": f"{dev.platform}:{dev.device_kind}",
            "jax": jax.__version__,
            "python": platform.python_version(),
            "golden_dir": str(golden_dir),
            "tolerances": dict(TOLERANCES),
            "results": [r.as_dict() for r in results],
            "passed": not failed,
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")
    return 1 if failed else 0


def cmd_bench(args: argparse.Namespace) -> int:
    from jax_cer.bench import runner

    return runner.main(args)


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
            "with a LoRA classifier (logits <= 1e-5, one clip + SGD step <= 1e-4 relative). Golden files come "
            "from the PyTorch references: repro/make_golden.py, repro/make_so_golden.py and "
            "repro/make_text_golden.py."
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


def _add_bench(sub) -> None:
    b = sub.add_parser(
        "bench",
        help=(
            "time forward and training step of each model, JAX vs the PyTorch reference; "
            "writes results JSON and BENCHMARKS.md"
        ),
        description=(
            "Runs the benchmark cases (pytest -m benchmark over tests/bench: fusion models against the PyTorch "
            "reference, attention against jax.nn.dot_product_attention) on this machine and writes one "
            "pytest-benchmark JSON under repro/results/<machine>/, runs the parity checks (jax-cer repro) into "
            "the same folder and the kernels' ahead-of-time compile check into repro/results/aot/, then "
            "regenerates BENCHMARKS.md from every results file. Needs torch (the reference) and a source "
            "checkout. Rounds: $JAX_CER_BENCH_ROUNDS (default 8 on CPU, 20 on GPU); -k selects cases."
        ),
    )
    b.add_argument("-k", metavar="EXPR", help="only benchmark cases matching this pytest -k expression")
    b.add_argument(
        "--results-dir", metavar="DIR", default=str(REPO_ROOT / "repro" / "results"), help="where result JSONs go"
    )
    b.add_argument("--report-only", action="store_true", help="only regenerate BENCHMARKS.md from existing results")
    b.add_argument("--no-report", action="store_true", help="do not regenerate BENCHMARKS.md")
    b.add_argument("--no-repro", action="store_true", help="do not also run and record the parity checks")
    b.add_argument(
        "--no-aot", action="store_true", help="do not recompile the kernels for sm_80/sm_90 (resource table)"
    )
    b.set_defaults(func=cmd_bench)


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
            "encoder (default all-MiniLM-L6-v2) on MELD's transcripts read from --data-dir (default "
            "../shared/data/meld), select on dev weighted F1 and score the kept model on test."
        ),
        epilog=(
            "examples:\n"
            "  jax-cer train --config synthetic-can\n"
            "  jax-cer train --config c-expr-db-lfan --manual-dir /data/cer --backbone /models/res50_ir_0.887.pth "
            "--set fold=2\n"
            "  jax-cer train --config bah-jmt --manual-dir /data/cer --backbone /models/res50_ir_0.887.pth "
            "--set supervision=global\n"
            "  jax-cer train --config meld-text-lora --set epochs=3\n"
            "  jax-cer train --config meld-fewshot-so --set shots=16 --set seed=2"
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
        help="where the built dataset goes (default ~/tensorflow_datasets); for text runs, MELD's CSV folder; "
        "--set data_dir",
    )
    t.add_argument("--backbone", metavar="FILE", help="IR-50 weights (res50_ir_0.887.pth); --set backbone")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)


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
    e.set_defaults(func=cmd_eval)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="jax-cer",
        description=(
            "JAX ports of the compound multimodal emotion recognition models, checked against the "
            "original PyTorch code."
        ),
    )
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_add_repro, _add_bench, _add_train, _add_eval):
        add(sub)
    return p


def _config_from_args(args: argparse.Namespace):
    import dataclasses

    from jax_cer.training.fusion import CONFIGS
    from jax_cer.training.text import TEXT_CONFIGS

    every = {**CONFIGS, **TEXT_CONFIGS}
    if args.config not in every:
        raise SystemExit(f"unknown configuration {args.config!r}; choose one of {sorted(every)}")
    cfg = every[args.config]
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    changes = {}
    for flag, key in (("manual_dir", "manual_dir"), ("data_dir", "data_dir"), ("backbone", "backbone")):
        if getattr(args, flag, None):
            if key not in fields:
                raise SystemExit(f"--{flag.replace('_', '-')} does not apply to the text configuration {args.config}")
            changes[key] = getattr(args, flag)
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE with KEY one of {sorted(fields)}")
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
            raise SystemExit(f"--set {item!r}: {value!r} is not a valid {type(current).__name__}") from None
    try:
        return dataclasses.replace(cfg, **changes)
    except ValueError as err:
        raise SystemExit(f"invalid configuration: {err}") from None


def cmd_train(args: argparse.Namespace) -> int:
    from jax_cer.training.fusion import CONFIGS, train
    from jax_cer.training.text import TEXT_CONFIGS

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
    print(f"jax-cer train: {args.config} -> {workdir}", flush=True)
    if args.config in TEXT_CONFIGS:
        return _train_text(cfg, workdir, args)
    try:
        out = train(cfg, workdir, resume=not args.no_resume, progress=not args.no_progress)
    except KeyboardInterrupt:
        return 130
    except (ValueError, FileNotFoundError, FloatingPointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    val = out["val"]
    shown = ", ".join(f"{k} {val[k]:.4f}" for k in ("weighted_f1", "accuracy", "ap") if k in val)
    print(f"done: {out['step']} steps; validation {shown}; best {out['select']} {out['best']:.4f}")
    test = out["test"]
    shown = ", ".join(f"{k} {test[k]:.4f}" for k in ("weighted_f1", "accuracy", "ap", out["select"]) if k in test)
    print(f"best checkpoint on the test split: {shown}")
    print(f"checkpoints in {workdir / 'checkpoints'}; metrics log {workdir / 'metrics.jsonl'}")
    return 0


def _train_text(cfg, workdir: Path, args: argparse.Namespace) -> int:
    from jax_cer.training.text import train_text

    try:
        out = train_text(cfg, workdir, resume=not args.no_resume, progress=not args.no_progress)
    except KeyboardInterrupt:
        return 130
    except (ValueError, KeyError, FileNotFoundError, FloatingPointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"done: {out['step']} steps; {out['trainable_params']:,} of {out['params']:,} parameters trained")
    for split in ("val", "test"):
        if out[split]:
            r = out[split]
            print(f"kept model (step {out['kept_step']}) on {split}: accuracy {r['accuracy']:.4f}, "
                  f"weighted F1 {r['weighted_f1']:.4f}")  # fmt: skip
    print(f"checkpoints in {workdir / 'checkpoints'}; metrics log {workdir / 'metrics.jsonl'}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from jax_cer.training.fusion import evaluate_checkpoint
    from jax_cer.training.text import evaluate_text_checkpoint

    try:
        cfg_file = Path(args.workdir) / "config.json"
        text = cfg_file.is_file() and json.loads(cfg_file.read_text()).get("kind") == "text"
        run = evaluate_text_checkpoint if text else evaluate_checkpoint
        res = run(args.workdir, args.which, args.split, progress=True)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for k, v in res.items():
        print(f"{k:<32} {v:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
