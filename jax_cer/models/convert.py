"""Strict import and export of the original PyTorch state dicts.

:func:`from_original_state_dict` builds a model from a mapping of original parameter names to
arrays (or from a ``.pt`` / ``.pth`` / ``.npz`` / ``.safetensors`` file) with exactly the keys
and shapes of the original checkpoints: weight-norm ``weight_g`` / ``weight_v``, the
duplicated TCN ``net.0`` / ``net.4`` keys, BatchNorm running statistics and
``num_batches_tracked``, MHA ``in_proj_weight``, and the parameters of modules the original
builds but never calls (CAN ``conv_c``, MT ``reduce_feats_dim``, the IR-50 ``logits`` head).
A missing key, an unexpected key, a wrong shape or dtype, differing duplicates or a
non-finite value is an error that names every offending key. :func:`to_original_state_dict`
is the exact inverse.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_cer.models.can import CAN
from jax_cer.models.configs import CONFIG_CLASSES, config_for
from jax_cer.models.ir50 import IR50
from jax_cer.models.jmt import JMT
from jax_cer.models.layers import AttentionFn, torch_params_of
from jax_cer.models.lfan import LFAN
from jax_cer.models.mt import MT
from jax_cer.models.rules import COUNTER, Entry
from jax_cer.models.tcn import TCN

MODEL_CLASSES: dict[str, type] = {"lfan": LFAN, "can": CAN, "mt": MT, "jmt": JMT, "tcn": TCN, "ir50": IR50}
HEAD_KEYS = {"lfan": "regressor.weight", "can": "fc2.weight", "mt": "fc2.weight", "jmt": "fc2.weight"}
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


class StateDictError(ValueError):
    """A state dict that does not match the model; the message lists every offending key."""


def model_name_of(model: Any) -> str:
    for name, cls in MODEL_CLASSES.items():
        if type(model) is cls:
            return name
    raise TypeError(f"not a jax_cer model: {type(model).__name__}")


def build_model(name_or_config, *, rngs: nnx.Rngs | None = None, attention_fn: AttentionFn | None = None, **config):
    """Builds a freshly initialised model from a name (``lfan``, ``can``, ``mt``, ``jmt``,
    ``tcn``, ``ir50``) plus config overrides, or from a config instance."""
    if isinstance(name_or_config, str):
        cfg = config_for(name_or_config, **config)
    else:
        cfg = name_or_config
    name = next((n for n, c in CONFIG_CLASSES.items() if type(cfg) is c), None)
    if name is None:
        raise TypeError(f"not a model config: {type(cfg).__name__}")
    rngs = rngs if rngs is not None else nnx.Rngs(0)
    cls = MODEL_CLASSES[name]
    if name in ("tcn", "ir50"):
        return cls(cfg, rngs=rngs)
    return cls(cfg, attention_fn=attention_fn, rngs=rngs)


def _resolve(obj: Any, path: tuple) -> Any:
    for p in path:
        obj = obj[p] if isinstance(p, int) or isinstance(obj, (nnx.Dict, dict)) else getattr(obj, p)
    return obj


def torch_entries(model: nnx.Module) -> list[Entry]:
    """The model's conversion table: one :class:`Entry` per original key, in original order."""
    entries: list[Entry] = []

    def walk(module: Any, prefix: str, path: tuple, alias_prefix: str | None) -> None:
        for tname, attr, rule in torch_params_of(module):
            var = getattr(module, attr)
            shape = tuple(var.get_value().shape)
            entries.append(
                Entry(
                    key=prefix + tname,
                    path=path + (attr,),
                    rule=rule,
                    torch_shape=tuple(rule.torch_shape(shape)),
                    torch_dtype="int64" if rule is COUNTER else "float32",
                    alias_of=None if alias_prefix is None else alias_prefix + tname,
                    trainable=isinstance(var, nnx.Param),
                )
            )
        children = module.torch_children() if hasattr(module, "torch_children") else []
        for tname, rel, alias in children:
            child_alias = alias_prefix + tname + "." if alias_prefix is not None else None
            if alias:
                child_alias = prefix + alias + "."
            walk(_resolve(module, rel), prefix + tname + ".", path + tuple(rel), child_alias)

    walk(model, "", (), None)
    return entries


# -- reading files -------------------------------------------------------------------------
def _to_numpy(value: Any, key: str, source: str) -> np.ndarray:
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
        import torch
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
    """Reads an original-layout state dict from ``.pt``/``.pth``/``.bin``/``.ckpt`` (PyTorch,
    ``weights_only=True``; torch is imported only here), ``.npz`` or ``.safetensors``."""
    path = Path(path)
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
        from safetensors.numpy import load_file

        try:
            return dict(load_file(str(path)))
        except Exception as e:
            raise StateDictError(f"{path}: not a readable .safetensors file ({type(e).__name__}: {e})") from e
    if suffix in TORCH_SUFFIXES:
        raw = _load_torch_file(path)
        return {k: _to_numpy(v, k, str(path)) for k, v in raw.items()}
    raise StateDictError(f"{path}: unknown state dict format {suffix!r}; use .pt/.pth, .npz or .safetensors")


