"""The report's sections: one function per section, each returning markdown lines.

Every figure and every fact in the prose comes from the result files (the fields the benchmark
cases and scripts record); a fact an older file does not record is left out for that file. Each
section takes the files grouped by machine (:data:`jax_cer.bench.load.Machines`) and says what to
run when it has nothing to show.
"""

from __future__ import annotations

import os
import re
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from jax_cer.bench import ncu
from jax_cer.bench.load import KINDS, Machines, ResultFile, newest_record
from jax_cer.bench.runs import Group, median_ms, newest_groups, percentiles_ms, quick_footnote
from jax_cer.kernels.aot import TENSOR_CORE_HEAD_DIMS, TENSOR_CORE_KERNELS, CompileResult, problems, table

PUBLISHED_MELD_TEXT = (0.55, 0.63)
"""Published text-only weighted F1 on MELD (larger encoders that also see the dialogue context)."""
ATTENTION_IMPLS = ("flash_attention", "cudnn", "xla")
ATTENTION_PLOT_DTYPE = "bfloat16"
RATIO_HEAD_DIM = 128
"""The attention comparisons of the across-machines table: this D, bf16, not causal."""
DEVICES_COMPONENT = "train_throughput"
"""The ``component`` of the training-throughput-against-device-count cases (``test_bench_devices``)."""


def _natural(text: str) -> tuple:
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", text) if t)


def _ms_cell(bench: Mapping[str, Any], mark: str = "") -> str:
    med, p20, p80 = percentiles_ms(bench)
    return f"{med:.1f} ({p20:.1f}-{p80:.1f}){mark}"


# -- machines ------------------------------------------------------------------------------------------
def machine_line(name: str, record: Mapping[str, Any] | None) -> str:
    """One machine's bullet: device, driver and CUDA, Python, library versions, commit and date."""
    if not record:
        return f"- **{name}**: no machine record in its files"
    v = record.get("versions", {})
    names = ("jax", "jaxlib", "flax", "optax", "torch", "triton", "jax-triton")
    libs = ", ".join(f"{k} {v[k]}" for k in names if v.get(k))
    gpu = f", driver {record['driver']}, CUDA {record['cuda']}" if record.get("driver") else ""
    return (
        f"- **{name}**: {record.get('device', '?')}{gpu}; Python {record.get('python', '?')}; {libs}; "
        f"commit {record.get('commit', '?')}; {record.get('date', '?')}"
    )


def machines_section(machines: Machines) -> list[str]:
    """Each machine the files come from, with its newest record."""
    lines = ["## Machines", ""]
    lines += [machine_line(name, newest_record(files)) for name, files in machines.items()]
    return [*lines, ""] if machines else [*lines, "No result files.", ""]


# -- row groups ----------------------------------------------------------------------------------------
def model_group(info: Mapping[str, Any]) -> tuple | None:
    """The row of a model or text-encoder benchmark (component, variant); None for other cases."""
    if info.get("component", "attention") in ("attention", "optimizer", "optimizer-part", DEVICES_COMPONENT):
        return None
    if str(info.get("variant", "")).startswith("train_loop"):
        return None
    return (info["component"], info["variant"])


def loop_group(info: Mapping[str, Any]) -> tuple | None:
    """The row of a training-loop benchmark (component, variant); None for other cases."""
    variant = str(info.get("variant", ""))
    return (info["component"], variant) if variant.startswith("train_loop") else None


def attention_group(info: Mapping[str, Any]) -> tuple | None:
    """The row of an attention benchmark (pass, D, dtype, causal, S); None for other cases."""
    if info.get("component") != "attention":
        return None
    return (info["variant"], info["head_dim"], info["dtype"], info["causal"], info["seq"])


def optimizer_group(component: str) -> Callable[[Mapping[str, Any]], tuple | None]:
    """The row key of the SO benchmarks of ``component`` (``optimizer`` or ``optimizer-part``):
    (density, XLA scheduler)."""

    def key(info: Mapping[str, Any]) -> tuple | None:
        if info.get("component") != component:
            return None
        return (info["density"], info.get("scheduler", "default"))

    return key


def attention_points(files: Sequence[ResultFile]) -> dict[tuple, tuple[dict[str, float], Group]]:
    """``{(pass, D, dtype, causal, S): ({impl: TFLOP/s}, group)}`` for one machine's benchmark files."""
    return {
        key: ({impl: b["extra_info"]["flops"] / (median_ms(b) / 1e3) / 1e12 for impl, b in g.impls.items()}, g)
        for key, g in newest_groups(files, attention_group).items()
    }


# -- across machines -------------------------------------------------------------------------------------
def ratio_rows(files: Sequence[ResultFile]) -> dict[tuple[str, str], tuple[float, Group]]:
    """``{(component, comparison): (ratio, group)}`` for one machine, each ratio measured within one run:
    PyTorch / JAX time for models and the text encoder, flash / cuDNN and flash / XLA throughput for
    attention (D 128, bf16, not causal), ``so`` / Adam time for the optimizer."""
    rows: dict[tuple[str, str], tuple[float, Group]] = {}
    for group in (model_group, loop_group):
        for (component, variant), g in newest_groups(files, group).items():
            if "jax" in g.impls and "torch" in g.impls:
                ratio = median_ms(g.impls["torch"]) / median_ms(g.impls["jax"])
                rows[(component, f"{variant}: PyTorch / JAX time")] = (ratio, g)
    for (p, d, dt, causal, seq), (tf, g) in attention_points(files).items():
        if d != RATIO_HEAD_DIM or dt != ATTENTION_PLOT_DTYPE or causal or "flash_attention" not in tf:
            continue
        for other in ("cudnn", "xla"):
            if other in tf:
                rows[("attention", f"{p} D{d} bf16 S={seq}: flash / {other}")] = (tf["flash_attention"] / tf[other], g)
    for (density, sched), g in newest_groups(files, optimizer_group("optimizer")).items():
        if "so" in g.impls and "adam" in g.impls and sched == "default":
            ratio = median_ms(g.impls["so"]) / median_ms(g.impls["adam"])
            rows[("SO", f"density {density:g}: so / adam time")] = (ratio, g)
    return rows


