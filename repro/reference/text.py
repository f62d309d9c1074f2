"""PyTorch reference of the text classifier's trainable parts (spec ``textualization.md`` §6.2-§6.3,
PEFT 0.10 LoRA semantics), around transformers' ``BertModel``.

- :class:`LoRALinear`: ``y = x W^T + b + scaling * dropout(x) A^T B^T`` with A ``[r, in]``, B ``[out, r]``,
  ``scaling = alpha / sqrt(r)`` (rsLoRA) or ``alpha / r``.
- :func:`wrap_lora`: replaces the ``nn.Linear`` modules whose dotted name matches a target by PEFT's
  rule (equal, or ending with ``"." + target``) and freezes everything else.
- :class:`MeanPoolClassifier`: encoder, mean over real tokens, dropout, ``Linear(hidden, K)``.
- :func:`sgd_clip_step`: the original text models' step, ``clip_grad_norm_(0.3)`` then
  ``SGD(lr, weight_decay)`` on the parameters that require gradients.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0, rslora: bool = False):
        super().__init__()
        self.base = base
        self.lora_A = nn.Parameter(torch.zeros(rank, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scaling = alpha / (math.sqrt(rank) if rslora else rank)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scaling * (self.dropout(x) @ self.lora_A.T @ self.lora_B.T)


def wrap_lora(model: nn.Module, targets, **kw) -> list[str]:
    names = [
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and any(n == t or n.endswith("." + t) for t in targets)
    ]
    for p in model.parameters():
        p.requires_grad_(False)
    for n in names:
        parent_name, _, attr = n.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, attr, LoRALinear(getattr(parent, attr), **kw))
    return names


class MeanPoolClassifier(nn.Module):
    def __init__(self, encoder: nn.Module, num_classes: int, dropout: float = 0.1):
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(encoder.config.hidden_size, num_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return self.classifier(self.dropout(pooled))


def sgd_clip_step(model: nn.Module, loss: torch.Tensor, lr: float, weight_decay: float, max_norm: float = 0.3):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, max_norm)
    opt.step()


MINILM_L6 = {
    "vocab_size": 30522,
    "hidden_size": 384,
    "num_hidden_layers": 6,
    "num_attention_heads": 12,
    "intermediate_size": 1536,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-12,
}
"""all-MiniLM-L6-v2's architecture (its ``config.json``), for checkpoints with drawn weights."""


def random_bert_checkpoint(path, seed: int = 0, **config) -> str:
    """Writes a transformers ``BertModel`` with MiniLM-L6's shape (or ``config``'s overrides) and
    weights drawn by its own initializer under ``torch.manual_seed(seed)`` to ``path``
    (``config.json`` + ``model.safetensors``), and returns the path.

    For machines without the packaged checkpoint (the GPU image): the encoder's arithmetic and
    time do not depend on the weights' values, so parity and timing on drawn weights measure the
    same code on the same shapes. Needs transformers.
    """
    import transformers  # noqa: PLC0415 - optional heavy package, only to write a drawn checkpoint

    torch.manual_seed(seed)
    cfg = transformers.BertConfig(**{**MINILM_L6, **config})
    model = transformers.BertModel(cfg).eval()
    model.save_pretrained(str(path), safe_serialization=True)
    return str(path)
