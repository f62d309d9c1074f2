"""The PyTorch side of a comparison: torch when it is installed (else the case skips), its device."""

from __future__ import annotations

from types import ModuleType

import jax
import pytest

MISSING = (
    "PyTorch is not installed: the PyTorch side of this comparison is skipped "
    "(pip install torch==2.13.0, or the package's test extra)"
)


def torch_or_skip() -> ModuleType:
    """The ``torch`` module; skips the calling case, saying why, when PyTorch is not installed."""
    try:
        import torch  # noqa: PLC0415 - optional: PyTorch is only the reference side of a comparison
    except ImportError:
        pytest.skip(MISSING)
    return torch


def transformers_or_skip() -> ModuleType:
    """The ``transformers`` module (the text encoder's reference); skips the calling case without it."""
    torch_or_skip()
    try:
        import transformers  # noqa: PLC0415 - optional: the text encoder's PyTorch reference
    except ImportError:
        pytest.skip("transformers is not installed: the PyTorch text encoder is skipped (pip install transformers)")
    return transformers


def torch_device() -> str:
    """Where the PyTorch side runs: ``cuda`` when JAX runs on a GPU and torch sees one, else ``cpu``."""
    torch = torch_or_skip()
    return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


def sync(device: str) -> None:
    """Waits for the PyTorch device (the end of a timed call)."""
    if device == "cuda":
        torch_or_skip().cuda.synchronize()