def cross_machine_section(machines: Machines) -> list[str]:
    """One table, a column per machine: each comparison's ratio as measured on that machine."""
    lines = ["## Across machines: each comparison's ratio, one column per machine", ""]
    lines += [
        "Every ratio is measured within one run on one machine. Models and the text encoder: PyTorch / JAX "
        "time (> 1: JAX is faster). Attention: `flash_attention` / baseline TFLOP/s at "
        f"D {RATIO_HEAD_DIM}, bf16, not causal (> 1: `flash_attention` is faster; on a CPU it runs its XLA "
        "path, the Triton kernel needs a GPU). SO: `so` / `optax.adam` step time (< 1: SO is faster). A `-` "
        "is a comparison that machine did not make.",
        "",
    ]
    per = {m: ratio_rows(f["bench"]) for m, f in machines.items()}
    per = {m: r for m, r in per.items() if r}
    if not per:
        return [*lines, "No benchmark results yet: run `jax-cer bench`.", ""]
    names = list(per)
    keys = sorted({k for r in per.values() for k in r}, key=lambda k: (k[0], _natural(k[1])))
    lines += ["| component | comparison | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for key in keys:
        cells = " | ".join(f"{per[m][key][0]:.2f}x{per[m][key][1].mark}" if key in per[m] else "-" for m in names)
        lines.append(f"| {key[0]} | {key[1]} | {cells} |")
    used = [g for r in per.values() for _, g in r.values()]
    return [*lines, "", *quick_footnote(used)]


# -- models and training loops ---------------------------------------------------------------------------
def _dtypes(machines: Machines, group) -> str:
    found = {
        b["extra_info"].get("dtype")
        for files in machines.values()
        for g in newest_groups(files["bench"], group).values()
        for b in g.impls.values()
    }
    return ", ".join(sorted(d for d in found if d)) or "the recorded dtype"


def model_section(machines: Machines) -> list[str]:
    """Forward and training step of each model (and the text encoder), JAX against PyTorch."""
    lines = ["## Fusion models: JAX (jit) vs the PyTorch reference", ""]
    lines += [
        "Forward in inference mode; one training step = forward in training mode (dropout, batch-statistic "
        "BatchNorm), per-frame cross-entropy, backward, SGD with Nesterov momentum and weight decay (the "
        f"original recipe), same synthetic weights on both sides, {_dtypes(machines, model_group)} with "
        "full-precision matmuls. `PyTorch / JAX` > 1 means JAX is faster. The text encoder rows (against "
        "transformers' `BertModel`, every token real) train a mean-pooling classifier with AdamW over every "
        "parameter, and their frames/s column counts tokens.",
        "",
    ]
    body: list[str] = []
    used: list[Group] = []
    for machine, files in machines.items():
        groups = newest_groups(files["bench"], model_group)
        rows = [(key, g) for key, g in sorted(groups.items(), key=lambda kv: (kv[0][0], _natural(kv[0][1])))]
        rows = [(key, g) for key, g in rows if "jax" in g.impls]
        if not rows:
            continue
        body += [
            f"### {machine}",
            "",
            "| model | step | input | JAX ms (p20-p80) | PyTorch ms (p20-p80) | PyTorch / JAX | JAX frames/s |",
            "|---|---|---|---|---|---|---|",
        ]
        for (component, variant), g in rows:
            jax_b, torch_b, mark = g.impls["jax"], g.impls.get("torch"), g.mark
            info = jax_b["extra_info"]
            shapes = "; ".join(f"{k} {'x'.join(map(str, s))}" for k, s in info["shapes"].items())
            tcell = _ms_cell(torch_b, mark) if torch_b else "-"
            ratio = f"**{median_ms(torch_b) / median_ms(jax_b):.2f}x**{mark}" if torch_b else "-"
            fps = info.get("frames", 0) / (median_ms(jax_b) / 1e3)
            if str(info.get("weights", "")).startswith("drawn"):  # no checkpoint on that machine
                variant = f"{variant} (drawn weights)"
            body.append(
                f"| {component} | {variant} | {shapes} | {_ms_cell(jax_b, mark)} | {tcell} | {ratio} | "
                f"{fps:,.0f}{mark} |"
            )
            used.append(g)
        body.append("")
    if not body:
        return [*lines, "No model benchmark results yet: run `jax-cer bench`.", ""]
    return [*lines, *body, *quick_footnote(used)]


def throughput_section(machines: Machines) -> list[str]:
    """Training throughput of the ``jax-cer train`` loop against the PyTorch reference's loop."""
    lines = ["## Training throughput: the `jax-cer train` loop vs the PyTorch reference's loop", ""]
    lines += [
        "Frames per second of one training step as a run executes it on the synthetic dataset: the next batch "
        "of windows (cut, padded and stacked from z-scored clips), the copy to the device, forward in training "
        "mode, per-frame cross-entropy, backward, SGD with Nesterov momentum, and the wait for the loss; both "
        "loops read the same batches and compute the original's model (MT/JMT with its attention axis and the "
        "discarded bert TCN). `features`: face features as the video input; `frames`: uint8 faces through the "
        "crop/flip transform and the frozen IR-50. `JAX / PyTorch` > 1 means JAX trains faster.",
        "",
    ]
    body: list[str] = []
    used: list[Group] = []
    for machine, files in machines.items():
        groups = {k: g for k, g in newest_groups(files["bench"], loop_group).items() if "jax" in g.impls}
        if not groups:
            continue
        body += [
            f"### {machine}",
            "",
            "| model | input | batch x window | JAX ms/step (p20-p80) | JAX frames/s | PyTorch frames/s "
            "| JAX / PyTorch |",
            "|---|---|---|---|---|---|---|",
        ]
        for (component, variant), g in sorted(groups.items()):
            mark, info = g.mark, g.impls["jax"]["extra_info"]
            med = median_ms(g.impls["jax"])
            frames = info.get("frames", 0)
            video = info["shapes"]["video"]
            inputs = variant.partition("(")[2].rstrip(")") or "features"
            if "torch" in g.impls:
                tmed = median_ms(g.impls["torch"])
                tcell, ratio = f"{frames / (tmed / 1e3):,.0f}{mark}", f"**{tmed / med:.2f}x**{mark}"
            else:
                tcell, ratio = "-", "-"
            body.append(
                f"| {component} | {inputs} | {video[0]} x {video[1]} | {_ms_cell(g.impls['jax'], mark)} | "
                f"{frames / (med / 1e3):,.0f}{mark} | {tcell} | {ratio} |"
            )
            used.append(g)
        body.append("")
    if not body:
        return [*lines, "No training-loop results yet: run `jax-cer bench -k train_loop`.", ""]
    return [*lines, *body, *quick_footnote(used)]


def devices_group(info: Mapping[str, Any]) -> tuple | None:
    """The row group of a training-throughput-against-device-count benchmark: (config,), so that every
    device count of a config, and the ratio to its 1-device row, comes from one run; None for other cases."""
    return (info["config"],) if info.get("component") == DEVICES_COMPONENT else None


def _rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.2f}"


