"""Behaviour of the JAX models that golden files cannot show: causality, windowed evaluation,
the ``faithful`` batch mixing of MT/JMT, training vs inference mode, input validation and the
attention hook."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jax_cer.kernels import flash_attention
from jax_cer.models import build_model, config_for, sliding_window_logits
from jax_cer.models.attention import dot_product_attention
from jax_cer.models.graph import run_stages
from jax_cer.models.layers import BatchNorm
from jax_cer.parity.attention import attention64
from jax_cer.parity.tolerances import TOLERANCES
from jax_cer.windowing import pad_to_length, window_bounds
from tests.kernel_asserts import assert_close

DIMS = {"video": 512, "vggish": 128, "bert": 768}


def _inputs(b: int, t: int, seed: int = 0, frames: bool = False) -> dict[str, jax.Array]:
    rng = np.random.default_rng(seed)
    out = {m: jnp.asarray(rng.normal(size=(b, t, d)).astype(np.float32)) for m, d in DIMS.items()}
    if frames:
        out["video"] = jnp.asarray(rng.uniform(-1, 1, size=(b, t, 40, 40, 3)).astype(np.float32))
    return out


def _max_diff(a, b) -> float:
    return float(jnp.max(jnp.abs(a - b)))


@pytest.fixture(scope="module")
def models():
    rngs = nnx.Rngs(0)
    return {
        "tcn": build_model("tcn", rngs=rngs),
        "lfan": build_model("lfan", window_length=24, rngs=rngs),
        "can": build_model("can", rngs=rngs),
        "mt": build_model("mt", rngs=rngs),
        "jmt": build_model("jmt", rngs=rngs),
        "mt_faithful": build_model("mt", faithful=True, rngs=rngs),
        "jmt_faithful": build_model("jmt", faithful=True, rngs=rngs),
    }


def test_tcn_is_causal(models) -> None:
    """Appending or changing later frames never changes earlier outputs."""
    tcn = models["tcn"]
    x = _inputs(1, 300)["video"]
    full = tcn(x)
    np.testing.assert_allclose(tcn(x[:, :250]), full[:, :250], atol=1e-5)
    changed = x.at[:, 200:].set(3.0)
    np.testing.assert_allclose(tcn(changed)[:, :200], full[:, :200], atol=1e-5)
    assert _max_diff(tcn(changed)[:, 200:], full[:, 200:]) > 1e-2


def test_lfan_rejects_other_lengths(models) -> None:
    with pytest.raises(ValueError, match="window_length=24 frames .* T=30.*sliding_window_logits"):
        models["lfan"](_inputs(1, 30))


@pytest.mark.parametrize("n", [10, 24, 25, 55, 97])
def test_lfan_sliding_window_averages_overlaps(models, n: int) -> None:
    lfan, w, hop = models["lfan"], 24, 16
    x = _inputs(1, n, seed=n)
    got = sliding_window_logits(lfan, x, hop)
    if n < w:  # padded by repeating the last frame; w frames out, as the original
        assert got.shape == (1, w, 7)
        np.testing.assert_allclose(got, lfan({m: pad_to_length(v, w, axis=1) for m, v in x.items()}), atol=1e-6)
        return
    total, count = np.zeros((n, 7)), np.zeros(n)
    for s, e in window_bounds(n, w, hop):
        total[s:e] += np.asarray(lfan({m: v[:, s:e] for m, v in x.items()})[0])
        count[s:e] += 1
    assert got.shape == (1, n, 7)
    np.testing.assert_allclose(got[0], total / count[:, None], atol=1e-5)


def test_lfan_window_counts_match_spec() -> None:
    count = np.zeros(650, int)
    for s, e in window_bounds(650, 300, 200):
        count[s:e] += 1
    expected = np.concatenate([np.full(200, 1), np.full(100, 2), np.full(50, 1), np.full(150, 2), np.full(150, 1)])
    np.testing.assert_array_equal(count, expected)


def test_sliding_window_needs_batch_one(models) -> None:
    with pytest.raises(ValueError, match="batch size 1"):
        sliding_window_logits(models["lfan"], _inputs(2, 30))


@pytest.mark.parametrize("hop", [25, 0, -3, 1.5, True])
def test_sliding_window_hop_within_the_window(models, hop) -> None:
    """A hop past the window (24 here) would leave frames between windows without logits (NaN)."""
    with pytest.raises(ValueError, match=f"hop must be an integer from 1 to the window length 24, got {hop!r}"):
        sliding_window_logits(models["lfan"], _inputs(1, 60), hop)


@pytest.mark.parametrize("name", ["mt", "jmt"])
def test_fixed_mt_jmt_keep_samples_apart(models, name: str) -> None:
    """faithful=False: a batch of two clips gives exactly the two batch-1 results."""
    model, x = models[name], _inputs(2, 32, seed=1)
    both = model(x)
    for b in range(2):
        np.testing.assert_allclose(both[b], model({m: v[b : b + 1] for m, v in x.items()})[0], atol=1e-5)


@pytest.mark.parametrize("name", ["mt", "jmt"])
def test_faithful_mt_jmt_mix_samples_as_documented(models, name: str) -> None:
    """faithful=True: each stream's final attention runs over all T*B tokens of the batch.

    So (1) batch-2 results differ from the batch-1 ones, and sample 0 depends on sample 1;
    (2) a batch holding the same clip twice equals the batch-1 result (every key appears twice,
    the softmax weights halve, the sums are unchanged); (3) the token order does not matter, so
    swapping the samples swaps the outputs.
    """
    model, x = models[f"{name}_faithful"], _inputs(2, 32, seed=2)
    single = [model({m: v[b : b + 1] for m, v in x.items()})[0] for b in range(2)]
    both = model(x)
    assert _max_diff(both[0], single[0]) > 1e-3 and _max_diff(both[1], single[1]) > 1e-3
    other = {m: v.at[1].multiply(-1.0) for m, v in x.items()}
    assert _max_diff(model(other)[0], both[0]) > 1e-3
    twice = model({m: jnp.concatenate([v[:1], v[:1]]) for m, v in x.items()})
    np.testing.assert_allclose(twice[0], single[0], atol=1e-5)
    np.testing.assert_allclose(twice[1], single[0], atol=1e-5)
    swapped = model({m: v[::-1] for m, v in x.items()})
    np.testing.assert_allclose(swapped[::-1], both, atol=1e-5)


@pytest.mark.parametrize("name", ["mt", "jmt"])
def test_unused_bert_tcn_changes_nothing_at_inference(name: str) -> None:
    rngs = nnx.Rngs(1)
    skip, run = build_model(name, rngs=rngs), build_model(name, compute_unused_modalities=True, rngs=nnx.Rngs(1))
    x = _inputs(1, 16)
    out_skip, inter_skip = skip(x, return_intermediates=True)
    out_run, inter_run = run(x, return_intermediates=True)
    np.testing.assert_array_equal(out_skip, out_run)
    assert "temporal.bert" in inter_run and "temporal.bert" not in inter_skip
    out_nobert = skip({m: v for m, v in x.items() if m != "bert"})
    np.testing.assert_array_equal(out_nobert, out_skip)


def test_inference_mode_is_default_and_deterministic(models) -> None:
    model, x = models["can"], _inputs(2, 16)
    np.testing.assert_array_equal(model(x), model(x))


def test_training_mode_dropout_and_batch_statistics() -> None:
    model = build_model("can", rngs=nnx.Rngs(0))
    x = _inputs(2, 16)
    before = np.asarray(model.bn["video"].mean[...])
    model.train()
    with pytest.raises(ValueError, match="no random key"):
        model(x)
    a = model(x, rngs=nnx.Rngs(dropout=1))
    b = model(x, rngs=nnx.Rngs(dropout=2))
    assert _max_diff(a, b) > 1e-3, "dropout is not active in training mode"
    after = np.asarray(model.bn["video"].mean[...])
    assert not np.allclose(before, after), "running statistics did not update"
    assert int(model.bn["video"].num_batches_tracked[...]) == 2
    model.eval()
    frozen = np.asarray(model.bn["video"].mean[...])
    model(x)
    np.testing.assert_array_equal(frozen, model.bn["video"].mean[...])


def test_batchnorm_training_update_uses_unbiased_variance() -> None:
    bn = BatchNorm(3)
    bn.train()
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 5, 3)).astype(np.float32))
    y = bn(x)
    flat = np.asarray(x).reshape(-1, 3)
    np.testing.assert_allclose(bn.mean[...], 0.1 * flat.mean(0), atol=1e-6)
    np.testing.assert_allclose(bn.var[...], 0.9 + 0.1 * flat.var(0, ddof=1), atol=1e-6)
    np.testing.assert_allclose(y, ((flat - flat.mean(0)) / np.sqrt(flat.var(0) + 1e-5)).reshape(4, 5, 3), atol=1e-5)


@pytest.mark.parametrize("follows", [False, True])
def test_backbone_frozen_unless_faithful(follows: bool) -> None:
    model = build_model("lfan", window_length=2, dropout=0.0, attn_dropout=0.0, backbone_follows_train=follows)
    stats = model.spatial.visual.backbone.input_bn.mean
    before = np.asarray(stats[...])
    model.train()
    model(_inputs(1, 2, frames=True), rngs=nnx.Rngs(dropout=0))
    changed = not np.array_equal(before, np.asarray(stats[...]))
    assert changed == follows


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda x: {k: v for k, v in x.items() if k != "vggish"}, r"missing modalities \['vggish'\]"),
        (lambda x: {**x, "audio": x["vggish"]}, r"unexpected \['audio'\]"),
        (
            lambda x: {**x, "bert": x["bert"][..., :700]},
            r"input 'bert': expected shape \[B, T, 768\], got \[2, 16, 700\]",
        ),
        (lambda x: {**x, "bert": x["bert"][:, :8]}, r"input 'bert': batch and time \[2, 8\] differ"),
        (
            lambda x: {**x, "vggish": x["vggish"].astype(jnp.int32)},
            r"input 'vggish': dtype int32, expected floating point \(float16, bfloat16, float32 or float64; "
            r"the model computes in float32\)",
        ),
        (lambda x: {**x, "bert": x["bert"].tolist()}, r"input 'bert': expected a numpy or jax array, got list"),
        (lambda x: {**x, "video": jnp.zeros((2, 16, 48, 48, 3))}, r"expected face frames of shape \[B, T, 40, 40, 3\]"),
        (lambda x: list(x.values()), "inputs must be a dict"),
    ],
)
def test_bad_inputs_are_named(models, change, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        models["can"](change(_inputs(2, 16)))


def _call_with(models, name: str, x):
    """Calls model ``name`` with ``x`` as its ``vggish`` input (fusion models), its ``x`` (tcn) or its
    frames (ir50, the fusion models' backbone); returns the call and the name its errors use."""
    if name == "tcn":
        return lambda: models["tcn"](x), "TCN input 'x'"
    if name == "ir50":
        return lambda: models["can"].spatial.visual(x), "frames"
    inputs = {**_inputs(1, 4), "vggish": x}
    return lambda: models[name](inputs), "input 'vggish'"


def _input_for(name: str, dtype=np.float32) -> np.ndarray:
    """A valid input of ``name`` for :func:`_call_with`, values in [-1, 1] (frames for ir50)."""
    shape = {"tcn": (1, 4, 512), "ir50": (1, 40, 40, 3)}.get(name, (1, 4, 128))
    return np.random.default_rng(0).uniform(-1, 1, size=shape).astype(dtype)


@pytest.mark.parametrize("name", ["tcn", "ir50", "lfan", "can", "mt", "jmt"])
@pytest.mark.parametrize(
    ("dtype", "value", "message"),
    [
        (np.float64, 1e39, r"holds values up to 1e\+39, beyond float32's range \(3.4e\+38\): they would become inf"),
        (np.float64, -1e300, r"holds values up to 1e\+300, beyond float32's range \(3.4e\+38\)"),
        (np.float64, np.nan, r"holds NaN at index \[{index}\] \(1 NaN/inf value in all\)"),
        (np.float32, -np.inf, r"holds -inf at index \[{index}\] \(1 NaN/inf value in all\)"),
    ],
)
def test_non_finite_or_out_of_range_inputs_are_named(models, name: str, dtype, value: float, message: str) -> None:
    """Values float32 cannot hold, NaN and inf are refused before they reach the model, naming the argument
    (a float64 1e39 would otherwise become inf in float32 and the logits NaN)."""
    index = (0, 2, 3, 1) if name == "ir50" else (0, 2, 3)
    x = _input_for(name, dtype)
    x[index] = value
    call, arg = _call_with(models, name, x)
    with pytest.raises(ValueError, match=f"^{arg}: " + message.format(index=", ".join(map(str, index)))):
        call()


@pytest.mark.parametrize("name", ["tcn", "ir50", "can"])
@pytest.mark.parametrize("dtype", [np.int32, np.uint8, np.bool_])
def test_integer_and_bool_inputs_are_refused(models, name: str, dtype) -> None:
    """No silent cast: uint8 frames in [0, 255] instead of [-1, 1] are a likely mistake."""
    call, arg = _call_with(models, name, _input_for(name, dtype))
    dt = np.dtype(dtype).name
    with pytest.raises(ValueError, match=rf"^{arg}: dtype {dt}, expected floating point \(float16, bfloat16"):
        call()


def test_traced_inputs_are_not_checked_by_value() -> None:
    """Under jax.jit the values are unknown: no check, no error, no cost (only shapes and dtypes)."""
    tcn = build_model("tcn", num_inputs=3, channels=(4,), rngs=nnx.Rngs(0))
    x = np.zeros((1, 5, 3), np.float32)
    x[0, 1, 2] = np.nan
    with pytest.raises(ValueError, match="holds NaN"):
        tcn(x)
    assert np.isnan(np.asarray(jax.jit(lambda x: tcn(x))(x))).any()
    with pytest.raises(ValueError, match=r"TCN input 'x': dtype int32"):
        jax.jit(lambda x: tcn(x))(np.zeros((1, 5, 3), np.int32))


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
@pytest.mark.parametrize("name", ["tcn", *(pytest.param(n, marks=pytest.mark.slow) for n in ("ir50", "can", "jmt"))])
def test_16_bit_inputs_give_their_float32_cast_result(models, name: str, dtype) -> None:
    """The models compute in their parameters' dtype (float32): a 16-bit input is upcast exactly.
    (The fusion models and the IR-50 cost seconds of eager compilation on a CPU: slow.)"""
    x = jnp.asarray(_input_for(name), dtype)
    got, _ = _call_with(models, name, x)
    want, _ = _call_with(models, name, x.astype(jnp.float32))
    out = got()
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(out, want())


def test_16_bit_inputs_through_the_stage_graph() -> None:
    """The stage graph (the trainer's and the parity checks' forward) casts too."""
    tcn = build_model("tcn", num_inputs=3, channels=(4, 4), rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 6, 3)), jnp.bfloat16)
    stages, out = tcn.graph({"x": x.shape})
    np.testing.assert_array_equal(run_stages(stages, {"x": x})[out], tcn(x.astype(jnp.float32)))


