"""Conversion between original (PyTorch) state dicts and Flax NNX modules, one mechanism for every model.

- :mod:`jax_cer.statedict.rules`: layout rules (:class:`Rule`: ``LINEAR`` transposes a Linear
  weight into a kernel, ``CONV1D`` / ``CONV2D`` reorder convolution weights, ``WEIGHT_G``,
  ``COUNTER``, :func:`nchw_flatten_linear`) and the row format ``(original name, attribute, rule)``.
- :mod:`jax_cer.statedict.table`: ordered conversion tables (:class:`Entry`), naming by leaf
  (:func:`entries_by_name`), the strict :func:`check_state_dict` that raises one
  :class:`StateDictError` naming every bad key, :func:`load_entries` and :func:`export_entries`.
- :mod:`jax_cer.statedict.files`: :func:`load_state_dict_file` (``.pt`` weights only, ``.npz``,
  ``.safetensors``) and :func:`save_state_dict_npz`.

The fusion models (:func:`jax_cer.models.from_original_state_dict`), the BERT loader and exporter
(:func:`jax_cer.text.load_bert`, :func:`jax_cer.text.state_dict`) and the text golden check's
LoRA factors and head all convert through these functions.
"""

from jax_cer.statedict.files import TORCH_SUFFIXES, load_state_dict_file, save_state_dict_npz, to_numpy
from jax_cer.statedict.rules import (
    CONV1D,
    CONV2D,
    COUNTER,
    IDENTITY,
    LINEAR,
    WEIGHT_G,
    ParamRow,
    Rule,
    nchw_flatten_linear,
)
from jax_cer.statedict.table import (
    Entry,
    StateDictError,
    check_state_dict,
    entries_by_name,
    export_entries,
    load_entries,
    original_key,
    variable_at,
)

__all__ = [
    "CONV1D",
    "CONV2D",
    "COUNTER",
    "IDENTITY",
    "LINEAR",
    "TORCH_SUFFIXES",
    "WEIGHT_G",
    "Entry",
    "ParamRow",
    "Rule",
    "StateDictError",
    "check_state_dict",
    "entries_by_name",
    "export_entries",
    "load_entries",
    "load_state_dict_file",
    "nchw_flatten_linear",
    "original_key",
    "save_state_dict_npz",
    "to_numpy",
    "variable_at",
]
