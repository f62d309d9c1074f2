"""Property-based checks of the public entry points against malformed input (hypothesis).

Each test generates inputs a careless or unlucky user could supply (wrong shapes and dtypes, NaN
and inf, extreme magnitudes, empty and ragged containers, wrong keys, truncated files) and accepts
exactly two outcomes:

- a ``ValueError`` (``StateDictError`` and the package's other errors are ValueErrors) whose message
  names the offending argument, file, key or row;
- a result that is finite wherever the input is, and agrees with a reference wherever one exists.

Anything else fails: a raw ``AttributeError``/``TypeError``/``IndexError``/``KeyError``, or a NaN from
finite input. The default profile (tests/conftest.py) tries a dozen inputs per test; ``pytest -m slow
--hypothesis-profile=slow`` tries 200.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import sklearn.metrics as skm
from flax import nnx
from hypothesis import given
from hypothesis import strategies as st

from jax_cer import metrics
from jax_cer.kernels import flash_attention
from jax_cer.models import build_model, from_original_state_dict, to_original_state_dict
from jax_cer.optim import so
from jax_cer.parity.attention import attention64
from jax_cer.parity.tolerances import TOLERANCES


def outcome(fn, *names: str):
    """``fn()``'s result, or ``None`` when it raised a ValueError whose message names one of ``names``;
    any other exception propagates (and fails the test)."""
    try:
        return fn()
    except ValueError as err:
        assert any(n in str(err) for n in names), f"ValueError names none of {names}: {err}"
        return None


# -- metrics ---------------------------------------------------------------------------------------------

GOOD_IDS = st.lists(st.integers(0, 4), min_size=1, max_size=30)


@st.composite
def class_ids(draw, n: int | None = None):
    """Class ids as a user might pass them: usually valid (list or int / float / bool array), sometimes not."""
    ids = draw(GOOD_IDS if n is None else st.lists(st.integers(0, 4), min_size=n, max_size=n))
    fault = draw(
        st.sampled_from(
            [None, None, None, "float", "fraction", "nan", "inf", "negative", "huge", "2d", "empty", "str", "ragged"]
        )
    )
    a = np.asarray(ids)
    if fault is None:
        return draw(st.sampled_from([ids, a, a.astype(np.int32), a.astype(np.uint8)]))
    if fault in ("nan", "inf"):
        out = a.astype(np.float64)
        out[draw(st.integers(0, len(a) - 1))] = np.nan if fault == "nan" else np.inf
        return out
    return {
        "float": lambda: a.astype(np.float64),  # integral floats: accepted
        "fraction": lambda: a + 0.5,
        "negative": lambda: a - 5,
        "huge": lambda: a.astype(np.float64) * 1e20 + 1e20,
        "2d": lambda: a[:, None],
        "empty": lambda: np.zeros(0, np.int64),
        "str": lambda: a.astype(str),
        "ragged": lambda: [ids, [1]],
    }[fault]()


@given(labels=class_ids(), data=st.data())
def test_classification_metrics(labels, data) -> None:
    n = len(labels) if isinstance(labels, list) else int(np.asarray(labels).shape[0]) if np.ndim(labels) else 1
    preds = data.draw(class_ids(n=max(n, 1)))
    for name, ours, theirs in (
        ("accuracy", metrics.accuracy, skm.accuracy_score),
        ("macro_f1", metrics.macro_f1, lambda y, p: skm.f1_score(y, p, average="macro")),
        ("weighted_f1", metrics.weighted_f1, lambda y, p: skm.f1_score(y, p, average="weighted")),
    ):
        got = outcome(lambda ours=ours: ours(labels, preds), "labels", "preds")
        if got is not None:
            y, p = np.asarray(labels).astype(np.int64), np.asarray(preds).astype(np.int64)
            assert math.isfinite(got) and got == pytest.approx(theirs(y, p), abs=1e-12), name
    cm = outcome(lambda: metrics.confusion_matrix(labels, preds), "labels", "preds")
    if cm is not None:
        y, p = np.asarray(labels).astype(np.int64), np.asarray(preds).astype(np.int64)
        np.testing.assert_allclose(cm, skm.confusion_matrix(y, p, normalize="true"), atol=1e-12)


@st.composite
def frame_logits(draw):
    frames, classes = draw(st.integers(0, 5)), draw(st.integers(0, 4))
    z = draw(st.sampled_from([np.float32, np.float16, np.float64, np.int32]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    a = (rng.normal(size=(frames, classes)) * 10.0 ** draw(st.integers(-3, 30))).astype(np.float64)
    fault = draw(st.sampled_from([None, None, "nan", "inf", "1d", "str", "ragged"]))
    if fault in ("nan", "inf") and a.size:
        a.flat[draw(st.integers(0, a.size - 1))] = np.nan if fault == "nan" else -np.inf
    if fault == "1d":
        return a.ravel()
    if fault == "str":
        return a.astype(str)
    if fault == "ragged":
        return [list(row) for row in a] + [[1.0]]
    with np.errstate(over="ignore", invalid="ignore"):
        return a.astype(z)


@given(
    clips=st.lists(frame_logits(), min_size=0, max_size=3),
    rule=st.sampled_from(["vote", "mean_probs", "mean_logits", "FRAMES_AVG_PROBS", "median"]),
)
def test_video_aggregation(clips, rule) -> None:
    got = outcome(lambda: metrics.aggregate_videos(clips, rule), "clips[", "rule")
    if got is not None:
        assert got.shape == (len(clips),)
        for clip, c in zip(clips, got, strict=True):
            z = np.asarray(clip, np.float64)
            assert 0 <= c < z.shape[1]
            if rule == "mean_logits":
                assert c == np.argmax(z.mean(axis=0))


@given(
    probs=st.lists(st.floats(allow_nan=True, allow_infinity=True, width=64), min_size=0, max_size=20),
    labels=st.lists(st.integers(-1, 2), min_size=0, max_size=20),
)
def test_bah_average_precision(probs, labels) -> None:
    got = outcome(lambda: metrics.bah_average_precision(np.asarray(probs), labels), "prob_positive", "labels")
    if got is not None:
        assert 0.0 <= got <= 1.0


# -- attention -------------------------------------------------------------------------------------------

ATTENTION_FAULTS = [
    None, None, None, "magnitude", "lengths", "nan_q", "hidden_nan",  # a result
    "ndim", "kv_shape", "heads", "head_dim", "dtype_mix", "int", "float64", "lengths_float", "lengths_shape",
    "list", "scale",
]  # fmt: skip


@st.composite
def attention_case(draw):
    b, sq, sk = draw(st.integers(1, 2)), draw(st.integers(0, 6)), draw(st.integers(0, 6))
    h, d = draw(st.integers(1, 2)), draw(st.integers(1, 20))
    fault = draw(st.sampled_from(ATTENTION_FAULTS))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    q, k, v = (rng.normal(size=(b, s, h, d)) for s in (sq, sk, sk))
    kw = {"is_causal": draw(st.booleans())}
    if fault == "magnitude":  # finite and far from 1, within what float32 scores can hold
        q, k, v = (x * 10.0 ** draw(st.integers(-20, 15)) for x in (q, k, v))
    if fault in ("lengths", "hidden_nan") and sk:
        kw["kv_lengths"] = rng.integers(-1, sk + 2, size=b).astype(np.int32)
    if fault == "hidden_nan" and sk:  # a NaN in a key that kv_lengths hides: no influence
        lens = kw["kv_lengths"]
        for i in range(b):
            if lens[i] < sk:
                k[i, max(lens[i], 0) :] = np.nan
                v[i, max(lens[i], 0) :] = np.inf
    if fault == "nan_q" and sq:
        q[0, draw(st.integers(0, sq - 1)), 0, 0] = np.nan
    dtype = np.float32
    arrays = {"q": q, "k": k, "v": v}
    if fault == "ndim":
        arrays["q"] = q[0]
    if fault == "kv_shape":
        arrays["v"] = np.concatenate([v, np.zeros((b, 1, h, d))], axis=1)
    if fault == "heads":
        arrays["k"] = np.concatenate([k, k], axis=2)
        arrays["v"] = np.concatenate([v, v], axis=2)
    if fault == "head_dim":
        arrays = {
            n: np.zeros((b, x.shape[1], h, draw(st.sampled_from([0, 257, 300]))), dtype) for n, x in arrays.items()
        }
    if fault == "lengths_float":
        kw["kv_lengths"] = np.full(b, 1.5)
    if fault == "lengths_shape":
        kw["kv_lengths"] = np.ones((b, 2), np.int32)
    if fault == "scale":
        kw["scale"] = draw(st.sampled_from([math.nan, math.inf, "0.1", None]))
        if kw["scale"] is None:
            kw["scale"] = [0.1]
    out = {n: jnp.asarray(x, dtype) for n, x in arrays.items()}
    if fault == "dtype_mix":
        out["k"] = out["k"].astype(jnp.bfloat16)
    if fault == "int":
        out = {n: x.astype(jnp.int32) for n, x in out.items()}
    if fault == "float64":
        out = {n: np.asarray(x, np.float64) for n, x in arrays.items()}
    if fault == "list":
        out["q"] = np.asarray(arrays["q"]).tolist()
    return fault, out, kw


def _visible_rows(b, sq, sk, lens, causal):
    """[B, Sq]: whether each query sees at least one key."""
    j, i = np.arange(sk), np.arange(sq)
    ok = np.ones((b, sq, sk), bool)
    if causal:
        ok &= j[None, None, :] <= i[None, :, None] + (sk - sq)
    if lens is not None:
        ok &= j[None, None, :] < np.asarray(lens)[:, None, None]
    return ok


@pytest.mark.torch  # the interpreter backend runs the Triton kernels on torch CPU tensors
@given(case=attention_case(), backend=st.sampled_from(["xla", "interpret"]))
def test_flash_attention(case, backend) -> None:
    fault, arrays, kw = case
    names = ("q", "k", "v", "kv_lengths", "scale", "head dim")
    got = outcome(lambda: flash_attention(**arrays, backend=backend, **kw), *names)
    if got is None:
        assert fault not in (None, "magnitude", "lengths", "nan_q", "hidden_nan"), f"refused a valid input ({fault})"
        return
    assert fault in (None, "magnitude", "lengths", "nan_q", "hidden_nan"), f"accepted a malformed input ({fault})"
    q, k, v = (np.asarray(arrays[n], np.float64) for n in "qkv")
    b, sq = q.shape[:2]
    sk = k.shape[1]
    lens = kw.get("kv_lengths")
    clipped = None if lens is None else np.clip(lens, 0, sk)
    got = np.asarray(got, np.float64)
    assert got.shape == q.shape
    seen = _visible_rows(b, sq, sk, clipped, kw["is_causal"])  # [B, Sq, Sk]
    nan_rows = np.isnan(q).any(axis=(2, 3))  # [B, Sq]: a NaN query reaches its own row only
    finite = ~np.broadcast_to(nan_rows[:, :, None, None], got.shape)
    assert np.isfinite(got[finite]).all(), "NaN or inf from finite input"
    assert np.all(got[~seen.any(-1)] == 0), "a row that sees no key must be zero"
    # every output is a convex combination of the visible values: within their range
    vv = np.where(np.isfinite(v), v, 0.0)
    for bi in range(b):
        for i in range(sq):
            keys = np.flatnonzero(seen[bi, i])
            if len(keys) and not nan_rows[bi, i]:
                lo, hi = vv[bi, keys].min(axis=0), vv[bi, keys].max(axis=0)  # [H, D]
                slack = 1e-5 * np.maximum(np.abs(lo), np.abs(hi)) + 1e-30
                assert np.all(got[bi, i] >= lo - slack) and np.all(got[bi, i] <= hi + slack)
    if (
        fault in (None, "lengths", "hidden_nan") and sq and sk
    ):  # std-1 inputs: the float64 reference within the fp32 bound
        want = attention64(q, np.where(np.isfinite(k), k, 0.0), vv, clipped, kw["is_causal"])
        np.testing.assert_allclose(got, want, atol=TOLERANCES["kernel_fp32"], rtol=0)


@given(case=attention_case())
def test_attention_gradients_are_finite(case) -> None:
    """Gradients through the XLA path: finite for finite input (hidden NaN keys included)."""
    fault, arrays, kw = case
    if fault not in (None, "magnitude", "lengths", "hidden_nan") or not all(a.size for a in arrays.values()):
        return
    if fault == "magnitude" and np.abs(np.asarray(arrays["q"])).max() > 1e6:
        return  # softmax saturates: gradients of such scores are legitimately 0 or huge, not a property
    grads = jax.grad(lambda q, k, v: flash_attention(q, k, v, backend="xla", **kw).sum(), argnums=(0, 1, 2))(
        arrays["q"], arrays["k"], arrays["v"]
    )
    lens = kw.get("kv_lengths")
    sk = arrays["k"].shape[1]
    for name, g in zip("qkv", grads, strict=True):
        g = np.asarray(g)
        if name in "kv" and lens is not None:  # hidden keys' rows are zero
            for bi, n in enumerate(np.clip(lens, 0, sk)):
                assert np.all(g[bi, n:] == 0), f"d{name} of hidden keys"
                g = g.copy()
                g[bi, n:] = 0
        assert np.isfinite(g).all(), f"d{name} not finite"


# -- fusion weights and models -----------------------------------------------------------------------------


@functools.cache
def _tcn_original() -> dict[str, np.ndarray]:
    """A small TCN (8 inputs, two blocks of 4 channels, kernel 3) under the original keys."""
    return to_original_state_dict(build_model("tcn", rngs=nnx.Rngs(0), num_inputs=8, channels=(4, 4), kernel_size=3))


@functools.cache
def _tcn_output() -> np.ndarray:
    return np.asarray(from_original_state_dict("tcn", _tcn_original())(TCN_INPUT))


TCN_INPUT = np.random.default_rng(1).normal(size=(2, 9, 8)).astype(np.float32)
WEIGHT_FAULTS = [
    "drop", "add", "shape", "int", "bool", "complex", "nan", "inf", "beyond", "list", "none", "str", "float64",
    "float16", "empty", "not_a_mapping",
]  # fmt: skip


@given(faults=st.lists(st.sampled_from(WEIGHT_FAULTS), min_size=1, max_size=3), data=st.data())
def test_from_original_state_dict(faults, data) -> None:
    """A damaged state dict is refused naming a damaged key; a harmless change (float64 weights) loads
    the same model."""
    sd = dict(_tcn_original())
    keys = list(sd)
    touched = set()
    for fault in faults:
        key = data.draw(st.sampled_from([k for k in keys if k not in touched]))  # one fault per key
        touched.add(key)
        a = np.asarray(sd.get(key, np.zeros(1, np.float32)))
        if fault == "drop":
            sd.pop(key, None)
        elif fault == "add":
            touched.add(key + "_extra")
            sd[key + "_extra"] = a
        else:
            sd[key] = {
                "shape": lambda a=a: a.reshape(-1)[:-1] if a.size > 1 else np.zeros((2, 2), a.dtype),
                "int": lambda a=a: a.astype(np.int32),
                "bool": lambda a=a: a > 0,
                "complex": lambda a=a: a.astype(np.complex64),
                "nan": lambda a=a: np.full_like(a, np.nan),
                "inf": lambda a=a: np.full_like(a, -np.inf),
                "beyond": lambda a=a: np.full(a.shape, 1e39),
                "list": lambda a=a: a.tolist(),
                "none": lambda a=a: None,
                "str": lambda a=a: "weights",
                "float64": lambda a=a: a.astype(np.float64),
                "float16": lambda a=a: a.astype(np.float16),
                "empty": lambda a=a: np.zeros((0,), np.float32),
                "not_a_mapping": lambda a=a: a,
            }[fault]()
    if "not_a_mapping" in faults:
        sd = list(sd.values())
        touched = {"state_dict"}
    model = outcome(lambda: from_original_state_dict("tcn", sd), *touched, "state_dict")
    if model is None:
        return
    assert set(faults) <= {"float64", "float16", "list"}, f"accepted {faults}"
    got = np.asarray(model(TCN_INPUT))
    assert np.isfinite(got).all()
    if set(faults) <= {"float64", "list"}:  # the same float32 values
        np.testing.assert_array_equal(got, _tcn_output())


INPUT_FAULTS = [None, None, "float16", "bfloat16", "float64", "large", "int", "bool", "nan", "inf", "beyond", "ndim",
                "width", "missing", "extra", "list", "time_mismatch", "batch_mismatch", "not_a_dict"]  # fmt: skip


@functools.cache
def _can():
    return build_model("can", rngs=nnx.Rngs(0))


def _fault_inputs(inputs: dict, fault, m: str, rng) -> dict:
    x = inputs[m]
    change = {
        "float16": lambda: x.astype(np.float16),
        "bfloat16": lambda: jnp.asarray(x, jnp.bfloat16),
        "float64": lambda: x.astype(np.float64),
        "large": lambda: x * 1e30,  # finite, far from 1
        "int": lambda: x.astype(np.int32),
        "bool": lambda: x > 0,
        "nan": lambda: np.where(rng.random(x.shape) < 0.1, np.nan, x),
        "inf": lambda: np.full_like(x, np.inf),
        "beyond": lambda: x.astype(np.float64) * 1e300,
        "ndim": lambda: x[0],
        "width": lambda: x[..., :-1],
        "list": lambda: x.tolist(),
        "time_mismatch": lambda: x[:, :-1],
        "batch_mismatch": lambda: np.concatenate([x, x]),
    }
    out = dict(inputs)
    if fault == "missing":
        out.pop(m)
    elif fault == "extra":
        out["audio"] = x
    elif fault in change:
        out[m] = change[fault]()
    return out


@given(
    fault=st.sampled_from(INPUT_FAULTS), modality=st.sampled_from(["video", "vggish", "bert"]), seed=st.integers(0, 99)
)
def test_fusion_model_inputs(fault, modality, seed) -> None:
    """A fusion model (CAN) refuses malformed inputs naming the modality; any floating input within
    float32's range gives finite logits, equal to those of its float32 cast."""
    model = _can()
    rng = np.random.default_rng(seed)
    inputs = {m: rng.normal(size=(1, 6, d)).astype(np.float32) for m, d in model.config.input_dims.items()}
    bad = _fault_inputs(inputs, fault, modality, rng)
    if fault == "not_a_dict":
        bad = list(inputs.values())
    got = outcome(lambda: model(bad), modality, "audio", "inputs")
    ok = (None, "float16", "bfloat16", "float64", "large")
    if got is None:
        assert fault not in ok, f"refused a valid input ({fault})"
        return
    assert fault in ok, f"accepted a malformed input ({fault})"
    got = np.asarray(got)
    assert got.shape == (1, 6, model.config.num_classes) and np.isfinite(got).all()
    cast = {m: np.asarray(jnp.asarray(x, jnp.float32)) for m, x in bad.items()}
    np.testing.assert_allclose(got, np.asarray(model(cast)), rtol=0, atol=0)


