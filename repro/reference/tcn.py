"""Temporal convolutional network of the original fusion models (spec §3).

Each block is two causal dilated convolutions (weight-normed, legacy ``torch.nn.utils.weight_norm``)
followed by LeakyReLU(0.01) and Dropout, plus a residual path and a final LeakyReLU. The convolutions are
registered twice, as ``conv1``/``conv2`` and inside ``net`` (``net.0``/``net.4``), so the state dict holds
both copies, exactly as the original's.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

__all__ = ["Chomp1d", "TemporalBlock", "TemporalConvNet"]


def _weight_norm(module: nn.Conv1d) -> nn.Conv1d:
    """Apply the legacy weight norm (dim 0: keys ``bias, weight_g, weight_v``) without its FutureWarning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return nn.utils.weight_norm(module)


class Chomp1d(nn.Module):
    """Drop the last ``chomp_size`` time steps: ``[B, C, T + chomp] -> [B, C, T]``."""

    def __init__(self, chomp_size: int) -> None:
        super().__init__()
        self.chomp_size = chomp_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, T']`` -> ``[B, C, T' - chomp_size]``."""
        return x[:, :, : -self.chomp_size].contiguous()


class TemporalBlock(nn.Module):
    """One residual TCN block with dilation ``dilation`` (spec §3.1), channels first.

    ``y = LeakyReLU(net(x) + (x | downsample(x)))`` with
    ``net = conv1 -> chomp -> LeakyReLU -> Dropout -> conv2 -> chomp -> LeakyReLU -> Dropout``.
    """

    def __init__(
        self,
        n_inputs: int,
        n_outputs: int,
        kernel_size: int,
        stride: int,
        dilation: int,
        padding: int,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.conv1 = _weight_norm(
            nn.Conv1d(
                n_inputs,
                n_outputs,
                kernel_size,
                stride=stride,
                padding=padding,
                dilation=dilation,
            )
        )
        self.chomp1 = Chomp1d(padding)
        self.relu1 = nn.LeakyReLU(0.01)
        self.dropout1 = nn.Dropout(dropout)
        self.conv2 = _weight_norm(
            nn.Conv1d(
                n_outputs,
                n_outputs,
                kernel_size,
                stride=stride,
                padding=padding,
                dilation=dilation,
            )
        )
        self.chomp2 = Chomp1d(padding)
        self.relu2 = nn.LeakyReLU(0.01)
        self.dropout2 = nn.Dropout(dropout)
        self.net = nn.Sequential(
            self.conv1,
            self.chomp1,
            self.relu1,
            self.dropout1,
            self.conv2,
            self.chomp2,
            self.relu2,
            self.dropout2,
        )
        self.downsample = nn.Conv1d(n_inputs, n_outputs, 1) if n_inputs != n_outputs else None
        self.relu = nn.LeakyReLU(0.01)
        self.init_weights()

    def init_weights(self) -> None:
        """Xavier-uniform (gain sqrt 2) on ``downsample`` only.

        The original also calls it on ``conv1.weight`` / ``conv2.weight``, but with the legacy weight norm
        those are derived tensors recomputed from ``weight_g``/``weight_v`` on every forward, so it is a
        no-op there (spec §3.1); the weight-normed convs keep the default Conv1d init, with ``g = ||v||``.
        """
        if self.downsample is not None:
            nn.init.xavier_uniform_(self.downsample.weight, gain=math.sqrt(2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C_in, T]`` -> ``[B, C_out, T]``."""
        out = self.net(x)
        res = x if self.downsample is None else self.downsample(x)
        return self.relu(out + res)


class TemporalConvNet(nn.Module):
    """Stack of :class:`TemporalBlock` with dilations ``1, 2, 4, ...`` (keys ``network.<j>.*``).

    ``forward`` follows the uniform reference interface (channels last); :meth:`encode` is the original
    channels-first computation, used by the fusion models.
    """

    def __init__(
        self,
        num_inputs: int,
        num_channels: list[int] | tuple[int, ...],
        kernel_size: int = 5,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        layers = []
        for j, out_channels in enumerate(num_channels):
            dilation = 2**j
            in_channels = num_inputs if j == 0 else num_channels[j - 1]
            layers.append(
                TemporalBlock(
                    in_channels,
                    out_channels,
                    kernel_size,
                    stride=1,
                    dilation=dilation,
                    padding=(kernel_size - 1) * dilation,
                    dropout=dropout,
                )
            )
        self.network = nn.Sequential(*layers)

    @property
    def out_channels(self) -> int:
        """Channels of the last block."""
        return self.network[-1].conv2.out_channels

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Channels-first TCN: ``[B, C_in, T]`` -> (``[B, C_out, T]``, per-block outputs ``[B, C_j, T]``)."""
        blocks = []
        for block in self.network:
            x = block(x)
            blocks.append(x)
        return x, blocks

    def forward(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``{"x": [B, T, C_in]}`` -> (``[B, T, C_out]``, ``{"network.<j>": [B, T, C_j]}``)."""
        y, blocks = self.encode(inputs["x"].transpose(1, 2))
        inter = {f"network.{j}": h.transpose(1, 2) for j, h in enumerate(blocks)}
        return y.transpose(1, 2), inter
