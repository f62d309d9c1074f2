"""The tokenizer of a Hugging Face checkpoint directory (``tokenizer.json``), with right padding."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer as HFTokenizer

from jax_cer.text.bert import read_json_object

MAX_VOCAB_SIZE = 2**31
"""Token ids are int32: a tokenizer's ids must be below this."""


class Tokenizer:
    """A ``tokenizers`` fast tokenizer from ``tokenizer.json`` with right padding done here.

    ``__call__(texts, max_length=None, pad_to_multiple_of=1)`` -> ``input_ids``,
    ``attention_mask`` and ``token_type_ids`` as int32 ``[N, L]`` with L the longest encoding
    (after truncation to ``max_length``), rounded up to ``pad_to_multiple_of``. ``vocab_size`` is
    the number of ids it can produce (its largest id + 1).

    A missing file is a FileNotFoundError; a file that is not UTF-8 JSON (the error gives the line
    and column), not a ``tokenizers`` tokenizer, with an empty vocabulary, a ``model.unk_token`` or a
    ``padding.pad_id`` outside it, or a post-processor template using an undefined special token is a
    ValueError naming the path. Only ``tokenizer.json`` is read (``vocab.txt`` is not).
    """

    def __init__(self, path: str | Path, *, max_length: int | None = None):
        path = Path(path)
        raw = read_json_object(path, "the checkpoint directory needs tokenizer.json")
        self.path = path
        try:
            self.hf = HFTokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception
            raise ValueError(f"{path} is not a tokenizers tokenizer.json: {e}") from None
        self.hf.no_padding()
        self.hf.no_truncation()
        vocab = self.hf.get_vocab(with_added_tokens=True)
        if not vocab:
            raise ValueError(f"{path}: the tokenizer's vocabulary is empty")
        unk = raw["model"].get("unk_token") if isinstance(raw.get("model"), dict) else None
        if isinstance(unk, str) and unk not in vocab:  # tokenizers would fail on the first unknown word
            raise ValueError(f"{path}: model.unk_token {unk!r} is not in the vocabulary")
        self.vocab_size = max([*vocab.values(), *_post_processor_ids(raw.get("post_processor"), path)]) + 1
        if self.vocab_size > MAX_VOCAB_SIZE:
            raise ValueError(f"{path}: token id {self.vocab_size - 1} does not fit int32 (the ids' dtype)")
        padding = raw.get("padding")
        if padding is not None and not isinstance(padding, dict):
            raise ValueError(f"{path}: padding must be an object or null, got {padding!r}")
        pad = (padding or {}).get("pad_id")
        if pad is None:
            pad = self.hf.token_to_id("[PAD]") or 0
        elif not _is_index(pad, self.vocab_size):
            raise ValueError(f"{path}: padding.pad_id must be an integer in [0, {self.vocab_size}), got {pad!r}")
        self.pad_id = int(pad)
        self.max_length = check_max_length(max_length, "max_length")

    def check_vocabulary(self, vocab_size: int) -> None:
        """Raises ValueError unless every id this tokenizer produces is below a model's ``vocab_size``."""
        if self.vocab_size > vocab_size:
            raise ValueError(
                f"{self.path} has token ids up to {self.vocab_size - 1} but the model's vocab_size is {vocab_size}: "
                "the tokenizer does not belong to this model"
            )

    def encode(self, texts: Sequence[str], max_length: int | None = None) -> list[list[int]]:
        texts = check_texts(texts)
        limit = check_max_length(max_length, "max_length") or self.max_length
        if limit is not None:
            special = self.hf.num_special_tokens_to_add(False)
            if limit < special:  # tokenizers would then ignore the limit
                raise ValueError(f"max_length {limit} is less than the {special} special tokens {self.path} adds")
            # tokenizers counts lengths in machine integers: a longer limit is no truncation at all
            self.hf.enable_truncation(min(limit, 2**31))
        try:
            return [e.ids for e in self.hf.encode_batch(texts)]
        except Exception as e:  # tokenizers raises a bare Exception
            raise ValueError(f"{self.path} cannot encode the texts: {e}") from None
        finally:
            self.hf.no_truncation()

    def pad(self, ids: Sequence[Sequence[int]], pad_to_multiple_of: int = 1, length: int | None = None):
        if not _is_index(pad_to_multiple_of, None) or pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be an integer >= 1, got {pad_to_multiple_of!r}")
        n = max((len(x) for x in ids), default=0)
        if length is not None and not _is_index(length, None):
            raise ValueError(f"length must be an integer >= 0 or None, got {length!r}")
        if length is not None:
            if length < n:
                raise ValueError(f"length {length} is shorter than the longest encoding ({n} tokens)")
            n = length
        n = -(-n // pad_to_multiple_of) * pad_to_multiple_of
        out = np.full((len(ids), n), self.pad_id, np.int32)
        mask = np.zeros((len(ids), n), np.int32)
        for i, x in enumerate(ids):
            out[i, : len(x)] = x
            mask[i, : len(x)] = 1
        return {"input_ids": out, "attention_mask": mask, "token_type_ids": np.zeros_like(out)}

    def __call__(self, texts: Sequence[str], max_length: int | None = None, pad_to_multiple_of: int = 1):
        return self.pad(self.encode(texts, max_length), pad_to_multiple_of)


def _post_processor_ids(proc: Any, path: Path) -> list[int]:
    """The ids a ``post_processor`` adds (TemplateProcessing's special tokens, BertProcessing's and
    RobertaProcessing's ``cls``/``sep``, through ``Sequence``); ValueError naming ``path`` when a template
    uses a special token its ``special_tokens`` do not define (tokenizers would crash on it while encoding)."""
    if not isinstance(proc, dict):
        return []
    if proc.get("type") == "Sequence":
        return [i for p in proc.get("processors") or [] for i in _post_processor_ids(p, path)]
    if proc.get("type") in ("BertProcessing", "RobertaProcessing"):
        return [pair[1] for pair in (proc.get("cls"), proc.get("sep")) if isinstance(pair, list) and len(pair) == 2]
    if proc.get("type") != "TemplateProcessing":
        return []
    special = proc.get("special_tokens")
    special = special if isinstance(special, dict) else {}
    for part in ("single", "pair"):
        for piece in proc.get(part) or []:
            name = (piece.get("SpecialToken") or {}).get("id") if isinstance(piece, dict) else None
            if name is not None and name not in special:
                raise ValueError(
                    f"{path}: post_processor.{part} uses the special token {name!r}, which "
                    "post_processor.special_tokens does not define"
                )
    return [i for tok in special.values() if isinstance(tok, dict) for i in tok.get("ids") or []]


def _is_index(v: Any, size: int | None) -> bool:
    """Whether ``v`` is an integer (not a bool) in ``[0, size)`` (``[0, inf)`` when ``size`` is None)."""
    ok = isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0
    return ok and (size is None or v < size)


def check_max_length(value: Any, name: str) -> int | None:
    """``value`` when it is None or an integer >= 1 (not a bool); otherwise a ValueError naming ``name``."""
    if value is not None and (not _is_index(value, None) or value < 1):
        raise ValueError(f"{name} must be an integer >= 1 or None, got {value!r}")
    return None if value is None else int(value)


def check_texts(texts: Any) -> list[str]:
    """``texts`` as a list of strings; ValueError naming ``texts`` (or the first bad item) otherwise."""
    if isinstance(texts, str):
        raise ValueError("texts must be a list of strings, got a single str (wrap it in a list)")
    if isinstance(texts, (Mapping, AbstractSet)):  # keys only, or no order: the rows would not match the texts
        raise ValueError(f"texts must be a list of strings, got a {type(texts).__name__}")
    try:
        texts = list(texts)
    except TypeError:
        raise ValueError(f"texts must be a list of strings, got {type(texts).__name__}") from None
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise ValueError(f"texts[{bad[0]}] is {type(texts[bad[0]]).__name__}, not str")
    return texts
