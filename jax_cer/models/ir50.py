"""IR-50 face backbone (spec §2), NHWC, on 40x40 RGB frames in [-1, 1].

``input_layer`` (Conv3x3 -> BN -> PReLU), 24 ``bottleneck_IR`` units in ``body``, then
``output_layer`` (BN2d -> Dropout(0.4) -> flatten -> Linear(12800, 512) -> BN1d) and an L2
normalisation without epsilon. The wrapper :class:`IR50` also holds the unused 8-way
``logits`` head of the pretrained checkpoint, so its keys are exactly those of
``res50_ir_0.887.pth`` (``backbone.*``, ``logits.*``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jax_cer.models.configs import IR50Config
from jax_cer.models.graph import Stage
from jax_cer.models.layers import BatchNorm, Conv2d, Dropout, Linear, PReLU, check_input
from jax_cer.statedict.rules import IDENTITY, nchw_flatten_linear

FRAME_SIZE = 40
OUT_SPATIAL = 5
EMBED_DIM = 512

# (in, depth, stride) of the 24 units: 3 x 64, 4 x 128, 14 x 256, 3 x 512; stride 2 opens
# the last three stages (spec §2.1 table).
UNITS: tuple[tuple[int, int, int], ...] = (
    ((64, 64, 1),) * 3
    + ((64, 128, 2),)
    + ((128, 128, 1),) * 3
    + ((128, 256, 2),)
    + ((256, 256, 1),) * 13
    + ((256, 512, 2),)
    + ((512, 512, 1),) * 2
)


def _run(bn: BatchNorm, x: jax.Array, frozen: bool) -> jax.Array:
    return bn(x, use_running_average=True if frozen else None)


class FlattenLinear(Linear):
    """``Linear(12800, 512)`` on a flattened ``[N, 5, 5, 512]`` NHWC map.

    The original flattens NCHW (flat index ``c*25 + h*5 + w``); this one flattens NHWC, and
    the conversion rule permutes the kernel rows to match (spec §2.1).
    """

    TORCH_PARAMS = (
        ("weight", "kernel", nchw_flatten_linear(EMBED_DIM, OUT_SPATIAL, OUT_SPATIAL)),
        ("bias", "bias", IDENTITY),
    )

    def __call__(self, x: jax.Array) -> jax.Array:
        return super().__call__(x.reshape(x.shape[0], -1))


class BottleneckIR(nnx.Module):
    """``out = res(x) + shortcut(x)``, no activation after the sum.

    ``res = BN(in) -> Conv3x3(in->d) -> PReLU(d) -> Conv3x3(d->d, stride s) -> BN(d)``;
    ``shortcut = x[:, ::s, ::s]`` when in == d, else ``BN(d)(Conv1x1(in->d, stride s)(x))``.
    """

    def __init__(self, in_ch: int, depth: int, stride: int, *, rngs: nnx.Rngs):
        self.stride = stride
        if in_ch == depth:
            self.shortcut_conv = None
            self.shortcut_bn = None
        else:
            self.shortcut_conv = Conv2d(in_ch, depth, 1, stride, 0, rngs=rngs)
            self.shortcut_bn = BatchNorm(depth)
        self.res_bn1 = BatchNorm(in_ch)
        self.res_conv1 = Conv2d(in_ch, depth, 3, 1, 1, rngs=rngs)
        self.res_prelu = PReLU(depth)
        self.res_conv2 = Conv2d(depth, depth, 3, stride, 1, rngs=rngs)
        self.res_bn2 = BatchNorm(depth)

    def torch_children(self):
        children = []
        if self.shortcut_conv is not None:
            children += [("shortcut_layer.0", ("shortcut_conv",), None), ("shortcut_layer.1", ("shortcut_bn",), None)]
        return children + [
            ("res_layer.0", ("res_bn1",), None),
            ("res_layer.1", ("res_conv1",), None),
            ("res_layer.2", ("res_prelu",), None),
            ("res_layer.3", ("res_conv2",), None),
            ("res_layer.4", ("res_bn2",), None),
        ]

    def __call__(self, x: jax.Array, frozen: bool = False) -> jax.Array:
        if self.shortcut_conv is None:
            shortcut = x[:, :: self.stride, :: self.stride, :]
        else:
            shortcut = _run(self.shortcut_bn, self.shortcut_conv(x), frozen)
        r = self.res_conv1(_run(self.res_bn1, x, frozen))
        r = _run(self.res_bn2, self.res_conv2(self.res_prelu(r)), frozen)
        return r + shortcut


class Backbone(nnx.Module):
    """IR-50 body: ``[N, 40, 40, 3] -> [N, 512]`` (before the L2 normalisation)."""

    def __init__(self, config: IR50Config, *, rngs: nnx.Rngs):
        self.input_conv = Conv2d(3, 64, 3, 1, 1, rngs=rngs)
        self.input_bn = BatchNorm(64)
        self.input_prelu = PReLU(64)
        self.body = nnx.List([BottleneckIR(i, d, s, rngs=rngs) for i, d, s in UNITS])
        self.output_bn2d = BatchNorm(EMBED_DIM)
        self.output_dropout = Dropout(config.dropout)
        self.output_linear = FlattenLinear(EMBED_DIM * OUT_SPATIAL * OUT_SPATIAL, EMBED_DIM, rngs=rngs)
        self.output_bn1d = BatchNorm(EMBED_DIM)

    def torch_children(self):
        return [
            ("input_layer.0", ("input_conv",), None),
            ("input_layer.1", ("input_bn",), None),
            ("input_layer.2", ("input_prelu",), None),
            ("output_layer.0", ("output_bn2d",), None),
            ("output_layer.3", ("output_linear",), None),
            ("output_layer.4", ("output_bn1d",), None),
        ] + [(f"body.{u}", ("body", u), None) for u in range(len(self.body))]

    def input_layer(self, x: jax.Array, frozen: bool = False) -> jax.Array:
        x = jnp.asarray(x, self.input_conv.kernel.get_value().dtype)  # computes in the parameters' dtype
        return self.input_prelu(_run(self.input_bn, self.input_conv(x), frozen))

    def output_layer(self, x: jax.Array, frozen: bool = False, rngs: nnx.Rngs | None = None) -> jax.Array:
        x = self.output_dropout(_run(self.output_bn2d, x, frozen), rngs, deterministic=True if frozen else None)
        x = self.output_linear(x)
        return _run(self.output_bn1d, x, frozen)

    def __call__(self, x: jax.Array, frozen: bool = False, rngs: nnx.Rngs | None = None) -> jax.Array:
        x = self.input_layer(x, frozen)
        for unit in self.body:
            x = unit(x, frozen)
        return self.output_layer(x, frozen, rngs)


def l2_normalize(x: jax.Array) -> jax.Array:
    """``x / ||x||_2`` over the last axis, without epsilon (as the original)."""
    return x / jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))


class IR50(nnx.Module):
    """The pretrained wrapper: ``backbone`` + unused ``logits`` head.

    ``model(frames)`` maps ``[N, 40, 40, 3]`` frames in [-1, 1] to L2-normalised ``[N, 512]``
    features. ``frozen=True`` forces inference behaviour (running statistics, no dropout)
    whatever the module's train/eval mode. Frames of any floating dtype are cast to the
    parameters' dtype (float32); integer or bool frames (e.g. uint8 not scaled to [-1, 1]), NaN,
    inf, or float64 values beyond float32's range are a ValueError (values are checked when
    concrete, not under ``jax.jit``).
    """

    def __init__(self, config: IR50Config | None = None, *, rngs: nnx.Rngs):
        config = config or IR50Config()
        self.config = config
        self.backbone = Backbone(config, rngs=rngs)
        self.logits = Linear(EMBED_DIM, config.num_head_classes, rngs=rngs)

    def torch_children(self):
        return [("backbone", ("backbone",), None), ("logits", ("logits",), None)]

    def input_dtype(self) -> jnp.dtype:
        """The dtype the backbone computes in (its parameters'); frames are cast to it."""
        return self.backbone.input_conv.kernel.get_value().dtype

    def stages(self, prefix: str, source: str, frozen: bool = False, rngs: nnx.Rngs | None = None) -> list[Stage]:
        """Stages ``{prefix}backbone.input_layer``, ``...body.<u>``, ``...output_layer`` (pre-L2)
        and ``{prefix}l2_norm``, from frames ``source`` of shape ``[..., 40, 40, 3]``
        (leading axes flattened to N)."""
        bb = self.backbone
        p = f"{prefix}backbone."
        stages = [Stage(p + "input_layer", (source,), lambda x: bb.input_layer(x.reshape(-1, *x.shape[-3:]), frozen))]
        prev = p + "input_layer"
        for u, unit in enumerate(bb.body):
            stages.append(Stage(f"{p}body.{u}", (prev,), lambda x, unit=unit: unit(x, frozen)))
            prev = f"{p}body.{u}"
        stages.append(Stage(p + "output_layer", (prev,), lambda x: bb.output_layer(x, frozen, rngs)))
        stages.append(Stage(f"{prefix}l2_norm", (p + "output_layer",), l2_normalize))
        return stages

    def graph(self, shapes, rngs: nnx.Rngs | None = None) -> tuple[list[Stage], str]:
        """Standalone graph on input ``frames [N, 40, 40, 3]``; ends in the head ``logits [N, 8]``."""
        check_frames(shapes["frames"], "frames", batch_dims=1)
        stages = self.stages("", "frames", rngs=rngs)
        stages.append(Stage("logits", ("l2_norm",), self.logits))
        return stages, "logits"

    def __call__(self, frames: jax.Array, frozen: bool = False, rngs: nnx.Rngs | None = None) -> jax.Array:
        check_input(frames, "frames", self.input_dtype())
        check_frames(frames.shape, "frames", batch_dims=1)
        return l2_normalize(self.backbone(frames, frozen, rngs))


def check_frames(shape, name: str, batch_dims: int) -> None:
    """Raises ValueError unless ``shape`` is ``[*batch, 40, 40, 3]``."""
    shape = tuple(shape)
    if len(shape) != batch_dims + 3 or shape[-3:] != (FRAME_SIZE, FRAME_SIZE, 3):
        lead = "N" if batch_dims == 1 else "B, T"
        raise ValueError(
            f"{name}: expected face frames of shape [{lead}, 40, 40, 3] (NHWC, RGB in [-1, 1]), got {list(shape)}"
        )