def _batch_cell(info: Mapping[str, Any]) -> str:
    if "window" in info:
        return f"{info['batch']} x {info['window']} frames"
    seq = f" (S={info['seq_length']})" if info.get("seq_length") else ""
    return f"{info['batch']} {info.get('sample_unit', 'samples')}{seq}"


def _config_cell(config: str, info: Mapping[str, Any]) -> str:
    """The config, with its model when the name does not say it, and drawn weights when it ran on them."""
    model = str(info.get("model", ""))
    cell = config if not model or model in config else f"{config} ({model})"
    return f"{cell} (drawn weights)" if str(info.get("weights", "")).startswith("drawn") else cell


def devices_section(machines: Machines) -> list[str]:
    """Training steps/s and samples/s against the number of devices the batch is split over, per
    config, with the per-device rate and the ratio to the same run's 1-device row."""
    lines = ["## Training throughput against device count", ""]
    lines += [
        "Steps per second of the training loop's step against the number of devices the batch is split over "
        "(`jax-cer train --set devices=K`; `jax-cer bench -k train_throughput`): the next batch of the epoch "
        "split over the devices' data mesh, the jitted step with parameters and optimizer state replicated, "
        "and the wait for the state and the loss, after compilation and warm-up. The global batch is the same "
        "for every device count of a config, as in a run. Samples are frames (batch x window) for the fusion "
        "config and examples for the text config. Steps/s is that of the median timed round (each round is "
        "several steps), with the range of the 20th-80th percentile rounds; samples/s and per-device samples/s "
        "(samples/s / devices) follow from the median; the last column is samples/s over the 1-device row of "
        "the same run. Each device count runs in its own process (JAX "
        "fixes its devices when it starts).",
        "",
    ]
    body: list[str] = []
    used: list[Group] = []
    accelerator = False
    for machine, files in machines.items():
        groups = newest_groups(files["bench"], devices_group)
        if not groups:
            continue
        infos = [b["extra_info"] for g in groups.values() for b in g.impls.values()]
        accelerator |= any(i.get("platform", "cpu") != "cpu" for i in infos)
        body += [f"### {machine}", ""]
        forced = [i for i in infos if i.get("forced_devices")]
        if forced:
            cpus = max(int(i.get("host_cpus", 0)) for i in forced)
            cores = f"this machine's {cpus} core{'s' * (cpus != 1)}" if cpus else "this machine's cores"
            body += [
                "The devices are forced CPU devices (`XLA_FLAGS=--xla_force_host_platform_device_count=K`) that "
                f"share {cores}: the same step is cut into K programs that run on the same cores, so these "
                "figures measure the overhead of splitting a step over devices, not a speed-up: 1.00x means the "
                "split costs nothing, below it is the cost of the split, and above it the K programs kept the "
                "shared cores busier than one device's program did.",
                "",
            ]
        else:
            kinds = ", ".join(sorted({str(i.get("device", "?")) for i in infos}))
            body += [f"Real devices ({kinds}): the last column is the speed-up over one device.", ""]
        body += [
            "| config | devices | global batch | steps/s (p20-p80) | samples/s | per-device samples/s "
            "| relative to 1 device |",
            "|---|---|---|---|---|---|---|",
        ]
        for (config,), g in sorted(groups.items()):
            mark = g.mark
            rows = sorted(g.impls.values(), key=lambda b: int(b["extra_info"]["devices"]))
            rates = {}
            for b in rows:
                info = b["extra_info"]
                med, p20, p80 = (info["steps_per_round"] / (ms / 1e3) for ms in percentiles_ms(b))
                rates[int(info["devices"])] = (med, p80, p20, med * info["samples_per_step"])
            one = rates.get(1, (0.0, 0.0, 0.0, 0.0))[3]
            for b in rows:
                info = b["extra_info"]
                devices = int(info["devices"])
                steps_s, lo, hi, samples_s = rates[devices]
                relative = f"**{samples_s / one:.2f}x**{mark}" if one else "-"
                unit = info.get("sample_unit", "samples")
                body.append(
                    f"| {_config_cell(config, info)} | {devices} | {_batch_cell(info)} | "
                    f"{_rate(steps_s)} ({_rate(lo)}-{_rate(hi)}){mark} | {_rate(samples_s)} {unit}{mark} | "
                    f"{_rate(samples_s / devices)}{mark} | {relative} |"
                )
            used.append(g)
        body.append("")
    gpu = (
        []
        if accelerator
        else [
            "No GPU results yet: on a GPU machine, `jax-cer bench -k train_throughput` measures the same steps over "
            "its real devices (1 up to all of them, powers of two), where the last column is the speed-up.",
            "",
        ]
    )
    if not body:
        return [*lines, "No device-count results yet: run `jax-cer bench -k train_throughput`.", "", *gpu]
    return [*lines, *body, *quick_footnote(used), *gpu]


