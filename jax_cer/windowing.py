"""Clip windowing and padding of the original input pipeline (spec §1.5)."""

from __future__ import annotations

import numpy as np


def window_bounds(n: int, window: int, hop: int) -> list[tuple[int, int]]:
    """Windows ``[start, end)`` that cover a clip of ``n`` frames, as the original cuts them.

    If ``n > window``: ``s = (n - window) // hop + 1`` windows ``[i*hop, i*hop + window)``, plus
    ``[n - window, n)`` when the last one ends before frame ``n - 1``. Otherwise one window
    ``[0, n)``. Examples (window 300, hop 200): n=650 -> [0,300), [200,500), [350,650);
    n=301 -> [0,300), [1,301).
    """
    if n < 1 or window < 1 or hop < 1:
        raise ValueError(f"window_bounds needs n, window, hop >= 1, got n={n}, window={window}, hop={hop}")
    if n <= window:
        return [(0, n)]
    s = (n - window) // hop + 1
    bounds = [(i * hop, i * hop + window) for i in range(s)]
    if bounds[-1][1] < n:
        bounds.append((n - window, n))
    return bounds


def pad_to_length(x, length: int, axis: int = 0):
    """Pads ``x`` along ``axis`` to ``length`` by repeating its last entry (original padding).

    Works on numpy and jax arrays; returns ``x`` unchanged when it is already long enough.
    """
    n = x.shape[axis]
    if n >= length:
        return x
    if n == 0:
        raise ValueError(f"cannot pad an empty sequence (axis {axis} of shape {list(x.shape)}) to {length}")
    idx = np.minimum(np.arange(length), n - 1)
    return x.take(idx, axis=axis) if hasattr(x, "take") else np.take(x, idx, axis=axis)
