"""What a benchmark figure is stored with: device, driver, library versions, commit, date.

A leaf module (it imports nothing from the package), so that the benchmarks, the parity checks and
the repository's scripts can all stamp their result files with the same record.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import re
import subprocess
from pathlib import Path

import jax

PACKAGES = ("jax-cer", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "torch", "triton", "jax-triton")


def _version(pkg: str) -> str | None:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else what ``platform`` knows)."""
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
    """The commit of the package's source when it runs from a git checkout (editable install), else
    ``unknown`` (also for an installed copy that merely sits inside some other git work tree)."""
    here = Path(__file__).resolve().parent
    try:
        subprocess.run(
            ["git", "ls-files", "--error-unmatch", Path(__file__).name],
            capture_output=True,
            cwd=here,
            check=True,
        )
        return subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, cwd=here, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_record() -> dict:
    """The fields every result file carries: device, platform, CPU, GPU driver and CUDA, Python,
    library versions, the package's commit and the date (UTC)."""
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
    """A folder name for the machine a record describes, e.g. ``cpu-amd-epyc-7b13-2c`` or
    ``gpu-nvidia-h100-80gb-hbm3``; it depends on the record only, so result files read on another
    machine give the same name. Raises ``ValueError`` naming the missing field of a malformed record."""
    for key in ("platform", "device") if record.get("platform") == "gpu" else ("platform", "cpu"):
        if not isinstance(record.get(key), str):
            raise ValueError(f"machine record has no {key!r} string: {sorted(record)}")
    if record["platform"] == "gpu":
        base = f"gpu-{record['device']}"
    else:
        cores = re.search(r"\((\d+) cores\)", record["cpu"])
        name = re.sub(r"\((R|TM)\)|\(\d+ cores\)|@.*", "", record["cpu"], flags=re.IGNORECASE)
        base = f"cpu-{name}-{cores.group(1) if cores else os.cpu_count()}c"
    return re.sub(r"[^a-z0-9]+", "-", base.lower()).strip("-")
