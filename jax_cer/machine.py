"""What a benchmark figure is stored with: device, driver, library versions, commit, date."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import re
import subprocess
from pathlib import Path

PACKAGES = ("jax-cer", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "torch", "triton", "jax-triton")


def _version(pkg: str) -> str | None:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_info() -> dict[str, str]:
    """Name, driver and CUDA version from nvidia-smi, when there is one."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout.strip()
        smi = subprocess.run(["nvidia-smi"], check=False, capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    if not out:
        return {}
    name, driver = (s.strip() for s in out.splitlines()[0].split(",", 1))
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", smi)
    return {"gpu": name, "driver": driver, "cuda": cuda.group(1) if cuda else ""}


def git_commit() -> str:
    """The commit of the package's source when it runs from a git checkout (editable install), else ``unknown``."""
    try:
        here = Path(__file__).resolve().parent
        return subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, cwd=here, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_record() -> dict:
    """The fields every result file carries (spec/benchmarks.md)."""
    import jax

    dev = jax.devices()[0]
    gpu = gpu_info() if dev.platform == "gpu" else {}
    cores = os.cpu_count() or 0
    device = (gpu.get("gpu") or dev.device_kind) if dev.platform == "gpu" else f"{cpu_name()} ({cores} cores)"
    return {
        "device": device,
        "platform": dev.platform,
        "cpu": f"{cpu_name()} ({cores} cores)",
        "driver": gpu.get("driver", ""),
        "cuda": gpu.get("cuda", ""),
        "python": platform.python_version(),
        "versions": {p: _version(p) for p in PACKAGES},
        "commit": git_commit(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def machine_slug(record: dict) -> str:
    """A folder name for a machine, e.g. ``cpu-amd-epyc-7b13-2c`` or ``gpu-nvidia-h100-80gb-hbm3``."""
    if record["platform"] == "gpu":
        base = f"gpu-{record['device']}"
    else:
        name = re.sub(r"\((R|TM)\)|\(\d+ cores\)|@.*", "", record["cpu"], flags=re.IGNORECASE)
        base = f"cpu-{name}-{os.cpu_count()}c"
    return re.sub(r"[^a-z0-9]+", "-", base.lower()).strip("-")
