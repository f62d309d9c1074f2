"""The tokenizer of a Hugging Face checkpoint directory (``tokenizer.json``), with right padding."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer as HFTokenizer


class Tokenizer:
    """A ``tokenizers`` fast tokenizer from ``tokenizer.json`` with right padding done here.

    ``__call__(texts, max_length=None, pad_to_multiple_of=1)`` -> ``input_ids``,
    ``attention_mask`` and ``token_type_ids`` as int32 ``[N, L]`` with L the longest encoding
    (after truncation to ``max_length``), rounded up to ``pad_to_multiple_of``.
    """

    def __init__(self, path: str | Path, *, max_length: int | None = None):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: the checkpoint directory needs tokenizer.json")
        self.path = path
        self.hf = HFTokenizer.from_file(str(path))
        self.hf.no_padding()
        self.hf.no_truncation()
        raw = json.loads(path.read_text())
        pad = (raw.get("padding") or {}).get("pad_id")
        self.pad_id = int(pad) if pad is not None else (self.hf.token_to_id("[PAD]") or 0)
        self.max_length = max_length

    def encode(self, texts: Sequence[str], max_length: int | None = None) -> list[list[int]]:
        texts = check_texts(texts)
        limit = max_length or self.max_length
        if limit is not None:
            self.hf.enable_truncation(int(limit))
        try:
            return [e.ids for e in self.hf.encode_batch(list(texts))]
        finally:
            self.hf.no_truncation()

    def pad(self, ids: Sequence[Sequence[int]], pad_to_multiple_of: int = 1, length: int | None = None):
        n = max(len(x) for x in ids)
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


def check_texts(texts) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, got a single str (wrap it in a list)")
    texts = list(texts)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"texts[{bad[0]}] is {type(texts[bad[0]]).__name__}, not str")
    return texts