# -- import / export -----------------------------------------------------------------------
def _infer_config(name: str, sd: Mapping[str, np.ndarray], config: dict) -> dict:
    """Fills what the checkpoint itself says: the number of classes (fusion models), the head
    size (ir50) and the TCN's channels (tcn). Everything else comes from ``config`` defaults."""
    config = dict(config)
    if name in HEAD_KEYS and "num_classes" not in config and HEAD_KEYS[name] in sd:
        config["num_classes"] = int(np.shape(sd[HEAD_KEYS[name]])[0])
    if name == "ir50" and "num_head_classes" not in config and "logits.weight" in sd:
        config["num_head_classes"] = int(np.shape(sd["logits.weight"])[0])
    if name == "tcn" and "channels" not in config:
        channels, j = [], 0
        while f"network.{j}.conv1.weight_v" in sd:
            shape = np.shape(sd[f"network.{j}.conv1.weight_v"])
            if len(shape) == 3:
                channels.append(int(shape[0]))
                if j == 0:
                    config.setdefault("num_inputs", int(shape[1]))
                    config.setdefault("kernel_size", int(shape[2]))
            j += 1
        if channels:
            config["channels"] = tuple(channels)
    return config


def from_original_state_dict(
    name: str,
    state_dict: Mapping[str, Any] | str | os.PathLike,
    *,
    attention_fn: AttentionFn | None = None,
    **config,
):
    """Builds model ``name`` (``lfan``, ``can``, ``mt``, ``jmt``, ``tcn``, ``ir50``) from an
    original-layout state dict.

    ``state_dict``: a mapping of original keys to arrays (numpy, torch tensors, ...) or a path
    to a ``.pt``/``.pth``, ``.npz`` or ``.safetensors`` file. ``config``: fields of the model's
    config dataclass (see :mod:`jax_cer.models.configs`); ``num_classes`` (and the TCN's
    channels) are read from the checkpoint unless given. Strict: raises
    :class:`StateDictError` naming every missing, unexpected, misshapen, mistyped, non-finite
    or inconsistent duplicate key. The model is returned in inference mode.
    """
    if name not in MODEL_CLASSES:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(MODEL_CLASSES)}")
    source = "state dict"
    if isinstance(state_dict, (str, os.PathLike)):
        source = str(state_dict)
        state_dict = load_state_dict_file(state_dict)
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping or a file path, got {type(state_dict).__name__}")
    sd = {str(k): _to_numpy(v, str(k), source) for k, v in state_dict.items()}
    cfg = config_for(name, **_infer_config(name, sd, config))
    model = nnx.eval_shape(lambda: build_model(cfg, attention_fn=attention_fn))
    entries = torch_entries(model)
    _check(entries, sd, source, name, cfg)
    for e in entries:
        if e.alias_of is None:
            arr = e.rule.to_flax(sd[e.key])
            dtype = np.int32 if e.torch_dtype == "int64" else np.float32
            _resolve(model, e.path).set_value(jnp.asarray(arr.astype(dtype)))
    model.eval()
    return model


def _check(entries: list[Entry], sd: Mapping[str, np.ndarray], source: str, name: str, cfg: Any) -> None:
    expected = {e.key: e for e in entries}
    problems: list[str] = []
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if missing:
        problems.append(f"missing keys ({len(missing)}): {missing}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {unexpected}")
    for key, e in expected.items():
        if key not in sd:
            continue
        arr = sd[key]
        if tuple(arr.shape) != e.torch_shape:
            problems.append(f"{key}: shape {list(arr.shape)}, expected {list(e.torch_shape)}")
            continue
        if e.torch_dtype == "int64":
            if not np.issubdtype(arr.dtype, np.integer):
                problems.append(f"{key}: dtype {arr.dtype}, expected an integer counter")
            continue
        if not np.issubdtype(arr.dtype, np.floating):
            problems.append(f"{key}: dtype {arr.dtype}, expected floating point")
        elif not np.all(np.isfinite(arr)):
            problems.append(f"{key}: holds {int(np.sum(~np.isfinite(arr)))} NaN/inf values")
        elif e.alias_of is not None and e.alias_of in sd and not np.array_equal(arr, sd[e.alias_of]):
            problems.append(f"{key}: differs from its duplicate {e.alias_of} (they must be the same tensor)")
    if problems:
        hint = ""
        if missing or unexpected:
            fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
            hint = f"\n  built with {type(cfg).__name__}({fields}); pass config overrides if the checkpoint differs"
        raise StateDictError(f"{source} does not match model {name!r}:\n  " + "\n  ".join(problems) + hint)


def to_original_state_dict(
    model: nnx.Module, *, values: Any = None, trainable_only: bool = False
) -> dict[str, np.ndarray]:
    """The model's parameters and statistics under the original keys, layouts and dtypes, in
    the original order (duplicated TCN keys included). Inverse of :func:`from_original_state_dict`.

    ``values``: optionally an ``nnx.State`` with the model's structure (e.g. gradients from
    ``jax.grad`` over ``nnx.split(model, nnx.Param, ...)``) to export instead of the model's own
    values; entries missing from it are skipped. ``trainable_only``: skip running statistics.
    """
    flat = None
    if values is not None:
        flat = {tuple(p): v for p, v in nnx.to_flat_state(values)}
    out: dict[str, np.ndarray] = {}
    for e in torch_entries(model):
        if trainable_only and not e.trainable:
            continue
        if e.alias_of is not None:
            if e.alias_of in out:
                out[e.key] = out[e.alias_of].copy()
            continue
        if flat is None:
            leaf = _resolve(model, e.path)
        elif e.path in flat:
            leaf = flat[e.path]
        else:
            continue
        arr = np.asarray(leaf.get_value() if hasattr(leaf, "get_value") else leaf)
        dtype = np.int64 if e.torch_dtype == "int64" else np.float32
        out[e.key] = e.rule.to_torch(arr).astype(dtype, copy=False)
    return out


def save_state_dict_npz(state_dict: Mapping[str, np.ndarray], path: str | os.PathLike) -> None:
    """Writes an original-layout state dict to ``.npz`` atomically (temp file, then rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **state_dict)
    os.replace(tmp, path)
