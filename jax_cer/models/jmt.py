"""JMT: joint multimodal transformer (spec §4.3).

Adds a joint representation ``jr = reduce_feats_dim([video, audio])`` with its own encoder and
six cross-attention streams ``CA_va, CA_av, CA_jrv, CA_vjr, CA_jra, CA_ajr`` (stack order);
the model keeps ``CA_ajr`` (audio <- joint).
"""

from __future__ import annotations

from flax import nnx

from jax_cer.kernels.xla import AttentionFn
from jax_cer.models.configs import JMTConfig
from jax_cer.models.transformer_fusion import TransformerFusionModel


class JMT(TransformerFusionModel):
    """Joint multimodal transformer; see :class:`~jax_cer.models.configs.MTConfig` for ``faithful``."""

    JOINT = True
    ENCODERS = ("visual_encoder", "audio_encoder", "jr_encoder", "final_encoder")
    STREAMS = (
        ("CA_va", "v", "a"),
        ("CA_av", "a", "v"),
        ("CA_jrv", "jr", "v"),
        ("CA_vjr", "v", "jr"),
        ("CA_jra", "jr", "a"),
        ("CA_ajr", "a", "jr"),
    )
    CA_ORDER = ("CA_va", "CA_av", "CA_jra", "CA_ajr", "CA_vjr", "CA_jrv")

    def __init__(self, config: JMTConfig | None = None, *, attention_fn: AttentionFn | None = None, rngs: nnx.Rngs):
        super().__init__(config or JMTConfig(), attention_fn=attention_fn, rngs=rngs)