@pytest.mark.parametrize(("name", "calls"), [("lfan", 1), ("can", 0), ("mt", 6), ("jmt", 11)])
def test_every_attention_goes_through_the_hook(name: str, calls: int) -> None:
    seen = []

    def counting_attention(query, key, value, **kwargs):
        seen.append(query.shape)
        return dot_product_attention(query, key, value, **kwargs)

    t = 24 if name == "lfan" else 16
    cfg = {"window_length": t} if name == "lfan" else {}
    plain = build_model(name, rngs=nnx.Rngs(3), **cfg)
    hooked = build_model(name, rngs=nnx.Rngs(3), attention_fn=counting_attention, **cfg)
    x = _inputs(1, t)
    np.testing.assert_array_equal(plain(x), hooked(x))
    assert len(seen) == calls


def test_jit_with_split_merge_matches_eager_and_compiles_once(models) -> None:
    model, x = models["jmt"], _inputs(1, 16)
    graphdef, state = nnx.split(model)
    traces = []

    @jax.jit
    def forward(state, x):
        traces.append(1)
        return nnx.merge(graphdef, state)(x)

    np.testing.assert_allclose(forward(state, x), model(x), atol=1e-5)
    forward(state, _inputs(1, 16, seed=5))
    assert len(traces) == 1


