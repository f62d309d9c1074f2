"""LFAN: leader-follower attention network (spec §4.1).

Attention runs *across modalities*, per frame and head::

    h_m   = BN_m(TCN_m(x_m))                        [B, T, C_m]
    qkv_m = h_m W_m + b_m                           [B, T, 96], per-head [q|k|v] layout
    U     = softmax(Q K^T / sqrt(16)) V + V         over the M modalities; [B, T, 32M]
    F     = LayerNorm(Dropout(U Wo + bo))           [B, T, 32M]
    logits= Linear([h_leader, F])                   [B, T, K]; leader = first modality

LFAN's output has exactly ``window_length`` frames; :func:`sliding_window_logits` evaluates a
clip of any length as the original did (windows, overlap averaging, padding).
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn.attention import dot_product_attention_weights

from jax_cer.kernels.xla import AttentionFn
from jax_cer.models.configs import LFANConfig
from jax_cer.models.frontend import FusionModel
from jax_cer.models.graph import Stage
from jax_cer.models.layers import Dropout, LayerNorm, Linear
from jax_cer.windowing import pad_to_length, window_bounds

P = "fusion.layers."


class LFAN(FusionModel):
    """Leader-follower attention over ``config.modalities`` (the first one leads)."""

    output_key = "regressor"

    def __init__(self, config: LFANConfig | None = None, *, attention_fn: AttentionFn | None = None, rngs: nnx.Rngs):
        config = config or LFANConfig()
        super().__init__(config, attention_fn=attention_fn, rngs=rngs)
        m, d = len(config.modalities), config.modal_dim
        self.qkv_proj = nnx.Dict(
            {mod: Linear(config.out_dim(mod), 3 * d, rngs=rngs, init="xavier") for mod in config.modalities}
        )
        self.o_proj = Linear(d * m, d * m, rngs=rngs, init="xavier")
        self.attn_dropout = Dropout(config.attn_dropout)
        self.norm1 = LayerNorm(d * m)
        self.regressor = Linear(config.out_dim(config.modalities[0]) + d * m, config.num_classes, rngs=rngs)

    def torch_children(self):
        mods = self.config.modalities
        return (
            [(f"temporal.{m}", ("temporal", m), None) for m in mods]
            + [("spatial", ("spatial",), None)]
            + [(f"bn.{m}", ("bn", m), None) for m in mods]
            + [(f"{P}self_attn.qkv_proj.{m}", ("qkv_proj", m), None) for m in mods]
            + [
                (f"{P}self_attn.o_proj", ("o_proj",), None),
                (f"{P}norm1", ("norm1",), None),
                ("regressor", ("regressor",), None),
            ]
        )

    def _split_heads(self, *qkv: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Per-modality ``[B, T, 96]`` -> q, k, v ``[B, T, M, H, 16]`` (feature f: head f // 48,
        role (f % 48) // 16, dim f % 16)."""
        cfg = self.config
        h, hd = cfg.num_heads, cfg.modal_dim // cfg.num_heads
        parts = jnp.stack([x.reshape(*x.shape[:-1], h, 3, hd) for x in qkv], axis=2)  # [B,T,M,H,3,hd]
        return parts[..., 0, :], parts[..., 1, :], parts[..., 2, :]

    def fusion_stages(self, shapes: Mapping[str, tuple[int, ...]], rngs: nnx.Rngs | None) -> list[Stage]:
        cfg = self.config
        t = next(iter(shapes.values()))[1]
        if t != cfg.window_length:
            raise ValueError(
                f"LFAN outputs exactly window_length={cfg.window_length} frames (the original hard-codes "
                f"this view) but the inputs have T={t}; evaluate longer clips with "
                f"jax_cer.models.lfan.sliding_window_logits, or build the model with window_length={t}"
            )
        mods = cfg.modalities
        qkv_names = tuple(f"{P}self_attn.qkv_proj.{m}" for m in mods)
        stages = [Stage(f"{P}self_attn.qkv_proj.{m}", (f"bn.{m}",), self.qkv_proj[m]) for m in mods]

        def attn_weights(*qkv):
            q, k, _ = self._split_heads(*qkv)
            return dot_product_attention_weights(q, k)  # [B, T, H, M(query), M(key)]

        def values(*qkv):
            q, k, v = self._split_heads(*qkv)
            u = self.attention_fn(q, k, v) + v  # [B, T, M, H, hd]
            u = jnp.swapaxes(u, -3, -2)  # head-major: [B, T, H, M, hd]
            return u.reshape(*u.shape[:-3], -1)

        stages += [
            Stage(f"{P}self_attn.attn_weights", qkv_names, attn_weights),
            Stage(f"{P}self_attn.values", qkv_names, values),
            Stage(f"{P}self_attn.o_proj", (f"{P}self_attn.values",), self.o_proj),
            Stage(f"{P}norm1", (f"{P}self_attn.o_proj",), lambda x: self.norm1(self.attn_dropout(x, rngs))),
            Stage(
                "regressor",
                (f"bn.{mods[0]}", f"{P}norm1"),
                lambda lead, f: self.regressor(jnp.concatenate([lead, f], axis=-1)),
            ),
        ]
        return stages


def sliding_window_logits(
    model: LFAN, inputs: Mapping[str, jax.Array], hop: int | None = None, *, forward=None
) -> jax.Array:
    """LFAN evaluation of one clip of any length ``n`` (spec §1.5), returns ``[1, n', K]``.

    ``inputs``: modality -> ``[1, n, ...]``. With ``w = window_length``:
    ``n < w``: every modality is padded to ``w`` by repeating its last frame and the ``w``
    padded-length logits are returned (``n' = w``, as the original; drop the tail to mask).
    ``n >= w``: windows ``W(n, w, hop)`` (hop defaults to 200, the training hop), each run
    alone, their logits summed into a zero ``[1, n, K]`` buffer and divided by the number of
    windows covering each frame (unweighted mean of the overlaps; ``n' = n``).
    ``forward``: optional compiled ``inputs -> logits`` to use instead of ``model(...)``.
    """
    w = model.config.window_length
    hop = 200 if hop is None else hop
    run = forward if forward is not None else model
    n = next(iter(inputs.values())).shape[1]
    if any(x.shape[0] != 1 for x in inputs.values()):
        raise ValueError("sliding_window_logits evaluates one clip: every input must have batch size 1")
    if isinstance(hop, bool) or not isinstance(hop, numbers.Integral) or not 1 <= hop <= w:
        raise ValueError(
            f"hop must be an integer from 1 to the window length {w}, got {hop!r} (a larger hop would leave "
            "the frames between windows without logits)"
        )
    if n < w:
        return run({m: pad_to_length(x, w, axis=1) for m, x in inputs.items()})
    k = model.config.num_classes
    total = jnp.zeros((1, n, k), jnp.float32)
    count = jnp.zeros((n,), jnp.float32)
    for start, end in window_bounds(n, w, hop):
        out = run({m: x[:, start:end] for m, x in inputs.items()})
        total = total.at[:, start:end].add(out)
        count = count.at[start:end].add(1.0)
    return total / count[None, :, None]
