"""Block sizes of the attention kernels, per kernel, dtype, head-dim bucket and layout variant.

A *configuration* is (kernel, dtype, padded head dim ``BLOCK_D``, variant): these are what the
package ships, what the ahead-of-time check compiles for sm_80 and sm_90
(:mod:`jax_cer.kernels.aot`), and what a GPU launch uses. The *variant* is the memory layout the
launch sees: ``aligned`` when D fills its tile (D == BLOCK_D: 32, 64, 128, 256) and every stride is
a multiple of 16 elements, as in every contiguous array of such a D, so loads vectorize and
pipeline; ``unaligned`` otherwise (an odd D such as 59, loaded one element at a time, which costs
registers). Each variant has its own tiles, so the aligned one is not held back by the other's
worst case. The CPU interpreter uses one large-tile configuration (its time is per program) unless
:func:`override` names one. No autotuning here: :func:`override` lets a sweep
(``python -m repro.attention_sweep``) time alternatives on a GPU, and the interpreter tests run the
shipped block sizes numerically on the CPU.
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


VARIANTS = ("aligned", "unaligned")


def variant_of(even_d: bool, align: int) -> str:
    """The variant a launch compiles: ``aligned`` when D == BLOCK_D and every stride is a multiple
    of 16 elements (the kernels' ``EVEN_D`` and ``ALIGN`` hints), else ``unaligned``."""
    return "aligned" if even_d and align >= 16 else "unaligned"


# (kernel, "16" for float16 / bfloat16 or "32" for float32, BLOCK_D) -> (BLOCK_M, BLOCK_N, warps, stages).
# dK/dV programs own BLOCK_N keys and loop over BLOCK_M queries; dQ and forward programs own BLOCK_M
# queries and loop over BLOCK_N keys.
#
# The unaligned variant: the largest tiles that compile for both sm_80 and sm_90 without register
# spills and within shared memory when every load is element-wise (python -m jax_cer.kernels.aot).
# float32 uses these tiles in both variants.
_UNALIGNED: dict[tuple[str, str, int], tuple[int, int, int, int]] = {
    ("fwd", "16", 32): (128, 64, 8, 3),
    ("fwd", "16", 64): (128, 64, 8, 3),
    ("fwd", "16", 128): (64, 64, 8, 2),
    ("fwd", "16", 256): (32, 32, 8, 2),
    ("fwd", "32", 32): (32, 32, 8, 2),
    ("fwd", "32", 64): (64, 16, 8, 2),
    ("fwd", "32", 128): (32, 16, 8, 1),
    ("fwd", "32", 256): (16, 16, 8, 1),
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
    ("bwd_dq", "16", 64): (64, 16, 8, 1),
    ("bwd_dq", "16", 128): (32, 32, 8, 1),
    ("bwd_dq", "16", 256): (16, 16, 8, 1),
    ("bwd_dq", "32", 32): (32, 32, 8, 1),
    ("bwd_dq", "32", 64): (32, 32, 8, 1),
    ("bwd_dq", "32", 128): (32, 16, 8, 1),
    ("bwd_dq", "32", 256): (16, 16, 8, 2),
}

# The aligned variant's 16-bit tiles, sized for tensor cores, per GPU generation (TARGETS). On
# sm_90 every dot of the kernel has a 64-row (one warpgroup) or 128-row (two) M dimension so that
# it compiles to wgmma; on sm_80 the tiles are smaller (mma.sync keeps both operands and the
# accumulators in registers). On both the loop's loads are pipelined by cp.async over 2 or more
# stages. Chosen with the ahead-of-time sweep (python -m repro.attention_sweep --aot-only,
# checked by python -m jax_cer.kernels.aot), starting from the Triton tutorial's Hopper recipe
# (forward BLOCK_M 64-128 x BLOCK_N 32-128; backward dK/dV 32 queries x 128 keys and dQ 128
# queries x 32 keys, 4 warps, 5 stages): the tutorial's tile where it compiles without spills,
# with 8 warps where 4 spill. Entries not listed are the unaligned tiles.
_TENSOR_CORE_16: dict[tuple[str, int, int], tuple[int, int, int, int]] = {
    # sm_90: the forward takes the tutorial's Hopper tiles (128 x 64 with 4 warps; 128 x 128 with
    # 8 warps at D 128, where 128 x 64 with 4 warps spills); the backward the tutorial's tiles and
    # 5 stages, with 8 warps where 4 spill (dK/dV at D 64 and 128, dQ at D 128).
    ("fwd", 64, 90): (128, 64, 4, 3),
    ("fwd", 128, 90): (128, 128, 8, 3),
    ("bwd_dkdv", 64, 90): (32, 128, 8, 5),
    ("bwd_dkdv", 128, 90): (32, 128, 8, 5),
    ("bwd_dq", 64, 90): (128, 32, 4, 5),
    ("bwd_dq", 128, 90): (128, 32, 8, 5),
    # sm_80: the forward's unaligned tiles already pipeline (mma.sync, 2-3 stages); the backward's
    # tutorial tiles with 8 warps and 3 stages, halved where they spill (D 128).
    ("bwd_dkdv", 64, 80): (32, 128, 8, 3),
    ("bwd_dkdv", 128, 80): (32, 64, 8, 3),
    ("bwd_dq", 64, 80): (128, 32, 8, 3),
    ("bwd_dq", 128, 80): (64, 32, 8, 3),
}

TARGETS = (80, 90)
"""GPU generations with their own tables: 90 (Hopper, sm_90: wgmma, 227 KiB of shared memory per
block; also data-centre Blackwell, sm_100-sm_103, with as much) and 80 (Ampere and Ada, sm_80-sm_89:
mma.sync; also consumer Blackwell, sm_120, whose blocks get about 99 KiB, less than the Hopper
tiles need)."""


def target_of(compute_capability: int | float | str) -> int:
    """The table a device of this compute capability (``90``, ``"9.0"``, ``8.6``) uses."""
    cc = float(compute_capability)
    cc = round(cc * 10) if cc < 20 else cc
    return 90 if 90 <= cc < 110 else 80


def _table(kernel: str, dtype: str, bd: int, variant: str, target: int) -> tuple[int, int, int, int]:
    width = "32" if dtype == "float32" else "16"
    if variant == "aligned" and width == "16" and (kernel, bd, target) in _TENSOR_CORE_16:
        return _TENSOR_CORE_16[(kernel, bd, target)]
    return _UNALIGNED[(kernel, width, bd)]


_OVERRIDES: dict[tuple[str, str, int, str, int], KernelConfig] = {}


def _check_key(kernel: str, dtype: str, bd: int, variant: str, target: int = 90) -> None:
    if (
        kernel not in KERNELS
        or dtype not in DTYPES
        or bd not in HEAD_DIMS
        or variant not in VARIANTS
        or target not in TARGETS
    ):
        raise ValueError(
            f"no configuration for kernel={kernel!r}, dtype={dtype!r}, BLOCK_D={bd}, variant={variant!r}, "
            f"target={target!r}"
        )


def gpu_config(kernel: str, dtype: str, bd: int, variant: str = "aligned", target: int = 90) -> KernelConfig:
    """The configuration of ``kernel`` for ``dtype``, padded head dim ``bd``, ``variant`` and GPU
    generation ``target`` (:func:`target_of`): the shipped one, unless :func:`override` replaces it."""
    _check_key(kernel, dtype, bd, variant, target)
    if (kernel, dtype, bd, variant, target) in _OVERRIDES:
        return _OVERRIDES[(kernel, dtype, bd, variant, target)]
    return KernelConfig(*_table(kernel, dtype, bd, variant, target))


def interpret_config(kernel: str, dtype: str, bd: int, variant: str) -> KernelConfig:
    """What the CPU interpreter runs: :data:`INTERPRET_CONFIG`, or the configuration an
    :func:`override` names (so the block sizes a GPU runs can be checked numerically here)."""
    _check_key(kernel, dtype, bd, variant)
    return _OVERRIDES.get((kernel, dtype, bd, variant, INTERPRETER_TARGET), INTERPRET_CONFIG)


@contextlib.contextmanager
def override(
    kernel: str, dtype: str, bd: int, config: KernelConfig, variant: str | None = None, target: int | None = None
):
    """Uses ``config`` for (kernel, dtype, BLOCK_D), ``variant`` and ``target`` (default: both of
    each) in what is *traced* inside the block (a config sweep: jit a fresh function inside it), on
    the GPU and in the interpreter (which runs the ``target`` 90 entry). Not thread-safe; the
    shipped table is back afterwards."""
    variants = VARIANTS if variant is None else (variant,)
    targets = TARGETS if target is None else (target,)
    for v in variants:
        for t in targets:
            _check_key(kernel, dtype, bd, v, t)
    if config.block_m & (config.block_m - 1) or (config.block_n and config.block_n & (config.block_n - 1)):
        raise ValueError(f"block sizes must be powers of two, got {config}")
    keys = [(kernel, dtype, bd, v, t) for v in variants for t in targets]
    before = {key: _OVERRIDES.get(key) for key in keys}
    _OVERRIDES.update(dict.fromkeys(keys, config))
    try:
        yield config
    finally:
        for key, old in before.items():
            if old is None:
                _OVERRIDES.pop(key, None)
            else:
                _OVERRIDES[key] = old


INTERPRET_CONFIG = KernelConfig(64, 64, 4, 1)
"""CPU interpreter: large tiles, since the interpreter's cost is per program."""
INTERPRETER_TARGET = 90
"""Which target's :func:`override` entries the interpreter runs."""


def shipped() -> list[tuple[str, str, int, str, int, KernelConfig]]:
    """Every shipped (kernel, dtype, BLOCK_D, variant, target, config)."""
    return [
        (k, dt, bd, v, t, gpu_config(k, dt, bd, v, t))
        for k in KERNELS
        for dt in DTYPES
        for bd in HEAD_DIMS
        for v in VARIANTS
        for t in TARGETS
    ]