def test_config_presets_hold_the_original_defaults() -> None:
    lfan = config_for("lfan")
    assert (lfan.num_classes, lfan.window_length, lfan.dropout, lfan.modal_dim, lfan.num_heads) == (7, 300, 0.1, 32, 2)
    assert lfan.tcn_channels["vggish"] == (64, 64, 32, 32)
    can = config_for("can", "meld")
    assert (can.num_classes, can.dropout, can.tcn_channels["video"]) == (7, 0.2, (256, 256, 128, 128, 128))
    assert config_for("jmt", "bah").num_classes == 2 and config_for("jmt", "bah").faithful is False
    assert config_for("can", "c-expr-db-other").num_classes == 8
    with pytest.raises(ValueError, match="unknown dataset 'affwild'"):
        config_for("can", "affwild")
    with pytest.raises(ValueError, match="has no field"):
        config_for("can", window_length=3)
    with pytest.raises(ValueError, match="MT/JMT need the modality 'vggish'"):
        config_for("mt", modalities=("video", "bert"))


@pytest.mark.parametrize(
    ("q_shape", "kv_len", "extra"),
    [
        ((2, 30, 1, 128), 30, {}),
        ((7, 6, 1, 16), 6, {}),
        ((2, 5, 3, 2, 16), 3, {}),
        ((2, 9, 4, 8), 13, {"mask": "random"}),
        ((2, 9, 1, 8), 13, {"bias": "random"}),
        ((1, 11, 2, 8), 11, {"is_causal": True}),
    ],
)
def test_default_attention_equals_flax(q_shape, kv_len: int, extra: dict) -> None:
    """The models' default attention (head-major matmuls) computes Flax's dot_product_attention."""
    rng = np.random.default_rng(0)
    kv_shape = (*q_shape[:-3], kv_len, *q_shape[-2:])
    q, k, v = (jnp.asarray(rng.normal(size=s).astype(np.float32)) for s in (q_shape, kv_shape, kv_shape))
    kwargs = {}
    logits_shape = (*q_shape[:-3], q_shape[-2], q_shape[-3], kv_len)
    if extra.get("mask"):
        kwargs["mask"] = jnp.asarray(rng.uniform(size=logits_shape) > 0.3)
    if extra.get("bias"):
        kwargs["bias"] = jnp.asarray(rng.normal(size=logits_shape).astype(np.float32))
    if extra.get("is_causal"):
        kwargs["is_causal"] = True
    np.testing.assert_allclose(
        dot_product_attention(q, k, v, **kwargs), nnx.dot_product_attention(q, k, v, **kwargs), atol=2e-6
    )


