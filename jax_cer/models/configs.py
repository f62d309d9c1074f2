"""Model configurations: dataclasses holding the original defaults.

The defaults reproduce the original code (spec: ``shared/spec/fusion-models.md`` §3.3, §4) for
the modalities ``video+vggish+bert`` and 7 classes (C-EXPR-DB, MELD). :func:`config_for`
returns the preset of a dataset (``bah`` has 2 classes)::

    cfg = config_for("jmt", "bah")              # JMTConfig(num_classes=2, ...)
    model = build_model(cfg, rngs=nnx.Rngs(0))  # from scratch
    model = from_original_state_dict("jmt", "best-model/model.pt")  # trained weights

Flags follow the spec's "Faithful / Fixed" convention: every flag defaults to the fixed
behaviour, and ``faithful``-style flags reproduce a quirk of the original (see each field).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from flax.core import FrozenDict

DEFAULT_MODALITIES: tuple[str, ...] = ("video", "vggish", "bert")
INPUT_DIMS: Mapping[str, int] = {"video": 512, "vggish": 128, "bert": 768}
FRAME_SHAPE: tuple[int, int, int] = (40, 40, 3)
"""Raw face frames accepted for the ``video`` modality: ``[B, T, 40, 40, 3]`` in [-1, 1]."""

LFAN_TCN_CHANNELS: Mapping[str, tuple[int, ...]] = {
    "video": (256, 256, 128, 128),
    "vggish": (64, 64, 32, 32),
    "bert": (256, 256, 128, 128),
}
"""LFAN's ``config['tcn']['channels']`` (spec §3.3)."""

TCN_SETTINGS: Mapping[str, tuple[int, ...]] = {
    "video": (256, 256, 128, 128, 128),
    "vggish": (128, 128, 64, 64),
    "bert": (256, 256, 128, 128),
}
"""CAN/MT/JMT's ``config['tcn_settings']`` channels (spec §3.3)."""

DATASET_CLASSES: Mapping[str, int] = {
    "c-expr-db": 7,
    "c-expr-db-other": 8,
    "c-expr-db-challenge": 7,
    "meld": 7,
    "bah": 2,
}


@dataclasses.dataclass(frozen=True)
class TCNConfig:
    """A ``TemporalConvNet``: blocks ``j`` with dilation ``2**j``, kernel 5, ``[B, T, C] -> [B, T, channels[-1]]``."""

    num_inputs: int = 512
    channels: tuple[int, ...] = TCN_SETTINGS["video"]
    kernel_size: int = 5
    dropout: float = 0.2

    def __post_init__(self):
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))


@dataclasses.dataclass(frozen=True)
class IR50Config:
    """The IR-50 face backbone on 40x40 RGB frames, plus the unused 8-way ``logits`` head of
    the pretrained checkpoint ``res50_ir_0.887.pth``."""

    num_head_classes: int = 8
    dropout: float = 0.4


@dataclasses.dataclass(frozen=True)
class FusionConfig:
    """Fields shared by LFAN, CAN, MT and JMT.

    Attributes:
      modalities: model order of the modalities (the first is LFAN's leader).
      num_classes: 7 (C-EXPR-DB, MELD), 8 (C-EXPR-DB with Other), 2 (BAH).
      input_dims: feature size per modality; ``video`` may instead be raw frames.
      tcn_channels: TCN channels per modality.
      dropout: TCN dropout (0.1 in LFAN, 0.2 in CAN/MT/JMT, as the original).
      backbone_follows_train: Faithful quirk 2. False (fixed): the frozen IR-50 stays in
        inference mode even when the model trains. True: like the original, ``model.train()``
        puts it in training mode too (batch-statistic BatchNorm, Dropout 0.4).
    """

    modalities: tuple[str, ...] = DEFAULT_MODALITIES
    num_classes: int = 7
    input_dims: Mapping[str, int] = dataclasses.field(default_factory=lambda: dict(INPUT_DIMS))
    tcn_channels: Mapping[str, tuple[int, ...]] = dataclasses.field(default_factory=lambda: dict(TCN_SETTINGS))
    dropout: float = 0.2
    kernel_size: int = 5
    backbone_follows_train: bool = False

    def __post_init__(self):
        # Frozen, hashable mappings: a config is a static attribute of a model's graph.
        object.__setattr__(self, "modalities", tuple(self.modalities))
        object.__setattr__(self, "input_dims", FrozenDict({m: int(c) for m, c in self.input_dims.items()}))
        object.__setattr__(self, "tcn_channels", FrozenDict({m: tuple(c) for m, c in self.tcn_channels.items()}))
        for m in self.modalities:
            if m not in self.input_dims:
                raise ValueError(f"modality {m!r} has no entry in input_dims {dict(self.input_dims)}")
            if m not in self.tcn_channels:
                raise ValueError(f"modality {m!r} has no entry in tcn_channels {dict(self.tcn_channels)}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")

    def tcn_config(self, modality: str) -> TCNConfig:
        return TCNConfig(self.input_dims[modality], self.tcn_channels[modality], self.kernel_size, self.dropout)

    def out_dim(self, modality: str) -> int:
        return self.tcn_channels[modality][-1]


