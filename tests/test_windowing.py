"""Clip windowing and padding (spec §1.5)."""

from __future__ import annotations

import numpy as np
import pytest

from jax_cer.windowing import pad_to_length, window_bounds


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (650, [(0, 300), (200, 500), (350, 650)]),
        (301, [(0, 300), (1, 301)]),
        (899, [(0, 300), (200, 500), (400, 700), (599, 899)]),
        (300, [(0, 300)]),
        (120, [(0, 120)]),
        (700, [(0, 300), (200, 500), (400, 700)]),
    ],
)
def test_window_bounds_spec_examples(n: int, expected) -> None:
    assert window_bounds(n, 300, 200) == expected


def test_window_bounds_cover_every_frame() -> None:
    for n in (1, 299, 300, 301, 650, 997, 5000):
        covered = np.zeros(n, int)
        for s, e in window_bounds(n, 300, 200):
            assert 0 <= s < e <= n and (e - s == min(n, 300))
            covered[s:e] += 1
        assert covered.min() >= 1


def test_window_bounds_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="n, window, hop >= 1"):
        window_bounds(0, 300, 200)


def test_pad_repeats_last_frame() -> None:
    x = np.arange(3 * 2).reshape(1, 3, 2)
    y = pad_to_length(x, 5, axis=1)
    assert y.shape == (1, 5, 2)
    np.testing.assert_array_equal(y[0, 3:], np.stack([x[0, 2], x[0, 2]]))
    assert pad_to_length(x, 2, axis=1) is x
    with pytest.raises(ValueError, match="empty"):
        pad_to_length(np.zeros((0, 2)), 4)
