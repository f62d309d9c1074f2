"""Shared front end of LFAN / CAN / MT / JMT (spec §4.0): IR-50 on frames, then per-modality TCN + BN.

The fusion models subclass :class:`FusionFrontEnd`; they pass the registration order of ``temporal``,
``bn`` and ``spatial``, which decides the state-dict key order (LFAN: temporal, spatial, bn;
CAN/MT/JMT: temporal, bn, spatial).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from jax_cer.reference.ir50 import IR50
from jax_cer.reference.tcn import TemporalConvNet

__all__ = [
    "CAN_TCN_CHANNELS",
    "DEFAULT_INPUT_DIMS",
    "DEFAULT_MODALITIES",
    "LFAN_TCN_CHANNELS",
    "FusionFrontEnd",
    "Intermediates",
]

Intermediates = dict[str, torch.Tensor]

DEFAULT_MODALITIES: tuple[str, ...] = ("video", "vggish", "bert")
DEFAULT_INPUT_DIMS: dict[str, int] = {"video": 512, "vggish": 128, "bert": 768}
#: ``config['tcn']['channels']`` of LFAN (spec §3.3).
LFAN_TCN_CHANNELS: dict[str, list[int]] = {
    "video": [256, 256, 128, 128],
    "vggish": [64, 64, 32, 32],
    "bert": [256, 256, 128, 128],
}
#: ``config['tcn_settings']`` of CAN / MT / JMT (spec §3.3).
CAN_TCN_CHANNELS: dict[str, list[int]] = {
    "video": [256, 256, 128, 128, 128],
    "vggish": [128, 128, 64, 64],
    "bert": [256, 256, 128, 128],
}


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, T]`` -> ``[B, T, C]``."""
    return x.transpose(1, 2)


class FusionFrontEnd(nn.Module):
    """Base class: builds ``temporal`` (ModuleDict of TCNs), ``bn`` (ModuleDict of BatchNorm1d) and
    ``spatial`` (``ModuleDict({"visual": IR50})``, frozen) and runs them.

    Args:
        modalities: model modality order; the first one is LFAN's leader.
        input_dims: input channels per modality.
        tcn_channels: TCN channels per modality.
        dropout: TCN dropout.
        backbone_follows_train: if False (default, Fixed) the IR-50 stays in eval mode when ``train()`` is
            called; True reproduces the original, whose frozen backbone follows ``model.train()``.
        order: registration order of ``"temporal"``, ``"bn"``, ``"spatial"``.
        kernel_size: TCN kernel size.
    """

    def __init__(
        self,
        modalities: Sequence[str],
        input_dims: Mapping[str, int],
        tcn_channels: Mapping[str, Sequence[int]],
        dropout: float,
        backbone_follows_train: bool,
        order: Sequence[str],
        kernel_size: int = 5,
    ) -> None:
        super().__init__()
        self.modalities = tuple(modalities)
        self.backbone_follows_train = backbone_follows_train
        self.out_channels = {m: int(tcn_channels[m][-1]) for m in self.modalities}
        for name in order:
            if name == "temporal":
                self.temporal = nn.ModuleDict(
                    {
                        m: TemporalConvNet(input_dims[m], list(tcn_channels[m]), kernel_size, dropout)
                        for m in self.modalities
                    }
                )
            elif name == "bn":
                self.bn = nn.ModuleDict({m: nn.BatchNorm1d(self.out_channels[m]) for m in self.modalities})
            elif name == "spatial":
                self.spatial = nn.ModuleDict({"visual": IR50()} if "video" in self.modalities else {})
                for p in self.spatial.parameters():
                    p.requires_grad_(False)
                if not backbone_follows_train:
                    self.spatial.eval()
            else:
                raise ValueError(f"unknown front-end module {name!r}")

    def train(self, mode: bool = True) -> FusionFrontEnd:
        """Set train/eval mode; the IR-50 stays in eval unless ``backbone_follows_train``."""
        super().train(mode)
        if not self.backbone_follows_train:
            self.spatial.eval()
        return self

    def encode_inputs(self, inputs: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], Intermediates]:
        """Run the front end on every modality present in ``inputs`` (in input order).

        Args:
            inputs: modality -> ``[B, T, C]``; ``video`` may instead be frames ``[B, T, 3, 40, 40]`` (NCHW per
                frame, values in [-1, 1]), which go through ``spatial.visual`` first.

        Returns:
            ``(h, inter)``: ``h[m]`` is ``BN_m(TCN_m(x_m))`` channels first ``[B, C_m, T]``; ``inter`` holds
            ``spatial.visual.*`` (frames only), ``temporal.<m>`` and ``bn.<m>`` in port layout ``[B, T, C]``.
        """
        inter: Intermediates = {}
        feats: dict[str, torch.Tensor] = {}
        for m, x in inputs.items():
            if m not in self.temporal:
                raise KeyError(f"modality {m!r} is not one of the model's {self.modalities}")
            if m == "video" and x.dim() == 5:
                b, t = x.shape[:2]
                emb, vis = self.spatial["visual"].embed(x.reshape(b * t, *x.shape[2:]))
                inter.update({f"spatial.visual.{k}": v for k, v in vis.items()})
                # Side output only (the original never calls the head): same keys as IR50.forward.
                inter["spatial.visual.logits"] = self.spatial["visual"].logits(emb)
                x = emb.reshape(b, t, emb.shape[-1])
                inter["spatial.visual"] = x
            elif x.dim() != 3:
                raise ValueError(
                    f"input {m!r} must be [B, T, C] (or video frames [B, T, 3, 40, 40]), got {tuple(x.shape)}"
                )
            h, _ = self.temporal[m].encode(x.transpose(1, 2))
            inter[f"temporal.{m}"] = channels_last(h)
            h = self.bn[m](h)
            inter[f"bn.{m}"] = channels_last(h)
            feats[m] = h
        return feats, inter
