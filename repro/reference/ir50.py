"""IR-50 visual backbone (spec §2) for 40x40 face crops, plus the wrapper of ``res50_ir_0.887.pth``.

Torch layout is NCHW; the named intermediates are returned in port layout (NHWC).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["IR50", "IR50_UNITS", "Backbone", "BottleneckIR"]

#: (in_channels, depth, stride) of the 24 units (spec §2.1 / §2.2).
IR50_UNITS: tuple[tuple[int, int, int], ...] = (
    *[(64, 64, 1)] * 3,
    (64, 128, 2),
    *[(128, 128, 1)] * 3,
    (128, 256, 2),
    *[(256, 256, 1)] * 13,
    (256, 512, 2),
    *[(512, 512, 1)] * 2,
)


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    """``[N, C, H, W]`` -> ``[N, H, W, C]``."""
    return x.permute(0, 2, 3, 1)


class BottleneckIR(nn.Module):
    """The "bottleneck_IR" unit: ``res_layer(x) + shortcut_layer(x)``, no activation after the sum.

    ``shortcut_layer`` is registered first (it comes first in the state dict): MaxPool2d(1, stride) when
    ``in_channel == depth``, else Conv1x1(stride) -> BN2d.
    """

    def __init__(self, in_channel: int, depth: int, stride: int) -> None:
        super().__init__()
        if in_channel == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channel, depth, (1, 1), stride, bias=False),
                nn.BatchNorm2d(depth),
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channel),
            nn.Conv2d(in_channel, depth, (3, 3), (1, 1), 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, (3, 3), stride, 1, bias=False),
            nn.BatchNorm2d(depth),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, in, H, W]`` -> ``[N, depth, H/stride, W/stride]``."""
        return self.res_layer(x) + self.shortcut_layer(x)


class Backbone(nn.Module):
    """IR-50 trunk: ``input_layer`` -> ``body`` (24 units) -> ``output_layer``; 40x40 input -> 512 features.

    Registration order (``input_layer``, ``output_layer``, ``body``) reproduces the checkpoint key order.
    """

    def __init__(self) -> None:
        super().__init__()
        self.input_layer = nn.Sequential(
            nn.Conv2d(3, 64, (3, 3), 1, 1, bias=False),
            nn.BatchNorm2d(64),
            nn.PReLU(64),
        )
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(512),
            nn.Dropout(0.4),
            nn.Flatten(),
            nn.Linear(512 * 5 * 5, 512),
            nn.BatchNorm1d(512),
        )
        self.body = nn.Sequential(*[BottleneckIR(i, d, s) for i, d, s in IR50_UNITS])

    def run(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``[N, 3, 40, 40]`` -> (``[N, 512]`` pre-L2, intermediates in NHWC / ``[N, 512]``)."""
        inter = {}
        x = self.input_layer(x)
        inter["input_layer"] = _nhwc(x)
        for u, unit in enumerate(self.body):
            x = unit(x)
            inter[f"body.{u}"] = _nhwc(x)
        x = self.output_layer(x)
        inter["output_layer"] = x
        return x, inter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, 3, 40, 40]`` -> ``[N, 512]`` (before the L2 normalisation)."""
        return self.run(x)[0]


def l2_norm(x: torch.Tensor, axis: int = 1) -> torch.Tensor:
    """``x / ||x||_2`` along ``axis``, with no epsilon (spec §2.1, quirk 21)."""
    norm = torch.norm(x, 2, axis, True)
    return torch.div(x, norm)


class IR50(nn.Module):
    """Wrapper of ``res50_ir_0.887.pth``: ``backbone.*`` plus an unused head ``logits = Linear(512, 8)``.

    :meth:`embed` is what the original wrapper's forward returns (L2-normalised features); ``forward`` is the
    uniform reference interface and also applies the head.
    """

    def __init__(self, num_head_classes: int = 8) -> None:
        super().__init__()
        self.backbone = Backbone()
        self.logits = nn.Linear(512, num_head_classes)

    def embed(self, frames: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``[N, 3, 40, 40]`` (values in [-1, 1]) -> (L2-normalised ``[N, 512]``, intermediates).

        Intermediate keys: ``backbone.input_layer`` / ``backbone.body.<u>`` (NHWC),
        ``backbone.output_layer`` ``[N, 512]`` and ``l2_norm`` ``[N, 512]``.
        """
        feats, inter = self.backbone.run(frames)
        inter = {f"backbone.{k}": v for k, v in inter.items()}
        out = l2_norm(feats)
        inter["l2_norm"] = out
        return out, inter

    def forward(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``{"frames": [N, 3, 40, 40]}`` -> (head logits ``[N, 8]``, intermediates incl. ``logits``)."""
        feats, inter = self.embed(inputs["frames"])
        logits = self.logits(feats)
        inter["logits"] = logits
        return logits, inter
