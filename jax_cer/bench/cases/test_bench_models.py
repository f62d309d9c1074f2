"""Timing of every model, JAX (jit, compiled before timing) against the PyTorch reference.

Run with ``jax-cer bench`` (``-k forward``, ``-k "train_step and tcn"``, ...). One case per (model,
variant, implementation); the pytest-benchmark group pairs JAX and PyTorch, and ``extra_info``
records the shapes, dtype, device and throughput. Sizes: the paper's window (T = 300) with batch 2
on CPU and 16 on GPU; the IR-50 on 8 (CPU) or 256 (GPU) frames. Both sides load the same synthetic
weights; both train with SGD + Nesterov + weight decay.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jax_cer.bench.cases.pytorch_side import sync, torch_device, torch_or_skip
from jax_cer.bench.cases.timing import timed
from jax_cer.models import build_model, from_original_state_dict, torch_entries
from jax_cer.parity.weights import draw_state_dict
from jax_cer.training.step import make_forward, make_train_step, sgd_nesterov

pytestmark = pytest.mark.benchmark

ON_GPU = jax.devices()[0].platform == "gpu"
BATCH = 16 if ON_GPU else 2
FRAMES = 300
IR50_FRAMES = 256 if ON_GPU else 8
FULL_ROUNDS = 20 if ON_GPU else 8
MODELS = ("tcn", "ir50", "lfan", "can", "mt", "jmt")
DIMS = {"video": 512, "vggish": 128, "bert": 768}


def _config(name: str) -> dict:
    """LFAN's window is the clip; MT/JMT run bert's (discarded) TCN like the reference, so both
    sides do the same work."""
    if name == "lfan":
        return {"window_length": FRAMES}
    return {"compute_unused_modalities": True} if name in ("mt", "jmt") else {}


def _inputs(name: str) -> tuple[dict[str, np.ndarray], np.ndarray, int]:
    rng = np.random.default_rng(0)
    if name == "tcn":
        x, k = {"x": rng.normal(size=(BATCH, FRAMES, 512))}, 128
    elif name == "ir50":
        x, k = {"frames": rng.uniform(-1, 1, size=(IR50_FRAMES, 40, 40, 3))}, 8
    else:
        x, k = {m: rng.normal(size=(BATCH, FRAMES, d)) for m, d in DIMS.items()}, 7
    x = {m: v.astype(np.float32) for m, v in x.items()}
    labels = rng.integers(0, k, size=next(iter(x.values())).shape[: -3 if name == "ir50" else -1])
    return x, labels, int(np.prod(labels.shape))


def _weights(name: str) -> dict[str, np.ndarray]:
    abstract = nnx.eval_shape(lambda: build_model(name, **_config(name)))
    return draw_state_dict([(e.key, e.torch_shape, e.torch_dtype) for e in torch_entries(abstract)], 0)


def _info(benchmark, name: str, variant: str, impl: str, inputs, frames: int) -> None:
    benchmark.group = f"{name}-{variant}"
    benchmark.extra_info.update(
        component=name,
        variant=variant,
        impl=impl,
        shapes={k: list(v.shape) for k, v in inputs.items()},
        dtype="float32",
        device=jax.devices()[0].device_kind if impl == "jax" else torch_device(),
        frames=frames,
    )


def _run(benchmark, fn) -> None:
    timed(benchmark, fn, full_rounds=FULL_ROUNDS, warmup_rounds=2)


@pytest.mark.parametrize("name", MODELS)
def test_forward_jax(benchmark, name: str) -> None:
    model = from_original_state_dict(name, _weights(name), **_config(name))
    x, _, frames = _inputs(name)
    forward, state = make_forward(model)
    xj = {k: jnp.asarray(v) for k, v in x.items()}
    with jax.default_matmul_precision("highest"):
        jax.block_until_ready(forward(state, xj))  # compile outside the timing
        _info(benchmark, name, "forward", "jax", x, frames)
        _run(benchmark, lambda: jax.block_until_ready(forward(state, xj)))


@pytest.mark.parametrize("name", MODELS)
def test_train_step_jax(benchmark, name: str) -> None:
    model = from_original_state_dict(name, _weights(name), **_config(name))
    x, labels, frames = _inputs(name)
    step, carry = make_train_step(model, name, sgd_nesterov())
    xj, yj = {k: jnp.asarray(v) for k, v in x.items()}, jnp.asarray(labels)
    key = jax.random.key(0)
    with jax.default_matmul_precision("highest"):
        params, stats, opt, frozen = carry
        params, stats, opt, _loss = jax.block_until_ready(step(params, stats, opt, frozen, xj, yj, key))
        state = [params, stats, opt]

        def one_step():
            state[0], state[1], state[2], loss = step(*state, frozen, xj, yj, key)
            jax.block_until_ready(loss)

        _info(benchmark, name, "train_step", "jax", x, frames)
        _run(benchmark, one_step)


def _torch_model(name: str):
    torch = torch_or_skip()
    from jax_cer.reference import build_reference  # noqa: PLC0415 - the PyTorch reference (imports torch)

    torch.manual_seed(0)
    config = {k: v for k, v in _config(name).items() if k != "compute_unused_modalities"}
    model = build_reference(name, **config)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in _weights(name).items()})
    return model.to(torch_device())


def _torch_inputs(x: dict[str, np.ndarray]) -> dict:
    torch = torch_or_skip()
    out = {}
    for k, v in x.items():
        t = torch.from_numpy(v)
        if v.ndim >= 4 and v.shape[-1] == 3:
            t = t.movedim(-1, -3).contiguous()
        out[k] = t.to(torch_device())
    return out


@pytest.mark.parametrize("name", MODELS)
def test_forward_torch(benchmark, name: str) -> None:
    torch = torch_or_skip()
    device = torch_device()
    model = _torch_model(name).eval()
    x, _, frames = _inputs(name)
    xt = _torch_inputs(x)

    def forward():
        with torch.inference_mode():
            model(xt)
        sync(device)

    forward()
    _info(benchmark, name, "forward", "torch", x, frames)
    _run(benchmark, forward)


@pytest.mark.parametrize("name", MODELS)
def test_train_step_torch(benchmark, name: str) -> None:
    torch = torch_or_skip()
    device = torch_device()
    model = _torch_model(name).train()
    x, labels, frames = _inputs(name)
    xt, yt = _torch_inputs(x), torch.from_numpy(labels).reshape(-1).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9, nesterov=True, weight_decay=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        logits, _ = model(xt)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), yt)
        loss.backward()
        opt.step()
        sync(device)

    step()
    _info(benchmark, name, "train_step", "torch", x, frames)
    _run(benchmark, step)
