"""Sentence embeddings (sentence-transformers in JAX) and the sequence classifier of the text models.

- :class:`SentenceEncoder`: ``SentenceEncoder.from_pretrained(path).embed(list_of_str)`` ->
  ``[N, dim]`` float32, sentence-transformers' mean pooling over real tokens then L2
  normalization, and :meth:`SentenceEncoder.hidden_states` for the token-level states of every
  layer.
- :class:`TextClassifier`: the encoder with a sequence-classification head (mean or ``[CLS]``
  pooling, dropout, ``Linear(hidden, K)``), the model the MELD text runs train.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from jax_cer.kernels.xla import AttentionFn
from jax_cer.text.bert import (
    BertModel,
    bert_linear,
    default_checkpoint,
    l2_normalize,
    load_bert,
    mean_pool,
)
from jax_cer.text.tokenizer import Tokenizer, check_texts


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
        self.model = model
        self.tokenizer = tokenizer
        self.max_seq_length = max_seq_length or model.config.max_position_embeddings
        self.normalize = normalize
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
        path = default_checkpoint() if path is None else Path(path)
        model = load_bert(path, attention_fn=attention_fn, dtype=dtype)
        st = path / "sentence_bert_config.json"
        if max_seq_length is None and st.is_file():
            max_seq_length = json.loads(st.read_text()).get("max_seq_length")
        pooling = path / "1_Pooling" / "config.json"
        if pooling.is_file():
            modes = {k for k, v in json.loads(pooling.read_text()).items() if k.startswith("pooling_mode") and v}
            if modes - {"pooling_mode_mean_tokens"}:
                raise ValueError(f"{pooling}: pooling modes {sorted(modes)}; only mean pooling is implemented")
        if normalize is None:
            modules = path / "modules.json"
            normalize = True
            if modules.is_file():
                normalize = any(m.get("type", "").endswith("Normalize") for m in json.loads(modules.read_text()))
        return cls(model, Tokenizer(path / "tokenizer.json"), max_seq_length=max_seq_length, normalize=normalize)

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
            batch = self.tokenizer.pad([ids[i] for i in idx], pad_to_multiple_of=8)
            out[idx] = np.asarray(self._fn("embed")(self._state, batch["input_ids"], batch["attention_mask"]))
        return out

    def hidden_states(self, texts: Sequence[str]) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
        """Token-level states of one batch: ``([embeddings, layer_1, ..., layer_n], tokens)``.

        Each state is ``[N, L, hidden]`` float32 over the batch's right-padded tokens
        (``tokens['attention_mask']`` marks the real ones).
        """
        batch = self.tokenize(texts)
        states = self._fn("states")(self._state, batch["input_ids"], batch["attention_mask"])
        return [np.asarray(s) for s in states], batch


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
