"""Temporal convolutional network (the original ``TemporalConvNet`` / ``TemporalBlock``).

Block ``j`` (dilation ``2**j``, kernel 5)::

    h = Dropout(LeakyReLU(CausalConv_d(x)))     # conv1, weight-normed
    h = Dropout(LeakyReLU(CausalConv_d(h)))     # conv2, weight-normed
    y = LeakyReLU(h + (x if C_in == C_out else Conv1x1(x)))   # downsample

Causal: output ``t`` depends on inputs ``<= t`` only (zero left padding). Original keys per
block: ``conv1.*``, ``conv2.*``, their duplicates ``net.0.*`` / ``net.4.*`` and
``downsample.*`` when ``C_in != C_out`` (spec §3).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jax_cer.models.configs import TCNConfig
from jax_cer.models.graph import Stage
from jax_cer.models.layers import Conv1d, Dropout, WeightNormCausalConv1d, check_input, leaky_relu


class TemporalBlock(nnx.Module):
    """One residual block, ``[B, T, C_in] -> [B, T, C_out]``."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, dilation: int, dropout: float, *, rngs: nnx.Rngs):
        self.conv1 = WeightNormCausalConv1d(in_ch, out_ch, kernel_size, dilation, rngs=rngs)
        self.conv2 = WeightNormCausalConv1d(out_ch, out_ch, kernel_size, dilation, rngs=rngs)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)
        self.downsample = Conv1d(in_ch, out_ch, 1, rngs=rngs, init="xavier_relu") if in_ch != out_ch else None

    def torch_children(self):
        children = [
            ("conv1", ("conv1",), None),
            ("conv2", ("conv2",), None),
            ("net.0", ("conv1",), "conv1"),  # the same module, registered twice in the original
            ("net.4", ("conv2",), "conv2"),
        ]
        if self.downsample is not None:
            children.append(("downsample", ("downsample",), None))
        return children

    def __call__(self, x: jax.Array, rngs: nnx.Rngs | None = None) -> jax.Array:
        x = jnp.asarray(x, self.conv1.v.get_value().dtype)  # computes in the parameters' dtype
        h = self.dropout1(leaky_relu(self.conv1(x)), rngs)
        h = self.dropout2(leaky_relu(self.conv2(h)), rngs)
        res = x if self.downsample is None else self.downsample(x)
        return leaky_relu(h + res)


class TCN(nnx.Module):
    """A stack of :class:`TemporalBlock` (``network.<j>``), ``[B, T, C_in] -> [B, T, channels[-1]]``.

    The input may have any floating dtype; it is cast to the parameters' dtype (float32), so
    float16 / bfloat16 features give the result of their float32 cast. Integer or bool input, NaN,
    inf, or float64 values beyond float32's range are a ValueError (values are checked when
    concrete, not under ``jax.jit``).
    """

    def __init__(self, config: TCNConfig, *, rngs: nnx.Rngs):
        self.config = config
        blocks = []
        in_ch = config.num_inputs
        for j, out_ch in enumerate(config.channels):
            blocks.append(TemporalBlock(in_ch, out_ch, config.kernel_size, 2**j, config.dropout, rngs=rngs))
            in_ch = out_ch
        self.network = nnx.List(blocks)

    def torch_children(self):
        return [(f"network.{j}", ("network", j), None) for j in range(len(self.network))]

    def graph(self, shapes, rngs: nnx.Rngs | None = None) -> tuple[list[Stage], str]:
        """Standalone graph on input ``x [B, T, num_inputs]``; ends in ``network.<last>``."""
        self.check_shape(shapes["x"])
        stages = self.stages("", "x", rngs)
        return stages, stages[-1].name

    def input_dtype(self) -> jnp.dtype:
        """The dtype the network computes in (its parameters'); the input is cast to it."""
        return self.network[0].conv1.v.get_value().dtype if len(self.network) else jnp.dtype(jnp.float32)

    def check_shape(self, shape) -> None:
        """Raises ValueError unless ``shape`` is ``[B, T, num_inputs]``."""
        shape = tuple(shape)
        if len(shape) != 3 or shape[-1] != self.config.num_inputs:
            raise ValueError(f"TCN input 'x': expected shape [B, T, {self.config.num_inputs}], got {list(shape)}")

    def stages(self, prefix: str, source: str, rngs: nnx.Rngs | None = None) -> list[Stage]:
        """One stage per block, ``{prefix}network.{j}``, starting from intermediate ``source``."""
        stages, prev = [], source
        for j, block in enumerate(self.network):
            name = f"{prefix}network.{j}"
            stages.append(Stage(name, (prev,), lambda x, block=block: block(x, rngs)))
            prev = name
        return stages

    def __call__(self, x: jax.Array, rngs: nnx.Rngs | None = None) -> jax.Array:
        check_input(x, "TCN input 'x'", self.input_dtype())
        self.check_shape(x.shape)
        x = jnp.asarray(x, self.input_dtype())
        for block in self.network:
            x = block(x, rngs)
        return x
