"""Layout rules between original PyTorch parameters and this package's Flax parameters.

A :class:`Rule` converts one array from the original layout to ours and back. Every rule is a pure
re-indexing (transpose, reshape, permutation, integer cast), so the same rule converts gradients
too and a round trip is exact. Conversion tables (:mod:`jax_cer.statedict.table`) pair each
original key with the Flax variable that holds it and the rule between them; their rows are
written ``(original name, Flax attribute, rule)`` (:data:`ParamRow`), whether a layer class
declares them (the fusion models' ``TORCH_PARAMS``) or a naming table applies them to every
variable of that leaf name (transformers' BERT, PEFT's LoRA factors).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np


@dataclasses.dataclass(frozen=True)
class Rule:
    """A bijection between an original (PyTorch) array layout and the Flax layout."""

    name: str
    to_flax: Callable[[np.ndarray], np.ndarray]
    to_torch: Callable[[np.ndarray], np.ndarray]
    torch_shape: Callable[[tuple[int, ...]], tuple[int, ...]]
    """Original shape for a given Flax shape."""


IDENTITY = Rule("identity", lambda x: x, lambda x: x, lambda s: tuple(s))

LINEAR = Rule(
    "linear (out,in) -> kernel (in,out)",
    lambda x: np.ascontiguousarray(x.T),
    lambda x: np.ascontiguousarray(x.T),
    lambda s: (s[1], s[0]),
)

CONV1D = Rule(
    "conv1d (out,in,k) -> (k,in,out)",
    lambda x: np.ascontiguousarray(x.transpose(2, 1, 0)),
    lambda x: np.ascontiguousarray(x.transpose(2, 1, 0)),
    lambda s: (s[2], s[1], s[0]),
)

CONV2D = Rule(
    "conv2d (out,in,kh,kw) -> (kh,kw,in,out)",
    lambda x: np.ascontiguousarray(x.transpose(2, 3, 1, 0)),
    lambda x: np.ascontiguousarray(x.transpose(3, 2, 0, 1)),
    lambda s: (s[3], s[2], s[0], s[1]),
)

WEIGHT_G = Rule(
    "weight_norm g (out,1,1) -> (out,)",
    lambda x: np.ascontiguousarray(x.reshape(x.shape[0])),
    lambda x: np.ascontiguousarray(x.reshape(x.shape[0], 1, 1)),
    lambda s: (s[0], 1, 1),
)

COUNTER = Rule(
    "BatchNorm num_batches_tracked int64 [] -> int32 []",
    lambda x: np.asarray(x, dtype=np.int32).reshape(()),
    lambda x: np.asarray(x, dtype=np.int64).reshape(()),
    lambda s: (),
)


def nchw_flatten_linear(channels: int, height: int, width: int) -> Rule:
    """Linear layer applied after an NCHW flatten, re-indexed for an NHWC flatten.

    The original kernel ``W [out, C*H*W]`` reads flat index ``c*H*W + h*W + w``; ours reads
    ``h*W*C + w*C + c``. ``to_flax`` reshapes to ``[out, C, H, W]``, transposes to
    ``(H, W, C, out)`` and flattens to ``[H*W*C, out]``.
    """
    n = channels * height * width

    def to_flax(x: np.ndarray) -> np.ndarray:
        out = x.shape[0]
        return np.ascontiguousarray(x.reshape(out, channels, height, width).transpose(2, 3, 1, 0).reshape(n, out))

    def to_torch(x: np.ndarray) -> np.ndarray:
        out = x.shape[1]
        return np.ascontiguousarray(x.reshape(height, width, channels, out).transpose(3, 2, 0, 1).reshape(out, n))

    return Rule(
        f"linear after NCHW flatten ({channels}x{height}x{width}) -> NHWC kernel",
        to_flax,
        to_torch,
        lambda s: (s[1], s[0]),
    )


ParamRow = tuple[str, str, Rule]
"""``(original name, Flax attribute, rule)``: e.g. ``("weight", "kernel", LINEAR)`` for a Linear layer."""