@given(fault=st.sampled_from(INPUT_FAULTS), seed=st.integers(0, 99))
def test_tcn_inputs(fault, seed) -> None:
    model = from_original_state_dict("tcn", _tcn_original())
    rng = np.random.default_rng(seed)
    x = _fault_inputs({"x": TCN_INPUT * rng.normal()}, fault, "x", rng)
    if fault in ("missing", "extra", "not_a_dict"):
        return  # a dict of modalities is the fusion models' input
    got = outcome(lambda: model(x["x"]), "'x'")
    ok = (None, "float16", "bfloat16", "float64", "large", "time_mismatch", "batch_mismatch")
    if got is None:
        assert fault not in ok, f"refused a valid input ({fault})"
        return
    assert fault in ok, f"accepted a malformed input ({fault})"
    got = np.asarray(got)
    assert np.isfinite(got).all()
    np.testing.assert_array_equal(got, np.asarray(model(np.asarray(jnp.asarray(x["x"], jnp.float32)))))


# -- SO ----------------------------------------------------------------------------------------------------

LEAF_SHAPES = [(3,), (4, 5), (6, 2), (2, 3, 4), (), (0, 4)]


@given(
    shapes=st.lists(st.sampled_from(LEAF_SHAPES), min_size=1, max_size=3),
    density=st.sampled_from([0.0, 0.05, 0.3, 1.0, 1.5, -0.1, math.nan]),
    refresh_every=st.sampled_from([1, 2, 0]),
    exponent=st.integers(-30, 15),
    nan_leaf=st.booleans(),
    seed=st.integers(0, 99),
)
def test_so(shapes, density, refresh_every, exponent, nan_leaf, seed) -> None:
    """SO refuses bad settings and leaves naming them; otherwise its updates are finite wherever the
    gradients are (a NaN gradient entry stays in its leaf, as in optax.adam), and at density 1 they are
    Adam's."""
    rng = np.random.default_rng(seed)
    params = {f"p{i}": jnp.asarray(rng.normal(size=s), jnp.float32) for i, s in enumerate(shapes)}
    opt = outcome(lambda: so(1e-3, density=density, refresh_every=refresh_every), "refresh_every")
    if opt is None:
        assert refresh_every == 0
        return
    state = outcome(lambda: opt.init(params), "density", "leaf")
    if state is None:
        assert not 0 <= density <= 1 or math.isnan(density) or any(len(s) > 2 for s in shapes)
        return
    adam = optax.adam(1e-3)
    adam_state = adam.init(params)
    for _ in range(3):
        grads = {n: jnp.asarray(rng.normal(size=p.shape) * 10.0**exponent, jnp.float32) for n, p in params.items()}
        if nan_leaf and grads["p0"].size:
            grads["p0"] = grads["p0"].at[(0,) * grads["p0"].ndim].set(jnp.nan)
        updates, state = opt.update(grads, state, params)
        want, adam_state = adam.update(grads, adam_state, params)
        for n, u in updates.items():
            u = np.asarray(u)
            assert u.shape == params[n].shape
            if not (nan_leaf and n == "p0"):
                assert np.isfinite(u).all(), f"update of {n} not finite"
                if density == 1.0:
                    np.testing.assert_allclose(u, want[n], atol=TOLERANCES["so"], rtol=TOLERANCES["so_relative"])
