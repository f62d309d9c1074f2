"""The MELD text-only results: full-data and few-shot runs of the textualized classifier.

    python -m repro.text_meld                      # everything (about 1 h on 2 CPU cores)
    python -m repro.text_meld --part full          # full fine-tuning, LoRA and SO on the full training set
    python -m repro.text_meld --part fewshot       # 4/8/16 shots x seeds 0-2 x full/LoRA/SO, same step budget
    python -m repro.text_meld --smoke              # a tiny version (CI): 2 steps per run on 32 utterances

Each run is ``jax_cer.training.text.train_text`` on a named configuration (``meld-text-*`` and
``meld-fewshot-*``, see ``jax-cer train --list``) in ``<workdir>/<run>``; a finished run leaves
``result.json`` there and is not run again. The results go to ``--out`` (default
``repro/results/text/meld-<machine>.json``): every run's dev and test accuracy and weighted F1,
and for the few-shot grid the mean and standard deviation over seeds. ``jax-cer report`` puts them
into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

from jax_cer import metrics
from jax_cer.bench.sections import fewshot_summary
from jax_cer.machine import machine_record, machine_slug
from jax_cer.text.textualize import MELD_TEXT_LABELS
from jax_cer.training.text import TEXT_CONFIGS, train_text
from jax_cer.training.text_data import meld_dir, meld_text_splits

REPO = Path(__file__).resolve().parent.parent
METHODS = ("full", "lora", "so")


def _machine() -> str:
    return machine_slug(machine_record())


def run_one(name: str, cfg, workdir: Path, progress: bool) -> dict:
    done = workdir / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    t0 = time.perf_counter()
    out = train_text(cfg, workdir, progress=progress)
    record = {
        "run": workdir.name,
        "config": name,
        "method": cfg.method,
        "optimizer": cfg.resolved_optimizer(),
        "shots": cfg.shots,
        "seed": cfg.seed,
        "steps": out["step"],
        "kept_step": out["kept_step"],
        "select": cfg.select,
        "trainable_params": out["trainable_params"],
        "params": out["params"],
        "train_examples": out["train_examples"],
        "val": out["val"],
        "test": out["test"],
        "wall_s": round(time.perf_counter() - t0, 1),
        "settings": dataclasses.asdict(cfg),
    }
    done.write_text(json.dumps(record, indent=1) + "\n")
    return record


def majority_baseline(data_dir: str | None) -> dict:
    """Test accuracy and weighted F1 of always predicting the training split's most frequent class."""
    splits = meld_text_splits(meld_dir(data_dir or ""))
    train, test = splits["train"][1], splits["test"][1]
    c = int(np.bincount(train).argmax())
    pred = np.full_like(test, c)
    return {
        "class": MELD_TEXT_LABELS[c],
        "accuracy": metrics.accuracy(test, pred),
        "weighted_f1": metrics.weighted_f1(test, pred),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m repro.text_meld",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 2)[2],
    )
    p.add_argument("--part", choices=("all", "full", "fewshot"), default="all", help="which runs (default all)")
    p.add_argument("--shots", type=int, nargs="+", default=[4, 8, 16], help="few-shot sizes (default 4 8 16)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="few-shot seeds (default 0 1 2)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="methods (default all)")
    p.add_argument("--workdir", type=Path, default=REPO / "runs" / "text-meld", help="runs' folder")
    p.add_argument("--out", type=Path, help="results JSON (default repro/results/text/meld-<machine>.json)")
    p.add_argument("--data-dir", help="MELD CSV folder (default $JAX_CER_MELD_DIR)")
    p.add_argument(
        "--smoke", action="store_true", help="tiny runs (2 steps, 32 utterances per split) to check it works"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    jax.config.update("jax_compilation_cache_dir", str(Path.home() / ".cache" / "jax-cer-xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)

    plan: list[tuple[str, object]] = []
    extra = {"data_dir": args.data_dir} if args.data_dir else {}
    if args.smoke:
        extra.update(limit=32, steps=2, epochs=0, log_every=1, eval_batch_size=32)
    if args.part in ("all", "full"):
        for m in args.methods:
            plan.append((f"meld-text-{m}", dataclasses.replace(TEXT_CONFIGS[f"meld-text-{m}"], **extra)))
    if args.part in ("all", "fewshot"):
        for shots in args.shots:
            for seed in args.seeds:
                for m in args.methods:
                    cfg = dataclasses.replace(TEXT_CONFIGS[f"meld-fewshot-{m}"], shots=shots, seed=seed, **extra)
                    plan.append((f"meld-fewshot-{m}", cfg))
    runs = []
    for i, (name, cfg) in enumerate(plan):
        tag = f"{name}-{cfg.shots}shot-seed{cfg.seed}" if cfg.shots else name
        print(f"[{i + 1}/{len(plan)}] {tag}", flush=True)
        rec = run_one(name, cfg, args.workdir / ("smoke-" + tag if args.smoke else tag), not args.no_progress)
        t = rec["test"]
        print(
            f"    test accuracy {t['accuracy']:.4f}, weighted F1 {t['weighted_f1']:.4f} ({rec['wall_s']} s)", flush=True
        )
        runs.append(rec)
    result = {
        "kind": "text-meld",
        "machine": _machine(),
        "created": dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ"),
        "smoke": args.smoke,
        "backend": jax.default_backend(),
        "runs": runs,
        "fewshot_summary": fewshot_summary([r for r in runs if r["shots"]]),
        "majority_baseline": None if args.smoke else majority_baseline(args.data_dir),
    }
    out = (
        args.out
        or REPO / "repro" / "results" / "text" / f"meld-{result['machine']}{'-smoke' if args.smoke else ''}.json"
    )
    if args.part != "all" and out.is_file() and not args.smoke:  # merge with the other part's runs
        old = json.loads(out.read_text())
        keep = {r["run"]: r for r in old.get("runs", [])}
        keep.update({r["run"]: r for r in runs})
        result["runs"] = list(keep.values())
        result["fewshot_summary"] = fewshot_summary([r for r in result["runs"] if r["shots"]])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"results: {out}")
    for row in result["fewshot_summary"]:
        print(
            f"  {row['shots']:>2}-shot {row['method']:<4} test weighted F1 {row['test_weighted_f1_mean']:.4f} "
            f"± {row['test_weighted_f1_std']:.4f}, accuracy {row['test_accuracy_mean']:.4f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
