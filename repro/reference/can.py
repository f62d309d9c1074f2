"""CAN: attention-gated concatenation (spec §4.2).

``P = concat_m attn_m(h_m)``, ``alpha = softmax(weights(P))`` over all ``128 M`` features, then
``fc2(leaky_relu(bn1(fc1(alpha * P))))`` per frame.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from jax_cer.reference.frontend import (
    CAN_TCN_CHANNELS,
    DEFAULT_INPUT_DIMS,
    DEFAULT_MODALITIES,
    FusionFrontEnd,
    Intermediates,
    channels_last,
)

__all__ = ["CAN", "CANFusion"]


class CANFusion(nn.Module):
    """``fuse``: ``attn.<i>`` = Linear(C_i, 128) per modality (model order), ``weights`` = Linear(128M, 128M)."""

    def __init__(self, in_channels: Sequence[int], embed_dim: int = 128) -> None:
        super().__init__()
        self.attn = nn.ModuleList([nn.Linear(c, embed_dim) for c in in_channels])
        self.weights = nn.Linear(embed_dim * len(in_channels), embed_dim * len(in_channels))

    def forward(self, h: Sequence[torch.Tensor]) -> tuple[torch.Tensor, Intermediates]:
        """``h[i]``: ``[B, T, C_i]`` -> (``alpha * P`` ``[B, T, 128M]``, ``attn.<i>`` and ``alpha``)."""
        inter: Intermediates = {}
        proj = []
        for i, (lin, x) in enumerate(zip(self.attn, h, strict=True)):
            p = lin(x)
            inter[f"attn.{i}"] = p
            proj.append(p)
        p_all = torch.cat(proj, dim=-1)
        alpha = torch.softmax(self.weights(p_all), dim=-1)
        inter["alpha"] = alpha
        return alpha * p_all, inter


class CAN(FusionFrontEnd):
    """Keys: ``temporal``, ``bn``, ``spatial``, ``fuse``, ``conv_c`` (unused), ``bn1``, ``fc1``, ``fc2``.

    ``forward(inputs)`` takes modality -> ``[B, T, C]`` (video may be frames ``[B, T, 3, 40, 40]``), any T,
    and returns (logits ``[B, T, K]``, intermediates).
    """

    def __init__(
        self,
        modalities: Sequence[str] = DEFAULT_MODALITIES,
        num_classes: int = 7,
        dropout: float = 0.2,
        input_dims: Mapping[str, int] | None = None,
        tcn_channels: Mapping[str, Sequence[int]] | None = None,
        backbone_follows_train: bool = False,
        kernel_size: int = 5,
        embed_dim: int = 128,
    ) -> None:
        super().__init__(
            modalities,
            {**DEFAULT_INPUT_DIMS, **(input_dims or {})},
            {**CAN_TCN_CHANNELS, **(tcn_channels or {})},
            dropout,
            backbone_follows_train,
            order=("temporal", "bn", "spatial"),
            kernel_size=kernel_size,
        )
        width = embed_dim * len(self.modalities)
        self.fuse = CANFusion([self.out_channels[m] for m in self.modalities], embed_dim)
        self.conv_c = nn.Conv1d(width, embed_dim, 1)  # built, never called (quirk 6)
        self.bn1 = nn.BatchNorm1d(width)
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, num_classes)

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, Intermediates]:
        """modality -> ``[B, T, C]`` -> (logits ``[B, T, K]``, intermediates)."""
        feats, inter = self.encode_inputs(inputs)
        fused, sub = self.fuse([channels_last(feats[m]) for m in self.modalities])
        inter.update({f"fuse.{k}": v for k, v in sub.items()})
        inter["fuse"] = fused
        x = self.fc1(fused)
        inter["fc1"] = x
        x = channels_last(self.bn1(x.transpose(1, 2)))
        inter["bn1"] = x
        logits = self.fc2(F.leaky_relu(x, 0.01))
        inter["fc2"] = logits
        return logits, inter