def test_default_attention_dropout_and_errors() -> None:
    q = jnp.ones((1, 4, 2, 8))
    out = dot_product_attention(q, q, q, dropout_rate=0.5, dropout_rng=jax.random.key(0))
    assert out.shape == q.shape
    with pytest.raises(ValueError, match="needs dropout_rng"):
        dot_product_attention(q, q, q, dropout_rate=0.5)
    with pytest.raises(NotImplementedError, match="sow"):
        dot_product_attention(q, q, q, module=object())


def _attention_grads(fn, q, k, v, do, **kwargs):
    out, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, **kwargs), q, k, v)
    return (out, *vjp(do))


def _default(q, k, v, **kwargs):
    return dot_product_attention(q, k, v, **kwargs)


def _xla_backend(q, k, v, **kwargs):
    return flash_attention(q, k, v, backend="xla", **kwargs)


@pytest.mark.parametrize("heads", [1, 3])  # one head: the head axis is dropped (MT/JMT's fast path)
@pytest.mark.parametrize(("sq", "sk"), [(7, 13), (13, 7)])
def test_default_attention_is_the_kernels_xla_backend(sq: int, sk: int, heads: int) -> None:
    """Causal with Sq != Sk both ways is bottom-right aligned (query i sees keys j <= i + Sk - Sq) in the
    models' default and in flash_attention(backend="xla"): both match the kernels' float64 reference,
    output and gradients, and agree with each other exactly."""
    rng = np.random.default_rng(sq * 10 + heads)
    q, do = (jnp.asarray(rng.normal(size=(2, sq, heads, 16)).astype(np.float32)) for _ in range(2))
    k, v = (jnp.asarray(rng.normal(size=(2, sk, heads, 16)).astype(np.float32)) for _ in range(2))
    lens = (sk, sk - 3)
    kwargs = {"is_causal": True, "kv_lengths": jnp.asarray(lens, jnp.int32)}
    want = attention64(q, k, v, lens, True, do=do)
    with jax.default_matmul_precision("highest"):
        default = _attention_grads(_default, q, k, v, do, **kwargs)
        xla = _attention_grads(_xla_backend, q, k, v, do, **kwargs)
    for name, a, b, w in zip(("out", "dq", "dk", "dv"), default, xla, want, strict=True):
        assert_close(f"default {name}", a, w, TOLERANCES["kernel_fp32"])
        np.testing.assert_array_equal(a, b, err_msg=name)
    if sq > sk:  # the first Sq - Sk queries see no key
        assert not np.any(np.asarray(default[0])[:, : sq - sk])