@dataclasses.dataclass(frozen=True)
class LFANConfig(FusionConfig):
    """Leader-follower attention network (spec §4.1).

    ``window_length``: LFAN outputs exactly this many frames (the original hard-codes the
    view); longer clips go through :func:`jax_cer.models.lfan.sliding_window_logits`.
    """

    tcn_channels: Mapping[str, tuple[int, ...]] = dataclasses.field(default_factory=lambda: dict(LFAN_TCN_CHANNELS))
    dropout: float = 0.1
    window_length: int = 300
    modal_dim: int = 32
    num_heads: int = 2
    attn_dropout: float = 0.1

    def __post_init__(self):
        super().__post_init__()
        if self.modal_dim % self.num_heads:
            raise ValueError(f"modal_dim {self.modal_dim} must be divisible by num_heads {self.num_heads}")


@dataclasses.dataclass(frozen=True)
class CANConfig(FusionConfig):
    """Attention-gated concatenation (spec §4.2); ``attn_dim`` is the per-modality width (128)."""

    attn_dim: int = 128


@dataclasses.dataclass(frozen=True)
class MTConfig(FusionConfig):
    """Multimodal transformer (spec §4.3): video and vggish only.

    Attributes:
      faithful: True reproduces the original's final encoder and self-attention over the
        wrong axis (sequence = all T*B tokens of one stream, streams never interact, samples
        of a batch mix; evaluate one clip per batch to match the original). False (default)
        attends across the streams at each frame, as evidently intended. Same weights.
        The default is False because the faithful model's output depends on which clips share
        a batch; use True to reproduce published checkpoints' numbers.
      compute_unused_modalities: Faithful quirk 5. The original runs the TCN and BatchNorm of
        every input modality, also ``bert`` which MT/JMT discard (its running statistics still
        update in training). False (default) skips them; their parameters stay in the model.
      embed_dim / num_heads / hidden: the transformer width (128), heads (1), FFN width (128).
    """

    faithful: bool = False
    compute_unused_modalities: bool = False
    embed_dim: int = 128
    num_heads: int = 1
    hidden: int = 128

    def __post_init__(self):
        super().__post_init__()
        for m in ("video", "vggish"):
            if m not in self.modalities:
                raise ValueError(f"MT/JMT need the modality {m!r}; got modalities {self.modalities}")


@dataclasses.dataclass(frozen=True)
class JMTConfig(MTConfig):
    """Joint multimodal transformer (spec §4.3): MT plus a joint video+audio stream."""


CONFIG_CLASSES = {
    "lfan": LFANConfig,
    "can": CANConfig,
    "mt": MTConfig,
    "jmt": JMTConfig,
    "tcn": TCNConfig,
    "ir50": IR50Config,
}


def config_for(name: str, dataset: str = "c-expr-db", **overrides):
    """The original configuration of model ``name`` for ``dataset``, with ``overrides`` applied.

    ``dataset`` is one of ``c-expr-db`` (7 classes), ``c-expr-db-other`` (8, with Other),
    ``c-expr-db-challenge`` (7), ``meld`` (7), ``bah`` (2). The architectures are the same for
    every dataset; only the number of classes changes.
    """
    if name not in CONFIG_CLASSES:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(CONFIG_CLASSES)}")
    cls = CONFIG_CLASSES[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {unknown}; fields are {sorted(fields)}")
    if issubclass(cls, FusionConfig) and "num_classes" not in overrides:
        if dataset not in DATASET_CLASSES:
            raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(DATASET_CLASSES)}")
        overrides = {"num_classes": DATASET_CLASSES[dataset], **overrides}
    return cls(**overrides)
