"""PyTorch reference implementation of the fusion models (spec ``shared/spec/fusion-models.md``).

Installed as ``jax_cer.reference`` (the repository keeps it in ``repro/reference/``). It is the only
part of the package that imports torch, and only when it is imported itself: the benchmark cases and
the live parity tests import it lazily.

Every model follows one interface: ``model(inputs: dict[str, Tensor]) -> (logits, intermediates)``, where
the intermediates are named after the module that produced them and given in port layout (channels last,
NHWC), still attached to the autograd graph.

``build_reference(name, **config)`` builds ``"tcn"``, ``"ir50"``, ``"lfan"``, ``"can"``, ``"mt"`` or ``"jmt"``
with the original's defaults (3 modalities video + vggish + bert, 7 classes).
"""

from __future__ import annotations

from collections.abc import Mapping

try:
    import torch
    from torch import nn
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "jax_cer.reference is the PyTorch reference and needs torch: pip install torch==2.13.0 "
        "(or the package's test extra, pip install 'jax-cer[test]')"
    ) from err

from jax_cer.reference.can import CAN, CANFusion
from jax_cer.reference.frontend import (
    CAN_TCN_CHANNELS,
    DEFAULT_INPUT_DIMS,
    DEFAULT_MODALITIES,
    LFAN_TCN_CHANNELS,
    FusionFrontEnd,
)
from jax_cer.reference.ir50 import IR50, Backbone, BottleneckIR, l2_norm
from jax_cer.reference.jmt import (
    JMT,
    JMTFusion,
    MTFusion,
    TransformerEncoderBlock,
    TransformerEncoderLayer,
)
from jax_cer.reference.lfan import LFAN, LFANFusion, LFANLayer, LFANSelfAttention
from jax_cer.reference.tcn import Chomp1d, TemporalBlock, TemporalConvNet

__all__ = [
    "CAN",
    "CAN_TCN_CHANNELS",
    "DEFAULT_INPUT_DIMS",
    "DEFAULT_MODALITIES",
    "IR50",
    "JMT",
    "LFAN",
    "LFAN_TCN_CHANNELS",
    "MODEL_NAMES",
    "Backbone",
    "BottleneckIR",
    "CANFusion",
    "Chomp1d",
    "FusionFrontEnd",
    "JMTFusion",
    "LFANFusion",
    "LFANLayer",
    "LFANSelfAttention",
    "MTFusion",
    "TemporalBlock",
    "TemporalConvNet",
    "TransformerEncoderBlock",
    "TransformerEncoderLayer",
    "build_reference",
    "l2_norm",
    "lfan_sliding_window",
    "windows",
]

MODEL_NAMES: tuple[str, ...] = ("tcn", "ir50", "lfan", "can", "mt", "jmt")


def build_reference(name: str, **config) -> nn.Module:
    """Build a reference model by name with the original defaults, overridden by ``config``.

    - ``tcn``: ``num_inputs`` (512), ``channels`` (CAN video ``[256, 256, 128, 128, 128]``), ``kernel_size``
      (5), ``dropout`` (0.2).
    - ``ir50``: no options.
    - ``lfan``: ``modalities``, ``num_classes``, ``dropout`` (0.1), ``input_dims``, ``tcn_channels``,
      ``backbone_follows_train``, ``window_length`` (300), ``modal_dim`` (32), ``num_heads`` (2),
      ``attn_dropout`` (0.1).
    - ``can``: ``modalities``, ``num_classes``, ``dropout`` (0.2), ``input_dims``, ``tcn_channels``,
      ``backbone_follows_train``.
    - ``mt`` / ``jmt``: as ``can`` plus ``faithful`` (False).

    ``tcn_channels`` / ``input_dims`` may give only some modalities; the others keep their defaults.
    """
    key = name.lower()
    if key == "tcn":
        return TemporalConvNet(
            config.pop("num_inputs", DEFAULT_INPUT_DIMS["video"]),
            config.pop("channels", CAN_TCN_CHANNELS["video"]),
            **config,
        )
    if key == "ir50":
        return IR50(**config)
    if key == "lfan":
        return LFAN(**config)
    if key == "can":
        return CAN(**config)
    if key in ("mt", "jmt"):
        return JMT(model_name=key.upper(), **config)
    raise ValueError(f"unknown reference model {name!r}; expected one of {MODEL_NAMES}")


def windows(n: int, w: int, h: int) -> list[tuple[int, int]]:
    """Window function ``W(n, w, h)`` of spec §1.5: half-open ``[start, end)`` frame ranges.

    If ``n > w``: ``floor((n - w) / h) + 1`` windows ``[i h, i h + w)``, plus ``[n - w, n)`` when the last one
    ends before frame ``n - 1``. Otherwise the single window ``[0, n)``.
    """
    if n <= w:
        return [(0, n)]
    out = [(i * h, i * h + w) for i in range((n - w) // h + 1)]
    if out[-1][1] < n:
        out.append((n - w, n))
    return out


def _pad_last(x: torch.Tensor, length: int) -> torch.Tensor:
    """Pad axis 1 of ``[1, n, ...]`` to ``length`` by repeating frame ``n - 1``."""
    n = x.shape[1]
    if n >= length:
        return x
    last = x[:, n - 1 : n].expand(x.shape[0], length - n, *x.shape[2:])
    return torch.cat([x, last], dim=1)


def lfan_sliding_window(model: LFAN, inputs: Mapping[str, torch.Tensor], hop: int) -> torch.Tensor:
    """LFAN evaluation of one clip (spec §1.5): ``inputs[m]`` is ``[1, n, ...]`` -> logits ``[1, n', K]``.

    - ``n < window_length``: every modality is padded to ``window_length`` by repeating its last frame, and
      the padded-length logits ``[1, window_length, K]`` are returned.
    - otherwise: the clip is cut with ``windows(n, window_length, hop)``; each window runs alone (batch 1)
      and its logits are added into a zero ``[1, n, K]`` accumulator, which is divided by the number of
      windows covering each frame (unweighted mean of the overlaps).

    The caller chooses the mode (normally ``model.eval()``) and the grad context.
    """
    w = model.window_length
    lengths = {m: x.shape[1] for m, x in inputs.items()}
    n = next(iter(lengths.values()))
    if any(v != n for v in lengths.values()) or any(x.shape[0] != 1 for x in inputs.values()):
        raise ValueError(f"expected batch-1 inputs of one length, got {[tuple(x.shape) for x in inputs.values()]}")
    if n < w:
        return model({m: _pad_last(x, w) for m, x in inputs.items()})[0]
    acc = None
    count = torch.zeros(n)
    for start, end in windows(n, w, hop):
        out = model({m: x[:, start:end] for m, x in inputs.items()})[0]
        if acc is None:
            acc = torch.zeros(1, n, out.shape[-1], dtype=out.dtype, device=out.device)
        acc[:, start:end] = acc[:, start:end] + out
        count[start:end] += 1
    return acc / count.to(acc.device, acc.dtype)[None, :, None]
