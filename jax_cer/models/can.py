"""CAN: attention-gated concatenation (spec §4.2).

::

    p_m    = h_m W_m + b_m                        [B, T, 128]   fuse.attn.<i>
    P      = concat_m p_m                         [B, T, 128M]
    alpha  = softmax(P Ww + bw) over all 128M     fuse.weights -> fuse.alpha
    c      = alpha * P                            fuse
    logits = fc2(LeakyReLU(bn1(fc1(c))))          [B, T, K]

``conv_c`` is built but never called (as the original); it keeps its parameters.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from jax_cer.kernels.xla import AttentionFn
from jax_cer.models.configs import CANConfig
from jax_cer.models.frontend import FusionModel
from jax_cer.models.graph import Stage
from jax_cer.models.layers import BatchNorm, Conv1d, Linear, leaky_relu


class CAN(FusionModel):
    """Attention-gated concatenation of every modality's ``[B, T, 128]`` projection."""

    output_key = "fc2"

    def __init__(self, config: CANConfig | None = None, *, attention_fn: AttentionFn | None = None, rngs: nnx.Rngs):
        config = config or CANConfig()
        super().__init__(config, attention_fn=attention_fn, rngs=rngs)
        width = config.attn_dim * len(config.modalities)
        self.fuse_attn = nnx.List([Linear(config.out_dim(m), config.attn_dim, rngs=rngs) for m in config.modalities])
        self.fuse_weights = Linear(width, width, rngs=rngs)
        self.conv_c = Conv1d(width, config.attn_dim, 1, rngs=rngs)  # unused, as in the original
        self.bn1 = BatchNorm(width)
        self.fc1 = Linear(width, width, rngs=rngs)
        self.fc2 = Linear(width, config.num_classes, rngs=rngs)

    def torch_children(self):
        return (
            self.frontend_children()
            + [(f"fuse.attn.{i}", ("fuse_attn", i), None) for i in range(len(self.fuse_attn))]
            + [
                ("fuse.weights", ("fuse_weights",), None),
                ("conv_c", ("conv_c",), None),
                ("bn1", ("bn1",), None),
                ("fc1", ("fc1",), None),
                ("fc2", ("fc2",), None),
            ]
        )

    def fusion_stages(self, shapes: Mapping[str, tuple[int, ...]], rngs: nnx.Rngs | None) -> list[Stage]:
        mods = self.config.modalities
        p_names = tuple(f"fuse.attn.{i}" for i in range(len(mods)))

        def alpha(*p: jax.Array) -> jax.Array:
            return jax.nn.softmax(self.fuse_weights(jnp.concatenate(p, axis=-1)), axis=-1)

        def gate(a: jax.Array, *p: jax.Array) -> jax.Array:
            return a * jnp.concatenate(p, axis=-1)

        return [Stage(f"fuse.attn.{i}", (f"bn.{m}",), self.fuse_attn[i]) for i, m in enumerate(mods)] + [
            Stage("fuse.alpha", p_names, alpha),
            Stage("fuse", ("fuse.alpha", *p_names), gate),
            Stage("fc1", ("fuse",), self.fc1),
            Stage("bn1", ("fc1",), self.bn1),
            Stage("fc2", ("bn1",), lambda x: self.fc2(leaky_relu(x))),
        ]
