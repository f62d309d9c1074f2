"""Attention throughput: ``flash_attention`` against ``jax.nn.dot_product_attention`` (XLA and, on
a GPU, cuDNN), same shapes and dtype, forward and forward+backward, in one run.

FLOPs: ``4*B*H*Sq*Sk*D`` forward (half when causal), 2.5x that for the backward, so
forward+backward counts 3.5x. Sizes: on a GPU, S from 512 to 16k with B*S = 16k tokens and 16
heads; on CPU (where only XLA paths run) S from 512 to 2048 with B*S = 4k tokens and 8 heads.
Inputs rotate between three sets so repeated calls do not measure a warm cache. TFLOP/s are
computed by the report from the median time and ``extra_info["flops"]``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_cer.bench.cases.timing import timed
from jax_cer.kernels import flash_attention

pytestmark = pytest.mark.benchmark

ON_GPU = jax.default_backend() == "gpu"
SEQS = (512, 1024, 2048, 4096, 8192, 16384) if ON_GPU else (512, 1024, 2048)
TOKENS, HEADS = (16384, 16) if ON_GPU else (4096, 8)
FULL_ROUNDS = 20 if ON_GPU else 3
IMPLS = ("flash_attention", "xla", "cudnn") if ON_GPU else ("flash_attention", "xla")


def _fn(impl: str, causal: bool):
    if impl == "flash_attention":
        return functools.partial(flash_attention, is_causal=causal)  # backend auto: Triton on GPU, XLA on CPU
    return functools.partial(jax.nn.dot_product_attention, is_causal=causal, implementation=impl)


@pytest.mark.parametrize("passes", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("s", SEQS)
@pytest.mark.parametrize("impl", IMPLS)
def test_attention(benchmark, impl: str, s: int, d: int, dtype: str, causal: bool, passes: str) -> None:
    b = max(TOKENS // s, 1)
    rng = np.random.default_rng(0)
    sets = [
        [jnp.asarray(rng.normal(size=(b, s, HEADS, d)), dtype) for _ in range(4)] for _ in range(3)
    ]  # q, k, v, dout
    attn = _fn(impl, causal)
    if passes == "fwd":
        step = jax.jit(lambda q, k, v, do: attn(q, k, v))
    else:
        step = jax.jit(lambda q, k, v, do: jax.vjp(attn, q, k, v)[1](do))
    try:
        jax.block_until_ready(step(*sets[0]))  # compile outside the timing
    except Exception as e:
        pytest.skip(f"{impl} cannot run {dtype} here: {type(e).__name__}: {str(e).splitlines()[0][:160]}")
    calls = iter(range(10**9))

    def run():
        jax.block_until_ready(step(*sets[next(calls) % 3]))

    flops = 4 * b * HEADS * s * s * d * (0.5 if causal else 1.0) * (3.5 if passes == "fwd+bwd" else 1.0)
    benchmark.group = f"attention-{passes}-D{d}-{dtype}-{'causal' if causal else 'full'}"
    benchmark.extra_info.update(
        component="attention",
        variant=passes,
        impl=impl,
        shapes={"q": [b, s, HEADS, d], "k": [b, s, HEADS, d]},
        dtype=dtype,
        causal=causal,
        seq=s,
        head_dim=d,
        flops=flops,
        device=jax.devices()[0].device_kind,
    )
    timed(benchmark, run, full_rounds=FULL_ROUNDS, warmup_rounds=1)
