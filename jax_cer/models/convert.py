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

The conversion table is :func:`torch_entries`, walked from the layers' ``TORCH_PARAMS`` and
``torch_children``; checking, loading, exporting and reading files go through
:mod:`jax_cer.statedict`, the mechanism the BERT loader shares.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import nnx

from jax_cer.kernels.xla import AttentionFn
from jax_cer.models.can import CAN
from jax_cer.models.configs import CONFIG_CLASSES, config_for
from jax_cer.models.ir50 import IR50
from jax_cer.models.jmt import JMT
from jax_cer.models.layers import torch_params_of
from jax_cer.models.lfan import LFAN
from jax_cer.models.mt import MT
from jax_cer.models.tcn import TCN
from jax_cer.statedict import (
    COUNTER,
    TORCH_SUFFIXES,
    Entry,
    StateDictError,
    check_state_dict,
    export_entries,
    load_entries,
    load_state_dict_file,
    save_state_dict_npz,
    to_numpy,
    variable_at,
)

__all__ = [
    "HEAD_KEYS",
    "MODEL_CLASSES",
    "TORCH_SUFFIXES",
    "StateDictError",
    "build_model",
    "from_original_state_dict",
    "load_state_dict_file",
    "model_name_of",
    "save_state_dict_npz",
    "to_original_state_dict",
    "torch_entries",
]

MODEL_CLASSES: dict[str, type] = {"lfan": LFAN, "can": CAN, "mt": MT, "jmt": JMT, "tcn": TCN, "ir50": IR50}
HEAD_KEYS = {"lfan": "regressor.weight", "can": "fc2.weight", "mt": "fc2.weight", "jmt": "fc2.weight"}


def model_name_of(model: Any) -> str:
    for name, cls in MODEL_CLASSES.items():
        if type(model) is cls:
            return name
    raise ValueError(f"not a jax_cer model: {type(model).__name__}")


def build_model(name_or_config, *, rngs: nnx.Rngs | None = None, attention_fn: AttentionFn | None = None, **config):
    """Builds a freshly initialised model from a name (``lfan``, ``can``, ``mt``, ``jmt``,
    ``tcn``, ``ir50``) plus config overrides, or from a config instance."""
    if isinstance(name_or_config, str):
        cfg = config_for(name_or_config, **config)
    else:
        cfg = name_or_config
    name = next((n for n, c in CONFIG_CLASSES.items() if type(cfg) is c), None)
    if name is None:
        raise ValueError(f"not a model config: {type(cfg).__name__}")
    rngs = rngs if rngs is not None else nnx.Rngs(0)
    cls = MODEL_CLASSES[name]
    if name in ("tcn", "ir50"):
        return cls(cfg, rngs=rngs)
    return cls(cfg, attention_fn=attention_fn, rngs=rngs)


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
            walk(variable_at(module, rel), prefix + tname + ".", path + tuple(rel), child_alias)

    walk(model, "", (), None)
    return entries


# -- import / export -----------------------------------------------------------------------
def _leading_dim(sd: Mapping[str, np.ndarray], keys: tuple[str, ...]) -> int | None:
    """The size of the first axis of the first of ``keys`` in ``sd`` that has one, else None."""
    for key in keys:
        if key in sd and np.ndim(sd[key]) >= 1:
            return int(np.shape(sd[key])[0])
    return None


