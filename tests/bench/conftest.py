"""Benchmark records: every result file carries the machine and library versions.

float32 means float32 on both sides: JAX's benchmarks run at ``highest`` matmul precision, and
PyTorch's TF32 paths (cuDNN convolutions allow it by default on a GPU) are switched off here.
"""

from __future__ import annotations

from jax_cer.machine import machine_record


def pytest_configure(config) -> None:
    try:
        import torch
    except ImportError:
        return
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["jax_cer"] = machine_record()