# -- attention -------------------------------------------------------------------------------------------
def attention_series(machines: Machines) -> dict[tuple[str, int], dict[str, list[tuple[float, float, bool]]]]:
    """The plots' data: ``{(machine, D): {"<impl> <pass>": [(S, TFLOP/s, quick), ...]}}`` at bf16, not causal."""
    out: dict[tuple[str, int], dict[str, list]] = {}
    for machine, files in machines.items():
        for (p, d, dt, causal, seq), (row, g) in attention_points(files["bench"]).items():
            if dt != ATTENTION_PLOT_DTYPE or causal:
                continue
            series = out.setdefault((machine, d), defaultdict(list))
            for impl, tf in row.items():
                series[(_impl_order(impl), p)].append((seq, tf, g.quick_rounds is not None))
    return {k: {f"{o[1]} {p}": pts for (o, p), pts in sorted(v.items())} for k, v in sorted(out.items())}


def attention_section(
    machines: Machines, plots: Mapping[tuple[str, int], tuple[str, str]], note: str = ""
) -> list[str]:
    """TFLOP/s of ``flash_attention`` and ``jax.nn.dot_product_attention`` per pass, D, dtype, masking
    and S; ``plots`` maps (machine, D) to the relative links of its PNG and SVG, ``note`` says why
    there are none."""
    lines = ["## Fused attention: `flash_attention` vs `jax.nn.dot_product_attention`", ""]
    lines += [
        "TFLOP/s = 4*B*H*Sq*Sk*D (half when causal; x3.5 for forward+backward) / median time. "
        "`flash_attention` runs the Triton kernels on a GPU and its XLA path on a CPU, where only XLA paths "
        "are meaningful (the Triton interpreter is a test tool).",
        "",
    ]
    body: list[str] = []
    used: list[Group] = []
    for machine, files in machines.items():
        points = attention_points(files["bench"])
        if not points:
            continue
        impls = sorted({i for row, _ in points.values() for i in row}, key=_impl_order)
        others = [i for i in impls if i != "flash_attention"]
        body += [
            f"### {machine}",
            "",
            "| pass | D | dtype | causal | S | B x H | "
            + " | ".join(f"{i} TFLOP/s" for i in impls)
            + "".join(f" | flash / {o}" for o in others)
            + " |",
            "|" + "---|" * (6 + len(impls) + len(others)),
        ]
        for key in sorted(points):
            row, g = points[key]
            mark = g.mark
            vals = " | ".join(f"{row[i]:.3g}{mark}" if i in row else "n/a" for i in impls)
            ratios = "".join(
                f" | {row['flash_attention'] / row[o]:.2f}x{mark}" if "flash_attention" in row and o in row else " | -"
                for o in others
            )
            q = next(iter(g.impls.values()))["extra_info"].get("shapes", {}).get("q")
            bh = f"{q[0]} x {q[2]}" if q and len(q) == 4 else "-"
            p, d, dt, causal, seq = key
            body.append(f"| {p} | {d} | {dt} | {'yes' if causal else 'no'} | {seq} | {bh} | {vals}{ratios} |")
            used.append(g)
        body.append("")
        for (m, d), (png, svg) in sorted(plots.items()):
            if m == machine:
                body += [f"![{machine}: TFLOP/s against sequence length, D={d}, bf16]({png}) ([SVG]({svg}))", ""]
        if note:
            body += [note, ""]
    if not body:
        return [*lines, "No attention benchmark results yet: run `jax-cer bench -k attention`.", ""]
    return [*lines, *body, *quick_footnote(used)]


def _impl_order(impl: str) -> tuple[int, str]:
    return (ATTENTION_IMPLS.index(impl) if impl in ATTENTION_IMPLS else len(ATTENTION_IMPLS), impl)


