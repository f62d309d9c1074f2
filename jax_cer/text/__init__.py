"""The text models: BERT-family encoders in Flax NNX loaded from Hugging Face checkpoint directories
(:mod:`jax_cer.text.bert`, :mod:`jax_cer.text.tokenizer`), the sentence encoder and the classifier built
on them (:mod:`jax_cer.text.encoder`), LoRA (:mod:`jax_cer.text.lora`) and the prompt builder
(:mod:`jax_cer.text.textualize`). Nothing is downloaded and torch is not needed.
"""

from jax_cer.text.bert import (
    ACTIVATIONS,
    BERT_NAMES,
    POSITION_IDS_KEY,
    BertConfig,
    BertModel,
    bert_entries,
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
    "BERT_NAMES",
    "POSITION_IDS_KEY",
    "BertConfig",
    "BertModel",
    "SentenceEncoder",
    "TextClassifier",
    "Tokenizer",
    "bert_entries",
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
