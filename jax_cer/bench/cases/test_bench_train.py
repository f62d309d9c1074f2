"""Training throughput (frames per second) of each fusion model on the synthetic dataset: the
``jax-cer train`` loop against the PyTorch reference's training loop, same machine, same batches.

One timed round = one training step of the loop as a run executes it: the next batch of the
epoch (windows of 300 frames cut, padded and stacked by :class:`~jax_cer.data.pipeline.WindowBatches`
over z-scored synthetic clips), the host-to-device copy, forward in training mode, per-frame
cross-entropy, backward, SGD with Nesterov momentum and weight decay, and the wait for the loss.
Both sides read the same numpy batches and compute the same model: the original's (MT/JMT with
the faithful attention axis and the discarded bert TCN, padded frames counted in the loss).
``frames`` per round = batch x window. Batch 2 on CPU (the CER README's LFAN run), 16 on GPU
(the code default). ``video`` is the synthetic dataset's 512-d face features; with
``JAX_CER_BENCH_FRAMES=1`` (default on GPU) a second variant feeds uint8 48x48 frames through the
crop/flip transform and the frozen IR-50 on both sides (28 ms per frame on a 2-core CPU).
"""

from __future__ import annotations

import itertools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_cer.bench.cases.pytorch_side import torch_device, torch_or_skip
from jax_cer.bench.cases.timing import timed
from jax_cer.data.pipeline import WindowBatches
from jax_cer.training.fusion import TrainConfig, build, frame_targets, load_data, model_inputs

pytestmark = pytest.mark.benchmark

ON_GPU = jax.devices()[0].platform == "gpu"
BATCH = 16 if ON_GPU else 2
WINDOW, HOP = 300, 200
FULL_ROUNDS = 20 if ON_GPU else 8
MODELS = ("lfan", "can", "mt", "jmt")
FRAMES = ON_GPU or os.environ.get("JAX_CER_BENCH_FRAMES") == "1"
INPUTS = ("features", "frames") if FRAMES else ("features",)


def _config(name: str) -> TrainConfig:
    return TrainConfig(
        model=name,
        batch_size=BATCH,
        window=WINDOW,
        hop=HOP,
        count_padding=True,
        faithful_model=True,
        synthetic_clips=32,
        synthetic_lengths=(250, 700),
    )


def _batches(cfg: TrainConfig, inputs: str):
    """An endless iterator over the epochs' batches (epoch after epoch, as a run)."""
    clips = load_data(cfg)["train"]
    if inputs == "frames":  # uint8 48x48 faces instead of 512-d features (IR-50 in the loop)
        rng = np.random.default_rng(0)
        clips = [{**c, "video": rng.integers(0, 256, (len(c["label"]), 48, 48, 3), np.uint8)} for c in clips]
    wb = WindowBatches(clips, cfg.batch_size, window=cfg.window, hop=cfg.hop, seed=cfg.seed, drop_last=True)
    return itertools.chain.from_iterable(wb.epoch(e) for e in itertools.count())


def _info(benchmark, name: str, inputs: str, impl: str, device: str) -> None:
    benchmark.group = f"{name}-train_loop-{inputs}"
    video = [BATCH, WINDOW, 40, 40, 3] if inputs == "frames" else [BATCH, WINDOW, 512]
    benchmark.extra_info.update(
        component=name,
        variant=f"train_loop ({inputs})",
        impl=impl,
        shapes={"video": video, "vggish": [BATCH, WINDOW, 128], "bert": [BATCH, WINDOW, 768]},
        dtype="float32",
        device=device,
        frames=BATCH * WINDOW,
        loop="synthetic",
    )


@pytest.mark.parametrize("inputs", INPUTS)
@pytest.mark.parametrize("name", MODELS)
def test_train_loop_jax(benchmark, name: str, inputs: str) -> None:
    cfg = _config(name)
    _model, step_fn, _fwd, (params, stats, opt), frozen = build(cfg)
    batches = _batches(cfg, inputs)
    key = jax.random.key(0)
    state = [params, stats, opt]
    count = [0]

    def one_step():
        batch = next(batches)
        x = model_inputs(batch, cfg.modalities)
        y = jnp.asarray(frame_targets(cfg, batch))
        state[0], state[1], state[2], loss = step_fn(*state, frozen, x, y, jax.random.fold_in(key, count[0]))
        count[0] += 1
        jax.block_until_ready(loss)

    with jax.default_matmul_precision("highest"):
        one_step()  # compile outside the timing
        _info(benchmark, name, inputs, "jax", jax.devices()[0].device_kind)
        timed(benchmark, one_step, full_rounds=FULL_ROUNDS, warmup_rounds=1)


@pytest.mark.parametrize("inputs", INPUTS)
@pytest.mark.parametrize("name", MODELS)
def test_train_loop_torch(benchmark, name: str, inputs: str) -> None:
    torch, device = torch_or_skip(), torch_device()
    from jax_cer.reference import build_reference  # noqa: PLC0415 - the PyTorch reference (imports torch)

    cfg = _config(name)
    torch.manual_seed(0)
    config = {"window_length": WINDOW} if name == "lfan" else {"faithful": True} if name in ("mt", "jmt") else {}
    model = build_reference(name, **config).to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9, nesterov=True, weight_decay=1e-4)
    batches = _batches(cfg, inputs)

    def one_step():
        batch = next(batches)
        x = {}
        for m in cfg.modalities:
            t = torch.from_numpy(np.ascontiguousarray(batch[m], np.float32))
            if t.dim() == 5:  # frames [B, T, 40, 40, 3] -> the original's [B, T, 3, 40, 40]
                t = t.movedim(-1, -3).contiguous()
            x[m] = t.to(device)
        y = torch.from_numpy(np.asarray(batch["label"], np.int64)).reshape(-1).to(device)
        opt.zero_grad(set_to_none=True)
        logits, _ = model(x)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y)
        loss.backward()
        opt.step()
        loss.item()  # waits for the device, as the JAX side does

    one_step()
    _info(benchmark, name, inputs, "torch", device)
    timed(benchmark, one_step, full_rounds=FULL_ROUNDS, warmup_rounds=1)
