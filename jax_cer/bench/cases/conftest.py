"""pytest hooks of the benchmark cases: float32 means float32, and every result file records the machine.

JAX's benchmarks run at ``highest`` matmul precision; PyTorch's TF32 paths (cuDNN convolutions allow
it by default on a GPU) are switched off here. ``machine_info["jax_cer"]`` is the machine record
(:func:`jax_cer.machine.machine_record`) plus ``rounds``: the rounds override of the run (None when
every case ran its default).
"""

from __future__ import annotations

from jax_cer.bench.cases.timing import rounds_override
from jax_cer.machine import machine_record


def pytest_configure(config) -> None:
    rounds_override()  # a malformed $JAX_CER_BENCH_ROUNDS stops the run before any case
    try:
        import torch  # noqa: PLC0415 - optional: PyTorch is only the reference side of a comparison
    except ImportError:
        return  # the PyTorch cases skip, saying why
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def pytest_benchmark_update_machine_info(config, machine_info) -> None:
    machine_info["jax_cer"] = {**machine_record(), "rounds": rounds_override()}
