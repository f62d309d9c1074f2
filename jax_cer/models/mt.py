"""MT: multimodal transformer (spec §4.3), two cross-attention streams between video and audio.

Streams ``CA_va(video <- audio)`` and ``CA_av(audio <- video)``; the model keeps ``CA_av``.
``reduce_feats_dim`` exists (and is in checkpoints) but is never called, as in the original.
"""

from __future__ import annotations

from flax import nnx

from jax_cer.kernels.xla import AttentionFn
from jax_cer.models.configs import MTConfig
from jax_cer.models.transformer_fusion import TransformerFusionModel


class MT(TransformerFusionModel):
    """Multimodal transformer; see :class:`~jax_cer.models.configs.MTConfig` for ``faithful``."""

    JOINT = False
    ENCODERS = ("visual_encoder", "audio_encoder", "final_encoder")
    STREAMS = (("CA_va", "v", "a"), ("CA_av", "a", "v"))
    CA_ORDER = ("CA_va", "CA_av")

    def __init__(self, config: MTConfig | None = None, *, attention_fn: AttentionFn | None = None, rngs: nnx.Rngs):
        super().__init__(config or MTConfig(), attention_fn=attention_fn, rngs=rngs)
