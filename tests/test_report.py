"""The benchmark report from result files (jax_cer.bench: load, runs, sections, plot, report)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from jax_cer.bench import ncu, plot, report, sections
from jax_cer.bench.load import ResultFileError, load_files, load_results
from jax_cer.bench.merge import merge_bench_files
from tests.conftest import REPO

CPU = {"device": "Test CPU (2 cores)", "platform": "cpu", "cpu": "Test CPU (2 cores)", "versions": {"jax": "0"}}
GPU = {"device": "NVIDIA Test GPU", "platform": "gpu", "cpu": "Host (8 cores)", "driver": "1", "cuda": "13"}
SHAPES = {"shapes": {"x": [2, 300, 512]}, "frames": 600}


def _bench(impl, component, variant, seconds, **info):
    return {
        "stats": {"data": [seconds] * 5, "median": seconds, "q1": seconds, "q3": seconds},
        "extra_info": {"component": component, "variant": variant, "impl": impl, **info},
    }


def _write(path, benchmarks, record=None, **extra):
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {**(record or CPU), **extra}
    path.write_text(json.dumps({"machine_info": {"jax_cer": record}, "benchmarks": benchmarks}))


def test_rows_come_from_the_newest_run_that_measured_them(tmp_path) -> None:
    folder = tmp_path / "results" / "any-name"
    _write(
        folder / "bench-20260101T000000Z.json",
        [
            _bench("jax", "tcn", "forward", 0.010, **SHAPES),
            _bench("torch", "tcn", "forward", 0.020, **SHAPES),
            _bench("jax", "can", "forward", 0.030, **SHAPES),
            _bench("torch", "can", "forward", 0.030, **SHAPES),
        ],
        commit="old",
    )
    att = {"head_dim": 64, "dtype": "bfloat16", "causal": False, "seq": 512, "flops": 1e12, "shapes": {}}
    _write(  # a later run with -k: only tcn, and one attention point
        folder / "bench-20260102T000000Z.json",
        [
            _bench("jax", "tcn", "forward", 0.005, **SHAPES),
            _bench("torch", "tcn", "forward", 0.020, **SHAPES),
            _bench("flash_attention", "attention", "fwd", 0.5, **att),
            _bench("xla", "attention", "fwd", 1.0, **att),
        ],
        commit="new",
    )
    notes = tmp_path / "notes.md"
    notes.write_text("Hand-written analysis.")
    text = report.render(tmp_path / "results", notes, tmp_path)
    assert "### cpu-test-cpu-2c" in text  # the machine recorded in the files, not the folder's name
    assert "| tcn | forward | x 2x300x512 | 5.0 (5.0-5.0) | 20.0 (20.0-20.0) | **4.00x** |" in text
    assert "| can | forward | x 2x300x512 | 30.0 (30.0-30.0) | 30.0 (30.0-30.0) | **1.00x** |" in text
    assert "| fwd | 64 | bfloat16 | no | 512 | - | 2 | 1 | 2.00x |" in text
    assert "Hand-written analysis." in text and "commit new" in text
    assert "- `results/any-name/bench-20260101T000000Z.json`" in text
    assert "†" not in text.split("## Machines")[1]  # no quick run, no mark


def test_a_quick_run_does_not_replace_a_full_run_and_is_marked(tmp_path) -> None:
    folder = tmp_path / "results"
    full = {"rounds": 8, "full_rounds": 8}
    quick = {"rounds": 1, "full_rounds": 8}
    _write(folder / "bench-20260101T000000Z.json", [  # a full run of tcn
        _bench("jax", "tcn", "forward", 0.010, **SHAPES, **full),
        _bench("torch", "tcn", "forward", 0.020, **SHAPES, **full),
    ])  # fmt: skip
    _write(folder / "bench-20260102T000000Z.json", [  # a later quick run: tcn again, and can
        _bench("jax", "tcn", "forward", 0.002, **SHAPES, **quick),
        _bench("torch", "tcn", "forward", 0.030, **SHAPES, **quick),
        _bench("jax", "can", "forward", 0.010, **SHAPES, **quick),
        _bench("torch", "can", "forward", 0.015, **SHAPES, **quick),
    ])  # fmt: skip
    text = report.render(folder, md_dir=tmp_path)
    assert "| tcn | forward | x 2x300x512 | 10.0 (10.0-10.0) | 20.0 (20.0-20.0) | **2.00x** | 60,000 |" in text
    can = "| can | forward | x 2x300x512 | 10.0 (10.0-10.0)† | 15.0 (15.0-15.0)† | **1.50x**† | 60,000† |"
    assert can in text
    assert "| can | forward: PyTorch / JAX time | 1.50x† |" in text
    assert "| tcn | forward: PyTorch / JAX time | 2.00x |" in text
    assert "† quick run: 1 round, fewer than the case's default; no full run has measured this row yet." in text
    # a file without the fields counts as a full run, so an old figure is never replaced by a quick one
    _write(folder / "bench-20260103T000000Z.json", [_bench("jax", "can", "forward", 0.020, **SHAPES)])
    again = report.render(folder, md_dir=tmp_path)
    assert "| can | forward | x 2x300x512 | 20.0 (20.0-20.0) | - | - | 30,000 |" in again


def test_optimizer_rows_give_time_and_state_ratios(tmp_path) -> None:
    common = {"density": 5e-5, "scheduler": "default", "tensors": 96, "weights": 122_700_000, "dtype": "float32"}
    _write(
        tmp_path / "results" / "bench-20260101T000000Z.json",
        [
            _bench("so", "optimizer", "density 5e-05", 0.012, state_bytes=3_000, refresh_every=20, **common),
            _bench("adam", "optimizer", "density 5e-05", 0.010, state_bytes=40_000_000, **common),
            _bench("masks", "optimizer-part", "density 5e-05", 0.002, **common),
        ],
    )
    text = report.render(tmp_path / "results", None, tmp_path)
    # 12 ms / 10 ms; 3000 B / (5e-5 * 40 MB) = 1.5
    row = "| 5e-05 | default | 12.0 (12.0-12.0) | 10.0 (10.0-10.0) | **1.20x** | 3,000 B | 40.0 MB | **1.500** |"
    assert row in text
    assert "| 5e-05 | default | 2.0 | - | - |" in text
    assert "| optimizer |" not in text  # not a model row
    assert "(96 float32 matrices, 122.7M weights)" in text  # from the file, not typed in


def _meld_run(method, shots, seed, wf1):
    settings = {"lr": 1e-3, "batch_size": 8, "steps": 100, "clip_norm": 0.3, "lora_rank": 4, "lora_alpha": 8.0}
    return {
        "run": f"{method}-{shots}-{seed}", "method": method, "optimizer": "adamw", "shots": shots, "seed": seed,
        "steps": 100, "kept_step": 100, "trainable_params": 1000, "params": 2_000_000, "wall_s": 60.0,
        "select": "final" if shots else "weighted_f1", "settings": settings,
        "val": {"weighted_f1": 0.5, "accuracy": 0.5}, "test": {"weighted_f1": wf1, "accuracy": 0.6},
    }  # fmt: skip


def test_text_section_tables(tmp_path) -> None:
    runs = [_meld_run("lora", 0, 0, 0.58), _meld_run("lora", 4, 0, 0.30), _meld_run("lora", 4, 1, 0.40)]
    text = tmp_path / "results" / "text"
    text.mkdir(parents=True)
    payload = {"kind": "text-meld", "machine": "cpu-test-2c", "smoke": False, "runs": runs, "backend": "cpu"}
    (text / "meld-cpu-test-2c.json").write_text(json.dumps(payload))
    (text / "meld-cpu-test-2c-smoke.json").write_text(json.dumps({**payload, "smoke": True}))
    lines = sections.text_section(load_results(tmp_path / "results"), tmp_path)
    assert sum(line.startswith("### ") for line in lines) == 1  # the smoke file is left out
    assert "### cpu-test-2c (`results/text/meld-cpu-test-2c.json`)" in lines
    assert "| lora | adamw | 0.001 | 1,000 | 100 (100) | 0.5000 | 0.6000 | **0.5800** | 1.0 min |" in lines
    assert "| 4 | lora | 0, 1 | 0.6000 ± 0.0000 | 0.3500 ± 0.0707 |" in lines
    settings = next(line for line in lines if line.startswith("- lora: adamw, lr 0.001; 100 steps of batch 8"))
    assert "gradient clipped at norm 0.3" in settings and "LoRA on ?: r 4, alpha 8" in settings
    best = next(line for line in lines if line.startswith("Best: "))
    assert "(2.0M parameters in that run's model)" in best and "inside the published" in best


def test_fewshot_summary_averages_over_seeds() -> None:
    runs = [_meld_run("so", 8, s, f) for s, f in ((0, 0.2), (1, 0.4))] + [_meld_run("full", 8, 0, 0.5)]
    rows = sections.fewshot_summary(runs)
    assert [(r["shots"], r["method"], r["seeds"]) for r in rows] == [(8, "full", [0]), (8, "so", [0, 1])]
    assert rows[0]["test_weighted_f1_std"] == 0.0 and rows[1]["test_weighted_f1_mean"] == pytest.approx(0.3)


def test_across_machines_groups_by_the_machine_recorded_in_the_files(tmp_path) -> None:
    att = {"head_dim": 128, "dtype": "bfloat16", "causal": False, "seq": 4096, "flops": 1e12, "shapes": {}}
    # two machines' files in folders whose names say nothing, one of them split over two folders
    cpu_rows = [_bench("jax", "mt", "forward", 0.01, **SHAPES), _bench("torch", "mt", "forward", 0.02, **SHAPES)]
    _write(tmp_path / "a" / "bench-20260101T000000Z.json", cpu_rows)
    _write(
        tmp_path / "b" / "bench-20260102T000000Z.json",
        [_bench("jax", "mt", "forward", 0.001, **SHAPES), _bench("torch", "mt", "forward", 0.003, **SHAPES)],
        GPU,
    )
    _write(
        tmp_path / "c" / "nested" / "bench-20260102T000100Z.json",
        [_bench(i, "attention", "fwd", t, **att) for i, t in (("flash_attention", 0.004), ("cudnn", 0.005))],
        GPU,
    )
    machines = load_results(tmp_path / "a", tmp_path / "b", tmp_path / "c")
    assert list(machines) == ["cpu-test-cpu-2c", "gpu-nvidia-test-gpu"]
    lines = sections.cross_machine_section(machines)
    assert "| component | comparison | cpu-test-cpu-2c | gpu-nvidia-test-gpu |" in lines
    assert "| mt | forward: PyTorch / JAX time | 2.00x | 3.00x |" in lines
    assert "| attention | fwd D128 bf16 S=4096: flash / cudnn | - | 1.25x |" in lines


def test_repro_files_without_a_machine_record_take_their_folder_name(tmp_path) -> None:
    row = {"case": "tcn", "check": "forward", "key": "output", "max_error": 1e-6, "tolerance": 1e-4, "passed": True}
    old = {"device": "cpu:cpu", "jax": "0", "tolerances": {"forward": 1e-4}, "results": [row], "passed": True}
    (tmp_path / "old-machine").mkdir()
    (tmp_path / "old-machine" / "repro-20260101T000000Z.json").write_text(json.dumps(old))
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "repro-20260102T000000Z.json").write_text(json.dumps({**old, "machine": GPU}))
    machines = load_results(tmp_path)
    assert list(machines) == ["gpu-nvidia-test-gpu", "old-machine"]
    text = "\n".join(sections.parity_section(machines))
    assert "### old-machine (cpu:cpu, jax 0): all checks pass" in text
    assert "| tcn | forward | `output` | 1.00e-06 | 1e-04 | pass |" in text


def test_a_broken_file_is_named(tmp_path) -> None:
    (tmp_path / "bench-20260101T000000Z.json").write_text("{")
    with pytest.raises(ResultFileError, match=r"bench-20260101T000000Z\.json: not valid JSON"):
        load_files([tmp_path])
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        load_files([tmp_path / "does-not-exist"])


def test_kernel_check_section_summarizes_and_lists_failures(tmp_path) -> None:
    def case(s, passed, err):
        checks = {n: {"error": err, "bound": 0.01, "passed": passed} for n in ("out", "dq", "dk", "dv")}
        label = f"bfloat16 D=128 full S={s}"
        return {"dtype": "bfloat16", "d": 128, "causal": False, "sq": s, "sk": s, "label": label,
                "checks": checks, "passed": passed}  # fmt: skip

    cases = [case(512, True, 0.002), case(16384, False, 0.03)]
    record = {"kind": "kernelcheck", "machine": GPU, "backend": "triton", "rule": "r", "cases": cases,
              "not_run": ["float16 D=64 full S=8192"]}  # fmt: skip
    (tmp_path / "kernelcheck-20260101T000000Z.json").write_text(json.dumps(record))
    lines = sections.kernel_check_section(load_results(tmp_path))
    assert lines[2] == (
        "#### gpu-nvidia-test-gpu (`kernelcheck-20260101T000000Z.json`, backend triton): 1/2 cases pass, 1 not run"
    )
    assert "| bfloat16 | 128 | full | 1/2 | 16384 | 3.00 | 3.00e-02 | 3.00e-02 |" in lines
    assert "- **FAIL** bfloat16 D=128 full S=16384: error above its bound" in lines
    assert any("float16 D=64 full S=8192" in line for line in lines)


def test_sweep_section_compares_the_fastest_with_the_shipped(tmp_path) -> None:
    shipped, other = ({"block_m": m, "block_n": 64, "num_warps": 8, "num_stages": 2} for m in (64, 128))
    cases = [
        {"config": shipped, "viable": True, "cases": {"4096-full": {"ms": 2.0, "tflops": 300.0, "vs_cudnn": 0.5}}},
        {"config": other, "viable": True, "cases": {"4096-full": {"ms": 1.0, "tflops": 600.0, "vs_cudnn": 1.0}}},
        {"config": {**other, "num_stages": 9}, "viable": False},
    ]
    fwd = {"shipped": shipped, "candidates": cases, "cudnn_ms": {"4096-full": 1.0}}
    record = {"kind": "sweep", "machine": GPU, "dtype": "bfloat16", "head_dim": 128, "kernels": {"fwd": fwd}}
    (tmp_path / "sweep-20260101T000000Z.json").write_text(json.dumps(record))
    later = {**record, "kernels": {"bwd_dq": {**record["kernels"]["fwd"]}}}  # a later sweep of another kernel
    (tmp_path / "sweep-20260102T000000Z.json").write_text(json.dumps(later))
    lines = sections.sweep_section(load_results(tmp_path))
    row = "| 4096-full | 64x64 w8 s2 | 300 | 128x64 w8 s2 | 600 | 2.00x | 1.00x | 2 |"
    assert f"| fwd | bfloat16, 128 {row} `sweep-20260101T000000Z.json` |" in lines
    assert f"| bwd_dq | bfloat16, 128 {row} `sweep-20260102T000000Z.json` |" in lines


NCU_CSV = (
    "==PROF== Connected to process 1\nprofiled flash_attention S=4096\n"
    '"ID","Process ID","Kernel Name","Section Name","Metric Name","Metric Unit","Metric Value"\n'
    '"0","1","_attn_fwd_kernel","GPU Speed Of Light Throughput","Duration","us","812.3"\n'
    '"0","1","_attn_fwd_kernel","GPU Speed Of Light Throughput","Compute (SM) Throughput","%","61.2"\n'
    '"0","1","_attn_fwd_kernel","Launch Statistics","Registers Per Thread","register/thread","131"\n'
    '"1","1","cudnn_sdpa","GPU Speed Of Light Throughput","Duration","us","500.0"\n'
    '"1","1","cudnn_sdpa","GPU Speed Of Light Throughput","L1 Hit Rate","%","3"\n'
)


def test_profile_summary_reads_ncu_csv(tmp_path) -> None:
    got = ncu.summarize(NCU_CSV)
    assert got[0] == {"id": "0", "kernel": "_attn_fwd_kernel", "Duration": "812.3 us",
                      "Compute (SM) Throughput": "61.2 %", "Registers Per Thread": "131 register/thread"}  # fmt: skip
    assert got[1] == {"id": "1", "kernel": "cudnn_sdpa", "Duration": "500.0 us"}
    assert ncu.summarize("no csv here") == []
    (tmp_path / "gpu-x").mkdir()
    (tmp_path / "gpu-x" / "profile-20260101T000000Z.csv").write_text(NCU_CSV)
    lines = sections.profile_section(load_results(tmp_path))
    assert "| 0 | `_attn_fwd_kernel` | 812.3 us | 61.2 % | 131 register/thread |" in lines


def test_bench_files_of_a_part_are_joined_into_one(tmp_path) -> None:
    old = tmp_path / "bench-20260101T000000Z.json"
    old.write_text(json.dumps({"machine_info": {}, "benchmarks": [{"name": "old"}]}))
    before = {old}
    for i, names in enumerate((["a", "b"], ["c"])):
        data = {"machine_info": {"m": 1}, "benchmarks": [{"name": n} for n in names]}
        (tmp_path / f"bench-20260102T00000{i}Z.json").write_text(json.dumps(data))
    merged = merge_bench_files(tmp_path, before, "20260102T000009Z")
    assert sorted(p.name for p in tmp_path.iterdir()) == [old.name, merged.name]
    assert [b["name"] for b in json.loads(merged.read_text())["benchmarks"]] == ["a", "b", "c"]
    assert merge_bench_files(tmp_path, {old, merged}, "x") is None


def _devices_bench(config, devices, seconds, **info):
    """A training-throughput-against-devices benchmark: 4 steps per round taking ``seconds``."""
    fusion = config != "synthetic-text"
    common = {
        "config": config, "model": "can" if fusion else "MiniLM-L6, LoRA", "devices": devices,
        "batch": 4 if fusion else 8, "samples_per_step": 1200 if fusion else 8, "steps_per_round": 4,
        "sample_unit": "frames" if fusion else "examples", "platform": "cpu", "forced_devices": True, "host_cpus": 2,
        **({"window": 300} if fusion else {"seq_length": 16}),
    }  # fmt: skip
    return _bench(f"devices={devices}", sections.DEVICES_COMPONENT, "data parallel", seconds, **{**common, **info})


def test_devices_section_gives_rates_per_device_and_the_ratio_to_one_device(tmp_path) -> None:
    _write(
        tmp_path / "results" / "bench-20260101T000000Z.json",
        [
            _devices_bench("synthetic-can", 1, 2.0),  # 2 steps/s, 2400 frames/s
            _devices_bench("synthetic-mt", 1, 2.0, model="mt") | {"stats": {"data": [1.6, 1.8, 2.0, 2.2, 2.4]}},
            _devices_bench("synthetic-can", 2, 2.5),
            _devices_bench("synthetic-can", 4, 4.0),
            _devices_bench("synthetic-text", 2, 0.25),  # no 1-device row in this run: no ratio
        ],
    )
    machines = load_results(tmp_path / "results")
    text = "\n".join(sections.devices_section(machines))
    assert "| synthetic-can | 1 | 4 x 300 frames | 2.00 (2.00-2.00) | 2,400 frames | 2,400 | **1.00x** |" in text
    assert "| synthetic-can | 2 | 4 x 300 frames | 1.60 (1.60-1.60) | 1,920 frames | 960 | **0.80x** |" in text
    assert "| synthetic-can | 4 | 4 x 300 frames | 1.00 (1.00-1.00) | 1,200 frames | 300 | **0.50x** |" in text
    # steps/s of the median round, with the steps/s of the 80th and 20th percentile rounds (4 / 2.24 s, 4 / 1.76 s)
    assert "| synthetic-mt | 1 | 4 x 300 frames | 2.00 (1.79-2.27) | 2,400 frames | 2,400 | **1.00x** |" in text
    text_row = "| synthetic-text (MiniLM-L6, LoRA) | 2 | 8 examples (S=16) | 16.00 (16.00-16.00) | 128 examples |"
    assert f"{text_row} 64.00 | - |" in text
    assert "share this machine's 2 cores" in text and "not a speed-up" in text
    assert "No GPU results yet" in text
    # not a model row, and no ratio across machines
    others = sections.model_section(machines) + sections.cross_machine_section(machines)
    assert not any(sections.DEVICES_COMPONENT in line for line in others)
    # a GPU machine's rows: real devices, the GPU sentence goes
    _write(
        tmp_path / "results" / "gpu" / "bench-20260102T000000Z.json",
        [_devices_bench("synthetic-can", 1, 0.1, platform="gpu", forced_devices=False, device="Test GPU")],
        GPU,
    )
    both = "\n".join(sections.devices_section(load_results(tmp_path / "results")))
    assert "### gpu-nvidia-test-gpu" in both and "Real devices (Test GPU)" in both
    assert "| synthetic-can | 1 | 4 x 300 frames | 40.00 (40.00-40.00) | 48,000 frames | 48,000 | **1.00x** |" in both
    assert "No GPU results yet" not in both
    assert "No device-count results yet" in "\n".join(sections.devices_section({}))


def _attention_results(folder) -> None:
    att = {"dtype": "bfloat16", "causal": False, "flops": 1e12, "shapes": {"q": [8, 512, 8, 64]}}
    rows = [
        _bench(impl, "attention", p, t * s / 512, head_dim=d, seq=s, **att)
        for impl, t in (("flash_attention", 0.5), ("xla", 1.0))
        for p in ("fwd", "fwd+bwd")
        for d in (64, 128)
        for s in (512, 1024, 2048)
    ]
    _write(folder / "bench-20260101T000000Z.json", rows)


def test_plots_are_png_and_svg_linked_relative_to_the_markdown(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    _attention_results(tmp_path / "results")
    out = report.write([tmp_path / "results"], tmp_path / "report" / "BENCHMARKS.md")
    text = out.read_text()
    for d in (64, 128):
        stem = tmp_path / "report" / "plots" / f"cpu-test-cpu-2c-attention-D{d}-bf16"
        png, svg = stem.with_suffix(".png"), stem.with_suffix(".svg")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
        root = ET.parse(svg).getroot()
        assert root.tag == "{http://www.w3.org/2000/svg}svg" and "TFLOP/s" in svg.read_text()
        assert f"](plots/cpu-test-cpu-2c-attention-D{d}-bf16.png) ([SVG](plots/{svg.name}))" in text
    again = plot.line_plot({"a fwd": [(512, 1.0), (1024, 2.0, True)]}, "t", "S", "TFLOP/s")
    assert again == plot.line_plot({"a fwd": [(512, 1.0), (1024, 2.0, True)]}, "t", "S", "TFLOP/s")  # no date


def test_plots_are_left_out_with_a_note_without_matplotlib(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(plot, "available", lambda: False)
    _attention_results(tmp_path / "results")
    text = report.write([tmp_path / "results"], tmp_path / "BENCHMARKS.md").read_text()
    assert "Plots left out: matplotlib is not installed (pip install 'jax-cer[bench]'" in text
    assert "![" not in text and not (tmp_path / "plots").exists()


def test_committed_benchmarks_md_is_the_reports_output() -> None:
    """BENCHMARKS.md is `jax-cer report repro/results --out BENCHMARKS.md --plots repro/results/plots
    --notes repro/benchmark_notes.md`, run at the repository root (the plots are not redrawn here)."""
    results = REPO / "repro" / "results"
    text = report.render(results, REPO / "repro" / "benchmark_notes.md", REPO, results / "plots", draw=False)
    assert text == (REPO / "BENCHMARKS.md").read_text(), "regenerate BENCHMARKS.md with the command above"
    for link in (line.split("](")[1].split(")")[0] for line in text.splitlines() if line.startswith("![")):
        assert (REPO / link).is_file(), link
