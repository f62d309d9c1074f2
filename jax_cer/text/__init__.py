"""The text models: BERT-family encoders in Flax NNX loaded from Hugging Face checkpoint directories,
the sentence encoder and classifier built on them, LoRA and the prompt builder.

A directory holds ``config.json`` (``model_type: bert``), ``model.safetensors`` and
``tokenizer.json``; nothing is downloaded and torch is not needed. Loading is strict: a key of the
file that the model does not have, a parameter the file does not have, a wrong shape or a
non-float dtype is an error that names the key (``embeddings.position_ids``, the buffer
transformers saves, is accepted and checked). Checkpoints whose keys start with ``bert.`` (a
``BertFor...`` save) load too; the head's keys are then unexpected unless a head is built.

- :class:`BertConfig`: the fields of ``config.json`` the model uses.
- :class:`BertModel`: embeddings, ``num_hidden_layers`` post-LayerNorm encoder layers and the
  optional pooler, named as transformers names them (``encoder.layer.3.attention.self.query``),
  so the safetensors keys map one to one. Self-attention goes through ``attention_fn`` with the
  signature of :func:`flax.nnx.dot_product_attention` plus ``kv_lengths`` (the number of real
  tokens per sequence, for right padding): the default XLA attention or
  :func:`jax_cer.kernels.flash_attention.flash_attention` (``flash_attention_fn``).
- :class:`SentenceEncoder`: ``SentenceEncoder.from_pretrained(path).embed(list_of_str)`` ->
  ``[N, dim]`` float32, sentence-transformers' mean pooling over real tokens then L2
  normalization, and :meth:`SentenceEncoder.hidden_states` for the token-level states of every
  layer.
- :class:`TextClassifier`: the encoder with a sequence-classification head (mean or ``[CLS]``
  pooling, dropout, ``Linear(hidden, K)``), the model the MELD text runs train.
"""

from jax_cer.text.bert import (
    ACTIVATIONS,
    POSITION_IDS_KEY,
    BertConfig,
    BertModel,
    check_right_padded,
    default_checkpoint,
    flash_attention_fn,
    hf_key,
    kv_lengths_of,
    l2_normalize,
    load_bert,
    load_weights,
    mean_pool,
    read_safetensors,
    state_dict,
)
from jax_cer.text.encoder import SentenceEncoder, TextClassifier
from jax_cer.text.tokenizer import Tokenizer

__all__ = [
    "ACTIVATIONS",
    "POSITION_IDS_KEY",
    "BertConfig",
    "BertModel",
    "SentenceEncoder",
    "TextClassifier",
    "Tokenizer",
    "check_right_padded",
    "default_checkpoint",
    "flash_attention_fn",
    "hf_key",
    "kv_lengths_of",
    "l2_normalize",
    "load_bert",
    "load_weights",
    "mean_pool",
    "read_safetensors",
    "state_dict",
]
