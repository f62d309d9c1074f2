"""Assertion helper of the kernel tests."""

from __future__ import annotations

import numpy as np


def assert_close(name: str, got, want, atol: float) -> None:
    """Fails with how many elements are off, where the first ones are, and the max / mean error."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    assert not np.isnan(got).any(), f"{name}: {int(np.isnan(got).sum())} NaN (unwritten or invalid) elements"
    err = np.abs(got - want)
    bad = np.argwhere(err > atol)
    if len(bad):
        first = ", ".join(str(tuple(int(i) for i in idx)) for idx in bad[:5])
        raise AssertionError(
            f"{name}: {len(bad)}/{err.size} elements off by > {atol:.1e}; first at {first}; "
            f"max {err.max():.3e}, mean {err.mean():.3e}"
        )
