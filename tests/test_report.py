"""BENCHMARKS.md generation from result files (jax_cer.bench.report)."""

from __future__ import annotations

import json

from jax_cer.bench import report


def _bench(impl, component, variant, seconds, **info):
    return {
        "stats": {"data": [seconds] * 5, "median": seconds, "q1": seconds, "q3": seconds},
        "extra_info": {"component": component, "variant": variant, "impl": impl, **info},
    }


def _write(path, benchmarks, commit):
    record = {"device": "Test CPU (2 cores)", "platform": "cpu", "versions": {"jax": "0"}, "commit": commit}
    path.write_text(json.dumps({"machine_info": {"jax_cer": record}, "benchmarks": benchmarks}))


def test_rows_come_from_the_newest_run_that_measured_them(tmp_path) -> None:
    folder = tmp_path / "results" / "cpu-test-2c"
    folder.mkdir(parents=True)
    shapes = {"shapes": {"x": [2, 300, 512]}, "frames": 600}
    _write(
        folder / "bench-20260101T000000Z.json",
        [
            _bench("jax", "tcn", "forward", 0.010, **shapes),
            _bench("torch", "tcn", "forward", 0.020, **shapes),
            _bench("jax", "can", "forward", 0.030, **shapes),
            _bench("torch", "can", "forward", 0.030, **shapes),
        ],
        "old",
    )
    att = {"head_dim": 64, "dtype": "bfloat16", "causal": False, "seq": 512, "flops": 1e12, "shapes": {}}
    _write(  # a later partial run (-k): only tcn, and one attention point
        folder / "bench-20260102T000000Z.json",
        [
            _bench("jax", "tcn", "forward", 0.005, **shapes),
            _bench("torch", "tcn", "forward", 0.020, **shapes),
            _bench("flash_attention", "attention", "fwd", 0.5, **att),
            _bench("xla", "attention", "fwd", 1.0, **att),
        ],
        "new",
    )
    notes = tmp_path / "notes.md"
    notes.write_text("Hand-written analysis.")
    text = report.render(tmp_path / "results", notes, tmp_path)
    assert "| tcn | forward | x 2x300x512 | 5.0 (5.0-5.0) | 20.0 (20.0-20.0) | **4.00x** |" in text
    assert "| can | forward | x 2x300x512 | 30.0 (30.0-30.0) | 30.0 (30.0-30.0) | **1.00x** |" in text
    assert "| fwd | 64 | bfloat16 | no | 512 | 2 | 1 | 2.00x |" in text
    assert "Hand-written analysis." in text and "commit new" in text
    svg = tmp_path / "results" / "plots" / "cpu-test-2c-attention-D64-bf16.svg"
    assert svg.is_file() and "<polyline" in svg.read_text()
    assert "](results/plots/cpu-test-2c-attention-D64-bf16.svg)" in text


def test_optimizer_rows_give_time_and_state_ratios(tmp_path) -> None:
    folder = tmp_path / "results" / "cpu-test-2c"
    folder.mkdir(parents=True)
    common = {"density": 5e-5, "scheduler": "default"}
    _write(
        folder / "bench-20260101T000000Z.json",
        [
            _bench("so", "optimizer", "density 5e-05", 0.012, state_bytes=3_000, **common),
            _bench("adam", "optimizer", "density 5e-05", 0.010, state_bytes=40_000_000, **common),
            _bench("masks", "optimizer-part", "density 5e-05", 0.002, **common),
        ],
        "c",
    )
    text = report.render(tmp_path / "results", None, tmp_path)
    # 12 ms / 10 ms; 3000 B / (5e-5 * 40 MB) = 1.5
    row = "| 5e-05 | default | 12.0 (12.0-12.0) | 10.0 (10.0-10.0) | **1.20x** | 3,000 B | 40.0 MB | **1.500** |"
    assert row in text
    assert "| 5e-05 | default | 2.0 | - | - |" in text
    assert "| optimizer |" not in text  # not a model row


def test_text_section_tables(tmp_path) -> None:
    def run(method, shots, seed, wf1):
        return {
            "run": f"{method}-{shots}-{seed}", "method": method, "optimizer": "adamw", "shots": shots, "seed": seed,
            "steps": 100, "kept_step": 100, "trainable_params": 1000, "wall_s": 60.0,
            "settings": {"lr": 1e-3, "batch_size": 8},
            "val": {"weighted_f1": 0.5, "accuracy": 0.5}, "test": {"weighted_f1": wf1, "accuracy": 0.6},
        }  # fmt: skip

    from repro.text_meld import summarize

    runs = [run("lora", 0, 0, 0.58), run("lora", 4, 0, 0.30), run("lora", 4, 1, 0.40)]
    text = tmp_path / "repro" / "results" / "text"
    text.mkdir(parents=True)
    payload = {"machine": "cpu-test-2c", "smoke": False, "runs": runs, "fewshot_summary": summarize(runs[1:])}
    (text / "meld-cpu-test-2c.json").write_text(json.dumps(payload))
    (text / "meld-cpu-test-2c-smoke.json").write_text(json.dumps({**payload, "smoke": True}))
    lines = report.text_section(text)
    assert sum(line.startswith("### ") for line in lines) == 1  # the smoke file is left out
    assert "| lora | adamw | 0.001 | 1,000 | 100 (100) | 0.5000 | 0.6000 | **0.5800** | 1.0 min |" in lines
    assert "| 4 | lora | 0, 1 | 0.6000 ± 0.0000 | 0.3500 ± 0.0707 |" in lines
