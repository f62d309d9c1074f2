"""Reading and writing original-layout state dicts: ``.pt``/``.pth``/``.bin``/``.ckpt`` (PyTorch,
weights only), ``.npz`` and ``.safetensors``.

A PyTorch file is read with ``torch.load(weights_only=True)``, which never unpickles code, and torch
is imported only then; the other formats need no torch. Unreadable files raise
:class:`~jax_cer.statedict.table.StateDictError` naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file

from jax_cer.statedict.table import StateDictError

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
FORMATS = ".pt/.pth/.bin/.ckpt, .npz or .safetensors"
"""The state dict file formats :func:`load_state_dict_file` reads, as error messages name them."""


def to_numpy(value: Any, key: str, source: str) -> np.ndarray:
    """One state-dict value (numpy array, torch tensor, anything ``np.asarray`` takes) as numpy;
    torch bfloat16 becomes float32. ``key`` and ``source`` name it in the error."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
        t = value.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":
            t = t.float()
        return t.numpy()
    try:
        return np.asarray(value)
    except Exception as e:
        raise StateDictError(f"{source}: value of key {key!r} is not an array ({type(value).__name__}): {e}") from e


def _load_torch_file(path: Path) -> Mapping[str, Any]:
    """Reads a PyTorch checkpoint with ``torch.load(weights_only=True)`` (never unpickles code)."""
    try:
        import torch  # noqa: PLC0415 - optional heavy package, needed only for PyTorch files
    except ImportError as e:
        raise ImportError(
            f"reading {path} needs PyTorch (pip install torch==2.13.0), or convert it to .npz / .safetensors"
        ) from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise StateDictError(
            f"{path}: not a weights-only PyTorch checkpoint ({type(e).__name__}: {e}). Only tensors and "
            "plain containers are read (weights_only=True); re-save the model with torch.save(model.state_dict())."
        ) from e
    for wrapper in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, Mapping) and wrapper in obj and isinstance(obj[wrapper], Mapping):
            obj = obj[wrapper]
            break
    if not isinstance(obj, Mapping):
        raise StateDictError(f"{path}: holds a {type(obj).__name__}, expected a state dict (key -> tensor)")
    return obj


def load_state_dict_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads an original-layout state dict (key -> array) from ``.pt``/``.pth``/``.bin``/``.ckpt``
    (PyTorch, ``weights_only=True``), ``.npz`` or ``.safetensors``."""
    path = Path(path)
    if path.is_dir():
        raise StateDictError(f"{path} is a directory, expected a state dict file ({FORMATS})")
    if not path.is_file():
        raise FileNotFoundError(f"state dict file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as f:
                return {k: f[k] for k in f.files}
        except Exception as e:
            raise StateDictError(f"{path}: not a readable .npz archive ({type(e).__name__}: {e})") from e
    if suffix == ".safetensors":
        try:
            return dict(load_file(str(path)))
        except Exception as e:
            raise StateDictError(f"{path}: not a readable .safetensors file ({type(e).__name__}: {e})") from e
    if suffix in TORCH_SUFFIXES:
        raw = _load_torch_file(path)
        return {k: to_numpy(v, k, str(path)) for k, v in raw.items()}
    raise StateDictError(f"{path}: unknown state dict format {suffix!r}; use {FORMATS}")


def save_state_dict_npz(state_dict: Mapping[str, np.ndarray], path: str | os.PathLike) -> None:
    """Writes an original-layout state dict to ``.npz`` atomically (temp file, then rename)."""
    path = Path(path)
    if path.is_dir():
        raise StateDictError(f"{path} is a directory, expected the path of the .npz file to write")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: the directory {path.parent} does not exist")
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **state_dict)
    os.replace(tmp, path)
