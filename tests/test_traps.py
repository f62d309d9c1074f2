"""Known traps between PyTorch and Flax defaults, each checked against PyTorch itself.

LayerNorm eps (1e-5 vs Flax's 1e-6), GELU exact vs tanh, BatchNorm momentum (0.1 vs 0.9) and
its unbiased running variance, NCHW vs NHWC flattening, weight norm folded into the kernel,
stride-2 padding (explicit 1 vs "SAME"), and SGD's coupled weight decay (with and without Nesterov momentum).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jax_cer.models.ir50 import FlattenLinear
from jax_cer.models.layers import BatchNorm, Conv2d, LayerNorm, WeightNormCausalConv1d
from jax_cer.optim.sgd import sgd
from jax_cer.parity.tolerances import TOLERANCES
from jax_cer.statedict.rules import CONV1D, CONV2D, WEIGHT_G, nchw_flatten_linear
from jax_cer.training.step import sgd_nesterov

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch
RNG = np.random.default_rng(0)


def _np(t) -> np.ndarray:
    return t.detach().numpy()


def test_layernorm_eps_is_torch_default() -> None:
    x = (RNG.normal(size=(4, 96)) * 2e-3).astype(np.float32)  # small variance: eps matters
    ref = _np(torch.nn.LayerNorm(96)(torch.from_numpy(x)))
    np.testing.assert_allclose(LayerNorm(96)(jnp.asarray(x)), ref, atol=TOLERANCES["layer"])
    flax_default = nnx.LayerNorm(96, rngs=nnx.Rngs(0))(jnp.asarray(x))
    assert np.max(np.abs(np.asarray(flax_default) - ref)) > 1e-3, "Flax's eps=1e-6 should differ here"


def test_gelu_exact_vs_tanh() -> None:
    x = np.linspace(-4, 4, 101).astype(np.float32)
    ref = _np(torch.nn.functional.gelu(torch.from_numpy(x)))
    np.testing.assert_allclose(jax.nn.gelu(jnp.asarray(x), approximate=False), ref, atol=TOLERANCES["elementwise"])
    assert np.max(np.abs(np.asarray(jax.nn.gelu(jnp.asarray(x))) - ref)) > 1e-4  # JAX's default is tanh


def test_batchnorm_training_matches_torch_not_flax() -> None:
    ours, ref = BatchNorm(8), torch.nn.BatchNorm1d(8)
    ours.train()
    flax_bn = nnx.BatchNorm(8, momentum=0.9, epsilon=1e-5, rngs=nnx.Rngs(0))
    for _ in range(3):
        x = RNG.normal(1.0, 2.0, size=(2, 5, 8)).astype(np.float32)
        y = ours(jnp.asarray(x))
        y_ref = _np(ref(torch.from_numpy(x).transpose(1, 2))).transpose(0, 2, 1)
        flax_bn(jnp.asarray(x))
        np.testing.assert_allclose(y, y_ref, atol=TOLERANCES["layer"])
    np.testing.assert_allclose(ours.mean[...], _np(ref.running_mean), atol=TOLERANCES["elementwise"])
    np.testing.assert_allclose(ours.var[...], _np(ref.running_var), atol=TOLERANCES["elementwise"])
    assert int(ours.num_batches_tracked[...]) == int(ref.num_batches_tracked)
    # Flax's BatchNorm updates with the biased variance: the running variances differ.
    assert np.max(np.abs(np.asarray(flax_bn.var[...]) - _np(ref.running_var))) > 1e-3


def test_nchw_flatten_linear_permutation() -> None:
    x = RNG.normal(size=(3, 512, 5, 5)).astype(np.float32)
    lin = torch.nn.Linear(12800, 512)
    ref = _np(lin(torch.from_numpy(x).flatten(1)))
    ours = FlattenLinear(12800, 512, rngs=nnx.Rngs(0))
    ours.kernel[...] = jnp.asarray(nchw_flatten_linear(512, 5, 5).to_flax(_np(lin.weight)))
    ours.bias[...] = jnp.asarray(_np(lin.bias))
    np.testing.assert_allclose(ours(jnp.asarray(x.transpose(0, 2, 3, 1))), ref, atol=TOLERANCES["layer_wide"])
    naive = x.transpose(0, 2, 3, 1).reshape(3, -1) @ _np(lin.weight).T + _np(lin.bias)
    assert np.max(np.abs(naive - ref)) > 1e-2, "flattening NHWC with the torch kernel must differ"


def test_weight_norm_folded_causal_conv() -> None:
    conv = torch.nn.utils.weight_norm(torch.nn.Conv1d(6, 4, 5, padding=8, dilation=2))
    with torch.no_grad():
        conv.weight_g.uniform_(0.5, 1.5)
    x = RNG.normal(size=(2, 6, 30)).astype(np.float32)
    ref = _np(conv(torch.from_numpy(x))[:, :, :-8]).transpose(0, 2, 1)  # chomp
    ours = WeightNormCausalConv1d(6, 4, 5, 2, rngs=nnx.Rngs(0))
    ours.v[...] = jnp.asarray(CONV1D.to_flax(_np(conv.weight_v)))
    ours.g[...] = jnp.asarray(WEIGHT_G.to_flax(_np(conv.weight_g)))
    ours.bias[...] = jnp.asarray(_np(conv.bias))
    np.testing.assert_allclose(ours(jnp.asarray(x.transpose(0, 2, 1))), ref, atol=TOLERANCES["layer"])
    np.testing.assert_allclose(ours.kernel(), CONV1D.to_flax(_np(conv.weight)), atol=TOLERANCES["elementwise"])


def test_stride2_padding_is_explicit() -> None:
    conv = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
    x = RNG.normal(size=(2, 3, 40, 40)).astype(np.float32)
    ref = _np(conv(torch.from_numpy(x))).transpose(0, 2, 3, 1)
    ours = Conv2d(3, 8, 3, stride=2, padding=1, rngs=nnx.Rngs(0))
    kernel = jnp.asarray(CONV2D.to_flax(_np(conv.weight)))
    ours.kernel[...] = kernel
    xn = jnp.asarray(x.transpose(0, 2, 3, 1))
    np.testing.assert_allclose(ours(xn), ref, atol=TOLERANCES["layer"])
    same = jax.lax.conv_general_dilated(xn, kernel, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    assert np.max(np.abs(np.asarray(same) - ref)) > 1e-2, "SAME pads (0, 1) at stride 2: must differ"


@pytest.mark.parametrize(
    "make_tx, torch_kw",
    [
        (lambda: sgd_nesterov(0.1, 1e-2), {"momentum": 0.9, "nesterov": True}),  # the fusion recipe
        (lambda: sgd(0.1, weight_decay=1e-2), {}),  # the text models' optimizer=sgd
        (lambda: sgd(0.1, momentum=0.9, weight_decay=1e-2), {"momentum": 0.9}),
    ],
    ids=["nesterov", "plain", "momentum"],
)
def test_sgd_matches_torch(make_tx, torch_kw) -> None:
    """SGD with coupled weight decay (jax_cer.optim.sgd) against torch.optim.SGD, first step included."""
    p0 = RNG.normal(size=(5, 3)).astype(np.float32)
    grads = [RNG.normal(size=(5, 3)).astype(np.float32) for _ in range(4)]
    tp = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    opt = torch.optim.SGD([tp], lr=0.1, weight_decay=1e-2, **torch_kw)
    tx = make_tx()
    params = jnp.asarray(p0)
    state = tx.init(params)
    for g in grads:
        tp.grad = torch.from_numpy(g)
        opt.step()
        updates, state = tx.update(jnp.asarray(g), state, params)
        params = optax.apply_updates(params, updates)
        np.testing.assert_allclose(params, _np(tp), atol=TOLERANCES["elementwise"])