@pytest.mark.parametrize("heads", [1, 2])
@pytest.mark.parametrize("fn", [_default, _xla_backend], ids=["default", "xla_backend"])
def test_fully_masked_rows_are_zero_with_zero_gradients(fn, heads: int) -> None:
    """A query that sees no key (kv_lengths 0, a causal Sq > Sk row, a mask row of False) gives 0, never NaN,
    and passes no gradient to q, k or v (Flax would return the mean of v)."""
    rng = np.random.default_rng(heads)
    b, sq, sk = 3, 6, 4
    q, do = (jnp.asarray(rng.normal(size=(b, sq, heads, 8)).astype(np.float32)) for _ in range(2))
    k, v = (jnp.asarray(rng.normal(size=(b, sk, heads, 8)).astype(np.float32)) for _ in range(2))
    mask = np.ones((b, heads, sq, sk), bool)
    mask[2, :, 4:] = False  # batch 2: queries 4 and 5 see nothing
    kwargs = {"kv_lengths": jnp.asarray([0, 4, 4]), "is_causal": True, "mask": jnp.asarray(mask)}
    out, dq, dk, dv = _attention_grads(fn, q, k, v, do, **kwargs)
    for name, x in (("out", out), ("dq", dq), ("dk", dk), ("dv", dv)):
        assert not np.isnan(np.asarray(x)).any(), name
    out, dq, dk, dv = (np.asarray(x) for x in (out, dq, dk, dv))
    assert not out[0].any() and not dq[0].any() and not dk[0].any() and not dv[0].any()  # no key at all
    assert not out[1:, :2].any() and not dq[1:, :2].any()  # causal, Sq - Sk = 2 rows see nothing
    assert not out[2, 4:].any() and not dq[2, 4:].any()  # masked rows
    assert np.all(np.abs(out[1, 2:]) > 0) and np.all(np.abs(out[2, 2:4]) > 0)
    ref = np.asarray(attention64(q, k, v, (0, 4, 4), True))  # no general mask there: compare the rows it keeps
    np.testing.assert_allclose(out[1], ref[1], atol=1e-5)
    np.testing.assert_allclose(out[2, :4], ref[2, :4], atol=1e-5)
    # what reaches the rows that see nothing changes no gradient
    noise = jnp.asarray(rng.normal(size=do.shape).astype(np.float32)) * 100
    blind = np.zeros(do.shape, bool)
    blind[0], blind[1:, :2], blind[2, 4:] = True, True, True
    again = _attention_grads(fn, q, k, v, jnp.where(jnp.asarray(blind), noise, do), **kwargs)
    for name, a, b in zip(("dq", "dk", "dv"), (dq, dk, dv), again[1:], strict=True):
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_minus_inf_bias_hides_keys() -> None:
    """A -inf bias hides a key like a False mask entry: a row of -inf gives zeros, not NaN."""
    rng = np.random.default_rng(4)
    q, k, v = (jnp.asarray(rng.normal(size=(1, 3, 2, 8)).astype(np.float32)) for _ in range(3))
    bias = np.zeros((1, 2, 3, 3), np.float32)
    bias[0, :, 0] = -np.inf  # query 0 sees nothing
    bias[0, :, 1, 2] = -np.inf  # query 1 does not see key 2
    mask = np.isfinite(bias)
    got, grads = jax.value_and_grad(lambda q: jnp.sum(dot_product_attention(q, k, v, bias=jnp.asarray(bias))))(q)
    want = dot_product_attention(q, k, v, mask=jnp.asarray(mask))
    np.testing.assert_array_equal(dot_product_attention(q, k, v, bias=jnp.asarray(bias)), want)
    assert float(got) == pytest.approx(float(jnp.sum(want)), rel=1e-6)
    assert not np.asarray(want)[0, 0].any() and not np.isnan(np.asarray(grads)).any()
    assert not np.asarray(grads)[0, 0].any()
