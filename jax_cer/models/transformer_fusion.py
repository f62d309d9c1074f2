"""The wrapper shared by MT and JMT (the original ``JMT`` class, spec §4.3).

Only ``video`` and ``vggish`` enter the fusion::

    v  = bn.video [B,T,128]        a = augment_audio_feats_dim(bn.vggish) [B,T,128]
    jr = reduce_feats_dim([v, a])  (JMT only)
    ev, ea, ej = visual_encoder(v), audio_encoder(a), jr_encoder(jr)   # attention over T
    s_i = CA_xy(query, key=value)  for the streams of the model         # attention over T
    Z  = stack(s) [B,T,S,128] -> final_encoder -> final_self_attention (raw MHA output)
    logits = fc2(LeakyReLU(bn1(fc1(Z[:, :, S-1]))))

The final encoder and self-attention are where ``faithful`` matters: the original feeds
``[T*B, S, E]`` to sequence-first modules, so each stream attends over all T*B tokens of the
batch (``faithful=True``); the fixed default attends across the S streams at each frame.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from jax_cer.kernels.xla import AttentionFn
from jax_cer.models.configs import MTConfig
from jax_cer.models.frontend import FusionModel
from jax_cer.models.graph import Stage
from jax_cer.models.layers import (
    BatchNorm,
    Linear,
    MultiheadAttention,
    TransformerEncoderBlock,
    leaky_relu,
)


class TransformerFusionModel(FusionModel):
    """MT / JMT: subclasses set the streams and whether the joint representation exists."""

    output_key = "fc2"
    JOINT: bool = False
    ENCODERS: tuple[str, ...] = ()
    """Encoders in original registration order (``final_encoder`` included)."""
    STREAMS: tuple[tuple[str, str, str], ...] = ()
    """``(name, query, key=value)`` in stack order; the last one is kept."""
    CA_ORDER: tuple[str, ...] = ()
    """Cross-attention modules in original registration order."""

    def __init__(self, config: MTConfig, *, attention_fn: AttentionFn | None = None, rngs: nnx.Rngs):
        super().__init__(config, attention_fn=attention_fn, rngs=rngs)
        e, h, hid, fn = config.embed_dim, config.num_heads, config.hidden, self.attention_fn
        self.encoders = nnx.Dict(
            {name: TransformerEncoderBlock(e, h, hid, attention_fn=fn, rngs=rngs) for name in self.ENCODERS}
        )
        self.cross = nnx.Dict({name: MultiheadAttention(e, h, attention_fn=fn, rngs=rngs) for name in self.CA_ORDER})
        # reduce_feats_dim exists in MT too (never called there).
        self.reduce_feats_dim = Linear(config.out_dim("video") + e, e, rngs=rngs)
        self.augment_audio_feats_dim = Linear(config.out_dim("vggish"), e, rngs=rngs)
        self.final_self_attention = MultiheadAttention(e, h, attention_fn=fn, rngs=rngs)
        self.bn1 = BatchNorm(e)
        self.fc1 = Linear(e, e, rngs=rngs)
        self.fc2 = Linear(e, config.num_classes, rngs=rngs)

    def torch_children(self):
        return (
            self.frontend_children()
            + [(f"fuse.{n}", ("encoders", n), None) for n in self.ENCODERS]
            + [(f"fuse.{n}", ("cross", n), None) for n in self.CA_ORDER]
            + [
                ("fuse.reduce_feats_dim", ("reduce_feats_dim",), None),
                ("fuse.augment_audio_feats_dim", ("augment_audio_feats_dim",), None),
                ("fuse.final_self_attention", ("final_self_attention",), None),
                ("bn1", ("bn1",), None),
                ("fc1", ("fc1",), None),
                ("fc2", ("fc2",), None),
            ]
        )

    def required_modalities(self) -> tuple[str, ...]:
        return ("video", "vggish")

    def computed_modalities(self) -> tuple[str, ...]:
        if self.config.compute_unused_modalities:
            return self.config.modalities
        return self.required_modalities()

    def _across_streams(self, module, z: jax.Array) -> jax.Array:
        """Applies a batch-first sequence module to ``z [B, T, S, E]`` on the configured axis.

        faithful: sequence = the B*T tokens of one stream, batch = S (the original's
        ``[T*B, S, E]`` read sequence-first; token order does not matter without masks or
        positions). Fixed: sequence = the S streams, batch = the B*T frames.
        """
        b, t, s, e = z.shape
        if self.config.faithful:
            x = jnp.transpose(z, (2, 0, 1, 3)).reshape(s, b * t, e)
            return jnp.transpose(module(x).reshape(s, b, t, e), (1, 2, 0, 3))
        return module(z.reshape(b * t, s, e)).reshape(b, t, s, e)

    def fusion_stages(self, shapes: Mapping[str, tuple[int, ...]], rngs: nnx.Rngs | None) -> list[Stage]:
        sources = {"v": "fuse.visual_encoder", "a": "fuse.audio_encoder", "jr": "fuse.jr_encoder"}
        stages = [Stage("fuse.augment_audio_feats_dim", ("bn.vggish",), self.augment_audio_feats_dim)]
        if self.JOINT:
            stages.append(
                Stage(
                    "fuse.reduce_feats_dim",
                    ("bn.video", "fuse.augment_audio_feats_dim"),
                    lambda v, a: self.reduce_feats_dim(jnp.concatenate([v, a], axis=-1)),
                )
            )
        encoder_inputs = {
            "visual_encoder": "bn.video",
            "audio_encoder": "fuse.augment_audio_feats_dim",
            "jr_encoder": "fuse.reduce_feats_dim",
        }
        for name in self.ENCODERS:
            if name != "final_encoder":
                stages.append(Stage(f"fuse.{name}", (encoder_inputs[name],), self.encoders[name]))
        for name, q, kv in self.STREAMS:
            stages.append(Stage(f"fuse.{name}", (sources[q], sources[kv]), lambda x, y, m=self.cross[name]: m(x, y, y)))
        stream_names = tuple(f"fuse.{name}" for name, _, _ in self.STREAMS)
        stages += [
            Stage(
                "fuse.final_encoder",
                stream_names,
                lambda *s: self._across_streams(self.encoders["final_encoder"], jnp.stack(s, axis=2)),
            ),
            Stage(
                "fuse.final_self_attention",
                ("fuse.final_encoder",),
                lambda z: self._across_streams(lambda x: self.final_self_attention(x, x, x), z),
            ),
            Stage("fuse", ("fuse.final_self_attention",), lambda z: z[:, :, -1, :]),
            Stage("fc1", ("fuse",), self.fc1),
            Stage("bn1", ("fc1",), self.bn1),
            Stage("fc2", ("bn1",), lambda x: self.fc2(leaky_relu(x))),
        ]
        return stages
