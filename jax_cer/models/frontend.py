"""The front end shared by LFAN, CAN, MT and JMT, and the base class of the fusion models.

Front end (spec §4.0): raw face frames ``[B, T, 40, 40, 3]`` (if given for ``video``) go
through the frozen IR-50 to ``[B, T, 512]``; then every modality runs its TCN and its
BatchNorm over (B, T). Each fusion model adds its own stages after ``bn.<modality>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jax_cer.kernels.xla import AttentionFn, dot_product_attention
from jax_cer.models.configs import FusionConfig, IR50Config
from jax_cer.models.graph import Stage, run_stages
from jax_cer.models.ir50 import IR50, check_frames
from jax_cer.models.layers import BatchNorm, check_input
from jax_cer.models.tcn import TCN


class Spatial(nnx.Module):
    """Container of the visual backbone (original key prefix ``spatial.visual``)."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.visual = IR50(IR50Config(), rngs=rngs)

    def torch_children(self):
        return [("visual", ("visual",), None)]


class FusionModel(nnx.Module):
    """Base class: front end + a fusion head, run as a graph of named stages.

    Call ``model(inputs)`` with ``inputs`` a dict modality -> ``[B, T, C]`` features (``video``
    may be raw frames ``[B, T, 40, 40, 3]``); it returns per-frame logits ``[B, T, K]``, and
    with ``return_intermediates=True`` also a dict of every named intermediate (keys as the
    original modules: ``temporal.video``, ``bn.video``, ``fuse.CA_av``, ...). Models start in
    inference mode; ``model.train()`` enables dropout (pass ``rngs=nnx.Rngs(dropout=...)``) and
    batch-statistic BatchNorm.

    Inputs may have any floating dtype: the model computes in its parameters' dtype (float32) and
    casts them to it, so float16 / bfloat16 inputs give the result of their float32 cast. Integer
    or bool inputs, NaN, inf, and float64 values beyond float32's range are a ValueError naming
    the modality (values are checked when concrete; under ``jax.jit`` only shapes and dtypes).
    """

    output_key: str = "logits"

    def __init__(self, config: FusionConfig, *, attention_fn: AttentionFn | None = None, rngs: nnx.Rngs):
        self.config = config
        self.attention_fn = attention_fn if attention_fn is not None else dot_product_attention
        self.temporal = nnx.Dict({m: TCN(config.tcn_config(m), rngs=rngs) for m in config.modalities})
        self.bn = nnx.Dict({m: BatchNorm(config.out_dim(m)) for m in config.modalities})
        self.spatial = Spatial(rngs=rngs)

    # -- structure -------------------------------------------------------------------------
    def required_modalities(self) -> tuple[str, ...]:
        """Modalities the fusion reads (all of them, except for MT/JMT)."""
        return self.config.modalities

    def computed_modalities(self) -> tuple[str, ...]:
        """Modalities whose TCN and BatchNorm run."""
        return self.config.modalities

    def frontend_children(self):
        """Original key order of the front end in CAN/MT/JMT: ``temporal``, ``bn``, ``spatial``."""
        return (
            [(f"temporal.{m}", ("temporal", m), None) for m in self.config.modalities]
            + [(f"bn.{m}", ("bn", m), None) for m in self.config.modalities]
            + [("spatial", ("spatial",), None)]
        )

    # -- forward ---------------------------------------------------------------------------
    def input_dtype(self, modality: str, frames: bool = False) -> jnp.dtype:
        """The dtype the model computes ``modality`` in (its first layer's parameters'); inputs are cast to it."""
        return self.spatial.visual.input_dtype() if frames else self.temporal[modality].input_dtype()

    def check_inputs(self, inputs: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
        """Validates the input dict (see the class docstring); returns its shapes. Errors name the
        modality and what is wrong (shape, dtype, a NaN/inf and where, a value beyond the range)."""
        cfg = self.config
        if not isinstance(inputs, Mapping):
            raise ValueError(f"inputs must be a dict modality -> array, got {type(inputs).__name__}")
        missing = [m for m in self.required_modalities() if m not in inputs]
        unexpected = [k for k in inputs if k not in cfg.modalities]
        if missing or unexpected:
            raise ValueError(
                f"{type(self).__name__} inputs: missing modalities {missing}, unexpected {unexpected}; "
                f"this model takes {list(cfg.modalities)}"
            )
        shapes, bt = {}, None
        for m, x in inputs.items():
            frames = m == "video" and len(getattr(x, "shape", ())) == 5
            check_input(x, f"input {m!r}", self.input_dtype(m, frames))
            shape = tuple(x.shape)
            if frames:
                check_frames(shape, "input 'video'", batch_dims=2)
            elif len(shape) != 3 or shape[-1] != cfg.input_dims[m]:
                extra = " or raw frames [B, T, 40, 40, 3]" if m == "video" else ""
                raise ValueError(f"input {m!r}: expected shape [B, T, {cfg.input_dims[m]}]{extra}, got {list(shape)}")
            if bt is not None and shape[:2] != bt:
                raise ValueError(
                    f"input {m!r}: batch and time {list(shape[:2])} differ from the other inputs' {list(bt)}"
                )
            bt = shape[:2]
            shapes[m] = shape
        return shapes

    def frontend_stages(self, shapes: Mapping[str, tuple[int, ...]], rngs: nnx.Rngs | None) -> list[Stage]:
        stages: list[Stage] = []
        for m in self.config.modalities:
            if m not in shapes or m not in self.computed_modalities():
                continue
            source = m
            if m == "video" and len(shapes[m]) == 5:
                b, t = shapes[m][:2]
                frozen = not self.config.backbone_follows_train
                stages += self.spatial.visual.stages("spatial.visual.", m, frozen=frozen, rngs=rngs)
                stages.append(
                    Stage("spatial.visual", ("spatial.visual.l2_norm",), lambda x, b=b, t=t: x.reshape(b, t, -1))
                )
                source = "spatial.visual"
            stages += self.temporal[m].stages(f"temporal.{m}.", source, rngs)
            stages.append(Stage(f"temporal.{m}", (stages[-1].name,), lambda x: x))
            stages.append(Stage(f"bn.{m}", (f"temporal.{m}",), self.bn[m]))
        return stages

    def fusion_stages(self, shapes: Mapping[str, tuple[int, ...]], rngs: nnx.Rngs | None) -> list[Stage]:
        raise NotImplementedError

    def graph(self, shapes: Mapping[str, tuple[int, ...]], rngs: nnx.Rngs | None = None) -> tuple[list[Stage], str]:
        """The forward pass as named stages, and the name of the logits stage."""
        return self.frontend_stages(shapes, rngs) + self.fusion_stages(shapes, rngs), self.output_key

    def __call__(
        self,
        inputs: Mapping[str, jax.Array],
        *,
        rngs: nnx.Rngs | None = None,
        return_intermediates: bool = False,
    ):
        """``inputs``: modality -> ``[B, T, C]`` (or frames for ``video``). Returns ``[B, T, K]`` logits."""
        shapes = self.check_inputs(inputs)
        stages, out = self.graph(shapes, rngs)
        env = run_stages(stages, inputs)
        if return_intermediates:
            return env[out], {k: v for k, v in env.items() if k not in inputs}
        return env[out]
