"""LFAN: leader-follower attention network (spec §4.1).

Per frame and head, every modality attends to every modality (attention across modalities, not time);
``U = A V + V`` is projected, passed through Dropout and LayerNorm, concatenated to the leader's features
and classified. The output view hard-codes ``T == window_length`` (quirk 9).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from jax_cer.reference.frontend import (
    DEFAULT_INPUT_DIMS,
    DEFAULT_MODALITIES,
    LFAN_TCN_CHANNELS,
    FusionFrontEnd,
    Intermediates,
    channels_last,
)

__all__ = ["LFAN", "LFANFusion", "LFANLayer", "LFANSelfAttention"]


class LFANSelfAttention(nn.Module):
    """Cross-modal multi-head self-attention (``fusion.layers.self_attn``).

    ``qkv_proj.<m>`` = Linear(C_m, 3 * modal_dim) with the fused per-head ``[q | k | v]`` layout (quirk 22):
    feature f belongs to head ``f // (3 * d_h)``, role ``(f % (3 * d_h)) // d_h``, dim ``f % d_h``.
    ``o_proj`` = Linear(modal_dim * M, modal_dim * M).
    """

    def __init__(self, modal_channels: Mapping[str, int], modal_dim: int = 32, num_heads: int = 2) -> None:
        super().__init__()
        if modal_dim % num_heads:
            raise ValueError(f"modal_dim {modal_dim} is not divisible by num_heads {num_heads}")
        self.modalities = tuple(modal_channels)
        self.modal_dim = modal_dim
        self.num_heads = num_heads
        self.head_dim = modal_dim // num_heads
        width = modal_dim * len(self.modalities)
        self.qkv_proj = nn.ModuleDict({m: nn.Linear(c, 3 * modal_dim) for m, c in modal_channels.items()})
        self.o_proj = nn.Linear(width, width)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform weights, zero biases (spec §4.1)."""
        for lin in [*self.qkv_proj.values(), self.o_proj]:
            nn.init.xavier_uniform_(lin.weight)
            lin.bias.data.fill_(0)

    def forward(self, h: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, Intermediates]:
        """``h[m]``: ``[B, T, C_m]`` -> (``o_proj`` output ``[B, T, modal_dim * M]``, intermediates).

        Intermediates: ``qkv_proj.<m>`` ``[B, T, 3 * modal_dim]``, ``attn_weights`` A ``[B, T, H, M, M]``
        (last axis = key modality), ``values`` U = A V + V flattened head-major ``[B, T, modal_dim * M]``
        (index ``h * (d_h * M) + m * d_h + d``), ``o_proj``.
        """
        inter: Intermediates = {}
        qkv = []
        for m in self.modalities:
            y = self.qkv_proj[m](h[m])
            inter[f"qkv_proj.{m}"] = y
            b, t, _ = y.shape
            qkv.append(y.reshape(b, t, self.num_heads, 3, self.head_dim))
        qkv_all = torch.stack(qkv, dim=3)  # [B, T, H, M, 3, d_h]
        q, k, v = qkv_all.unbind(dim=4)  # each [B, T, H, M, d_h]
        logits = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(self.head_dim)
        attn = torch.softmax(logits, dim=-1)  # [B, T, H, M, M]
        inter["attn_weights"] = attn
        values = torch.matmul(attn, v) + v
        b, t = values.shape[:2]
        values = values.reshape(b, t, -1)  # head-major (H, M, d_h)
        inter["values"] = values
        out = self.o_proj(values)
        inter["o_proj"] = out
        return out, inter


class LFANLayer(nn.Module):
    """``fusion.layers``: ``norm1(Dropout(self_attn(h)))``; no other residual, no feed-forward."""

    def __init__(
        self,
        modal_channels: Mapping[str, int],
        modal_dim: int = 32,
        num_heads: int = 2,
        attn_dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.self_attn = LFANSelfAttention(modal_channels, modal_dim, num_heads)
        self.dropout = nn.Dropout(attn_dropout)
        self.norm1 = nn.LayerNorm(modal_dim * len(modal_channels), eps=1e-5)

    def forward(self, h: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, Intermediates]:
        """``h[m]``: ``[B, T, C_m]`` -> ``[B, T, modal_dim * M]`` and intermediates (``self_attn.*``, ``norm1``)."""
        out, sub = self.self_attn(h)
        inter = {f"self_attn.{k}": v for k, v in sub.items()}
        out = self.norm1(self.dropout(out))
        inter["norm1"] = out
        return out, inter


class LFANFusion(nn.Module):
    """``fusion``: holds the single ``layers`` module (keys ``fusion.layers.*``)."""

    def __init__(
        self,
        modal_channels: Mapping[str, int],
        modal_dim: int = 32,
        num_heads: int = 2,
        attn_dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.layers = LFANLayer(modal_channels, modal_dim, num_heads, attn_dropout)

    def forward(self, h: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, Intermediates]:
        """``h[m]``: ``[B, T, C_m]`` -> ``[B, T, modal_dim * M]`` and ``layers.*`` intermediates."""
        out, sub = self.layers(h)
        return out, {f"layers.{k}": v for k, v in sub.items()}


class LFAN(FusionFrontEnd):
    """Leader-follower attention network. Keys: ``temporal``, ``spatial``, ``bn``, ``fusion``, ``regressor``.

    ``forward(inputs)`` takes modality -> ``[B, T, C]`` (video may be frames ``[B, T, 3, 40, 40]``) with
    ``T == window_length`` and returns (logits ``[B, T, K]``, intermediates).
    """

    def __init__(
        self,
        modalities: Sequence[str] = DEFAULT_MODALITIES,
        num_classes: int = 7,
        dropout: float = 0.1,
        input_dims: Mapping[str, int] | None = None,
        tcn_channels: Mapping[str, Sequence[int]] | None = None,
        backbone_follows_train: bool = False,
        window_length: int = 300,
        modal_dim: int = 32,
        num_heads: int = 2,
        attn_dropout: float = 0.1,
        kernel_size: int = 5,
    ) -> None:
        super().__init__(
            modalities,
            {**DEFAULT_INPUT_DIMS, **(input_dims or {})},
            {**LFAN_TCN_CHANNELS, **(tcn_channels or {})},
            dropout,
            backbone_follows_train,
            order=("temporal", "spatial", "bn"),
            kernel_size=kernel_size,
        )
        self.window_length = window_length
        self.num_classes = num_classes
        self.leader = self.modalities[0]
        self.fusion = LFANFusion(self.out_channels, modal_dim, num_heads, attn_dropout)
        final_dim = self.out_channels[self.leader] + modal_dim * len(self.modalities)
        self.regressor = nn.Linear(final_dim, num_classes)

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, Intermediates]:
        """modality -> ``[B, T, C]`` (``T == window_length``) -> (logits ``[B, T, K]``, intermediates)."""
        feats, inter = self.encode_inputs(inputs)
        h = {m: channels_last(feats[m]) for m in self.modalities}
        b, t = h[self.leader].shape[:2]
        if t != self.window_length:
            raise ValueError(f"LFAN needs T == window_length ({self.window_length}), got T = {t}")
        fused, sub = self.fusion(h)
        inter.update({f"fusion.{k}": v for k, v in sub.items()})
        logits = self.regressor(torch.cat([h[self.leader], fused], dim=-1))
        logits = logits.view(b, self.window_length, self.num_classes)
        inter["regressor"] = logits
        return logits, inter
