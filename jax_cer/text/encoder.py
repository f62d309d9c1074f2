"""Sentence embeddings (sentence-transformers in JAX) and the sequence classifier of the text models.

- :class:`SentenceEncoder`: ``SentenceEncoder.from_pretrained(path).embed(list_of_str)`` ->
  ``[N, dim]`` float32, sentence-transformers' mean pooling over real tokens then L2
  normalization, and :meth:`SentenceEncoder.hidden_states` for the token-level states of every
  layer.
- :class:`TextClassifier`: the encoder with a sequence-classification head (mean or ``[CLS]``
  pooling, dropout, ``Linear(hidden, K)``), the model the MELD text runs train.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from jax_cer.kernels.xla import AttentionFn
from jax_cer.text.bert import (
    BertConfig,
    BertModel,
    bert_linear,
    checkpoint_dir,
    default_checkpoint,
    l2_normalize,
    load_bert,
    mean_pool,
    read_json,
    read_json_object,
)
from jax_cer.text.tokenizer import Tokenizer, check_max_length, check_texts


class SentenceEncoder:
    """A sentence-transformers model (BERT + mean pooling + normalization) in JAX.

    ``SentenceEncoder.from_pretrained(path)`` reads ``config.json``, ``model.safetensors``,
    ``tokenizer.json`` and, when present, ``sentence_bert_config.json`` (``max_seq_length``,
    sentence-transformers' truncation length) and ``1_Pooling/config.json`` (mean pooling is the
    only mode implemented) and ``modules.json`` (normalization when it lists ``Normalize``).
    """

    def __init__(
        self, model: BertModel, tokenizer: Tokenizer, *, max_seq_length: int | None = None, normalize: bool = True
    ):
        limit = model.config.max_position_embeddings
        max_seq_length = check_max_length(max_seq_length, "max_seq_length")
        if max_seq_length is not None and max_seq_length > limit:
            raise ValueError(f"max_seq_length {max_seq_length} exceeds the model's max_position_embeddings {limit}")
        tokenizer.check_vocabulary(model.config.vocab_size)
        self.model = model
        self.tokenizer = tokenizer
        self.max_seq_length = max_seq_length or limit
        self.normalize = bool(normalize)
        self._graphdef, self._state = nnx.split(model)
        self._jit = {}

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path | None = None,
        *,
        attention_fn: AttentionFn | None = None,
        max_seq_length: int | None = None,
        normalize: bool | None = None,
        dtype=jnp.float32,
    ) -> SentenceEncoder:
        """Loads a sentence-transformers directory (default: :func:`~jax_cer.text.default_checkpoint`).

        Every file is checked before the weights are read: a missing required file is a
        FileNotFoundError, anything malformed a ValueError naming the file (and the key).
        """
        path = checkpoint_dir(default_checkpoint() if path is None else path)
        config = BertConfig.from_json(path / "config.json")
        tokenizer = Tokenizer(path / "tokenizer.json")
        if max_seq_length is None:
            max_seq_length = _st_max_seq_length(path / "sentence_bert_config.json", config)
        _check_pooling(path / "1_Pooling" / "config.json")
        if normalize is None:
            normalize = _st_normalize(path / "modules.json")
        model = load_bert(path, attention_fn=attention_fn, dtype=dtype)
        return cls(model, tokenizer, max_seq_length=max_seq_length, normalize=normalize)

    def _fn(self, name: str):
        if name not in self._jit:
            graphdef = self._graphdef

            def run(state, ids, mask):
                model = nnx.merge(graphdef, state)
                last, states = model(ids, mask, output_hidden_states=True)
                pooled = mean_pool(last, mask)
                if name == "embed":
                    return l2_normalize(pooled) if self.normalize else pooled
                return states

            self._jit[name] = jax.jit(run)
        return self._jit[name]

    def tokenize(self, texts: Sequence[str], pad_to_multiple_of: int = 1) -> dict[str, np.ndarray]:
        """Right-padded int32 ``input_ids``, ``attention_mask``, ``token_type_ids`` (truncated to max_seq_length)."""
        return self.tokenizer(texts, self.max_seq_length, pad_to_multiple_of)

    def embed(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """``[N, dim]`` float32 sentence embeddings (mean over real tokens, then L2 norm)."""
        texts = check_texts(texts)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        ids = self.tokenizer.encode(texts, self.max_seq_length)
        order = np.argsort([-len(x) for x in ids], kind="stable")  # like sentence-transformers: long first
        out = np.zeros((len(texts), self.dim), np.float32)
        starts = range(0, len(texts), batch_size)
        if progress:
            starts = tqdm(starts, desc="embed", unit="batch")
        for s in starts:
            idx = order[s : s + batch_size]
            longest = max(len(ids[i]) for i in idx)
            # padded to a multiple of 8 (fewer shapes to compile), never past max_seq_length
            length = min(-(-longest // 8) * 8, self.max_seq_length)
            batch = self.tokenizer.pad([ids[i] for i in idx], length=length)
            out[idx] = np.asarray(self._fn("embed")(self._state, batch["input_ids"], batch["attention_mask"]))
        return out

    def hidden_states(self, texts: Sequence[str]) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
        """Token-level states of one batch: ``([embeddings, layer_1, ..., layer_n], tokens)``.

        Each state is ``[N, L, hidden]`` float32 over the batch's right-padded tokens
        (``tokens['attention_mask']`` marks the real ones).
        """
        if not check_texts(texts):
            raise ValueError("texts is empty: hidden_states needs at least one text")
        batch = self.tokenize(texts)
        states = self._fn("states")(self._state, batch["input_ids"], batch["attention_mask"])
        return [np.asarray(s) for s in states], batch


def _st_max_seq_length(path: Path, config: BertConfig) -> int | None:
    """``max_seq_length`` of ``sentence_bert_config.json`` (None when the file or the key is absent)."""
    if not path.is_file():
        return None
    value = read_json_object(path, "").get("max_seq_length")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= config.max_position_embeddings:
        raise ValueError(
            f"{path}: max_seq_length must be an integer in [1, max_position_embeddings "
            f"{config.max_position_embeddings}], got {value!r}"
        )
    return value


def _check_pooling(path: Path) -> None:
    """Raises unless ``1_Pooling/config.json`` (when present) selects mean pooling and nothing else."""
    if not path.is_file():
        return
    raw = read_json_object(path, "")
    flags = {k: v for k, v in raw.items() if k.startswith("pooling_mode")}
    bad = {k: v for k, v in flags.items() if not isinstance(v, bool)}
    if bad:
        raise ValueError(f"{path}: pooling modes must be true or false, got {bad}")
    modes = sorted(k for k, v in flags.items() if v)
    if modes != ["pooling_mode_mean_tokens"]:
        raise ValueError(f"{path}: pooling modes {modes}; only mean pooling (pooling_mode_mean_tokens) is implemented")


def _st_normalize(path: Path) -> bool:
    """Whether ``modules.json`` lists a ``Normalize`` module (True when the file is absent)."""
    if not path.is_file():
        return True
    modules = read_json(path, "")
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise ValueError(f"{path} must hold a JSON list of module objects, got {modules!r:.80}")
    types = [m.get("type", "") for m in modules]
    bad = [t for t in types if not isinstance(t, str)]
    if bad:
        raise ValueError(f"{path}: a module's type must be a string, got {bad[0]!r}")
    return any(t.endswith("Normalize") for t in types)


class TextClassifier(nnx.Module):
    """BERT encoder + sequence-classification head -> logits ``[..., num_classes]``.

    ``pooling="mean"``: the mean of the last hidden states over real tokens (the sentence
    embedding all-MiniLM-L6-v2 was trained for, before normalization); ``"cls"``: the ``[CLS]``
    state through the pooler (``BertForSequenceClassification``). Then dropout
    (``classifier_dropout``, default the encoder's hidden dropout) and ``classifier``:
    ``Linear(hidden, num_classes)`` initialised N(0, 0.02), zero bias (transformers' init).
    """

    def __init__(
        self,
        encoder: BertModel,
        num_classes: int,
        *,
        pooling: str = "mean",
        classifier_dropout: float | None = None,
        rngs: nnx.Rngs,
    ):
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
        if pooling == "cls" and encoder.pooler is None:
            raise ValueError("pooling='cls' needs the encoder's pooler weights (pooler.dense) in the checkpoint")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.encoder = encoder
        self.pooling = pooling
        hidden = encoder.config.hidden_size
        rate = encoder.config.hidden_dropout_prob if classifier_dropout is None else classifier_dropout
        self.dropout = nnx.Dropout(rate, deterministic=True, rngs=rngs)
        self.classifier = bert_linear(hidden, num_classes, rngs)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        last = self.encoder(input_ids, attention_mask)
        if self.pooling == "mean":
            pooled = mean_pool(last, attention_mask)
        else:
            pooled = self.encoder.pooler(last)
        return self.classifier(self.dropout(pooled))
