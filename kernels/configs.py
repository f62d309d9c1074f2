"""Block sizes of the attention kernels, per head-dim bucket and dtype.

A *configuration* is (kernel, dtype, padded head dim ``BLOCK_D``): these are what the package
ships, what the ahead-of-time check compiles for sm_80 and sm_90 (:mod:`jax_cer.kernels.aot`), and what
a GPU launch uses. The CPU interpreter uses one large-tile configuration (its time is per program).
No autotuning here: :func:`override` lets a sweep (``python -m repro.attention_sweep``) time
alternatives on a GPU, and ``jax_cer.kernels.aot`` checks their resources without one.
"""

from __future__ import annotations

import contextlib
import dataclasses

KERNELS = ("fwd", "bwd_preprocess", "bwd_dkdv", "bwd_dq")
DTYPES = ("float32", "float16", "bfloat16")
HEAD_DIMS = (32, 64, 128, 256)
"""Padded head-dim buckets (``BLOCK_D``): D <= 32 pads to 32, then powers of two up to 256."""
MAX_HEAD_DIM = 256


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


def block_d(head_dim: int) -> int:
    """The padded head dim for ``head_dim`` (masked loads fill the padding with zeros)."""
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"head dim {head_dim} is not supported: the kernels serve 1 <= D <= {MAX_HEAD_DIM}")
    return max(32, 1 << (head_dim - 1).bit_length())


# (kernel, "16" for float16 / bfloat16 or "32" for float32, BLOCK_D) -> (BLOCK_M, BLOCK_N, warps, stages).
# Chosen from an ahead-of-time sweep (python -m jax_cer.kernels.aot compiles them) as the largest tiles
# that compile for both sm_80 and sm_90, in both the aligned (vectorized, pipelined) and the
# unaligned (odd D) variant, without register spills and within shared memory; not yet tuned for
# speed on a GPU (python -m repro.attention_sweep is the tool for that). dK/dV programs own
# BLOCK_N keys and loop over BLOCK_M queries.
_TABLE: dict[tuple[str, str, int], tuple[int, int, int, int]] = {
    ("fwd", "16", 32): (128, 64, 8, 3),
    ("fwd", "16", 64): (128, 64, 8, 3),
    ("fwd", "16", 128): (64, 64, 8, 2),
    ("fwd", "16", 256): (32, 32, 8, 2),
    ("fwd", "32", 32): (32, 32, 8, 2),
    ("fwd", "32", 64): (64, 16, 8, 2),
    ("fwd", "32", 128): (16, 64, 8, 1),
    ("fwd", "32", 256): (16, 32, 8, 1),
    ("bwd_preprocess", "16", 32): (64, 0, 4, 1),
    ("bwd_preprocess", "16", 64): (64, 0, 4, 1),
    ("bwd_preprocess", "16", 128): (64, 0, 8, 1),
    ("bwd_preprocess", "16", 256): (32, 0, 8, 1),
    ("bwd_preprocess", "32", 32): (64, 0, 4, 1),
    ("bwd_preprocess", "32", 64): (64, 0, 4, 1),
    ("bwd_preprocess", "32", 128): (64, 0, 8, 1),
    ("bwd_preprocess", "32", 256): (32, 0, 8, 1),
    ("bwd_dkdv", "16", 32): (64, 64, 8, 2),
    ("bwd_dkdv", "16", 64): (32, 32, 8, 1),
    ("bwd_dkdv", "16", 128): (64, 16, 8, 1),
    ("bwd_dkdv", "16", 256): (16, 16, 8, 1),
    ("bwd_dkdv", "32", 32): (32, 32, 8, 1),
    ("bwd_dkdv", "32", 64): (16, 32, 8, 1),
    ("bwd_dkdv", "32", 128): (16, 32, 8, 1),
    ("bwd_dkdv", "32", 256): (16, 16, 8, 1),
    ("bwd_dq", "16", 32): (64, 64, 8, 2),
    ("bwd_dq", "16", 64): (32, 32, 8, 1),
    ("bwd_dq", "16", 128): (32, 32, 8, 1),
    ("bwd_dq", "16", 256): (16, 16, 8, 1),
    ("bwd_dq", "32", 32): (32, 32, 8, 1),
    ("bwd_dq", "32", 64): (32, 32, 8, 1),
    ("bwd_dq", "32", 128): (64, 16, 8, 1),
    ("bwd_dq", "32", 256): (16, 16, 8, 1),
}


_OVERRIDES: dict[tuple[str, str, int], KernelConfig] = {}


def gpu_config(kernel: str, dtype: str, bd: int) -> KernelConfig:
    """The configuration of ``kernel`` for ``dtype`` and padded head dim ``bd``: the shipped one,
    unless :func:`override` replaces it."""
    if kernel not in KERNELS or dtype not in DTYPES or bd not in HEAD_DIMS:
        raise ValueError(f"no configuration for kernel={kernel!r}, dtype={dtype!r}, BLOCK_D={bd}")
    if (kernel, dtype, bd) in _OVERRIDES:
        return _OVERRIDES[(kernel, dtype, bd)]
    return KernelConfig(*_TABLE[(kernel, "32" if dtype == "float32" else "16", bd)])


@contextlib.contextmanager
def override(kernel: str, dtype: str, bd: int, config: KernelConfig):
    """Uses ``config`` for (kernel, dtype, BLOCK_D) in what is *traced* inside the block (a config
    sweep: jit a fresh function inside it). Not thread-safe; the shipped table is back afterwards."""
    gpu_config(kernel, dtype, bd)  # validates the key
    if config.block_m & (config.block_m - 1) or (config.block_n and config.block_n & (config.block_n - 1)):
        raise ValueError(f"block sizes must be powers of two, got {config}")
    before = _OVERRIDES.get((kernel, dtype, bd))
    _OVERRIDES[(kernel, dtype, bd)] = config
    try:
        yield config
    finally:
        if before is None:
            del _OVERRIDES[(kernel, dtype, bd)]
        else:
            _OVERRIDES[(kernel, dtype, bd)] = before


INTERPRET_CONFIG = KernelConfig(64, 64, 4, 1)
"""CPU interpreter: large tiles, since the interpreter's cost is per program."""


def shipped() -> list[tuple[str, str, int, KernelConfig]]:
    """Every shipped (kernel, dtype, BLOCK_D, config)."""
    return [(k, dt, bd, gpu_config(k, dt, bd)) for k in KERNELS for dt in DTYPES for bd in HEAD_DIMS]