def _infer_tcn_config(sd: Mapping[str, np.ndarray], config: dict, source: str) -> dict:
    """The TCN's ``num_inputs``, ``kernel_size`` (block 0) and ``channels`` (every block) not given
    in ``config``, read from each block's ``conv1.weight_v`` (or its duplicate ``net.0.weight_v``).

    A state dict with ``network.<j>.*`` keys whose block lacks that weight raises a
    :class:`StateDictError` naming it: built from defaults, every other key would report a shape
    error. Without any ``network.<j>.*`` key, the defaults stay and the strict check lists the keys.
    """
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"network\.(\d+)\.", k))}
    wanted = {"num_inputs", "kernel_size", "channels"} - set(config)
    if not blocks or not wanted:
        return config
    channels = []
    for j in range(max(blocks) + 1 if "channels" in wanted else 1):
        key = f"network.{j}.conv1.weight_v"
        present = [k for k in (key, f"network.{j}.net.0.weight_v") if k in sd]
        if not present:
            raise StateDictError(
                f"{source} does not match model 'tcn': missing key {key} (the configuration is read from it)"
            )
        shape = np.shape(sd[present[0]])
        if len(shape) != 3:
            raise StateDictError(
                f"{source} does not match model 'tcn': {present[0]} has shape {list(shape)}, expected "
                "[out_channels, in_channels, kernel_size] (the configuration is read from it)"
            )
        if j == 0:
            config.setdefault("num_inputs", int(shape[1]))
            config.setdefault("kernel_size", int(shape[2]))
        channels.append(int(shape[0]))
    if "channels" in wanted:
        config["channels"] = tuple(channels)
    return config


def _infer_config(name: str, sd: Mapping[str, np.ndarray], config: dict, source: str) -> dict:
    """Fills what the checkpoint itself says: the number of classes (fusion models, from the
    head's weight or bias), the head size (ir50) and the TCN's channels, input size and kernel
    size (tcn). Everything else comes from ``config`` defaults."""
    config = dict(config)
    if name in HEAD_KEYS and "num_classes" not in config:
        head = HEAD_KEYS[name]
        k = _leading_dim(sd, (head, head.removesuffix("weight") + "bias"))
        if k is not None:
            config["num_classes"] = k
    if name == "ir50" and "num_head_classes" not in config:
        k = _leading_dim(sd, ("logits.weight", "logits.bias"))
        if k is not None:
            config["num_head_classes"] = k
    if name == "tcn":
        config = _infer_tcn_config(sd, config, source)
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
    to a ``.pt``/``.pth``/``.bin``/``.ckpt``, ``.npz`` or ``.safetensors`` file. ``config``: fields
    of the model's config dataclass (see :mod:`jax_cer.models.configs`); unless given, these are
    read from the checkpoint: ``num_classes`` (the head's weight, else its bias), the IR-50's
    ``num_head_classes`` and the TCN's ``channels``, ``num_inputs`` and ``kernel_size`` (each
    block's ``conv1.weight_v`` or its duplicate; a TCN checkpoint without it is refused naming that
    key). Strict: raises :class:`StateDictError` naming every missing, unexpected, misshapen,
    mistyped, non-finite or inconsistent duplicate key. The model is returned in inference mode.
    """
    if name not in MODEL_CLASSES:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(MODEL_CLASSES)}")
    source = "state dict"
    if isinstance(state_dict, (str, os.PathLike)):
        source = str(state_dict)
        state_dict = load_state_dict_file(state_dict)
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"state_dict must be a mapping or a file path, got {type(state_dict).__name__}")
    sd = {str(k): to_numpy(v, str(k), source) for k, v in state_dict.items()}
    cfg = config_for(name, **_infer_config(name, sd, config, source))
    model = nnx.eval_shape(lambda: build_model(cfg, attention_fn=attention_fn))
    entries = torch_entries(model)
    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    fields = {k: dict(v) if isinstance(v, Mapping) else v for k, v in fields.items()}  # one line, not FrozenDict's
    hint = f"\n  built with {type(cfg).__name__}({fields}); pass config overrides if the checkpoint differs"
    check_state_dict(entries, sd, source=source, target=f"model {name!r}", key_hint=hint)
    load_entries(model, entries, sd)
    model.eval()
    return model


def to_original_state_dict(
    model: nnx.Module, *, values: Any = None, trainable_only: bool = False
) -> dict[str, np.ndarray]:
    """The model's parameters and statistics under the original keys, layouts and dtypes, in
    the original order (duplicated TCN keys included). Inverse of :func:`from_original_state_dict`.

    ``values``: optionally an ``nnx.State`` with the model's structure (e.g. gradients from
    ``jax.grad`` over ``nnx.split(model, nnx.Param, ...)``) to export instead of the model's own
    values; entries missing from it are skipped. ``trainable_only``: skip running statistics.
    """
    return export_entries(model, torch_entries(model), values=values, trainable_only=trainable_only)
