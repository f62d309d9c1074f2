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


def _gpu_write(path, benchmarks):
    record = {
        "device": "NVIDIA Test GPU",
        "platform": "gpu",
        "driver": "1",
        "cuda": "13",
        "versions": {},
        "commit": "g",
    }
    path.write_text(json.dumps({"machine_info": {"jax_cer": record}, "benchmarks": benchmarks}))


def test_across_machines_puts_each_machine_in_a_column(tmp_path) -> None:
    results = tmp_path / "results"
    cpu, gpu = results / "cpu-test-2c", results / "gpu-test"
    cpu.mkdir(parents=True)
    gpu.mkdir(parents=True)
    shapes = {"shapes": {"x": [2, 300, 512]}, "frames": 600}
    att = {"head_dim": 128, "dtype": "bfloat16", "causal": False, "seq": 4096, "flops": 1e12, "shapes": {}}
    _write(cpu / "bench-20260101T000000Z.json", [_bench("jax", "mt", "forward", 0.01, **shapes),
                                                 _bench("torch", "mt", "forward", 0.02, **shapes)], "c")  # fmt: skip
    _gpu_write(  # two files of one campaign: models, then attention
        gpu / "bench-20260102T000000Z.json",
        [_bench("jax", "mt", "forward", 0.001, **shapes), _bench("torch", "mt", "forward", 0.003, **shapes)],
    )
    _gpu_write(
        gpu / "bench-20260102T000100Z.json",
        [_bench(i, "attention", "fwd", t, **att) for i, t in (("flash_attention", 0.004), ("cudnn", 0.005))],
    )
    lines = report.cross_machine_section(report.load_results(results))
    assert lines[0] == "| component | comparison | cpu-test-2c | gpu-test |"
    assert "| mt | forward: PyTorch / JAX time | 2.00x | 3.00x |" in lines
    assert "| attention | fwd D128 bf16 S=4096: flash / cudnn | - | 1.25x |" in lines


def test_kernel_check_section_summarizes_and_lists_failures(tmp_path) -> None:
    folder = tmp_path / "results" / "gpu-test"
    folder.mkdir(parents=True)

    def case(s, passed, err):
        checks = {n: {"error": err, "bound": 0.01, "passed": passed} for n in ("out", "dq", "dk", "dv")}
        label = f"bfloat16 D=128 full S={s}"
        return {"dtype": "bfloat16", "d": 128, "causal": False, "sq": s, "sk": s, "label": label,
                "checks": checks, "passed": passed}  # fmt: skip

    record = {"backend": "triton", "rule": "r", "cases": [case(512, True, 0.002), case(16384, False, 0.03)],
              "not_run": ["float16 D=64 full S=8192"]}  # fmt: skip
    (folder / "kernelcheck-20260101T000000Z.json").write_text(json.dumps(record))
    lines = report.kernel_check_section(report.load_results(tmp_path / "results"))
    assert lines[0].endswith("1/2 cases pass, 1 not run")
    assert "| bfloat16 | 128 | full | 1/2 | 16384 | 3.00 | 3.00e-02 | 3.00e-02 |" in lines
    assert "- **FAIL** bfloat16 D=128 full S=16384: error above its bound" in lines
    assert any("float16 D=64 full S=8192" in line for line in lines)


def test_sweep_section_compares_the_fastest_with_the_shipped(tmp_path) -> None:
    folder = tmp_path / "results" / "gpu-test"
    folder.mkdir(parents=True)
    shipped, other = ({"block_m": m, "block_n": 64, "num_warps": 8, "num_stages": 2} for m in (64, 128))
    cases = [
        {"config": shipped, "viable": True, "cases": {"4096-full": {"ms": 2.0, "tflops": 300.0, "vs_cudnn": 0.5}}},
        {"config": other, "viable": True, "cases": {"4096-full": {"ms": 1.0, "tflops": 600.0, "vs_cudnn": 1.0}}},
        {"config": {**other, "num_stages": 9}, "viable": False},
    ]
    record = {"dtype": "bfloat16", "head_dim": 128, "kernels": {"fwd": {"shipped": shipped, "candidates": cases,
              "cudnn_ms": {"4096-full": 1.0}}}}  # fmt: skip
    (folder / "sweep-20260101T000000Z.json").write_text(json.dumps(record))
    later = {**record, "kernels": {"bwd_dq": {**record["kernels"]["fwd"]}}}  # a later sweep of another kernel
    (folder / "sweep-20260102T000000Z.json").write_text(json.dumps(later))
    lines = report.sweep_section(report.load_results(tmp_path / "results"))
    row = "| 4096-full | 64x64 w8 s2 | 300 | 128x64 w8 s2 | 600 | 2.00x | 1.00x | 2 |"
    assert f"| fwd | bfloat16, 128 {row} `sweep-20260101T000000Z.json` |" in lines
    assert f"| bwd_dq | bfloat16, 128 {row} `sweep-20260102T000000Z.json` |" in lines