def kernel_check_section(machines: Machines) -> list[str]:
    """Long-sequence kernel correctness (``python -m repro.kernel_check``), newest file per machine:
    per dtype, D and masking, the cases that pass, the longest S, and the worst error / bound."""
    lines: list[str] = ["### Kernel correctness at long sequences (GPU)", ""]
    body: list[str] = []
    for machine, files in machines.items():
        if not files["kernelcheck"]:
            continue
        f = files["kernelcheck"][-1]
        data = f.data
        cases = data.get("cases", [])
        groups: dict[tuple, list[dict]] = defaultdict(list)
        for c in cases:
            groups[(c["dtype"], c["d"], "causal" if c["causal"] else "full")].append(c)
        ok = sum(c["passed"] for c in cases)
        body += [
            f"#### {machine} (`{f.path.name}`, backend {data.get('backend', '?')}): {ok}/{len(cases)} cases pass"
            + (f", {len(data['not_run'])} not run" if data.get("not_run") else ""),
            "",
            f"Rule: {data.get('rule', '?')}. Worst ratio = max over the case's out, dq, dk, dv of error / bound "
            "(<= 1 passes).",
            "",
            "| dtype | D | mask | cases pass | longest S | worst error / bound | worst out error | worst dq error |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for (dtype, d, mask), group in sorted(groups.items()):
            checks = [c["checks"] for c in group if "checks" in c]
            ratio = max((r["error"] / r["bound"] for ch in checks for r in ch.values() if r["bound"]), default=0.0)
            out_err = max((ch["out"]["error"] for ch in checks), default=float("nan"))
            dq_err = max((ch["dq"]["error"] for ch in checks), default=float("nan"))
            n_ok = sum(c["passed"] for c in group)
            longest = max(max(c["sq"], c["sk"]) for c in group)
            body.append(
                f"| {dtype} | {d} | {mask} | {n_ok}/{len(group)} | {longest} | {ratio:.2f} | {out_err:.2e} | "
                f"{dq_err:.2e} |"
            )
        failures = [c for c in cases if not c["passed"]]
        if failures:
            body.append("")
        for c in failures:
            body.append(f"- **FAIL** {c['label']}: {c.get('error') or 'error above its bound'}")
        if data.get("not_run"):
            body += ["", f"Not run (budget): {', '.join(data['not_run'])}."]
        body.append("")
    if not body:
        return [
            *lines,
            "No long-sequence kernel results yet: they come from a GPU (`python -m repro.gpu_campaign run parity`).",
            "",
        ]
    return [*lines, *body]


def _cfg(c: Mapping[str, int]) -> str:
    return f"{c['block_m']}x{c['block_n']} w{c['num_warps']} s{c['num_stages']}"


def sweep_section(machines: Machines) -> list[str]:
    """The block-size sweep (``python -m repro.attention_sweep``), newest file per machine and kernel:
    per case, the shipped configuration's and the fastest one's TFLOP/s, against cuDNN."""
    lines: list[str] = ["### Block-size sweep (GPU)", ""]
    body: list[str] = []
    for machine, files in machines.items():
        newest: dict[str, tuple[ResultFile, dict]] = {}  # kernel -> the newest file that swept it
        for f in reversed(files["sweep"]):
            for kernel, entry in f.data.get("kernels", {}).items():
                newest.setdefault(kernel, (f, entry))
        if not newest:
            continue
        body += [
            f"#### {machine}",
            "",
            "| kernel | dtype, D | S, mask | shipped | shipped TFLOP/s | fastest | fastest TFLOP/s "
            "| fastest / shipped | fastest / cuDNN | candidates timed | file |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for kernel, (f, entry) in newest.items():
            timed = [r for r in entry["candidates"] if r.get("cases")]
            shipped = next((r for r in timed if r["config"] == entry["shipped"]), None)
            for key in entry.get("cudnn_ms", {}):
                ok = [r for r in timed if "ms" in r["cases"].get(key, {})]
                if not ok:
                    continue
                best = min(ok, key=lambda r: r["cases"][key]["ms"])
                b = best["cases"][key]
                sh = shipped["cases"].get(key, {}) if shipped else {}
                sh_tf = f"{sh['tflops']:.0f}" if "tflops" in sh else "-"
                vs_sh = f"{sh['ms'] / b['ms']:.2f}x" if "ms" in sh else "-"
                vs_cu = f"{b['vs_cudnn']:.2f}x" if b.get("vs_cudnn") else "-"
                body.append(
                    f"| {kernel} | {f.data.get('dtype')}, {f.data.get('head_dim')} | {key} | "
                    f"{_cfg(entry['shipped'])} | {sh_tf} | {_cfg(best['config'])} | {b['tflops']:.0f} | {vs_sh} | "
                    f"{vs_cu} | {len(ok)} | `{f.path.name}` |"
                )
        body.append("")
    if not body:
        return [*lines, "No block-size sweep yet: it needs a GPU (`python -m repro.gpu_campaign run profile`).", ""]
    return [*lines, *body]


def profile_section(machines: Machines) -> list[str]:
    """Nsight Compute's headline metrics per kernel, from each machine's newest profile CSV."""
    lines: list[str] = ["### Nsight Compute profile (GPU)", ""]
    body: list[str] = []
    for machine, files in machines.items():
        if not files["profile"]:
            continue
        f = files["profile"][-1]
        rows = ncu.summarize(f.data["text"])
        if not rows:
            body += [f"#### {machine}", "", f"`{f.path.name}` holds no ncu metrics (see the campaign's log).", ""]
            continue
        metrics = [m for m in ncu.HEADLINE if any(m in r for r in rows)]
        body += [
            f"#### {machine} (`{f.path.name}`)",
            "",
            "| launch | kernel | " + " | ".join(metrics) + " |",
            "|---|---|" + "---|" * len(metrics),
        ]
        for r in rows:
            body.append(f"| {r['id']} | `{r['kernel']}` | " + " | ".join(r.get(m, "-") for m in metrics) + " |")
        body.append("")
    if not body:
        return [*lines, "No profile yet: it needs a GPU (`python -m repro.gpu_campaign run profile`).", ""]
    return [*lines, *body]


def aot_section(files: Sequence[ResultFile]) -> list[str]:
    """The kernels' registers, spills and shared memory per shipped configuration, compiled ahead of
    time for GPU targets (``python -m jax_cer.kernels.aot --json``), from the newest such file."""
    lines = ["### Kernel resources (ahead-of-time compilation)", ""]
    if not files:
        return [
            *lines,
            "No ahead-of-time compile results yet: run `python -m jax_cer.kernels.aot --json <results>/aot/"
            "kernels-aot.json` (no GPU needed).",
            "",
        ]
    data = files[-1].data
    try:
        results = [CompileResult(**r) for r in data["results"]]
    except TypeError as e:
        raise ValueError(f"{files[-1].path}: a result row does not match the compile table's fields ({e})") from None
    spills = sum(r.spill_stores + r.spill_loads > 0 for r in results)
    targets = sorted({r.cc for r in results})
    limits = data.get("shared_limit", {})
    limit_text = ", ".join(f"{int(limits[str(cc)]) / 1024:.0f} KiB on sm_{cc}" for cc in targets if str(cc) in limits)
    variants = sorted({r.variant for r in results})
    meaning = {
        "aligned": "`aligned` (D = BLOCK_D, strides multiples of 16: vector loads and pipelined copies, which "
        "take shared memory)",
        "unaligned": "`unaligned` (an odd D: element-wise masked loads, which take registers)",
    }
    return [
        *lines,
        f"Every shipped configuration compiled with Triton {data.get('triton', '?')} for "
        f"{' and '.join(f'sm_{cc}' for cc in targets)}, without a GPU (`python -m jax_cer.kernels.aot`): "
        f"{len(results)} compilations, {spills} with register spills, largest shared memory "
        f"{max((r.shared_bytes for r in results), default=0) / 1024:.1f} KiB"
        + (f" (limits: {limit_text})" if limit_text else "")
        + ". Compiled with causal masking and per-example lengths enabled, as jax-triton compiles them "
        "(aligned arrays, unit strides as constants), in "
        + " and ".join(meaning.get(v, f"`{v}`") for v in variants)
        + ".",
        "",
        *_tensor_core_lines(results),
        table(results),
        "",
    ]


def _tensor_core_lines(results: Sequence[CompileResult]) -> list[str]:
    """Whether the 16-bit aligned kernels at the models' head dims compile to tensor-core
    instructions with pipelined loads (:func:`jax_cer.kernels.aot.problems`)."""
    tensor = [
        r
        for r in results
        if r.variant == "aligned"
        and r.dtype != "float32"
        and r.kernel in TENSOR_CORE_KERNELS
        and r.block_d in TENSOR_CORE_HEAD_DIMS
    ]
    if not tensor or not any(r.wgmma or r.mma_sync for r in results):
        return []  # a table written before the instruction counts were recorded
    good = [r for r in tensor if not problems(r)]
    dims = " and ".join(str(d) for d in TENSOR_CORE_HEAD_DIMS)
    return [
        f"Tensor cores: {len(good)} of the {len(tensor)} 16-bit aligned forward, dK/dV and dQ compilations at "
        f"D {dims} use `wgmma` only on sm_90 and `mma.sync` on sm_80, with their loads pipelined by "
        "`cp.async` over at least 2 stages (the last three columns count those instructions in the PTX; "
        "`python -m jax_cer.kernels.aot --ptx-dir DIR` writes it).",
        "",
    ]


# -- SO ------------------------------------------------------------------------------------------------
def _so_problem(machines: Machines) -> str:
    """What the SO rows were measured on, from the newest optimizer benchmark that records it."""
    for files in machines.values():
        for f in reversed(files["bench"]):
            for b in f.data.get("benchmarks", []):
                info = b.get("extra_info", {})
                if info.get("component") == "optimizer" and "tensors" in info and "weights" in info:
                    where = info.get("parameter_set") or "random matrices of CLIP ViT-B/16's shapes"
                    refresh = (
                        f"; `so` refreshes its masks every {info['refresh_every']} steps"
                        if ("refresh_every" in info)
                        else ""
                    )
                    return (
                        f"The parameter set: {where} ({info['tensors']} {info.get('dtype', '')} matrices, "
                        f"{info['weights'] / 1e6:.1f}M weights){refresh}. "
                    )
    return ""


def optimizer_section(machines: Machines) -> list[str]:
    """SO against Adam: step time and state bytes per density and XLA scheduler; the step's parts."""
    lines = ["## SO sparse optimizer vs `optax.adam`", ""]
    lines += [
        _so_problem(machines)
        + "One step = `tx.update` + `optax.apply_updates` in one `jax.jit`, parameters and optimizer state "
        "donated, same run for both. State = bytes of every array in the optimizer state. `so` keeps support "
        "(int32) + m + v per kept entry, 12 bytes against Adam's 8 per weight, so its state is 1.5 x (sum of "
        "k) / (density x n) times density x Adam's, plus the step counter and PRNG key; the last column is "
        "that ratio.",
        "",
    ]
    body: list[str] = []
    used: list[Group] = []
    for machine, files in machines.items():
        steps = newest_groups(files["bench"], optimizer_group("optimizer"))
        parts = newest_groups(files["bench"], optimizer_group("optimizer-part"))
        if not steps and not parts:
            continue
        body += [f"### {machine}", ""]
        rows = [(k, g) for k, g in sorted(steps.items()) if "so" in g.impls and "adam" in g.impls]
        if rows:
            body += [
                "| density | XLA scheduler | `so` ms (p20-p80) | `optax.adam` ms (p20-p80) | so / adam time "
                "| `so` state | Adam state | so / (density x Adam) |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for (density, sched), g in rows:
                so_b, adam_b, mark = g.impls["so"], g.impls["adam"], g.mark
                ratio = median_ms(so_b) / median_ms(adam_b)
                sb, ab = so_b["extra_info"]["state_bytes"], adam_b["extra_info"]["state_bytes"]
                body.append(
                    f"| {density:g} | {sched} | {_ms_cell(so_b, mark)} | {_ms_cell(adam_b, mark)} | "
                    f"**{ratio:.2f}x**{mark} | {sb:,} B | {ab / 1e6:,.1f} MB | **{sb / (density * ab):.3f}** |"
                )
                used.append(g)
            body.append("")
        if parts:
            names = ["masks", "moments_and_pruning", "dense_update_and_apply"]
            body += [
                "Parts of one `so` step, each jitted alone (ms, median):",
                "",
                "| density | XLA scheduler | " + " | ".join(names) + " |",
                "|---|---|" + "---|" * len(names),
            ]
            for (density, sched), g in sorted(parts.items()):
                cells = " | ".join(f"{median_ms(g.impls[n]):.1f}{g.mark}" if n in g.impls else "-" for n in names)
                body.append(f"| {density:g} | {sched} | {cells} |")
                used.append(g)
            body.append("")
    if not body:
        return [*lines, "No optimizer benchmark results yet: run `jax-cer bench -k so`.", ""]
    return [*lines, *body, *quick_footnote(used)]


# -- text models -------------------------------------------------------------------------------------------
def fewshot_summary(runs: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per (shots, method): the seeds and the mean and standard deviation over seeds of the test accuracy
    and weighted F1 (``test_<metric>_mean`` / ``_std``; std 0 for a single seed), sorted by shots, method."""
    groups: dict[tuple, list[Mapping[str, Any]]] = defaultdict(list)
    for r in runs:
        groups[(r["shots"], r["method"])].append(r)
    out = []
    for (shots, method), rs in sorted(groups.items()):
        row: dict[str, Any] = {"shots": shots, "method": method, "seeds": [r["seed"] for r in rs]}
        for metric in ("accuracy", "weighted_f1"):
            vals = [r["test"][metric] for r in rs]
            row[f"test_{metric}_mean"] = statistics.fmean(vals)
            row[f"test_{metric}_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        out.append(row)
    return out


def _schedule(s: Mapping[str, Any]) -> str:
    budget = f"{s['steps']} steps" if s.get("steps") else f"{s.get('epochs', '?')} epochs"
    return f"{budget} of batch {s.get('batch_size', '?')}"


def run_settings(run: Mapping[str, Any]) -> str:
    """A run's recorded settings as text: optimizer, schedule, regularization and the method's own."""
    s = run.get("settings", {})
    parts = [f"{run.get('optimizer', '?')}, lr {s['lr']:g}" if "lr" in s else str(run.get("optimizer", "?"))]
    parts.append(_schedule(s))
    if "weight_decay" in s:
        parts.append(f"weight decay {s['weight_decay']:g}")
    if "clip_norm" in s:
        parts.append(f"gradient clipped at norm {s['clip_norm']:g}")
    if "warmup" in s:
        parts.append(f"warmup {s['warmup']:g} of the steps, then cosine decay")
    if "max_length" in s:
        parts.append(f"at most {s['max_length']} tokens")
    if run.get("method") == "lora" and "lora_rank" in s:
        targets = ", ".join(s.get("lora_targets", []))
        parts.append(
            f"LoRA on {targets or '?'}: r {s['lora_rank']}, alpha {s.get('lora_alpha', 0):g}"
            + (", rsLoRA" if s.get("lora_rslora") else "")
            + f", dropout {s.get('lora_dropout', 0):g}"
        )
    if run.get("method") == "so" and "density" in s:
        parts.append(f"density {s['density']:g}, masks refreshed every {s.get('refresh_every', '?')} steps")
    return "; ".join(parts)


def _text_parity_lines(d: Mapping[str, Any], path: Path, md_dir: Path) -> list[str]:
    errs = d["hidden_state_max_abs"]
    where = f"`{_rel(path, md_dir)}`"
    if "inputs" in d:  # --random-init: drawn weights, random ids, on the machine's GPU if it has one
        intro = (
            f"Encoder parity on {d['machine']} ({where}, `python -m repro.text_parity --random-init`): "
            f"{d['inputs']}, {d['checkpoint']}, JAX on {d['devices']['jax']} against transformers "
            f"{d['versions']['transformers']} `BertModel` on {d['devices']['torch']} (hidden states over real "
            f"tokens; mean-pooled, normalized embeddings); tolerance {d['tolerance']:g}."
        )
    else:
        intro = (
            f"Encoder parity on {d['machine']} ({where}, `python -m repro.text_parity`): {d['sentences']} MELD "
            f"test utterances through {d['checkpoint']}, against transformers {d['versions']['transformers']} "
            f"`BertModel` (hidden states, real tokens) and sentence-transformers (embeddings); token ids "
            f"{'identical' if d['token_ids_equal'] else 'DIFFERENT'}; tolerance {d['tolerance']:g}."
        )
    return [
        intro,
        "",
        "| " + " | ".join(errs) + " | sentence embedding | result |",
        "|" + "---|" * (len(errs) + 2),
        "| " + " | ".join(f"{v:.1e}" for v in errs.values()) + f" | {d['embedding_max_abs']:.1e} | "
        f"{'pass' if d['passed'] else 'FAIL'} |",
        "",
    ]


def _meld_lines(machine: str, f: ResultFile, md_dir: Path) -> list[str]:
    data = f.data
    runs = data.get("runs", [])
    full = [r for r in runs if not r["shots"]]
    lines = [f"### {machine} (`{_rel(f.path, md_dir)}`)", ""]
    device = f" on the {data['backend'].upper()}" if data.get("backend") else ""
    if full:
        select = full[0].get("select", "weighted_f1").replace("_", " ").replace("f1", "F1")
        size = f" ({full[0]['train_examples']:,} examples)" if "train_examples" in full[0] else ""
        lines += [
            f"Full training set{size}, the checkpoint with the best dev {select} scored on test{device}:",
            "",
            "| method | optimizer | lr | trained params | steps (kept) | dev weighted F1 | test accuracy "
            "| test weighted F1 | wall |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        order = ("full", "lora", "so")
        for r in sorted(full, key=lambda r: (order.index(r["method"]) if r["method"] in order else 9, r["method"])):
            s = r["settings"]
            lines.append(
                f"| {r['method']} | {r['optimizer']} | {s['lr']:g} | {r['trainable_params']:,} | "
                f"{r['steps']} ({r['kept_step']}) | {r['val']['weighted_f1']:.4f} | {r['test']['accuracy']:.4f} | "
                f"**{r['test']['weighted_f1']:.4f}** | {r['wall_s'] / 60:.1f} min |"
            )
        lines += ["", "Settings of each run (as recorded):", ""]
        lines += [f"- {r['method']}: {run_settings(r)}" for r in full]
        top = max(full, key=lambda r: r["test"]["weighted_f1"])
        lo, hi = PUBLISHED_MELD_TEXT
        wf1 = top["test"]["weighted_f1"]
        where = "inside" if lo <= wf1 <= hi else "below" if wf1 < lo else "above"
        size = f" ({top['params'] / 1e6:.1f}M parameters in that run's model)" if "params" in top else ""
        lines += [
            "",
            f"Best: {top['method']} at {wf1:.4f} test weighted F1, {where} the published text-only range "
            f"({lo:g}-{hi:g}), with a sentence encoder that sees one utterance and no dialogue context{size}.",
            "",
        ]
    base = data.get("majority_baseline")
    if base:
        lines += [
            f"Majority baseline (always `{base['class']}`, the most frequent training class): test accuracy "
            f"{base['accuracy']:.4f}, weighted F1 {base['weighted_f1']:.4f}.",
            "",
        ]
    shots = [r for r in runs if r["shots"]]
    if shots:
        methods = sorted({r["method"] for r in shots})
        per_method = {m: run_settings(next(r for r in shots if r["method"] == m)) for m in methods}
        kept = "the final model" if shots[0].get("select") == "final" else f"the best {shots[0].get('select')}"
        lines += [
            f"Few-shot: K utterances per class from train, {kept} scored on test{device} (mean ± standard "
            "deviation over seeds). Settings of each method (as recorded):",
            "",
            *[f"- {m}: {text}" for m, text in per_method.items()],
            "",
            "| shots | method | seeds | test accuracy | test weighted F1 |",
            "|---|---|---|---|---|",
        ]
        for row in fewshot_summary(shots):
            lines.append(
                f"| {row['shots']} | {row['method']} | {', '.join(map(str, row['seeds']))} | "
                f"{row['test_accuracy_mean']:.4f} ± {row['test_accuracy_std']:.4f} | "
                f"{row['test_weighted_f1_mean']:.4f} ± {row['test_weighted_f1_std']:.4f} |"
            )
        lines += [""]
    return lines


def text_section(machines: Machines, md_dir: Path) -> list[str]:
    """The text models on MELD (``python -m repro.text_meld``: full data and few-shot) and the text
    encoder's parity (``python -m repro.text_parity``); smoke runs are left out."""
    lo, hi = PUBLISHED_MELD_TEXT
    lines = ["## Text models on MELD (`python -m repro.text_meld`)", ""]
    lines += [
        "A sentence encoder with a pooling classification head on the textualized MELD transcript, trained in "
        "full, with LoRA, or with SO's sparse Adam; each run's settings are listed under its table. Published "
        f"text-only MELD results are roughly {lo:g}-{hi:g} weighted F1 (larger encoders, context from the "
        "dialogue).",
        "",
    ]
    body: list[str] = []
    for files in machines.values():
        for f in files["text-parity"]:
            body += _text_parity_lines(f.data, f.path, md_dir)
    for machine, files in machines.items():
        for f in files["text-meld"]:
            if not f.data.get("smoke"):
                body += _meld_lines(machine, f, md_dir)
    if not body:
        return [*lines, "No text results yet: run `python -m repro.text_meld`.", ""]
    return [*lines, *body]


# -- parity ------------------------------------------------------------------------------------------------
def parity_section(machines: Machines) -> list[str]:
    """The newest ``jax-cer repro --json`` record per machine: every check's max error and tolerance."""
    lines = ["## Parity against the golden reference (`jax-cer repro`)", ""]
    lines += [
        "Max error of each check against the PyTorch reference's golden files, with the check's tolerance "
        "(gradients relative, in float64).",
        "",
    ]
    body: list[str] = []
    for machine, files in machines.items():
        if not files["repro"]:
            continue
        data = files["repro"][-1].data
        ok = "all checks pass" if data.get("passed") else "FAILURES"
        body += [
            f"### {machine} ({data.get('device', '?')}, jax {data.get('jax', '?')}): {ok}",
            "",
            "| case | check | worst key | max error | tolerance | status |",
            "|---|---|---|---|---|---|",
        ]
        for r in data["results"]:
            status = "pass" if r["passed"] else "**FAIL**"
            err = f"{r['max_error']:.2e} | {r['tolerance']:.0e}"
            body.append(f"| {r['case']} | {r['check']} | `{r['key']}` | {err} | {status} |")
        body.append("")
    if not body:
        return [*lines, "No parity results yet: run `jax-cer repro --json <folder>/repro-<time>.json`.", ""]
    return [*lines, *body]


# -- files -------------------------------------------------------------------------------------------------
def _rel(path: Path, md_dir: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), Path(md_dir).resolve())).as_posix()


def files_section(files: Sequence[ResultFile], md_dir: Path) -> list[str]:
    """Every result file read, relative to the markdown's folder, by machine and kind."""
    lines = ["## Result files", ""]
    for f in sorted(files, key=lambda f: (f.machine or "~", KINDS.index(f.kind), f.when, f.path.name)):
        lines.append(f"- `{_rel(f.path, md_dir)}`")
    return [*lines, ""]
