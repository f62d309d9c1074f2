"""MT and JMT: (joint) multimodal transformer fusion (spec §4.3).

Both are built by the wrapper :class:`JMT` (``model_name`` "JMT" or "MT"). Only video and vggish enter the
fusion; bert's TCN and BN still run when given. Every attention is ``nn.MultiheadAttention(128, 1)``
(dropout 0, bias, seq-first ``[S, N, E]``), as in the original.

The final encoder + self-attention act on ``Z = [T*B, S, 128]`` (S streams, row r = t*B + b):

- ``faithful=True``: ``Z`` is fed as is, so torch reads sequence = T*B, batch = S (quirk 3).
- ``faithful=False`` (default): attention across the S streams at each (t, b) token; ``Z`` is transposed to
  seq-first ``[S, T*B, 128]`` and back. Same weights. Both keep stream S-1.
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

__all__ = [
    "JMT",
    "JMTFusion",
    "MTFusion",
    "TransformerEncoderBlock",
    "TransformerEncoderLayer",
]


def _tbe_to_bte(x: torch.Tensor) -> torch.Tensor:
    """``[T, B, E]`` -> ``[B, T, E]``."""
    return x.transpose(0, 1)


class TransformerEncoderLayer(nn.Module):
    """Post-norm layer: ``y = LN1(x + MHA(x, x, x))``, ``z = LN2(y + Lin2(ReLU(Lin1(y))))``; no dropout."""

    def __init__(self, dim: int, num_heads: int, hidden_dim: int) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(dim, num_heads)
        self.feed_forward = nn.Sequential(nn.Linear(dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, dim))
        self.layer_norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.layer_norm2 = nn.LayerNorm(dim, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Seq-first ``[S, N, E]`` -> ``[S, N, E]`` (attention over S, per N)."""
        y = self.layer_norm1(x + self.attention(x, x, x)[0])
        return self.layer_norm2(y + self.feed_forward(y))


