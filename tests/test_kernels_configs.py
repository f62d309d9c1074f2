"""The block sizes a GPU runs, run numerically in Triton's CPU interpreter.

The interpreter normally uses one large-tile configuration (its cost is per program), so the tiles
that ``jax_cer.kernels.configs`` ships for the GPU (16 x 16 up to 128 x 128, per kernel, dtype,
head-dim bucket and variant) would otherwise only ever be compiled, never executed. Here every
shipped configuration is put in place with :func:`jax_cer.kernels.configs.override` and the
forward and backward kernels run on awkward shapes (Sq != Sk, neither a multiple of the tiles,
causal, lengths 0, 1 and full), so that each program's masked and unmasked loops, tile boundaries
and partial tiles are exercised at the GPU's block sizes. float32 must be within 1e-5 of a
float64 reference (output, dQ, dK, dV); float16 / bfloat16 follow the FlashAttention rule. The
aligned variant runs at D == BLOCK_D, the unaligned one at an odd D of the same bucket; the sm_80
tiles run wherever they differ from the sm_90 ones.

The default run covers the aligned 16-bit configurations at D 64 and 128 (the tiles sized for
tensor cores) and the unaligned float32 ones at D 59, on the first case (causal, lengths 0, 1 and
full); every configuration on every case runs with ``-m slow``.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_cer.kernels import flash_attention
from jax_cer.kernels.configs import (
    DTYPES,
    HEAD_DIMS,
    KERNELS,
    TARGETS,
    VARIANTS,
    gpu_config,
    interpret_config,
    override,
    target_of,
)
from jax_cer.parity.attention import attention64, low_precision_attention
from jax_cer.parity.tolerances import TOLERANCES, flash_rule_bound
from tests.kernel_asserts import assert_close

pytestmark = pytest.mark.torch

UNALIGNED_D = {32: 24, 64: 59, 128: 100, 256: 200}
"""An odd head dim of each bucket (D < BLOCK_D: masked, element-wise loads)."""

# (B, Sq, Sk, H, causal, lengths): Sq != Sk both ways, neither a multiple of any tile, lengths
# 0 / 1 / a tile boundary crossed / full, B*H >= 3.
CASES = [
    (3, 97, 130, 1, True, (130, 1, 0)),
    (2, 130, 71, 2, False, (71, 33)),
    (2, 45, 45, 2, True, None),
]

DEFAULT = {("bfloat16", 64, "aligned"), ("bfloat16", 128, "aligned"), ("float32", 64, "unaligned")}


def _tiles(dtype: str, bd: int, variant: str, target: int) -> tuple:
    return tuple(gpu_config(kernel, dtype, bd, variant, target) for kernel in KERNELS)


def _combos():
    """(dtype, BLOCK_D, variant, target, case), each distinct set of tiles once (sm_80 and sm_90
    share most of them)."""
    for dtype in DTYPES:
        for bd in HEAD_DIMS:
            for variant in VARIANTS:
                for target in TARGETS:
                    if target != 90 and _tiles(dtype, bd, variant, target) == _tiles(dtype, bd, variant, 90):
                        continue
                    for i, case in enumerate(CASES):
                        fast = (dtype, bd, variant) in DEFAULT and i == 0
                        yield pytest.param(
                            dtype,
                            bd,
                            variant,
                            target,
                            case,
                            marks=() if fast else (pytest.mark.slow,),
                            id=f"{dtype}-d{bd}-{variant}-sm{target}-case{i}",
                        )


@contextlib.contextmanager
def shipped_tiles(dtype: str, bd: int, variant: str, target: int = 90):
    """Every kernel of (dtype, BLOCK_D, variant) runs the configuration shipped for ``target`` in the
    interpreter."""
    with contextlib.ExitStack() as stack:
        for kernel, cfg in zip(KERNELS, _tiles(dtype, bd, variant, target), strict=True):
            stack.enter_context(override(kernel, dtype, bd, cfg, variant))
        yield


def _inputs(b, sq, sk, h, d, dtype, seed):
    rng = np.random.default_rng(seed)
    shapes = ((b, sq, h, d), (b, sk, h, d), (b, sk, h, d), (b, sq, h, d))
    return [jnp.asarray(rng.normal(size=shape), dtype) for shape in shapes]


def _run(fn, q, k, v, do):
    out, vjp = jax.vjp(fn, q, k, v)
    return (out, *vjp(do))


def test_target_of_compute_capability() -> None:
    """Hopper and data-centre Blackwell take the sm_90 table; Ampere, Ada and consumer Blackwell
    (about 99 KiB of shared memory per block) the sm_80 one."""
    assert [target_of(cc) for cc in ("9.0", 9.0, 90, "10.0", 100)] == [90] * 5
    assert [target_of(cc) for cc in ("8.0", "8.6", 8.9, 80, "12.0", 120)] == [80] * 6


def test_override_reaches_the_interpreter() -> None:
    """Inside the block the interpreter uses the named configuration; outside, its own large tiles."""
    cfg = gpu_config("bwd_dq", "bfloat16", 128, "aligned")
    with shipped_tiles("bfloat16", 128, "aligned"):
        assert interpret_config("bwd_dq", "bfloat16", 128, "aligned") == cfg
        assert interpret_config("bwd_dq", "bfloat16", 128, "unaligned") != cfg or cfg == gpu_config(
            "bwd_dq", "bfloat16", 128, "unaligned"
        )
    assert interpret_config("bwd_dq", "bfloat16", 128, "aligned").block_m == 64


@pytest.mark.parametrize(("dtype", "bd", "variant", "target", "case"), list(_combos()))
def test_shipped_tiles_in_the_interpreter(dtype: str, bd: int, variant: str, target: int, case: tuple) -> None:
    d = bd if variant == "aligned" else UNALIGNED_D[bd]
    b, sq, sk, h, causal, lens = case
    q, k, v, do = _inputs(b, sq, sk, h, d, dtype, seed=bd + sq)
    lengths = None if lens is None else jnp.asarray(lens, jnp.int32)

    def kernel(q, k, v, lengths=lengths, causal=causal):
        return flash_attention(q, k, v, kv_lengths=lengths, is_causal=causal, backend="interpret")

    with shipped_tiles(dtype, bd, variant, target):
        got = _run(kernel, q, k, v, do)
    want = attention64(q, k, v, lens, causal, do=do)
    where = f"{dtype} D={d} {variant} sm_{target} {(b, sq, sk, h, causal, lens)}"
    if dtype == "float32":
        for name, g, w in zip(("out", "dq", "dk", "dv"), got, want, strict=True):
            assert_close(f"{name} {where}", g, w, TOLERANCES["kernel_fp32"])
        return

    def plain(q, k, v, lengths=lengths, causal=causal):
        return low_precision_attention(q, k, v, lengths, causal)

    base = _run(plain, q, k, v, do)
    for j, name in enumerate(("out", "dq", "dk", "dv")):
        ref = np.asarray(want[j], np.float64)
        assert got[j].dtype == jnp.dtype(dtype)
        assert not np.isnan(np.asarray(got[j], np.float64)).any(), f"{name} {where}: NaN"
        base_err = float(np.max(np.abs(np.asarray(base[j], np.float64) - ref)))
        err = float(np.max(np.abs(np.asarray(got[j], np.float64) - ref)))
        bound = flash_rule_bound(name, base_err, float(np.max(np.abs(ref))), jnp.dtype(dtype))
        assert err <= bound, f"{name} {where}: kernel error {err:.3e} > {bound:.3e} (plain JAX {base_err:.3e})"