class TransformerEncoderBlock(nn.Module):
    """``layers`` = ModuleList of ``num_layers`` :class:`TransformerEncoderLayer` (keys ``layers.<i>.*``)."""

    def __init__(self, dim: int, num_heads: int = 1, hidden_dim: int = 128, num_layers: int = 1) -> None:
        super().__init__()
        self.layers = nn.ModuleList([TransformerEncoderLayer(dim, num_heads, hidden_dim) for _ in range(num_layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Seq-first ``[S, N, E]`` -> ``[S, N, E]``."""
        for layer in self.layers:
            x = layer(x)
        return x


class _FusionBase(nn.Module):
    """Shared head of :class:`MTFusion` / :class:`JMTFusion`: stream stacking and the final stage."""

    faithful: bool
    final_encoder: TransformerEncoderBlock
    final_self_attention: nn.MultiheadAttention

    def _final(self, streams: list[torch.Tensor], inter: Intermediates) -> torch.Tensor:
        """Streams ``[T, B, E]`` (stack order) -> kept stream S-1 as ``[B, T, E]``.

        Records ``final_encoder`` and ``final_self_attention`` as ``[B, T, S, E]``.
        """
        t, b, e = streams[0].shape
        s = len(streams)
        z = torch.stack(streams, dim=2).reshape(t * b, s, e)  # row r = t*B + b
        if self.faithful:
            z = self.final_encoder(z)  # sequence T*B, batch S
            inter["final_encoder"] = z.reshape(t, b, s, e).transpose(0, 1)
            z = self.final_self_attention(z, z, z)[0]
        else:
            zs = z.transpose(0, 1)  # [S, T*B, E]: sequence S, batch T*B
            zs = self.final_encoder(zs)
            inter["final_encoder"] = zs.transpose(0, 1).reshape(t, b, s, e).transpose(0, 1)
            zs = self.final_self_attention(zs, zs, zs)[0]
            z = zs.transpose(0, 1)
        z = z.reshape(t, b, s, e)
        inter["final_self_attention"] = z.transpose(0, 1)
        return _tbe_to_bte(z[:, :, s - 1, :])


class MTFusion(_FusionBase):
    """MT ``fuse``: encoders over time for video and audio, cross-attention CA_va / CA_av, final stage.

    Registration order reproduces the original keys; ``reduce_feats_dim`` is built but never called and
    ``final_encoder`` keeps the slot of its first (768-wide) definition.
    """

    def __init__(self, audio_channels: int = 64, dim: int = 128, faithful: bool = False) -> None:
        super().__init__()
        self.faithful = faithful
        self.visual_encoder = TransformerEncoderBlock(dim, 1, dim, 1)
        self.audio_encoder = TransformerEncoderBlock(dim, 1, dim, 1)
        self.final_encoder = TransformerEncoderBlock(768, 1, dim, 1)  # replaced below (quirk 6)
        self.CA_va = nn.MultiheadAttention(dim, 1)
        self.CA_av = nn.MultiheadAttention(dim, 1)
        self.reduce_feats_dim = nn.Linear(2 * dim, dim)  # never called in MT
        self.augment_audio_feats_dim = nn.Linear(audio_channels, dim)
        self.final_encoder = TransformerEncoderBlock(dim, 1, dim, 1)
        self.final_self_attention = nn.MultiheadAttention(dim, 1)

    def forward(self, v: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, Intermediates]:
        """``v [T, B, 128]``, ``a [T, B, C_a]`` -> (stream CA_av after the final stage ``[B, T, 128]``,
        intermediates in ``[B, T, ...]``)."""
        inter: Intermediates = {}
        a = self.augment_audio_feats_dim(a)
        inter["augment_audio_feats_dim"] = _tbe_to_bte(a)
        ev = self.visual_encoder(v)
        ea = self.audio_encoder(a)
        inter["visual_encoder"] = _tbe_to_bte(ev)
        inter["audio_encoder"] = _tbe_to_bte(ea)
        s0 = self.CA_va(ev, ea, ea)[0]
        s1 = self.CA_av(ea, ev, ev)[0]
        inter["CA_va"] = _tbe_to_bte(s0)
        inter["CA_av"] = _tbe_to_bte(s1)
        return self._final([s0, s1], inter), inter


class JMTFusion(_FusionBase):
    """JMT ``fuse``: adds the joint representation ``jr = reduce_feats_dim([v, a])``, its encoder, and four
    more cross-attentions; six streams ``CA_va, CA_av, CA_jrv, CA_vjr, CA_jra, CA_ajr`` (stack order).
    """

    def __init__(self, audio_channels: int = 64, dim: int = 128, faithful: bool = False) -> None:
        super().__init__()
        self.faithful = faithful
        self.visual_encoder = TransformerEncoderBlock(dim, 1, dim, 1)
        self.audio_encoder = TransformerEncoderBlock(dim, 1, dim, 1)
        self.jr_encoder = TransformerEncoderBlock(dim, 1, dim, 1)
        self.final_encoder = TransformerEncoderBlock(768, 1, dim, 1)  # replaced below (quirk 6)
        self.CA_va = nn.MultiheadAttention(dim, 1)
        self.CA_av = nn.MultiheadAttention(dim, 1)
        self.CA_jra = nn.MultiheadAttention(dim, 1)
        self.CA_ajr = nn.MultiheadAttention(dim, 1)
        self.CA_vjr = nn.MultiheadAttention(dim, 1)
        self.CA_jrv = nn.MultiheadAttention(dim, 1)
        self.reduce_feats_dim = nn.Linear(2 * dim, dim)
        self.augment_audio_feats_dim = nn.Linear(audio_channels, dim)
        self.final_encoder = TransformerEncoderBlock(dim, 1, dim, 1)
        self.final_self_attention = nn.MultiheadAttention(dim, 1)

    def forward(self, v: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, Intermediates]:
        """``v [T, B, 128]``, ``a [T, B, C_a]`` -> (stream CA_ajr after the final stage ``[B, T, 128]``,
        intermediates in ``[B, T, ...]``)."""
        inter: Intermediates = {}
        a = self.augment_audio_feats_dim(a)
        inter["augment_audio_feats_dim"] = _tbe_to_bte(a)
        jr = self.reduce_feats_dim(torch.cat([v, a], dim=-1))
        inter["reduce_feats_dim"] = _tbe_to_bte(jr)
        ev = self.visual_encoder(v)
        ea = self.audio_encoder(a)
        ej = self.jr_encoder(jr)
        inter["visual_encoder"] = _tbe_to_bte(ev)
        inter["audio_encoder"] = _tbe_to_bte(ea)
        inter["jr_encoder"] = _tbe_to_bte(ej)
        streams = {
            "CA_va": self.CA_va(ev, ea, ea)[0],
            "CA_av": self.CA_av(ea, ev, ev)[0],
            "CA_jrv": self.CA_jrv(ej, ev, ev)[0],
            "CA_vjr": self.CA_vjr(ev, ej, ej)[0],
            "CA_jra": self.CA_jra(ej, ea, ea)[0],
            "CA_ajr": self.CA_ajr(ea, ej, ej)[0],
        }
        inter.update({k: _tbe_to_bte(s) for k, s in streams.items()})
        return self._final(list(streams.values()), inter), inter


class JMT(FusionFrontEnd):
    """Wrapper building MT or JMT. Keys: ``temporal``, ``bn``, ``spatial``, ``fuse``, ``bn1``, ``fc1``, ``fc2``.

    ``forward(inputs)`` needs ``video`` and ``vggish`` (``[B, T, C]``; video may be frames
    ``[B, T, 3, 40, 40]``); ``bert`` runs its TCN and BN and is discarded. Returns (logits ``[B, T, K]``,
    intermediates).
    """

    def __init__(
        self,
        model_name: str = "JMT",
        modalities: Sequence[str] = DEFAULT_MODALITIES,
        num_classes: int = 7,
        dropout: float = 0.2,
        input_dims: Mapping[str, int] | None = None,
        tcn_channels: Mapping[str, Sequence[int]] | None = None,
        backbone_follows_train: bool = False,
        faithful: bool = False,
        kernel_size: int = 5,
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
        if "video" not in self.modalities or "vggish" not in self.modalities:
            raise ValueError(f"{model_name} needs the video and vggish modalities, got {self.modalities}")
        dim = 128
        if self.out_channels["video"] != dim:
            raise ValueError(f"{model_name} needs a {dim}-channel video TCN, got {self.out_channels['video']}")
        fusion_cls = {"JMT": JMTFusion, "MT": MTFusion}[model_name]
        self.model_name = model_name
        self.faithful = faithful
        self.fuse = fusion_cls(self.out_channels["vggish"], dim, faithful)
        self.bn1 = nn.BatchNorm1d(dim)
        self.fc1 = nn.Linear(dim, dim)
        self.fc2 = nn.Linear(dim, num_classes)

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, Intermediates]:
        """modality -> ``[B, T, C]`` -> (logits ``[B, T, K]``, intermediates)."""
        feats, inter = self.encode_inputs(inputs)
        v = feats["video"].permute(2, 0, 1)  # [T, B, 128]
        a = feats["vggish"].permute(2, 0, 1)  # [T, B, 64]
        z, sub = self.fuse(v, a)
        inter.update({f"fuse.{k}": t for k, t in sub.items()})
        inter["fuse"] = z
        x = self.fc1(z)
        inter["fc1"] = x
        x = channels_last(self.bn1(x.transpose(1, 2)))
        inter["bn1"] = x
        logits = self.fc2(F.leaky_relu(x, 0.01))
        inter["fc2"] = logits
        return logits, inter
